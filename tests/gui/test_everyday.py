"""The editor in everyday use (issue 11): no dead ends after Cancel, a reason whenever Drag
cannot run, the Drag part of the Edit dock always in view, a window that fits the screen, a
clean slate for each new document, messages that say what happened, a prompt and a prompt
exit when quitting during a drag, and the Help menu, history and menus a user expects.

The engine here is scripted (steps that sleep and honour cancel) so each test is quick; the
real tiny-model drags are in ``test_drag_window.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
from gui_helpers import click, make_window
from PySide6.QtCore import QRect, QSettings
from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from backend.errors import Cancelled
from backend.events import Stage, StageFinished, StageStarted, StepProgress
from backend.request import DragParams, DragRequest, LoraParams, PointPair
from backend.result import LoraOutcome, Trace
from dragstudio.drag_controller import PendingResult
from dragstudio.runner import EngineHost


class ScriptedEngine:
    """LoRA, inversion, optimisation and denoising as sleeps that honour the cancel token."""

    steps = 40
    delay = 0.02
    stuck = threading.Event()
    """While set, ``edit`` ignores cancel (like a model load that cannot stop mid-way)."""
    requests: ClassVar[list[Any]] = []

    def load_model(self, spec: str) -> float:
        return 0.0

    def edit(self, request: Any, on_event: Any, cancel: Any) -> Any:
        ScriptedEngine.requests.append(request)
        image = request.image
        for stage, total in ((Stage.LORA, 3), (Stage.INVERSION, 3), (Stage.DRAG, self.steps)):
            on_event(StageStarted(stage, total, "fine-tuning LoRA" if stage == Stage.LORA else ""))
            for step in range(1, total + 1):
                if cancel.cancelled and not self.stuck.is_set():
                    raise Cancelled()
                time.sleep(self.delay)
                handles = tuple(p.handle for p in request.pairs) if stage == Stage.DRAG else None
                loss = 0.5 if stage == Stage.DRAG else None
                on_event(StepProgress(stage, step, total, loss=loss, handles=handles))
            on_event(StageFinished(stage, total * self.delay))
        on_event(StageStarted(Stage.DENOISE, 1))
        on_event(StageFinished(Stage.DENOISE, 0.0))
        return SimpleNamespace(image=255 - image, trace=make_trace("trained", False, 3))

    def forget_lora(self) -> None:
        pass

    def release_memory(self) -> None:
        pass


def make_trace(source: Any, cached: bool, steps: int) -> Trace:
    """A trace as the engine would return it, with the LoRA outcome asked for."""
    return Trace(
        stages={"total": 0.1},
        lora=LoraOutcome(steps, cached, source, None),
        iterations=(),
        drag_iterations=0,
        reached=False,
        final_handles=(),
        handles=(),
        targets=(),
        final_distances=(),
        image_size=(4, 4),
        working_size=(4, 4),
        feature_size=(2, 2),
        optimized_timestep=1,
        device="cpu",
        dtype="float32",
        model="scripted",
        prompt="",
        generated=source == "generated",
        guidance_scale=1.0,
        ddim_steps=50,
        params=DragParams(),
        lora_params=LoraParams(),
    )


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    return folder


@pytest.fixture
def w(qtbot: Any, settings: QSettings, loop: Any, model_dir: Path) -> Any:
    ScriptedEngine.stuck.clear()
    window = make_window(qtbot, settings, EngineHost(ScriptedEngine))
    window.model_picker.choose(str(model_dir))
    window.errors = []
    return window


def place_pair(w: Any, handle: tuple[float, float], target: tuple[float, float]) -> None:
    click(w.canvas, w.canvas.image_to_view(handle))
    click(w.canvas, w.canvas.image_to_view(target))


def run_until(loop: Any, predicate: Any, timeout: float = 10.0) -> None:
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    loop.run_until_complete(asyncio.wait_for(wait(), timeout))


def finish(loop: Any, task: Any) -> Any:
    return loop.run_until_complete(asyncio.wait_for(task, 30))


# -- dead ends ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["button", "escape"])
def test_cancel_then_drag_again(w: Any, loop: Any, sample_image: Path, how: str) -> None:
    assert w.open_path(sample_image)
    place_pair(w, (100.0, 100.0), (140.0, 110.0))
    button = w.drag_ui.progress.drag_button
    button.click()
    task = w.drag_ui.task
    run_until(loop, lambda: bool(w.drag_ui.progress.note(Stage.DRAG)))
    assert button.text() == "Cancel" and button.isEnabled()
    if how == "button":
        button.click()
    else:
        w.actions["cancel"].trigger()  # what Esc does
    outcome = finish(loop, task)
    assert outcome.failure is not None and outcome.failure.cancelled
    run_until(loop, lambda: not w.drag_ui.host.busy)
    # Enabled again once the job has ended, without touching the document.
    assert button.text() == "Drag"
    assert button.isEnabled() and w.actions["drag"].isEnabled()
    assert w.drag_ui.progress.reason.text() == ""
    button.click()
    again = finish(loop, w.drag_ui.task)
    assert again.ok, again.failure
    assert w.drag_ui.controller.pending is not None and w.drag_ui.result_bar.isVisible()


def test_the_reason_drag_cannot_run_is_shown(w: Any, loop: Any, sample_image: Path) -> None:
    ui = w.drag_ui
    reason = ui.progress.reason

    def blocked() -> str:
        assert not ui.progress.drag_button.isEnabled() and not w.actions["drag"].isEnabled()
        assert reason.isVisible() or not w.isVisible()
        assert ui.progress.drag_button.toolTip() == reason.text()
        return reason.text()

    assert "Open a photo" in blocked()
    assert w.open_path(sample_image)
    assert "Click a handle point" in blocked()
    click(w.canvas, w.canvas.image_to_view((50.0, 60.0)))
    assert "finish the pair" in blocked()
    click(w.canvas, w.canvas.image_to_view((80.0, 60.0)))
    assert reason.text() == "" and not reason.isVisible()
    assert ui.progress.drag_button.isEnabled()

    w.model_picker.choose("/nonexistent/folder/sd15")
    assert "not on disk" in blocked()
    w.model_picker.choose(str(Path(__file__).parent))  # a folder, but not a model
    assert "not a diffusers model folder" in blocked()
    w.model_picker.choose("someone/some-model")  # a hub id: may be downloaded on Drag
    assert reason.text() == ""

    # Another job (a generation) holds the engine: Drag waits, and says so.
    w.generate_ui.running = True
    gate = threading.Event()
    job = loop.create_task(ui.host.call(gate.wait, 5))
    try:
        run_until(loop, lambda: ui.host.busy)
        assert "generation" in blocked()
    finally:
        w.generate_ui.running = False
        gate.set()
        finish(loop, job)
    run_until(loop, lambda: not ui.host.busy)
    assert reason.text() == "" and ui.progress.drag_button.isEnabled()

    # One pair over the limit: said before Drag is pressed; deleting one enables Drag again.
    from backend.document import Pair
    from backend.limits import MAX_DRAG_PAIRS

    while len(w.document.complete_pairs) < MAX_DRAG_PAIRS:
        n = len(w.document.pairs)
        w.document.add_pair(Pair((float(n % 90), 10.0), (float(n % 90), 90.0)))
    assert reason.text() == ""
    click(w.canvas, w.canvas.image_to_view((20.0, 30.0)))  # the last one by hand
    click(w.canvas, w.canvas.image_to_view((30.0, 30.0)))
    assert f"{MAX_DRAG_PAIRS} at most" in blocked()
    w.document.remove_pair(0)
    assert reason.text() == "" and ui.progress.drag_button.isEnabled()


def mean_color(widget: QWidget) -> np.ndarray:
    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
    data = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes())
    rows = data.reshape(image.height(), image.bytesPerLine() // 4, 4)[:, : image.width(), :3]
    return rows.reshape(-1, 3).astype(float).mean(axis=0)


def test_disabled_controls_look_disabled(qtbot: Any, w: Any, sample_image: Path) -> None:
    from dragstudio.resources import apply_theme

    app = QApplication.instance()
    apply_theme(app)
    try:
        button = w.drag_ui.progress.drag_button
        assert w.open_path(sample_image)
        assert not button.isEnabled()
        disabled = mean_color(button)
        place_pair(w, (100.0, 100.0), (140.0, 110.0))
        assert button.isEnabled()
        enabled = mean_color(button)
        assert np.abs(enabled - disabled).sum() > 60, (enabled, disabled)
        # Every kind of control has a disabled look in the stylesheet, not just the palette.
        sheet = app.styleSheet()
        for kind in ("QPushButton", "QLineEdit", "QSpinBox", "QComboBox", "QToolButton", "QLabel"):
            assert f"{kind}:disabled" in sheet
    finally:
        app.setStyleSheet("")


# -- everything in view ------------------------------------------------------------------------


def fully_visible(widget: QWidget) -> bool:
    """Drawn whole: not clipped by a scroll area, a dock edge or the window."""
    return widget.isVisible() and widget.visibleRegion().boundingRect() == widget.rect()


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080)])
@pytest.mark.parametrize("advanced", [False, True])
def test_drag_cancel_progress_and_preview_stay_in_view(
    w: Any, loop: Any, sample_image: Path, size: tuple[int, int], advanced: bool
) -> None:
    w.fit_to_screen(default=True, area=QRect(0, 0, *size))
    QApplication.processEvents()
    assert w.width() <= size[0] and w.height() <= size[1]
    assert w.open_path(sample_image)
    w.parameters.advanced.set_expanded(advanced)
    place_pair(w, (100.0, 100.0), (140.0, 110.0))
    progress = w.drag_ui.progress
    progress.drag_button.click()
    run_until(loop, lambda: bool(progress.note(Stage.DRAG)))
    progress.show_preview(np.zeros((64, 96, 3), np.uint8))
    QApplication.processEvents()
    QApplication.processEvents()
    try:
        assert progress.drag_button.text() == "Cancel"
        for widget in (progress.drag_button, progress.status, progress.preview):
            assert fully_visible(widget), widget.objectName()
        for stage in (Stage.LORA, Stage.INVERSION, Stage.DRAG, Stage.DENOISE):
            assert fully_visible(progress.rows[stage].bar), stage
        assert progress.rows[Stage.DRAG].bar.format() == progress.note(Stage.DRAG) != ""
    finally:
        progress.drag_button.click()
        finish(loop, w.drag_ui.task)


def test_progress_bars_are_readable_and_busy_before_the_first_step(w: Any) -> None:
    progress = w.drag_ui.progress
    for row in progress.rows.values():
        assert row.bar.height() >= 10 or row.bar.minimumHeight() >= 10
    progress.set_running(True)
    assert progress.rows[Stage.LOAD].bar.maximum() == 0  # busy while the model loads
    progress.stage_started(StageStarted(Stage.LORA, 80, "fine-tuning LoRA"))
    bar = progress.rows[Stage.LORA].bar
    assert (bar.minimum(), bar.maximum()) == (0, 0)  # moving, not an empty bar
    progress.step_progress(StepProgress(Stage.LORA, 1, 80, loss=0.2))
    assert (bar.maximum(), bar.value()) == (80, 1)


def test_a_finished_stage_caption_keeps_its_time_when_the_detail_does_not_fit(w: Any) -> None:
    progress = w.drag_ui.progress
    progress.set_running(True)
    bar = progress.rows[Stage.INVERSION].bar
    bar.setFixedWidth(200)
    detail = "recording the reference rows for denoising"
    progress.stage_started(StageStarted(Stage.INVERSION, 0, detail))
    progress.stage_finished(StageFinished(Stage.INVERSION, 3.0))
    assert bar.format() == "done in 3.0 s"  # not both ends cut off
    assert bar.toolTip() == progress.note(Stage.INVERSION) == f"{detail} · done in 3.0 s"
    bar.setFixedWidth(600)  # the panel widened: all of it fits now
    assert bar.format() == f"{detail} · done in 3.0 s"
    bar.setFixedWidth(200)
    assert bar.format() == "done in 3.0 s"
    bar.setFixedWidth(600)
    progress.stage_started(StageStarted(Stage.INVERSION, 0, "reusing"))
    progress.stage_finished(StageFinished(Stage.INVERSION, 0.0))
    assert bar.format() == "reusing · done in 0.0 s"  # it fits: all of it


def test_time_left_counts_only_steps_this_row_saw(w: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Drag that continues a background preparation joins its LoRA at, say, step 5 of 80:
    the time left comes from the steps seen since, not from 5 steps in no time."""
    import dragstudio.panels.progress as progress_module

    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    progress = w.drag_ui.progress
    progress.set_running(True)
    progress.stage_started(StageStarted(Stage.LORA, 80))  # the catch-up: already under way
    progress.step_progress(StepProgress(Stage.LORA, 5, 80))
    assert progress.note(Stage.LORA) == "5 / 80"  # no guess from one sighting
    clock[0] += 2.0
    progress.step_progress(StepProgress(Stage.LORA, 6, 80))
    assert progress.note(Stage.LORA) == "6 / 80 · 2 min 28 s left"  # 2 s a step × 74
    # A stage seen from its start still estimates from its first step.
    progress.stage_started(StageStarted(Stage.INVERSION, 35))
    clock[0] += 0.5
    progress.step_progress(StepProgress(Stage.INVERSION, 1, 35))
    assert progress.note(Stage.INVERSION) == "1 / 35 · 17 s left"


