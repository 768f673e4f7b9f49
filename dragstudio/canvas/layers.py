"""What the canvas draws, layer by layer: the photo, the mask overlay, the point pairs.

Each layer paints in view coordinates given a :class:`ViewTransform`. The photo is drawn from a
mipmap so that a 4000×3000 picture fitted into a window is both smooth and cheap; the mask
overlay is rendered only for the visible part at device resolution, so it costs the same for a
100-megapixel photo as for a thumbnail and is crisp on high-DPI screens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen, QPolygonF

from backend.document import Pair, Point
from dragstudio.qtimage import argb_to_qimage, rgb_to_qimage

HANDLE_COLOR = QColor("#ff4b4b")
TARGET_COLOR = QColor("#3d8bff")
SELECT_COLOR = QColor("#ffd166")
POINT_RADIUS = 6.0
"""Radius of a drawn point in logical (screen) pixels, whatever the zoom."""


@dataclass(frozen=True)
class ViewTransform:
    """Image pixel ``(x, y)`` — pixel centres at integers — to view position and back."""

    zoom: float
    ox: float
    oy: float

    def to_view(self, p: Point) -> QPointF:
        return QPointF(self.ox + (p[0] + 0.5) * self.zoom, self.oy + (p[1] + 0.5) * self.zoom)

    def to_image(self, v: QPointF) -> Point:
        return ((v.x() - self.ox) / self.zoom - 0.5, (v.y() - self.oy) / self.zoom - 0.5)

    def image_rect(self, width: int, height: int) -> QRectF:
        return QRectF(self.ox, self.oy, width * self.zoom, height * self.zoom)


class ImagePyramid:
    """The photo at full size and successive halvings, each made on first use."""

    def __init__(self, image: np.ndarray) -> None:
        self.width, self.height = int(image.shape[1]), int(image.shape[0])
        self._levels: list[QImage] = [rgb_to_qimage(image)]

    def level(self, k: int) -> QImage:
        while len(self._levels) <= k:
            prev = self._levels[-1]
            if prev.width() <= 64 or prev.height() <= 64:
                return prev
            size = QSize(max(prev.width() // 2, 1), max(prev.height() // 2, 1))
            self._levels.append(
                prev.scaled(
                    size,
                    Qt.AspectRatioMode.IgnoreAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
            )
        return self._levels[k]

    def paint(self, painter: QPainter, t: ViewTransform, device_ratio: float) -> None:
        # Pick the smallest level still at least as detailed as the screen.
        device_zoom = t.zoom * device_ratio
        k = max(math.floor(math.log2(1.0 / device_zoom)), 0) if device_zoom < 1 else 0
        img = self.level(k)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, device_zoom < 2.0)
        painter.drawImage(
            t.image_rect(self.width, self.height), img, QRectF(0, 0, img.width(), img.height())
        )


def _premultiplied(color: QColor) -> int:
    a = color.alpha()
    r, g, b = (round(c * a / 255) for c in (color.red(), color.green(), color.blue()))
    return (a << 24) | (r << 16) | (g << 8) | b


class MaskOverlay:
    """The editable region tinted, the rest dimmed (as DragBench shows it)."""

    editable = QColor(255, 170, 40, 56)
    locked = QColor(8, 10, 14, 140)

    def __init__(self) -> None:
        self._cache_key: tuple[object, ...] | None = None
        self._cache: tuple[QImage, QPointF] | None = None

    def invalidate(self) -> None:
        self._cache_key = None
        self._cache = None

    def render(
        self, mask: np.ndarray, t: ViewTransform, view: QSize, ratio: float
    ) -> tuple[QImage, QPointF] | None:
        """The overlay for the visible part of ``mask`` and where to draw it."""
        key = (t, view.width(), view.height(), ratio)
        if key == self._cache_key:
            return self._cache
        h, w = mask.shape
        # Image pixel index under the centre of each device pixel of the view.
        cols_dev = np.arange(math.ceil(view.width() * ratio))
        rows_dev = np.arange(math.ceil(view.height() * ratio))
        xi = np.floor(((cols_dev + 0.5) / ratio - t.ox) / t.zoom).astype(np.int64)
        yi = np.floor(((rows_dev + 0.5) / ratio - t.oy) / t.zoom).astype(np.int64)
        cx = np.flatnonzero((xi >= 0) & (xi < w))
        cy = np.flatnonzero((yi >= 0) & (yi < h))
        result: tuple[QImage, QPointF] | None = None
        if cx.size and cy.size:
            sub = mask[np.ix_(yi[cy[0] : cy[-1] + 1], xi[cx[0] : cx[-1] + 1])]
            argb = np.where(
                sub,
                np.uint32(_premultiplied(self.editable)),
                np.uint32(_premultiplied(self.locked)),
            )
            img = argb_to_qimage(argb)
            img.setDevicePixelRatio(ratio)
            result = (img, QPointF(cx[0] / ratio, cy[0] / ratio))
        self._cache_key, self._cache = key, result
        return result


def _outlined_pen(color: QColor, width: float, style: Qt.PenStyle = Qt.PenStyle.SolidLine) -> QPen:
    pen = QPen(color, width)
    pen.setStyle(style)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    return pen


def _arrow(painter: QPainter, a: QPointF, b: QPointF) -> None:
    """A shaft from a to b stopping at b's disc, with a head, outlined for any background."""
    dx, dy = b.x() - a.x(), b.y() - a.y()
    length = math.hypot(dx, dy)
    if length < 2 * POINT_RADIUS + 2:
        return
    ux, uy = dx / length, dy / length
    start = QPointF(a.x() + ux * POINT_RADIUS, a.y() + uy * POINT_RADIUS)
    tip = QPointF(b.x() - ux * (POINT_RADIUS + 1), b.y() - uy * (POINT_RADIUS + 1))
    size = 9.0
    base = QPointF(tip.x() - ux * size, tip.y() - uy * size)
    left = QPointF(base.x() - uy * size * 0.55, base.y() + ux * size * 0.55)
    right = QPointF(base.x() + uy * size * 0.55, base.y() - ux * size * 0.55)
    head = QPolygonF([tip, left, right])
    for color, width in ((QColor(0, 0, 0, 150), 4.5), (QColor("#ffffff"), 2.0)):
        painter.setPen(_outlined_pen(color, width))
        painter.setBrush(color)
        painter.drawLine(start, base)
        painter.drawPolygon(head)


