"""The Edit panel's Method choice: undoable, switches the shared knobs, reaches the request."""

from __future__ import annotations

from backend.methods import GOODDRAG, PAPER, SUMMARIES
from backend.request import DragParams, LoraParams


def test_method_choice_switches_defaults_and_undoes(window) -> None:
    panel, doc, stack = window.parameters, window.document, window.undo_stack
    assert doc.method == PAPER and panel.method.currentIndex() == 0
    assert panel.method_note.text() == SUMMARIES[PAPER]
    panel.spins["drag_steps"].setValue(40)  # not a shared knob: survives the switch
    panel.method.setCurrentIndex(1)
    assert doc.method == GOODDRAG and panel.method_note.text() == SUMMARIES[GOODDRAG]
    assert "210" in panel.method_note.text() and "80" in SUMMARIES[PAPER]
    assert (doc.params.r1, doc.params.r2, doc.lora.steps) == (4, 12, 70)
    assert panel.spins["r1"].value() == 4 and panel.spins["lora_steps"].value() == 70
    assert doc.params.drag_steps == 40
    panel.reset_to_defaults()  # the chosen method's defaults
    assert doc.params.r1 == 4 and doc.params.drag_steps == 80
    stack.undo()
    stack.undo()
    assert doc.method == PAPER and panel.method.currentIndex() == 0
    assert doc.params == DragParams(drag_steps=40) and doc.lora == LoraParams()
    assert panel.spins["r1"].value() == 1
    stack.redo()
    assert doc.method == GOODDRAG and panel.method.currentIndex() == 1