def test_first_window_fits_the_screen(qtbot: Any, settings: QSettings) -> None:
    from dragstudio.main_window import MainWindow

    w = MainWindow(settings)
    qtbot.addWidget(w)
    for area in (QRect(0, 0, 1280, 720), QRect(0, 0, 640, 360), QRect(100, 50, 1920, 1080)):
        w.fit_to_screen(default=True, area=area)  # 640×360: 1280×720 at QT_SCALE_FACTOR=2
        assert area.contains(w.frameGeometry()), (area, w.frameGeometry())
        hint = w.minimumSizeHint()
        assert hint.width() <= area.width() and hint.height() <= area.height()
    # A size restored from a larger screen is cut down to this one.
    w.resize(1800, 1000)
    w.fit_to_screen(area=QRect(0, 0, 1280, 720))
    assert w.width() <= 1280 and w.height() <= 720


# -- a clean slate -----------------------------------------------------------------------------


def test_a_new_document_starts_clean(w: Any, loop: Any, sample_image: Path, tmp_path: Path) -> None:
    from PIL import Image

    other = tmp_path / "other.png"
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(other)
    assert w.open_path(sample_image)
    w.document.set_prompt("a corgi")  # e.g. left by a generation
    place_pair(w, (100.0, 100.0), (140.0, 110.0))
    w.drag_ui.progress.drag_button.click()
    outcome = finish(loop, w.drag_ui.task)
    assert outcome.ok
    progress = w.drag_ui.progress
    assert "Done" in progress.status.text() and "done in" in progress.note(Stage.DRAG)
    w.statusBar().showMessage(w.drag_ui._step_message or "Optimisation step 40/40")

    assert w.open_path(other)
    assert w.document.prompt == "" and w.parameters.prompt.text() == ""
    assert progress.status.text() == ""
    assert all(progress.note(s) == "" for s in progress.rows)
    assert not progress.preview.isVisible() and not w.drag_ui.result_bar.isVisible()
    assert "Optimisation" not in w.statusBar().currentMessage()
    assert "Click a handle point" in progress.reason.text()
    place_pair(w, (10.0, 10.0), (30.0, 20.0))
    assert progress.reason.text() == ""  # the hint follows the document


