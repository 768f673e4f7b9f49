"""The one sequence that replaces the open document: a photo, a project or a generated image.

Each way of opening used to repeat the steps (drop the pending result, load, clear the undo
stack, forget the last file's project state, refresh every part) in its own order, and each
missed one of them somewhere. Here they run in one order; the window parts subscribe to the
steps that concern them instead of being called one by one from three places.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import QStatusBar, QWidget

from backend.document import Document

Loader = Callable[[Document], None]
"""Puts the new content into the (one, long-lived) document: ``set_image``, ``apply``…"""


class DocumentSwitch:
    def __init__(
        self, document: Document, undo_stack: QUndoStack, status: QStatusBar, focus: QWidget
    ) -> None:
        self.document = document
        self.undo_stack = undo_stack
        self.status = status
        self.focus = focus
        """Gets the keyboard focus once the new document is open (the canvas)."""
        self._leaving: list[Callable[[], None]] = []
        self._forgetting: list[Callable[[], None]] = []
        self._opened: list[Callable[[bool], None]] = []

    def on_leave(self, hook: Callable[[], None]) -> None:
        """Run before loading: work that belongs to the last document goes (a pending result)."""
        self._leaving.append(hook)

    def on_forget(self, hook: Callable[[], None]) -> None:
        """Run after loading: state tied to the last file (its project path, its LoRA) goes."""
        self._forgetting.append(hook)

    def on_opened(self, hook: Callable[[bool], None]) -> None:
        """Run last, with ``keep_progress``: views show the new document and nothing of the old."""
        self._opened.append(hook)

    def replace(
        self,
        load: Loader,
        *,
        unsaved: bool = False,
        keep_progress: bool = False,
        message: str = "",
        message_ms: int = 4000,
    ) -> None:
        """Replace the document with what ``load`` puts in it.

        ``unsaved``: the new document exists in no file yet (closing asks to save it).
        ``keep_progress``: the progress rows describe the new document (the generation that
        made it), so they stay."""
        for hook in self._leaving:
            hook()
        load(self.document)
        self.undo_stack.clear()
        if unsaved:
            self.undo_stack.resetClean()
        for hook in self._forgetting:
            hook()
        self.opened(keep_progress=keep_progress)
        if message:
            self.status.showMessage(message, message_ms)
        self.focus.setFocus()

    def opened(self, *, keep_progress: bool = False) -> None:
        """The last step alone: every part shows the document that is now open."""
        self.status.clearMessage()
        for hook in self._opened:
            hook(keep_progress)
