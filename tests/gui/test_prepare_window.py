"""Background preparation in the real window with the tiny model: after the photo has been open
a moment, Drag skips LoRA and inversion, on this computer or on a server; switching photos
cancels a running preparation."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gui_helpers import click, make_window
from PIL import Image
from PySide6.QtCore import QSettings

from backend.events import Stage, StageStarted, StepProgress
from backend.request import LoraParams
from dragstudio.remote import RemoteEngineHost
from dragstudio.runner import EngineHost, default_engine_factory
from tests.server_helpers import TOKEN, ThreadServer


def window_on(qtbot: Any, tmp_path: Path, host: Any) -> Any:
    """The window on ``host`` with background preparation on (the default), debounce short."""
    ini = tmp_path / "on.ini"
    ini.with_suffix(".json").write_text(json.dumps({"version": 1}))  # the default: on
    settings = QSettings(str(ini), QSettings.Format.IniFormat)
    w = make_window(qtbot, settings, host)
    assert w.drag_ui.preparer.enabled and w.actions["prepare_in_background"].isChecked()
    w.drag_ui.preparer._timer.setInterval(50)  # the debounce, shortened for the test
    return w


@pytest.fixture
def prepared_window(qtbot: Any, tmp_path: Path, loop: Any) -> Any:
    host = EngineHost(default_engine_factory("cpu", str(tmp_path / "lora")))
    w = window_on(qtbot, tmp_path, host)
    yield w
    w.close()
    host.wait_closed()


def run_until(loop: Any, predicate: Any, timeout: float) -> None:
    """Run the asyncio loop (timers, engine events) until ``predicate()`` holds."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    loop.run_until_complete(asyncio.wait_for(poll(), timeout))


def photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:192, 0:192].astype(np.float32)
    img = 128 + 90 * np.sin(x / (11 + seed) + y / 17)[..., None] + rng.normal(0, 4, (192, 192, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def small(w: Any, model: Path | str, lora_steps: int) -> None:
    doc = w.document
    doc.set_params(
        replace(doc.params, working_width=128, inference_steps=6, drag_steps=3),
        LoraParams(steps=lora_steps, batch_size=1, rank=4, resolution=128),
    )
    w.model_picker.choose(str(model))


def test_drag_after_preparation_skips_lora_and_inversion(
    prepared_window: Any, qtbot: Any, loop: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    prepare_then_drag(prepared_window, loop, tmp_path, tiny_model_dir)


def test_on_a_server_the_preparation_runs_there_and_the_drag_skips_lora_and_inversion(
    qtbot: Any, loop: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    with ThreadServer(tiny_model_dir, tmp_path) as server:
        host = RemoteEngineHost(server.url, TOKEN)
        w = window_on(qtbot, tmp_path, host)
        try:
            assert w.drag_ui.preparer.supported  # not connected yet: a preparation finds out
            prepare_then_drag(w, loop, tmp_path, "tiny")  # the name the server offers
            assert w.drag_ui.preparer.supported  # connected: this server lists the feature
            assert server.server.workers[0].done == 2  # the preparation and the Drag
        finally:
            w.close()
            host.wait_closed()


def prepare_then_drag(w: Any, loop: Any, tmp_path: Path, model: Path | str) -> None:
    preparer = w.drag_ui.preparer
    statuses: list[str] = []
    preparer.statusChanged.connect(statuses.append)
    assert w.open_path(photo(tmp_path / "a.png", 1))
    small(w, model, lora_steps=3)
    run_until(loop, lambda: preparer.task is not None, 10)  # the debounce fired
    done = loop.run_until_complete(asyncio.wait_for(preparer.task, 240))
    assert done.ok, done.failure
    assert "Preparing · LoRA 3/3" in statuses and any("inversion" in s for s in statuses)
    assert any(s.startswith("Preparing · reference 1/") for s in statuses)
    assert w.drag_ui.preparing_label.text() == "Ready to drag"
    assert not w.drag_ui.controller.busy  # preparing is not a running job: the window stays free
    # The stage rows showed it too, quietly, and say the LoRA and the inversion are done.
    panel = w.drag_ui.progress
    assert panel.status.text() == "Prepared: Drag starts at the optimisation."
    assert "done in" in panel.note(Stage.LORA) and "done in" in panel.note(Stage.INVERSION)
    assert panel.note(Stage.DRAG) == "" and panel.note(Stage.DENOISE) == ""

    for p in ((60.0, 96.0), (100.0, 96.0)):  # points never restart a preparation
        click(w.canvas, w.canvas.image_to_view(p))
    assert w.drag_ui.preparer.start_now() is None
    w.drag_ui.progress.drag_button.click()
    outcome = loop.run_until_complete(asyncio.wait_for(w.drag_ui.task, 240))
    assert outcome.ok, outcome.failure
    events = w.drag_ui.controller.events
    started = {e.stage: e.detail for e in events if isinstance(e, StageStarted)}
    assert started[Stage.LORA] == "reusing the LoRA in memory"
    assert started[Stage.INVERSION] == "reusing the inverted latent"
    steps = {e.stage for e in events if isinstance(e, StepProgress)}
    assert Stage.LORA not in steps and Stage.INVERSION not in steps
    # The reference rows were recorded by the preparation: only the edited row is denoised.
    denoise = next(e for e in events if isinstance(e, StageStarted) and e.stage == Stage.DENOISE)
    assert denoise.detail == "" and denoise.total == w.document.params.inversion_steps
    assert outcome.value.trace.lora.source == "memory"
    assert w.failures == []


def test_switching_photos_cancels_the_running_preparation(
    prepared_window: Any, qtbot: Any, loop: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    w = prepared_window
    host, preparer = w.drag_ui.host, w.drag_ui.preparer
    statuses: list[str] = []
    preparer.statusChanged.connect(statuses.append)
    assert w.open_path(photo(tmp_path / "a.png", 2))
    small(w, tiny_model_dir, lora_steps=500)  # long enough to be caught in the middle
    run_until(loop, lambda: preparer.task is not None, 10)
    task = preparer.task

    run_until(loop, lambda: any(s.startswith("Preparing · LoRA 1/") for s in statuses), 240)
    first = host.preparing
    assert first is not None
    panel = w.drag_ui.progress
    run_until(loop, lambda: " / 500" in panel.note(Stage.LORA), 30)
    assert panel.status.text() == "Preparing in the background · LoRA fine-tuning"
    assert w.open_path(photo(tmp_path / "b.png", 3))  # another photo: cancelled at once
    assert host.preparing is None
    assert panel.note(Stage.LORA) == ""  # the old photo's progress is gone
    outcome = loop.run_until_complete(asyncio.wait_for(task, 60))
    assert outcome.failure is not None and outcome.failure.cancelled
    # The engine stopped within a step or so, far before the 500 asked for.
    done = [int(s.split()[-1].split("/")[0]) for s in statuses if "LoRA " in s and "/" in s]
    assert max(done) < 20
    # The debounce then prepares the new photo: a different preparation, cancelled on close.
    run_until(loop, lambda: preparer.task is not task, 10)

    run_until(loop, lambda: host.preparing not in (None, first), 60)
    second = preparer.task
    w.close()
    assert host.preparing is None
    outcome = loop.run_until_complete(asyncio.wait_for(second, 120))
    assert outcome.failure is not None and outcome.failure.cancelled


def test_a_model_not_on_this_computer_is_not_prepared(
    prepared_window: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh install's default hub model is not cached: nothing is loaded or fetched, no
    alarming "Not prepared" line; the Drag that needs it asks instead."""
    w = prepared_window
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w.document.set_model("nobody-here/not-a-cached-model")
    assert w.open_path(photo(tmp_path / "a.png", 1))

    assert w.drag_ui.preparer.start_now() is None
    assert w.drag_ui.host.preparing is None
    assert w.drag_ui.preparing_label.text() == ""


def test_a_drag_during_preparation_shows_it_and_after_a_cancel_the_rows_follow_it_again(
    prepared_window: Any, qtbot: Any, loop: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    w = prepared_window
    host, preparer, panel = w.drag_ui.host, w.drag_ui.preparer, w.drag_ui.progress
    assert w.open_path(photo(tmp_path / "a.png", 4))
    small(w, tiny_model_dir, lora_steps=500)
    for p in ((60.0, 96.0), (100.0, 96.0)):
        click(w.canvas, w.canvas.image_to_view(p))
    run_until(loop, lambda: " / 500" in panel.note(Stage.LORA), 240)  # preparing, shown
    first = host.preparing

    w.drag_ui.progress.drag_button.click()  # joins: the rows show the same LoRA
    run_until(loop, lambda: w.drag_ui.controller.busy, 10)
    run_until(loop, lambda: " / 500" in panel.note(Stage.LORA), 60)
    assert panel.status.text() == "LoRA fine-tuning…"
    assert host.preparing == first  # continued, not restarted

    w.drag_ui.cancel()
    run_until(loop, lambda: not w.drag_ui.controller.busy, 30)
    assert host.preparing == first  # cancelling the drag leaves the preparation running
    run_until(loop, lambda: " / 500" in panel.note(Stage.LORA), 60)
    assert panel.status.text() == "Preparing in the background · LoRA fine-tuning"
    preparer.cancel()
    assert panel.note(Stage.LORA) == ""


def test_a_finished_drag_counts_as_prepared_and_its_rows_stay(
    prepared_window: Any, qtbot: Any, loop: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A Drag that ran unprepared filled the caches itself: no preparation repeats it after, and
    nothing replaces the finished Drag's rows while its result waits for Accept or Discard."""
    w = prepared_window
    preparer, panel = w.drag_ui.preparer, w.drag_ui.progress
    preparer.set_enabled(False)  # e.g. on battery: the Drag does all the work
    assert w.open_path(photo(tmp_path / "a.png", 5))
    small(w, tiny_model_dir, lora_steps=2)
    for p in ((60.0, 96.0), (100.0, 96.0)):
        click(w.canvas, w.canvas.image_to_view(p))
    w.drag_ui.progress.drag_button.click()
    outcome = loop.run_until_complete(asyncio.wait_for(w.drag_ui.task, 240))
    assert outcome.ok, outcome.failure
    rows = {stage: panel.note(stage) for stage in (Stage.LORA, Stage.DRAG, Stage.DENOISE)}
    assert all("done in" in text for text in rows.values())

    preparer.set_enabled(True)  # schedules: the debounce fires…
    run_until(loop, lambda: not preparer._timer.isActive(), 10)
    assert preparer.task is None and w.drag_ui.host.preparing is None  # …and finds it done
    assert panel.status.text() == "Done. Compare, then Accept or Discard."
    assert {stage: panel.note(stage) for stage in rows} == rows

    w.document.set_prompt("a different photo")  # new inputs: prepared quietly in the status bar
    run_until(loop, lambda: preparer.task is not None, 10)
    assert loop.run_until_complete(asyncio.wait_for(preparer.task, 240)).ok
    assert panel.status.text() == "Done. Compare, then Accept or Discard."  # the result stays
    assert w.drag_ui.preparing_label.text() == "Ready to drag"