def test_status_bar_step_text_ends_with_the_job(w: Any, loop: Any, sample_image: Path) -> None:
    assert w.open_path(sample_image)
    place_pair(w, (100.0, 100.0), (140.0, 110.0))
    w.drag_ui.progress.drag_button.click()
    run_until(loop, lambda: "Optimisation step" in w.statusBar().currentMessage())
    w.drag_ui.progress.drag_button.click()  # cancel
    finish(loop, w.drag_ui.task)
    assert "Optimisation step" not in w.statusBar().currentMessage()


def pending(source: str, cached: bool, steps: int) -> PendingResult:
    image = np.zeros((4, 4, 3), np.uint8)
    return PendingResult(image, image, None, make_trace(source, cached, steps))  # type: ignore[arg-type]


def test_result_messages_say_what_the_lora_stage_did(w: Any) -> None:
    assert pending("generated", False, 0).lora_summary == "no LoRA needed: generated image"
    assert pending("none", False, 0).lora_summary == "LoRA skipped: 0 steps"
    assert pending("memory", True, 80).lora_summary == "LoRA reused"
    watched = replace(pending("memory", True, 80), lora_watched=True)  # joined a preparation
    assert watched.lora_summary == "LoRA trained by the background preparation"
    assert pending("trained", False, 80).lora_summary == "LoRA trained"
    bar = w.drag_ui.result_bar
    bar.show_result(3.0, pending("generated", False, 0).lora_summary, [])
    assert "trained" not in bar.summary.text() and "generated image" in bar.summary.text()