def _disc(painter: QPainter, c: QPointF, color: QColor, *, hollow: bool = False) -> None:
    painter.setPen(_outlined_pen(QColor(0, 0, 0, 160), 3.5))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawEllipse(c, POINT_RADIUS, POINT_RADIUS)
    if hollow:
        painter.setPen(_outlined_pen(color, 2.5))
        painter.drawEllipse(c, POINT_RADIUS - 0.5, POINT_RADIUS - 0.5)
        painter.setPen(_outlined_pen(QColor("#ffffff"), 1.2, Qt.PenStyle.DotLine))
        painter.drawEllipse(c, POINT_RADIUS + 3.5, POINT_RADIUS + 3.5)
        return
    painter.setPen(_outlined_pen(QColor("#ffffff"), 1.5))
    painter.setBrush(color)
    painter.drawEllipse(c, POINT_RADIUS, POINT_RADIUS)


def _label(painter: QPainter, at: QPointF, text: str) -> None:
    font = QFont(painter.font())
    font.setBold(True)
    font.setPointSizeF(9.0)
    path = QPainterPath()
    path.addText(at, font, text)
    painter.setPen(_outlined_pen(QColor(0, 0, 0, 200), 3.0))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawPath(path)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor("#ffffff"))
    painter.drawPath(path)


@dataclass
class PointsStyle:
    selected: int | None = None
    hovered: tuple[int, str] | None = None
    rubber_band_to: QPointF | None = None
    """While a handle dangles: the cursor, so a dashed line shows where its target will go."""


def paint_pairs(
    painter: QPainter,
    t: ViewTransform,
    pairs: Sequence[Pair],
    style: PointsStyle,
    live_handles: Sequence[Point] | None = None,
) -> None:
    """Arrows first, then discs and numbers on top, so no arrow hides a point."""
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    views: list[tuple[QPointF, QPointF | None, QPointF | None]] = []
    for i, pair in enumerate(pairs):
        h = t.to_view(pair.handle)
        live = None
        if live_handles is not None and i < len(live_handles):
            live = t.to_view(live_handles[i])
        views.append((h, t.to_view(pair.target) if pair.target is not None else None, live))
    for h, tv, live in views:
        if tv is not None:
            _arrow(painter, live if live is not None else h, tv)
    for i, (pair, (h, tv, live)) in enumerate(zip(pairs, views, strict=True)):
        if i == style.selected:
            painter.setPen(_outlined_pen(SELECT_COLOR, 2.0))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            for c in (h, tv):
                if c is not None:
                    painter.drawEllipse(c, POINT_RADIUS + 4, POINT_RADIUS + 4)
        if not pair.complete and style.rubber_band_to is not None:
            painter.setPen(_outlined_pen(QColor(255, 255, 255, 180), 1.2, Qt.PenStyle.DashLine))
            painter.drawLine(h, style.rubber_band_to)
        if live is not None:
            painter.setOpacity(0.45)
        _disc(painter, h, HANDLE_COLOR, hollow=not pair.complete)
        painter.setOpacity(1.0)
        if live is not None:
            _disc(painter, live, HANDLE_COLOR)
        if tv is not None:
            _disc(painter, tv, TARGET_COLOR)
        number = str(i + 1) if pair.complete else f"{i + 1}?"
        _label(painter, QPointF(h.x() + POINT_RADIUS + 3, h.y() - POINT_RADIUS - 2), number)


def paint_brush_cursor(painter: QPainter, centre: QPointF, radius: float) -> None:
    """A ring of the brush's true size, black and white so it shows on any photo."""
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    r = max(radius, 1.5)
    painter.setPen(QPen(QColor(0, 0, 0, 170), 3.0))
    painter.drawEllipse(centre, r, r)
    painter.setPen(QPen(QColor(255, 255, 255, 230), 1.2))
    painter.drawEllipse(centre, r, r)
    painter.drawPoint(centre)
