"""The canvas tools. Each turns mouse gestures in image pixels into undoable commands."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QCursor

from backend.document import MaskStroke, Point
from dragstudio.commands import AddHandle, EditMask, MovePoint, SetTarget

if TYPE_CHECKING:
    from dragstudio.canvas.view import CanvasView


class Tool(StrEnum):
    POINT = "point"
    BRUSH = "brush"
    ERASER = "eraser"
    PAN = "pan"

    @property
    def title(self) -> str:
        return {"point": "Points", "brush": "Mask brush", "eraser": "Mask eraser", "pan": "Pan"}[
            self.value
        ]


class ToolHandler:
    """Default behaviour: nothing. Handlers get image coordinates and the view position."""

    cursor_shape = Qt.CursorShape.ArrowCursor

    def __init__(self, view: CanvasView) -> None:
        self.view = view

    def press(self, p: Point, v: QPointF) -> None: ...

    def move(self, p: Point, v: QPointF) -> None: ...

    def release(self, p: Point, v: QPointF) -> None: ...

    def cancel(self) -> None: ...

    def cursor(self) -> QCursor:
        return QCursor(self.cursor_shape)


class PointTool(ToolHandler):
    """Click a handle, then its target; drag any point to move it."""

    cursor_shape = Qt.CursorShape.CrossCursor

    def __init__(self, view: CanvasView) -> None:
        super().__init__(view)
        self._dragging: tuple[int, str, Point] | None = None
        self._press_view: QPointF | None = None

    def press(self, p: Point, v: QPointF) -> None:
        doc = self.view.document
        hit = self.view.hit_test(v)
        if hit is not None:
            index, role = hit
            pair = doc.pairs[index]
            start = pair.handle if role == "handle" else pair.target
            assert start is not None
            self._dragging = (index, role, start)
            self._press_view = v
            self.view.select(index)
            return
        if not self.view.contains_image_point(p):
            return
        p = self.view.clamp(p)
        dangling = doc.dangling
        if dangling is not None:
            self.view.push(SetTarget(doc, dangling, p))
            self.view.select(dangling)
        else:
            self.view.push(AddHandle(doc, p))
            self.view.select(len(doc.pairs) - 1)

    def move(self, p: Point, v: QPointF) -> None:
        if self._dragging is not None:
            index, role, _ = self._dragging
            self.view.set_drag_preview(index, role, self.view.clamp(p))

    def release(self, p: Point, v: QPointF) -> None:
        if self._dragging is None:
            return
        index, role, start = self._dragging
        self._dragging = None
        self.view.set_drag_preview(None)
        moved = self._press_view is not None and (v - self._press_view).manhattanLength() >= 2
        if moved:
            self.view.push(MovePoint(self.view.document, index, role, start, self.view.clamp(p)))

    def cancel(self) -> None:
        self._dragging = None
        self.view.set_drag_preview(None)


class BrushTool(ToolHandler):
    """Paint (or erase) the editable region; one stroke is one undo step."""

    cursor_shape = Qt.CursorShape.BlankCursor

    def __init__(self, view: CanvasView, value: bool) -> None:
        super().__init__(view)
        self.value = value
        self._stroke: MaskStroke | None = None

    def press(self, p: Point, v: QPointF) -> None:
        doc = self.view.document
        if not doc.has_image:
            return
        self._stroke = doc.begin_stroke(self.value, self.view.brush_radius)
        self._stroke.add(p)

    def move(self, p: Point, v: QPointF) -> None:
        if self._stroke is not None:
            self._stroke.add(p)

    def release(self, p: Point, v: QPointF) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Finishing early (focus lost, tool switched) still records what was painted."""
        stroke, self._stroke = self._stroke, None
        if stroke is None:
            return
        edit = stroke.finish()
        if edit is not None:
            text = "Mask stroke" if self.value else "Erase stroke"
            self.view.push(EditMask(self.view.document, edit, text, applied=True))