def test_preview_then_render_final(w: Any, loop: Any, sample_image: Path, settings: Any) -> None:
    from dragstudio.quality import PREVIEW_DDIM_STEPS, PREVIEW_WORKING_WIDTH

    assert w.open_path(sample_image)
    place_pair(w, (100.0, 100.0), (140.0, 110.0))
    progress, bar = w.drag_ui.progress, w.drag_ui.result_bar
    progress.preview_button.click()
    assert w.prefs.get("drag_quality") == "preview"
    ScriptedEngine.requests.clear()
    progress.drag_button.click()
    assert finish(loop, w.drag_ui.task).ok
    preview = ScriptedEngine.requests[-1].params
    assert (preview.working_width, preview.inference_steps) == (
        PREVIEW_WORKING_WIDTH,
        PREVIEW_DDIM_STEPS,
    )
    assert preview.inversion_strength == w.document.params.inversion_strength
    assert ScriptedEngine.requests[-1].lora == w.document.lora  # same LoRA key: reused
    assert bar.final_button.isVisible() and "Preview (256 px, 20 DDIM steps)" in bar.summary.text()

    bar.final_button.click()  # the same points at the document's own settings
    assert finish(loop, w.drag_ui.task).ok
    final = ScriptedEngine.requests[-1]
    assert replace(final.params, preview_every=0) == w.document.params
    assert final.pairs == ScriptedEngine.requests[0].pairs
    assert not bar.final_button.isVisible() and bar.summary.text().startswith("Result ready")
    assert progress.preview_button.isChecked()  # the mode stays Preview for the next points
    assert progress.status.text() == "Done. Compare, then Accept or Discard."
    bar.discard_button.click()  # nothing is left to compare: the line says so no more
    assert not bar.isVisible() and progress.status.text() == ""


