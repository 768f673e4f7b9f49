"""Replacing the document is one sequence (DocumentSwitch) that every way of opening uses.

(That the window parts never import the main window is checked by ``lint-imports``.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import QStatusBar

from backend.document import Document
from dragstudio.commands import ClearPairs
from dragstudio.document_switch import DocumentSwitch


class Focus:
    """Stands in for the canvas: counts the times it is given the keyboard focus."""

    def __init__(self) -> None:
        self.given = 0

    def setFocus(self) -> None:
        self.given += 1


def make_switch(qtbot) -> tuple[DocumentSwitch, list[str], QStatusBar, Focus]:
    document, stack, status, focus = Document(), QUndoStack(), QStatusBar(), Focus()
    qtbot.addWidget(status)
    switch = DocumentSwitch(document, stack, status, focus)  # type: ignore[arg-type]
    steps: list[str] = []
    switch.on_leave(lambda: steps.append(f"leave:{document.has_image}"))
    switch.on_forget(lambda: steps.append(f"forget:{stack.count()}"))
    switch.on_opened(lambda keep: steps.append(f"opened:{keep}:{status.currentMessage()!r}"))
    return switch, steps, status, focus


def test_replace_runs_every_step_in_one_order(qtbot) -> None:
    switch, steps, status, focus = make_switch(qtbot)
    doc = switch.document
    doc.set_image(np.zeros((8, 8, 3), np.uint8))
    switch.undo_stack.push(ClearPairs(doc))  # some history of the old document
    status.showMessage("stale")

    image = np.full((4, 6, 3), 7, np.uint8)
    switch.replace(lambda d: d.set_image(image, "new.png"), message="Opened new.png")

    # The old document's work goes before loading; the stack is empty before the last file's
    # state is forgotten; the views refresh with the stale message already cleared.
    assert steps == ["leave:True", "forget:0", "opened:False:''"]
    assert doc.image is image and doc.size == (6, 4)
    assert switch.undo_stack.count() == 0 and switch.undo_stack.isClean()
    assert status.currentMessage() == "Opened new.png"
    assert focus.given == 1


def test_a_generated_image_is_unsaved_and_keeps_its_progress(qtbot) -> None:
    switch, steps, status, _focus = make_switch(qtbot)
    switch.replace(
        lambda d: d.set_image(np.zeros((4, 4, 3), np.uint8), None),
        unsaved=True,
        keep_progress=True,
    )
    assert steps == ["leave:False", "forget:0", "opened:True:''"]
    assert not switch.undo_stack.isClean()  # closing asks to save it
    assert status.currentMessage() == ""


def test_opened_alone_refreshes_without_touching_the_document(qtbot) -> None:
    switch, steps, status, focus = make_switch(qtbot)
    status.showMessage("old")
    switch.opened()
    assert steps == ["opened:False:''"] and not switch.document.has_image
    assert focus.given == 0


def test_the_window_opens_documents_through_its_switch(window, sample_image: Path) -> None:
    replaced: list[bool] = []
    window.switch.on_opened(replaced.append)
    assert window.open_path(sample_image)
    assert replaced == [False]
    assert window.statusBar().currentMessage() == f"Opened {sample_image.name}"
