"""The canvas: shows the document, zooms and pans, and hands gestures to the current tool.

A plain QWidget with its own image↔view transform rather than a QGraphicsScene: every layer
is painted from the document on demand, so there is no second copy of the points or the mask
to keep in sync, and the zoom maths stays in one small class (:class:`ViewTransform`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QContextMenuEvent,
    QFocusEvent,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QResizeEvent,
    QUndoCommand,
    QUndoStack,
    QWheelEvent,
)
from PySide6.QtWidgets import QMenu, QWidget

from backend.document import Change, Document, Notice, Pair, Point, clamp_point
from dragstudio.canvas.compare import paint_result, paint_trails
from dragstudio.canvas.layers import (
    POINT_RADIUS,
    ImagePyramid,
    MaskOverlay,
    PointsStyle,
    ViewTransform,
    paint_brush_cursor,
    paint_pairs,
)
from dragstudio.canvas.tools import BrushTool, PointTool, Tool, ToolHandler
from dragstudio.commands import ClearPairs, DeletePair

BACKGROUND = QColor("#16181b")
MIN_ZOOM, MAX_ZOOM = 1 / 64, 64.0
FIT_MARGIN = 16
WHEEL_STEP = 2 ** (1 / 4)
"""Zoom factor per wheel notch: four notches double the size."""


class CanvasView(QWidget):
    zoomChanged = Signal(float)
    """The zoom in percent of device pixels per image pixel (100 = one to one)."""
    cursorMoved = Signal(object)
    """The cursor in image pixels ``(x, y)``, or None when it left the image."""
    toolChanged = Signal(object)
    brushRadiusChanged = Signal(float)

    def __init__(self, document: Document, undo_stack: QUndoStack, parent: QWidget | None = None):
        super().__init__(parent)
        self.document = document
        self._stack = undo_stack
        self.setObjectName("canvas")
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setMinimumSize(200, 150)

        self._pyramid: ImagePyramid | None = None
        self._overlay = MaskOverlay()
        self._overlay_visible = True
        self._mask_nonempty = False
        self._t = ViewTransform(1.0, 0.0, 0.0)
        self._fit = True

        self._handlers: dict[Tool, ToolHandler] = {
            Tool.POINT: PointTool(self),
            Tool.BRUSH: BrushTool(self, True),
            Tool.ERASER: BrushTool(self, False),
            Tool.PAN: ToolHandler(self),
        }
        self._tool = Tool.POINT
        self.brush_radius = 24.0

        self._selected: int | None = None
        self._hovered: tuple[int, str] | None = None
        self._drag_preview: tuple[int, str, Point] | None = None
        self._live_handles: tuple[Point, ...] | None = None
        self._trails: list[list[Point]] = []
        self._result: ImagePyramid | None = None
        self._split = 0.0
        self._show_before = False
        self._cursor_view: QPointF | None = None
        self._space_held = False
        self._pan_from: tuple[QPointF, float, float] | None = None

        self._unsubscribe = document.subscribe(self._on_document)
        self.destroyed.connect(lambda *_: self._unsubscribe())

    # -- document ----------------------------------------------------------------------------

    def _on_document(self, notice: Notice) -> None:
        doc = self.document
        if notice.change == Change.IMAGE:
            self._pyramid = ImagePyramid(doc.image) if doc.image is not None else None
            self._selected = self._hovered = None
            self._drag_preview = self._live_handles = None
            self._trails = []
            self._result = None
            for handler in self._handlers.values():
                handler.cancel()
            self._overlay.invalidate()
            self._mask_nonempty = False
            self.fit()
        elif notice.change == Change.MASK:
            self._overlay.invalidate()
            self._mask_nonempty = doc.mask is not None and bool(doc.mask.any())
            self.update()
        elif notice.change == Change.POINTS:
            n = len(doc.pairs)
            if self._selected is not None and self._selected >= n:
                self._selected = None
            self._hovered = None
            self.update()

    def push(self, command: QUndoCommand) -> None:
        self._stack.push(command)

    # -- geometry ----------------------------------------------------------------------------

    @property
    def transform(self) -> ViewTransform:
        return self._t

    @property
    def zoom(self) -> float:
        """Logical pixels per image pixel."""
        return self._t.zoom

    @property
    def zoom_percent(self) -> float:
        return self._t.zoom * self.devicePixelRatioF() * 100.0

    def image_to_view(self, p: Point) -> QPointF:
        return self._t.to_view(p)

    def view_to_image(self, v: QPointF) -> Point:
        return self._t.to_image(v)

    def contains_image_point(self, p: Point) -> bool:
        w, h = self.document.size
        return -0.5 <= p[0] < w - 0.5 and -0.5 <= p[1] < h - 0.5

    def clamp(self, p: Point) -> Point:
        return clamp_point(p, self.document.size)

    def _set_transform(self, t: ViewTransform) -> None:
        old = self._t.zoom
        self._t = t
        self._overlay.invalidate()
        self.update()
        if t.zoom != old:
            self.zoomChanged.emit(self.zoom_percent)

    def fit(self) -> None:
        """Fit the whole image into the view, and keep fitting as the window is resized."""
        self._fit = True
        w, h = self.document.size
        if not w or not h:
            self._set_transform(ViewTransform(1.0, 0.0, 0.0))
            return
        avail_w = max(self.width() - 2 * FIT_MARGIN, 1)
        avail_h = max(self.height() - 2 * FIT_MARGIN, 1)
        z = min(avail_w / w, avail_h / h, MAX_ZOOM)
        self._set_transform(
            ViewTransform(z, (self.width() - w * z) / 2, (self.height() - h * z) / 2)
        )

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        """Zoom keeping the image point under ``anchor`` (default: the view centre) in place."""
        if not self.document.has_image:
            return
        self._fit = False
        zoom = min(max(zoom, MIN_ZOOM), MAX_ZOOM)
        if anchor is None:
            anchor = QPointF(self.width() / 2, self.height() / 2)
        t = self._t
        k = zoom / t.zoom
        ox = anchor.x() - (anchor.x() - t.ox) * k
        oy = anchor.y() - (anchor.y() - t.oy) * k
        self._set_transform(ViewTransform(zoom, ox, oy))

    def actual_size(self) -> None:
        """100 %: one image pixel on one device pixel, which is what a photographer checks."""
        self.set_zoom(1.0 / self.devicePixelRatioF())

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        self.set_zoom(self._t.zoom * factor, anchor)

    def pan_by(self, dx: float, dy: float) -> None:
        self._fit = False
        t = self._t
        self._set_transform(ViewTransform(t.zoom, t.ox + dx, t.oy + dy))

    # -- tools, selection, hooks for the engine runner ---------------------------------------

    @property
    def tool(self) -> Tool:
        return self._tool

    def set_tool(self, tool: Tool) -> None:
        if tool == self._tool:
            return
        self._handlers[self._tool].cancel()
        self._tool = tool
        self._update_cursor()
        self.update()
        self.toolChanged.emit(tool)

    def set_brush_radius(self, radius: float) -> None:
        radius = min(max(float(radius), 1.0), 2000.0)
        if radius != self.brush_radius:
            self.brush_radius = radius
            self.update()
            self.brushRadiusChanged.emit(radius)

    @property
    def overlay_visible(self) -> bool:
        return self._overlay_visible

    def set_overlay_visible(self, visible: bool) -> None:
        self._overlay_visible = visible
        self.update()

    @property
    def selected(self) -> int | None:
        return self._selected

    def select(self, index: int | None) -> None:
        self._selected = index
        self.update()

    def delete_selected(self) -> None:
        if self._selected is not None and self._selected < len(self.document.pairs):
            self.push(DeletePair(self.document, self._selected))

    def set_drag_preview(self, index: int | None, role: str = "", p: Point = (0, 0)) -> None:
        self._drag_preview = None if index is None else (index, role, p)
        self.update()

    def set_live_handles(self, handles: Sequence[Point] | None) -> None:
        """Show handles where the engine's tracking has them now (None: where the user put them).

        Each update extends a faint trail from where the handles started; None clears it.
        """
        if handles is None:
            self._live_handles = None
            self._trails = []
        else:
            self._live_handles = tuple((float(x), float(y)) for x, y in handles)
            if len(self._trails) != len(self._live_handles):
                starts = [p.handle for p in self.document.pairs if p.complete]
                self._trails = [[s] for s in starts[: len(self._live_handles)]]
                self._trails += [[] for _ in range(len(self._live_handles) - len(self._trails))]
            for trail, p in zip(self._trails, self._live_handles, strict=True):
                trail.append(p)
        self.update()

    @property
    def live_handles(self) -> tuple[Point, ...] | None:
        return self._live_handles

    @property
    def trails(self) -> list[list[Point]]:
        return self._trails

    def set_result(self, image: np.ndarray | None) -> None:
        """Show an edit's result over the original (None: the document's image alone)."""
        self._result = ImagePyramid(image) if image is not None else None
        self.update()

    @property
    def has_result(self) -> bool:
        return self._result is not None

    def set_split(self, split: float) -> None:
        """Fraction of the width, from the left, that shows the original instead of the result."""
        self._split = min(max(float(split), 0.0), 1.0)
        self.update()

    def set_show_before(self, before: bool) -> None:
        self._show_before = before
        self.update()

    def displayed_pairs(self) -> list[Pair]:
        pairs = list(self.document.pairs)
        if self._drag_preview is not None:
            index, role, p = self._drag_preview
            if index < len(pairs):
                pairs[index] = pairs[index].moved(role, p)
        return pairs

    def hit_test(self, v: QPointF) -> tuple[int, str] | None:
        """The point under ``v`` (targets win over handles, later pairs over earlier ones)."""
        reach = (POINT_RADIUS + 4) ** 2
        pairs = self.displayed_pairs()
        for i in range(len(pairs) - 1, -1, -1):
            for role in ("target", "handle"):
                p = pairs[i].handle if role == "handle" else pairs[i].target
                if p is None:
                    continue
                c = self._t.to_view(p)
                if (c.x() - v.x()) ** 2 + (c.y() - v.y()) ** 2 <= reach:
                    return i, role
        return None

    # -- painting ----------------------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(event.rect(), BACKGROUND)
        if self._pyramid is None:
            self._paint_empty(painter)
            return
        ratio = self.devicePixelRatioF()
        self._pyramid.paint(painter, self._t, ratio)
        showing_result = self._result is not None and not self._show_before
        if showing_result and self._result is not None:
            paint_result(painter, self._result, self._t, ratio, self._split)
        mask = self.document.mask
        if (
            self._overlay_visible
            and self._mask_nonempty
            and mask is not None
            and not showing_result
        ):
            rendered = self._overlay.render(mask, self._t, self.size(), ratio)
            if rendered is not None:
                painter.drawImage(rendered[1], rendered[0])
        style = PointsStyle(selected=self._selected, hovered=self._hovered)
        if self._tool == Tool.POINT and self.document.dangling is not None:
            style.rubber_band_to = self._cursor_view
        if self._trails:
            paint_trails(painter, self._t, self._trails)
        paint_pairs(painter, self._t, self.displayed_pairs(), style, self._live_handles)
        if (
            self._tool in (Tool.BRUSH, Tool.ERASER)
            and self._cursor_view is not None
            and not self._panning_gesture()
        ):
            paint_brush_cursor(painter, self._cursor_view, self.brush_radius * self._t.zoom)

    def _paint_empty(self, painter: QPainter) -> None:
        painter.setPen(QColor("#7d8592"))
        font = painter.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        painter.setFont(font)
        painter.drawText(
            QRectF(self.rect()),
            Qt.AlignmentFlag.AlignCenter,
            "Open a photo to start\nCtrl+O, or drop an image here",
        )

    # -- input -------------------------------------------------------------------------------

    def _panning_gesture(self) -> bool:
        return self._space_held or self._tool == Tool.PAN or self._pan_from is not None

    def _update_cursor(self) -> None:
        if self._pan_from is not None:
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        elif self._space_held or self._tool == Tool.PAN:
            self.setCursor(Qt.CursorShape.OpenHandCursor)
        elif self._tool == Tool.POINT and self._hovered is not None:
            self.setCursor(Qt.CursorShape.SizeAllCursor)
        else:
            self.setCursor(self._handlers[self._tool].cursor())

    def _start_pan(self, v: QPointF) -> None:
        self._pan_from = (v, self._t.ox, self._t.oy)
        self._update_cursor()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        v = event.position()
        button = event.button()
        if button == Qt.MouseButton.MiddleButton or (
            button == Qt.MouseButton.LeftButton and self._panning_gesture()
        ):
            self._start_pan(v)
        elif button == Qt.MouseButton.LeftButton and self.document.has_image:
            self._handlers[self._tool].press(self._t.to_image(v), v)
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        v = event.position()
        self._cursor_view = v
        p = self._t.to_image(v)
        inside = self.document.has_image and self.contains_image_point(p)
        self.cursorMoved.emit(p if inside else None)
        if self._pan_from is not None:
            start, ox, oy = self._pan_from
            self._fit = False
            self._set_transform(
                ViewTransform(self._t.zoom, ox + v.x() - start.x(), oy + v.y() - start.y())
            )
        elif event.buttons() & Qt.MouseButton.LeftButton:
            self._handlers[self._tool].move(p, v)
        elif self._tool == Tool.POINT:
            hovered = self.hit_test(v)
            if hovered != self._hovered:
                self._hovered = hovered
                self._update_cursor()
        self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        v = event.position()
        if self._pan_from is not None and event.button() in (
            Qt.MouseButton.MiddleButton,
            Qt.MouseButton.LeftButton,
        ):
            self._pan_from = None
            self._update_cursor()
        elif event.button() == Qt.MouseButton.LeftButton:
            self._handlers[self._tool].release(self._t.to_image(v), v)
        self.update()

    def wheelEvent(self, event: QWheelEvent) -> None:
        delta = event.angleDelta().y() or event.angleDelta().x()
        if delta:
            self.zoom_by(WHEEL_STEP ** (delta / 120), event.position())
        event.accept()

    def leaveEvent(self, event: object) -> None:
        self._cursor_view = None
        self.cursorMoved.emit(None)
        self.update()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space:
            if not event.isAutoRepeat():
                self._space_held = True
                self._update_cursor()
            event.accept()
            return
        if event.key() == Qt.Key.Key_Escape:
            self._handlers[self._tool].cancel()
            self.update()
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space_held = False
            self._update_cursor()
            event.accept()
            return
        super().keyReleaseEvent(event)

    def focusOutEvent(self, event: QFocusEvent) -> None:
        self._space_held = False
        self._pan_from = None
        self._handlers[self._tool].cancel()
        self._update_cursor()
        super().focusOutEvent(event)

    def resizeEvent(self, event: QResizeEvent) -> None:
        if self._fit:
            self.fit()
        else:
            self._overlay.invalidate()
        super().resizeEvent(event)

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        if not self.document.pairs:
            return
        hit = self.hit_test(QPointF(event.pos()))
        menu = QMenu(self)
        if hit is not None:
            index = hit[0]
            self.select(index)
            delete = menu.addAction(f"Delete pair {index + 1}")
            delete.triggered.connect(lambda: self.push(DeletePair(self.document, index)))
        clear = menu.addAction("Clear all points")
        clear.triggered.connect(lambda: self.push(ClearPairs(self.document)))
        menu.exec(event.globalPos())


def percent_text(percent: float) -> str:
    """Zoom as users read it: whole percent above 10 %, one decimal below."""
    if not math.isfinite(percent):
        return "–"
    return f"{percent:.0f} %" if percent >= 10 else f"{percent:.1f} %"