# -- quitting ----------------------------------------------------------------------------------


def test_quitting_during_a_drag_asks_then_cancels(w: Any, loop: Any, sample_image: Path) -> None:
    assert w.open_path(sample_image)
    place_pair(w, (100.0, 100.0), (140.0, 110.0))
    w.drag_ui.progress.drag_button.click()
    task = w.drag_ui.task
    run_until(loop, lambda: bool(w.drag_ui.progress.note(Stage.DRAG)))
    asked: list[str] = []
    w.ask_quit_during_job = lambda what: asked.append(what) or False
    assert not w.close()  # "no": the window stays and the drag goes on
    assert asked == ["drag"] and w.isVisible() and w.drag_ui.controller.busy
    w.ask_quit_during_job = lambda what: asked.append(what) or True
    start = time.perf_counter()
    assert w.close()
    outcome = finish(loop, task)
    assert outcome.failure is not None and outcome.failure.cancelled
    assert w.drag_ui.host.wait_closed(3.0)
    assert time.perf_counter() - start < 5.0  # was 24–58 s: a stuck exit, not a slow one
    assert asked == ["drag", "drag"]


def test_exit_does_not_wait_for_an_engine_that_cannot_stop(loop: Any) -> None:
    host = EngineHost(ScriptedEngine)
    ScriptedEngine.stuck.set()
    request = DragRequest(np.zeros((16, 16, 3), np.uint8), (PointPair((2.0, 2.0), (9.0, 9.0)),))
    try:
        task = loop.create_task(host.run_edit(request))  # type: ignore[arg-type]
        run_until(loop, lambda: host.engine_busy)
        start = time.perf_counter()
        assert not host.wait_closed(0.2)  # gives up: the app then ends the process
        assert time.perf_counter() - start < 5.0  # bounded by the 0.2 s asked for
    finally:
        ScriptedEngine.stuck.clear()
    finish(loop, task)
    assert host.wait_closed(5.0)


