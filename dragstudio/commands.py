"""One QUndoCommand per user edit of the document.

Commands hold just enough to go both ways: points and parameter objects (immutable) and, for
the mask, a :class:`~backend.document.MaskEdit` covering the changed rectangle only. Edits that
already happened live on the canvas (a brush stroke) are pushed with ``applied=True`` so the
first ``redo()`` that QUndoStack.push makes does nothing.
"""

from __future__ import annotations

from PySide6.QtGui import QUndoCommand

from backend.document import Document, HistoryEntry, MaskEdit, Pair, Point
from backend.request import DragParams, LoraParams

_PROMPT_ID = 1
_PARAMS_ID = 2


def _fmt(p: Point) -> str:
    return f"({p[0]:.0f}, {p[1]:.0f})"


class AddHandle(QUndoCommand):
    def __init__(self, doc: Document, point: Point) -> None:
        super().__init__(f"Add handle {_fmt(point)}")
        self._doc, self._point = doc, point
        self._index = -1

    def redo(self) -> None:
        self._index = self._doc.add_pair(Pair(self._point))

    def undo(self) -> None:
        self._doc.remove_pair(self._index)


class SetTarget(QUndoCommand):
    def __init__(self, doc: Document, index: int, point: Point) -> None:
        super().__init__(f"Set target {index + 1} {_fmt(point)}")
        self._doc, self._index, self._point = doc, index, point
        self._old: Pair | None = None

    def redo(self) -> None:
        pair = self._doc.pairs[self._index]
        self._old = self._doc.replace_pair(self._index, pair.moved("target", self._point))

    def undo(self) -> None:
        assert self._old is not None
        self._doc.replace_pair(self._index, self._old)


class MovePoint(QUndoCommand):
    def __init__(self, doc: Document, index: int, role: str, old: Point, new: Point) -> None:
        super().__init__(f"Move {role} {index + 1} to {_fmt(new)}")
        self._doc, self._index, self._role = doc, index, role
        self._old, self._new = old, new

    def redo(self) -> None:
        self._doc.move_point(self._index, self._role, self._new)

    def undo(self) -> None:
        self._doc.move_point(self._index, self._role, self._old)


class DeletePair(QUndoCommand):
    def __init__(self, doc: Document, index: int) -> None:
        super().__init__(f"Delete pair {index + 1}")
        self._doc, self._index = doc, index
        self._pair: Pair | None = None

    def redo(self) -> None:
        self._pair = self._doc.remove_pair(self._index)

    def undo(self) -> None:
        assert self._pair is not None
        self._doc.insert_pair(self._index, self._pair)


class ClearPairs(QUndoCommand):
    def __init__(self, doc: Document) -> None:
        super().__init__("Clear points")
        self._doc = doc
        self._old: tuple[Pair, ...] = ()

    def redo(self) -> None:
        self._old = self._doc.pairs
        self._doc.set_pairs([])

    def undo(self) -> None:
        self._doc.set_pairs(self._old)


class EditMask(QUndoCommand):
    """A stroke, clear or fill: the changed rectangle before and after."""

    def __init__(self, doc: Document, edit: MaskEdit, text: str, *, applied: bool) -> None:
        super().__init__(text)
        self._doc, self.edit = doc, edit
        self._skip_redo = applied

    def redo(self) -> None:
        if self._skip_redo:
            self._skip_redo = False
            return
        self._doc.apply_mask_edit(self.edit)

    def undo(self) -> None:
        self._doc.apply_mask_edit(self.edit, undo=True)


class InvertMask(QUndoCommand):
    """Its own inverse, so it stores nothing."""

    def __init__(self, doc: Document) -> None:
        super().__init__("Invert mask")
        self._doc = doc

    def redo(self) -> None:
        self._doc.invert_mask()

    def undo(self) -> None:
        self._doc.invert_mask()


class SetPrompt(QUndoCommand):
    """Typing merges into one step per burst, so undo does not go a letter at a time."""

    def __init__(self, doc: Document, text: str) -> None:
        super().__init__("Edit prompt")
        self._doc, self._old, self._new = doc, doc.prompt, text

    def id(self) -> int:
        return _PROMPT_ID

    def mergeWith(self, other: QUndoCommand) -> bool:
        if not isinstance(other, SetPrompt):
            return False
        self._new = other._new
        if self._new == self._old:
            self.setObsolete(True)
        return True

    def redo(self) -> None:
        self._doc.set_prompt(self._new)

    def undo(self) -> None:
        self._doc.set_prompt(self._old)


class SetParams(QUndoCommand):
    """A parameter change. Successive changes of the same field (spinning a box) merge."""

    def __init__(
        self,
        doc: Document,
        params: DragParams,
        lora: LoraParams,
        text: str,
        key: str = "",
    ) -> None:
        super().__init__(text)
        self._doc, self.key = doc, key
        self._old = (doc.params, doc.lora)
        self._new = (params, lora)

    def id(self) -> int:
        return _PARAMS_ID if self.key else -1

    def mergeWith(self, other: QUndoCommand) -> bool:
        if not isinstance(other, SetParams) or other.key != self.key:
            return False
        self._new = other._new
        self.setText(other.text())
        if self._new == self._old:
            self.setObsolete(True)
        return True

    def redo(self) -> None:
        self._doc.set_params(*self._new)

    def undo(self) -> None:
        self._doc.set_params(*self._old)


class AcceptResult(QUndoCommand):
    """An edit's result becomes the image; undo brings back the photo and its points."""

    def __init__(self, doc: Document, entry: HistoryEntry) -> None:
        n = len(entry.pairs)
        super().__init__(f"Accept drag ({n} pair{'s' if n != 1 else ''}, {entry.seconds:.1f} s)")
        self._doc, self.entry = doc, entry

    def redo(self) -> None:
        self._doc.accept_result(self.entry)

    def undo(self) -> None:
        self._doc.undo_accept()


class SetMethod(QUndoCommand):
    """Switch the drag method; the knobs both methods share take the new method's defaults."""

    def __init__(self, doc: Document, method: str) -> None:
        from backend.methods import with_method_defaults
        from backend.speed_presets import with_speed

        super().__init__(f"Method = {method}")
        self._doc = doc
        self._old = (doc.method, doc.params, doc.lora)
        # The chosen speed preset stays on top of the new method's defaults.
        params, lora = with_method_defaults(doc.params, doc.lora, method)
        self._new = (method, *with_speed(params, lora, doc.speed, method))

    def _apply(self, method: str, params: DragParams, lora: LoraParams) -> None:
        self._doc.set_params(params, lora)
        self._doc.set_method(method)

    def redo(self) -> None:
        self._apply(*self._new)

    def undo(self) -> None:
        self._apply(*self._old)


class SetSpeed(QUndoCommand):
    """Choose a named fast option: the knobs presets touch take its values (``paper``: the
    method's defaults); the document records its name."""

    def __init__(self, doc: Document, speed: str) -> None:
        from backend.speed_presets import with_speed

        super().__init__(f"Speed = {speed}")
        self._doc = doc
        self._old = (doc.speed, doc.params, doc.lora)
        self._new = (speed, *with_speed(doc.params, doc.lora, speed, doc.method))

    def _apply(self, speed: str, params: DragParams, lora: LoraParams) -> None:
        self._doc.set_params(params, lora)
        self._doc.set_speed(speed)

    def redo(self) -> None:
        self._apply(*self._new)

    def undo(self) -> None:
        self._apply(*self._old)
