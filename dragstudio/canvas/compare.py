"""Layers for running edits: the result over the original with a split line, and handle trails.

The result is drawn on top of the photo and clipped to the right of the split, so the slider
wipes between before (left) and after (right) without a second view to keep in step.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen, QPolygonF

from backend.document import Point
from dragstudio.canvas.layers import ImagePyramid, ViewTransform

TRAIL_COLOR = QColor(255, 120, 120, 110)


def paint_result(
    painter: QPainter, result: ImagePyramid, t: ViewTransform, ratio: float, split: float
) -> None:
    """The result right of ``split`` (0: all result, 1: all original), and the split line."""
    rect = t.image_rect(result.width, result.height)
    x = rect.left() + rect.width() * min(max(split, 0.0), 1.0)
    painter.save()
    painter.setClipRect(QRectF(x, rect.top(), rect.right() - x, rect.height()))
    result.paint(painter, t, ratio)
    painter.restore()
    if 0.0 < split < 1.0:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        for color, width in ((QColor(0, 0, 0, 150), 3.0), (QColor("#ffffff"), 1.2)):
            painter.setPen(QPen(color, width))
            painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
        painter.setPen(QColor("#ffffff"))
        painter.drawText(QPointF(x - 52, rect.top() + 16), "before")
        painter.drawText(QPointF(x + 8, rect.top() + 16), "after")


def paint_trails(painter: QPainter, t: ViewTransform, trails: Sequence[Sequence[Point]]) -> None:
    """A faint line per handle through every position tracking reported."""
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    pen = QPen(TRAIL_COLOR, 2.0)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    painter.setPen(pen)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    for trail in trails:
        if len(trail) >= 2:
            painter.drawPolyline(QPolygonF([t.to_view(p) for p in trail]))