# -- dialogs from coroutines -------------------------------------------------------------------


def test_dialogs_in_coroutines_do_not_nest_event_loops(w: Any, loop: Any) -> None:
    from dragstudio.dialogs import ModelChoice, ask_missing_model
    from dragstudio.runner import Failure

    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    async def answer() -> None:
        await asyncio.sleep(0.2)
        box = next(b for b in w.findChildren(QMessageBox) if b.isVisible())
        folder = next(b for b in box.buttons() if b.text() == "Choose Folder…")
        folder.click()

    async def scenario() -> Any:
        tick = asyncio.ensure_future(ticker())
        clicker = asyncio.ensure_future(answer())
        try:
            return await ask_missing_model(w, "owner/model", Failure("missing"))
        finally:
            tick.cancel()
            await clicker

    choice = loop.run_until_complete(asyncio.wait_for(scenario(), 10))
    assert choice == ModelChoice.FOLDER
    assert len(ticks) >= 3  # other tasks kept running while the dialog was open


# -- menus, help, history ----------------------------------------------------------------------


def test_no_duplicate_menu_accelerators(w: Any) -> None:
    def mnemonic(text: str) -> str | None:
        i = text.replace("&&", "").find("&")
        return text.replace("&&", "")[i + 1].lower() if i >= 0 else None

    bar_keys = [mnemonic(a.text()) for a in w.menuBar().actions()]
    assert None not in bar_keys and len(set(bar_keys)) == len(bar_keys), bar_keys
    for top in w.menuBar().actions():
        menus = [top.menu()]
        while menus:
            menu = menus.pop()
            if hasattr(menu, "aboutToShow"):
                menu.aboutToShow.emit()  # fill menus built on demand (Open Recent)
            keys = [mnemonic(a.text()) for a in menu.actions() if a.text() and a.isVisible()]
            keys = [k for k in keys if k is not None]
            assert len(set(keys)) == len(keys), (menu.title(), keys)
            menus += [a.menu() for a in menu.actions() if a.menu() is not None]


