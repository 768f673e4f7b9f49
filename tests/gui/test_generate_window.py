"""The Generate panel end to end on the tiny model: a new document that keeps its latents,
saved and re-opened with them; and the panel's size and seed controls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gui_helpers import make_window
from PySide6.QtCore import QSettings

from backend.events import Stage, StageStarted
from backend.project import read_project
from dragstudio.runner import EngineHost, default_engine_factory


@pytest.fixture
def gen_window(qtbot: Any, settings: QSettings, loop: Any, tmp_path: Path) -> Any:
    return make_window(
        qtbot, settings, EngineHost(default_engine_factory("cpu", str(tmp_path / "lora")))
    )


def test_generate_save_reopen_keeps_the_generation(
    gen_window: Any, loop: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    w = gen_window
    ui, panel = w.generate_ui, w.generate_ui.panel
    w.document.set_model(str(tiny_model_dir))
    w.actions["generate"].trigger()
    assert ui.dock.isVisible()
    assert w.actions["generate"].shortcuts()[0].toString() == "Ctrl+G"
    panel.prompt.setPlainText("a red ball")
    panel.negative.setText("blurry")
    panel.set_size(64, 72)
    panel.seed_spin.setValue(11)
    panel.guidance.setValue(4.0)
    panel.steps.setValue(4)
    started: list[Stage] = []
    real = w.generate_ui.progress.stage_started

    def spy(event: StageStarted) -> None:
        started.append(event.stage)
        real(event)

    w.generate_ui.progress.stage_started = spy
    signalled: list[Stage] = []  # one job controller: a drag's signals carry generations too
    w.drag_ui.controller.stageStarted.connect(lambda e: signalled.append(e.stage))
    panel.button.click()
    assert ui.task is not None and panel.button.text() == "Cancel"
    assert not w.actions["drag"].isEnabled()  # a drag would cancel the generation
    outcome = loop.run_until_complete(asyncio.wait_for(ui.task, 120))
    assert outcome is not None and outcome.ok, w.failures
    assert Stage.GENERATE in started and panel.button.text() == "Generate"
    assert Stage.GENERATE in signalled and started == signalled
    assert "done in" in w.drag_ui.progress.note(Stage.GENERATE)
    assert not w.drag_ui.progress.rows[Stage.LORA].bar.isVisibleTo(w)

    doc = w.document
    g = doc.generation
    assert g is not None and doc.image.shape == (72, 64, 3)
    assert (g.prompt, g.negative_prompt, g.seed, g.guidance_scale, g.steps) == (
        "a red ball", "blurry", 11, 4.0, 4)  # fmt: skip
    assert g.trajectory.shape == (5, 4, 9, 8)
    assert doc.prompt == "a red ball" and doc.path is None and doc.history == []
    assert w.isWindowModified()  # a generated image is unsaved work
    assert doc.to_request().generation is g

    path = tmp_path / "gen.dragstudio"
    assert w.file_controller.save_to(path, wait=True)
    assert read_project(path).generation is not None
    w.document.set_image(np.zeros((72, 64, 3), np.uint8))
    assert w.document.generation is None
    assert w.open_path(path)
    again = w.document.generation
    assert again is not None and again.trajectory.tobytes() == g.trajectory.tobytes()
    assert (again.seed, again.steps, again.width, again.height) == (11, 4, 64, 72)
    assert np.array_equal(w.document.image, doc.image) and not w.isWindowModified()

    # Generating over unsaved work asks first, like opening an image.
    w.undo_stack.resetClean()
    w.confirm_discard = lambda: False
    assert ui.start() is None and not ui.running and w.document.generation is again


def test_size_presets_custom_sizes_and_the_dice(qtbot: Any) -> None:
    from dragstudio.panels.generate import CUSTOM, GeneratePanel

    panel = GeneratePanel()
    qtbot.addWidget(panel)
    assert not panel.button.isEnabled()  # no prompt yet
    panel.prompt.setPlainText("x")
    assert panel.button.isEnabled()
    labels = [panel.size_combo.itemText(i) for i in range(panel.size_combo.count())]
    for size in ("512 × 512", "768 × 512", "512 × 768", "512 × 1024"):
        assert size in labels
    panel.size_combo.setCurrentIndex(labels.index("512 × 1024"))
    assert (panel.width_spin.value(), panel.height_spin.value()) == (512, 1024)
    panel.width_spin.setValue(203)  # snapped to a multiple of 8
    assert panel.width_spin.value() == 200 and panel.size_combo.currentText() == CUSTOM
    panel.set_size(768, 512)
    assert panel.size_combo.currentText() == "768 × 512"
    spec = panel.spec()
    assert (spec.width, spec.height, spec.steps) == (768, 512, 50)
    spec.validate(with_trajectory=False)  # the engine fills in the trajectory
    seeds = set()
    for _ in range(5):
        panel.dice.click()
        seeds.add(panel.seed_spin.value())
    assert len(seeds) > 1
