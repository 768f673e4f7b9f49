"""Drag from the real main window with the tiny model: stages, live tracking, result, accept and
undo, LoRA reuse, cancel in every stage, and failures that leave the document alone."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gui_helpers import click, make_window
from PySide6.QtCore import QSettings

from backend.events import Stage, StageStarted, StepProgress
from backend.request import LoraParams
from dragstudio.dialogs import ModelChoice, failure_box
from dragstudio.runner import EngineHost, Failure, default_engine_factory

CASE = Path("/work/shared/data/dragbench-dev/animals/JH_2023-09-14-1820-16")
ORDER = [Stage.LOAD, Stage.LORA, Stage.INVERSION, Stage.DRAG, Stage.DENOISE]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lora-cache")


@pytest.fixture(scope="module")
def case() -> Any:
    if not CASE.is_dir():
        pytest.skip("DragBench dev data not available")
    from backend.bench.dragbench import load_case

    return load_case(CASE)


@pytest.fixture
def drag_window(qtbot: Any, settings: QSettings, loop: Any, lora_dir: Path) -> Any:
    return make_window(qtbot, settings, EngineHost(default_engine_factory("cpu", str(lora_dir))))


def prepare(w: Any, case: Any, model: Path, *, seed: int = 0) -> None:
    """Open the case, click its points on the canvas, paint its mask, choose small settings."""
    assert w.open_path(case.image_path)
    for pair in case.pairs:
        for p in (pair.handle, pair.target):
            click(w.canvas, w.canvas.image_to_view(p))
    assert [(p.handle, p.target) for p in w.document.pairs] == [
        (pytest.approx(p.handle, abs=0.01), pytest.approx(p.target, abs=0.01)) for p in case.pairs
    ]
    w.document.set_mask(case.mask)
    doc = w.document
    doc.set_params(
        replace(doc.params, working_width=128, inference_steps=6, drag_steps=3),
        LoraParams(steps=1, batch_size=1, rank=4, seed=seed, resolution=128),
    )
    w.model_picker.choose(str(model))


def state(w: Any) -> tuple[Any, ...]:
    doc = w.document
    return (
        doc.image.tobytes(),
        doc.mask.tobytes(),
        doc.pairs,
        doc.params,
        len(doc.history),
        w.undo_stack.index(),
        w.undo_stack.count(),
    )


class Recorder:
    """Stage starts, handle positions the canvas showed, and what the Drag button said."""

    def __init__(self, w: Any) -> None:
        self.started: list[StageStarted] = []
        self.live: list[tuple[tuple[float, float], ...]] = []
        self.button_texts: set[str] = set()
        w.drag_ui.controller.stageStarted.connect(self._started)
        w.drag_ui.controller.stepProgress.connect(lambda e: self._step(w, e))
        self.w = w

    def _started(self, e: StageStarted) -> None:
        self.started.append(e)
        self.button_texts.add(self.w.drag_ui.progress.drag_button.text())

    def _step(self, w: Any, e: StepProgress) -> None:
        if e.handles is not None and w.canvas.live_handles is not None:
            self.live.append(w.canvas.live_handles)

    def lora_detail(self) -> str:
        return next(e.detail for e in self.started if e.stage == Stage.LORA)


def press_drag(w: Any, loop: Any) -> Any:
    w.drag_ui.progress.drag_button.click()
    task = w.drag_ui.task
    assert task is not None
    return loop.run_until_complete(asyncio.wait_for(task, 240))


def test_drag_accept_undo_and_reuse_the_lora(
    drag_window: Any, loop: Any, case: Any, tiny_model_dir: Path
) -> None:
    w = drag_window
    prepare(w, case, tiny_model_dir)
    original = w.document.image
    start_handle = case.pairs[0].handle
    rec = Recorder(w)

    outcome = press_drag(w, loop)
    assert outcome.ok, outcome.failure
    assert [e.stage for e in rec.started] == ORDER
    assert rec.button_texts == {"Cancel"}
    assert rec.lora_detail() == "fine-tuning LoRA"
    # The markers followed tracking, one update per optimisation step, leaving a trail.
    assert len(rec.live) == outcome.value.trace.drag_iterations >= 1
    assert any(np.hypot(*np.subtract(h[0], start_handle)) > 0.5 for h in rec.live)
    assert w.drag_ui.progress.drag_button.text() == "Drag"
    assert "done in" in w.drag_ui.progress.note(Stage.DENOISE)

    # The result sits over the original until accepted; the document has not changed.
    pending = w.drag_ui.controller.pending
    assert pending is not None and w.canvas.has_result and w.drag_ui.result_bar.isVisible()
    assert w.document.image is original
    w.drag_ui.result_bar.split.setValue(40)
    assert w.canvas._split == pytest.approx(0.4)
    w.drag_ui.result_bar.accept_button.click()
    assert w.document.image is pending.image and w.document.pairs == ()
    assert len(w.document.history) == 1 and w.drag_ui.results.count() == 2
    assert not w.canvas.has_result and w.drag_ui.controller.pending is None

    w.undo_stack.undo()
    assert w.document.image is original and len(w.document.pairs) == 1
    assert len(w.document.history) == 0 and w.drag_ui.results.count() == 1
    w.undo_stack.redo()
    assert w.document.image is pending.image

    # Drag the accepted result again: the photo's LoRA is reused from memory.
    click(w.canvas, w.canvas.image_to_view((200.0, 200.0)))
    click(w.canvas, w.canvas.image_to_view((230.0, 190.0)))
    assert w.document.to_request().lora_image is not None
    rec.started.clear()
    again = press_drag(w, loop)
    assert again.ok, again.failure
    assert rec.lora_detail() == "reusing the LoRA in memory"
    assert again.value.trace.lora.cached is True
    assert "reusing" in w.drag_ui.progress.note(Stage.LORA)
    assert "LoRA reused" in w.drag_ui.result_bar.summary.text()
    assert w.failures == []

    # The LoRA reaches a project through the engine host (with the result), not by the window
    # reading the shared cache: a save still bundles it after the cache entry has gone.
    fresh = w.drag_ui.controller.pending
    key = again.value.trace.lora.key
    assert fresh is not None and isinstance(fresh.lora_file, bytes) and key
    w.lora_cache.drop(key)
    assert w.lora_cache.read_bytes(key) is None
    bundled = w.file_controller.snapshot()().lora
    assert bundled is not None and bundled.key == key and bundled.data == fresh.lora_file


@pytest.mark.parametrize("stage", [Stage.LORA, Stage.INVERSION, Stage.DRAG, Stage.DENOISE])
def test_cancel_in_each_stage_leaves_the_document_as_it_was(
    qtbot: Any,
    settings: QSettings,
    loop: Any,
    lora_dir: Path,
    case: Any,
    tiny_model_dir: Path,
    stage: Stage,
) -> None:
    make_engine = default_engine_factory("cpu", str(lora_dir))
    after_cancel: list[object] = []  # what the engine emitted once the cancel was set

    def counting_engine() -> Any:
        engine = make_engine()
        edit = engine.edit

        def counted(request: Any, on_event: Any, cancel: Any) -> Any:
            def tee(event: object) -> None:
                if cancel.cancelled:
                    after_cancel.append(event)
                on_event(event)

            return edit(request, tee, cancel)

        engine.edit = counted
        return engine

    host = EngineHost(counting_engine)
    w = make_window(qtbot, settings, host)
    # A new seed trains in the LoRA stage; the others reuse the first test's cached LoRA.
    prepare(w, case, tiny_model_dir, seed=7 if stage == Stage.LORA else 0)
    before = state(w)
    cancelled: list[Stage] = []

    def on_stage(e: StageStarted) -> None:
        if e.stage == stage and not cancelled:
            cancelled.append(e.stage)
            w.drag_ui.progress.drag_button.click()  # it says Cancel now

    w.drag_ui.controller.stageStarted.connect(on_stage)
    outcome = press_drag(w, loop)
    assert cancelled, f"{stage} never started"
    host.wait_closed()  # the engine thread has stopped: its count is final
    # The engine stopped at its next check: at most the step in flight reported, no new stage
    # (counted, not a wall-clock bound a loaded machine could break).
    steps = [e for e in after_cancel if isinstance(e, StepProgress)]
    assert len(steps) <= 1 and not any(isinstance(e, StageStarted) for e in after_cancel)
    assert outcome.failure is not None and outcome.failure.cancelled
    assert state(w) == before
    assert w.drag_ui.controller.pending is None and not w.canvas.has_result
    assert w.canvas.live_handles is None
    assert w.drag_ui.progress.drag_button.text() == "Drag"
    assert "Cancelled" in w.drag_ui.progress.status.text()
    assert w.failures == []


def test_offline_download_fails_clearly_and_the_app_keeps_working(
    drag_window: Any, loop: Any, case: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = drag_window
    prepare(w, case, Path("nobody/no-such-model"))
    order: list[str] = []
    host = w.drag_ui.host
    load = host.load_model

    async def counted_load(spec: str) -> Any:
        order.append(f"load {spec}")
        return await load(spec)

    host.load_model = counted_load

    async def ask(spec: str, failure: Failure) -> ModelChoice:
        order.append(f"ask {spec}")
        return ModelChoice.DOWNLOAD

    w.ask_missing_model = ask
    before = state(w)
    outcome = press_drag(w, loop)
    assert outcome is None  # the edit never started
    # The local cache answers first: the user is asked before any engine load (which would
    # wait on the unreachable hub), and nothing is loaded after the download failed.
    assert order == ["ask nobody/no-such-model"]
    assert len(w.failures) == 1
    failure = w.failures[0]
    assert "could not download nobody/no-such-model" in failure.message
    assert "keeps working" in failure.suggestion
    assert state(w) == before
    assert not w.drag_ui.controller.busy and w.drag_ui.progress.drag_button.text() == "Drag"
    assert w.actions["drag"].isEnabled()
    status = w.drag_ui.progress.status.text()
    assert "download failed" in status and "Cancelled" not in status


def test_an_engine_failure_shows_a_dialog_with_details(
    qtbot: Any, settings: QSettings, loop: Any, case: Any, tiny_model_dir: Path
) -> None:
    class Broken:
        released = 0

        def load_model(self, spec: str) -> float:
            return 0.0

        def edit(self, request: Any, on_event: Any, cancel: Any) -> Any:
            raise type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")

        def forget_lora(self) -> None:
            pass

        def release_memory(self) -> None:
            Broken.released += 1

    w = make_window(qtbot, settings, EngineHost(Broken))
    prepare(w, case, tiny_model_dir)
    before = state(w)
    outcome = press_drag(w, loop)
    assert outcome.failure is not None and outcome.failure.out_of_memory
    assert Broken.released == 1
    assert [f.message for f in w.failures] == ["The GPU ran out of memory."]
    assert state(w) == before and not w.drag_ui.controller.busy

    box = failure_box(w, w.failures[0])
    assert box.text() == "The GPU ran out of memory."
    assert "6gb memory plan" in box.informativeText() and "CPU" in box.informativeText()
    assert "OutOfMemoryError" in box.detailedText()
    box.deleteLater()
