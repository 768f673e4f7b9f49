"""The Edit panel's Speed choice: undoable, sets the preset's knobs, says what it costs, and
reaches the request, projects and history."""

from __future__ import annotations

from backend.methods import GOODDRAG
from backend.project import Project
from backend.request import DragParams, LoraParams
from backend.speed_presets import PAPER_SPEED, PRICES, SPEEDS


def test_speed_choice_sets_the_preset_and_undoes(window) -> None:
    panel, doc, stack = window.parameters, window.document, window.undo_stack
    assert doc.speed == PAPER_SPEED and panel.speed.currentIndex() == 0
    panel.spins["drag_steps"].setValue(40)  # no preset touches it: it survives
    panel.speed.setCurrentIndex(SPEEDS.index("lora-40-fast-lr"))
    assert doc.speed == "lora-40-fast-lr"
    assert (doc.lora.steps, doc.lora.learning_rate) == (40, 1e-3)
    assert panel.spins["lora_steps"].value() == 40 and doc.params.drag_steps == 40
    assert "half the LoRA time" in panel.speed_note.text()
    assert PRICES["lora-40-fast-lr"] in panel.speed_note.text()  # what it costs, in one line
    # Another method keeps the preset on top of its own defaults.
    panel.method.setCurrentIndex(1)
    assert doc.method == GOODDRAG and doc.lora.steps == 40 and doc.params.r1 == 4
    stack.undo()
    panel.speed.setCurrentIndex(SPEEDS.index("ddim-25"))
    assert doc.params.inference_steps == 25 and doc.lora == LoraParams()
    stack.undo()
    assert doc.speed == "lora-40-fast-lr" and panel.speed.currentIndex() == 1
    stack.undo()
    assert doc.speed == PAPER_SPEED and panel.speed.currentIndex() == 0
    assert doc.params == DragParams(drag_steps=40) and doc.lora == LoraParams()
    assert panel.speed_note.text().startswith("The paper's settings")


def test_a_project_brings_its_speed_back(window) -> None:
    import numpy as np

    panel, doc = window.parameters, window.document
    image = np.zeros((64, 64, 3), np.uint8)
    project = Project(image, None, (), "", DragParams(inference_steps=25), LoraParams(), "m",
                      speed="ddim-25")  # fmt: skip
    project.apply(doc)
    assert doc.speed == "ddim-25" and panel.speed.currentIndex() == SPEEDS.index("ddim-25")
    assert Project.from_document(doc).speed == "ddim-25"
    assert doc.to_request().speed == "ddim-25"