def test_help_menu_has_shortcuts_docs_and_about(w: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtGui import QDesktopServices

    names = [a.objectName() for a in w.help_menu.actions() if not a.isSeparator()]
    assert names == ["shortcuts", "docs", "about"]
    dialog = w.help_ui.show_shortcuts()
    sheet = dialog.text.toPlainText()
    for text in ("Ctrl+Return", "Drag", "Undo", "Mask Brush", "Keyboard Shortcuts", "Wheel"):
        assert text in sheet, text
    dialog.close()
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    assert w.help_ui.open_docs()
    assert Path(opened[0].toLocalFile()).name == "README.md"
    assert Path(opened[0].toLocalFile()).is_file()


def test_history_greys_undone_steps(w: Any, sample_image: Path) -> None:
    assert w.open_path(sample_image)
    place_pair(w, (100.0, 100.0), (140.0, 110.0))
    w.fill_mask()
    view = w.history_view
    normal = view.row_text_color(w.undo_stack.count())
    assert view.undone_rows() == []
    w.undo_stack.undo()
    assert view.undone_rows() == [w.undo_stack.count()]
    grey = view.row_text_color(w.undo_stack.count())
    assert grey == QColor("#6b717c") and grey != normal
    assert view.row_text_color(0) != grey  # the current and earlier steps stay plain


def test_discard_prompts_offer_save(
    qtbot: Any, settings: QSettings, loop: Any, sample_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dragstudio.main_window import MainWindow

    w = MainWindow(settings, EngineHost(ScriptedEngine))
    qtbot.addWidget(w)
    asked: list[Any] = []

    def question(parent: Any, title: str, text: str, buttons: Any, default: Any) -> Any:
        asked.append((title, buttons))
        return QMessageBox.StandardButton.Save

    monkeypatch.setattr(QMessageBox, "question", question)
    saved: list[bool] = []
    monkeypatch.setattr(w.file_controller, "save", lambda **kw: saved.append(kw["wait"]) or True)
    assert w.open_path(sample_image)
    w.fill_mask()
    assert w.confirm_discard()
    _title, buttons = asked[-1]
    assert (
        buttons & QMessageBox.StandardButton.Save and buttons & QMessageBox.StandardButton.Discard
    )
    assert saved == [True]


def test_open_recent_lists_images(w: Any, sample_image: Path) -> None:
    assert w.open_path(sample_image)
    menu = w.file_controller.recent_menu
    menu.aboutToShow.emit()
    texts = [a.text() for a in menu.actions()]
    assert any(sample_image.name in t for t in texts), texts
    recent = next(a for a in menu.actions() if sample_image.name in a.text())
    assert recent.toolTip() == str(sample_image.resolve())


def test_run_panel_is_shown_again_when_a_drag_starts(w: Any, loop: Any, sample_image: Path) -> None:
    assert w.open_path(sample_image)
    place_pair(w, (100.0, 100.0), (140.0, 110.0))
    w.edit_dock.close()
    assert not w.edit_dock.isVisible()
    w.actions["drag"].trigger()
    assert w.edit_dock.isVisible()
    w.drag_ui.cancel()
    finish(loop, w.drag_ui.task)


@pytest.fixture(autouse=True)
def _no_modal_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray modal box would hang a headless run: fail instead."""

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a modal message box was opened")

    monkeypatch.setattr(QMessageBox, "exec", refuse)
    monkeypatch.setattr(QMessageBox, "warning", refuse)


def test_speed_and_lora_settings_are_in_the_window(w: Any) -> None:
    """Working width, DDIM steps and the LoRA's learning rate, batch size and rank, with the
    declared ranges; a typed width lands on its multiple of 8; one click resets them."""
    from backend.params import all_specs
    from backend.request import DragParams, LoraParams

    spins = w.parameters.spins
    specs = all_specs()
    for key in ("working_width", "ddim_steps", "lora_lr", "lora_batch_size", "lora_rank"):
        spin, spec = spins[key], specs[key]
        assert (spin.minimum(), spin.maximum()) == (spec.min, spec.max), key
        assert spin.value() == spec.default, key
    spins["working_width"].setValue(500)
    assert w.document.params.working_width == 504 and spins["working_width"].value() == 504
    spins["ddim_steps"].setValue(20)
    spins["lora_rank"].setValue(4)
    spins["lora_lr"].setValue(0.001)
    assert (w.document.params.inference_steps, w.document.lora.rank) == (20, 4)
    assert w.document.lora.learning_rate == pytest.approx(0.001)
    w.undo_stack.undo()
    assert w.document.lora.learning_rate == pytest.approx(5e-4)
    w.parameters.reset_button.click()
    assert (w.document.params, w.document.lora) == (DragParams(), LoraParams())
    assert spins["working_width"].value() == 512
