"""The window's Drag workflow: actions, the progress panel, the result bar and results list,
wired to a :class:`DragController`.

Kept apart from ``main_window.py`` so the editor stays about editing; the window builds one of
these after its own menus and docks and hands over only what it needs (the frame, the document,
its stack, the canvas, the progress slot), never itself as a ``MainWindow``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QUndoStack
from PySide6.QtWidgets import QLabel, QMenu, QVBoxLayout, QWidget

from backend.document import Change, Document, Notice
from backend.events import Stage, StageStarted, StepProgress
from dragstudio.canvas import CanvasView
from dragstudio.commands import AcceptResult
from dragstudio.dialogs import (
    ModelChoice,
    choose_existing_path,
    download_with_dialog,
    failure_box,
)
from dragstudio.document_switch import DocumentSwitch
from dragstudio.drag_controller import DragController, PendingResult
from dragstudio.drag_readiness import drag_blocker, hub_model_cached, looks_like_hub_id
from dragstudio.panels.model_picker import ModelPicker
from dragstudio.panels.progress import ProgressPanel
from dragstudio.panels.results import ResultBar, ResultsHistory
from dragstudio.preparer import Preparer
from dragstudio.quality import Quality
from dragstudio.runner import EngineHost, Failure
from dragstudio.window_services import WindowFrame, WindowServices

RESULT_READY = "Done. Compare, then Accept or Discard."
PREVIEW_EVERY = 20
"""Decode a preview every 20 optimisation steps. Measured on the tiny model at working width 256
(CPU): one preview decode costs about 0.8 of an optimisation step (0.25 s vs 0.31 s), so every
step would add ~80 % and every 5 ~20 %; every 20 adds ~4 %. On SD-1.5 a step is far dearer
than a decode, so the real cost is lower still."""
CHECKPOINT_FILTER = "Checkpoints (*.safetensors);;All files (*)"


class DragUI:
    def __init__(
        self,
        frame: WindowFrame,
        services: WindowServices,
        host: EngineHost,
        *,
        document: Document,
        undo_stack: QUndoStack,
        canvas: CanvasView,
        model_picker: ModelPicker,
        progress_slot: QVBoxLayout,
        switch: DocumentSwitch,
        other_job: Callable[[], str] = lambda: "job",
    ) -> None:
        """``other_job``: what holds the engine when a drag does not ("generation" or "job")."""
        self.frame = frame
        self.services = services
        self.document = document
        self.undo_stack = undo_stack
        self.canvas = canvas
        self.model_picker = model_picker
        self.other_job = other_job
        self.host = host
        self.controller = DragController(document, host, frame.window, preview_every=PREVIEW_EVERY)
        self.controller.resolve_missing_model = self._resolve_missing_model
        self.controller.model_on_disk = model_on_disk
        self.task: asyncio.Future[object] | None = None
        self._step_message = ""
        """The status-bar text of the running optimisation, cleared when the job ends."""
        self._missing_note = ""
        self.preparer = Preparer(
            document,
            host,
            self.controller.build_request_unchecked,
            enabled=frame.prefs.get("prepare_in_background"),
            parent=frame.window,
        )
        self.preparing_label = QLabel("")
        frame.status.addWidget(self.preparing_label)
        self.preparer.statusChanged.connect(self.preparing_label.setText)
        self._preparation_shown = False
        """Whether the stage rows show the background preparation (not a job of the window)."""

        self.progress = ProgressPanel()
        self.result_bar = ResultBar()
        progress_slot.addWidget(self.progress)
        self.progress.add_below_button(self.result_bar)  # Accept stays in view above the bars
        self.results = ResultsHistory(document)
        self.results_dock = frame.docks.add("Results", "resultsDock", self.results, tabbed=True)

        self._build_actions()
        self._connect()
        switch.on_leave(self.controller.discard)
        switch.on_opened(lambda keep: self.new_document(keep_progress=keep))
        stored = frame.prefs.get("drag_quality")
        self.set_quality(Quality.PREVIEW if stored == Quality.PREVIEW.value else Quality.FINAL)
        self.update_enabled()

    # -- actions -----------------------------------------------------------------------------

    def _build_actions(self) -> None:
        a = self.frame.actions.add
        a(
            "drag",
            "&Drag",
            self.toggle,
            shortcuts=["Ctrl+Return", "Ctrl+Enter"],
            tip="Run the edit, or cancel it while it runs",
        )
        a("cancel", "&Cancel Drag", self.cancel, shortcuts=["Esc"], tip="Stop the running edit")
        a("accept", "&Accept Result", self.accept, shortcuts=["Ctrl+Shift+A"])
        a("discard", "D&iscard Result", self.discard, shortcuts=["Ctrl+Shift+D"])
        compare = a(
            "show_before",
            "Show &Before",
            None,
            shortcuts=["O"],
            tip="Toggle between the original and the result",
            checkable=True,
        )
        compare.toggled.connect(self.result_bar.before_button.setChecked)
        a(
            "retrain_lora",
            "&Retrain LoRA",
            self.retrain_lora,
            tip="Fine-tune a fresh LoRA on the next drag instead of reusing the stored one",
        )
        keep: QAction = a(
            "keep_photo_lora",
            "Reuse the &Photo's LoRA on Accepted Results",
            None,
            tip="Dragging an accepted result reuses the LoRA of the photo it came from",
            checkable=True,
        )
        keep.setChecked(self.frame.prefs.get("keep_photo_lora"))
        self.controller.keep_photo_lora = keep.isChecked()
        keep.toggled.connect(self._set_keep_photo_lora)
        background: QAction = a(
            "prepare_in_background",
            "Prepare in the Bac&kground",
            None,
            tip="Train the LoRA and invert the photo while you place points (off: on battery)",
            checkable=True,
        )
        background.setChecked(self.frame.prefs.get("prepare_in_background"))
        background.toggled.connect(self._set_prepare_in_background)

        bar = self.frame.window.menuBar()
        drag_menu = QMenu("&Drag", self.frame.window)
        bar.insertMenu(bar.actions()[-1], drag_menu)  # before Help
        for name in ("drag", "cancel", "-", "accept", "discard", "show_before", "-",
                     "retrain_lora", "keep_photo_lora", "prepare_in_background"):  # fmt: skip
            if name == "-":
                drag_menu.addSeparator()
            else:
                drag_menu.addAction(self.frame.actions[name])

    def _connect(self) -> None:
        r, p, canvas = self.controller, self.progress, self.canvas
        p.drag_button.clicked.connect(self.toggle)
        r.busyChanged.connect(self._busy_changed)
        r.modelLoading.connect(p.model_loading)
        r.modelLoaded.connect(p.model_loaded)
        r.stageStarted.connect(self._stage_started)
        r.stepProgress.connect(self._step)
        r.stageFinished.connect(p.stage_finished)
        r.resultChanged.connect(self._result_changed)
        r.failed.connect(self._failed)
        r.cancelled.connect(self._cancelled)
        r.modelUnavailable.connect(self._model_unavailable)
        # Every job's end (drag, generation, cancel) recomputes whether Drag can run.
        self._unsubscribe_host = self.host.on_busy_changed(self._host_busy_changed)
        self.model_picker.modelChosen.connect(lambda _m: self.update_enabled())
        bar = self.result_bar
        bar.accept_button.clicked.connect(self.accept)
        bar.final_button.clicked.connect(self.render_final)
        p.preview_button.toggled.connect(
            lambda on: self.set_quality(Quality.PREVIEW if on else Quality.FINAL)
        )
        bar.discard_button.clicked.connect(self.discard)
        bar.before_button.toggled.connect(canvas.set_show_before)
        bar.before_button.toggled.connect(self.frame.actions["show_before"].setChecked)
        bar.split.valueChanged.connect(lambda v: canvas.set_split(v / 100.0))
        self._unsubscribe = self.document.subscribe(self._on_document)
        pr = self.preparer
        pr.started.connect(lambda: self._show_preparation("started"))
        pr.eventReceived.connect(lambda event: self._show_preparation("event", event))
        pr.prepared.connect(lambda _key: self._show_preparation("done"))
        pr.interrupted.connect(lambda: self._show_preparation("stopped"))

    # -- commands ----------------------------------------------------------------------------

    def toggle(self) -> None:
        if self.controller.busy:
            self.cancel()
        else:
            self.start()

    def start(self, quality: Quality | None = None) -> asyncio.Future[object] | None:
        """Start a drag on the event loop; the task is kept so callers (tests) can await it."""
        if self.controller.busy or self.blocker():
            return None
        loop = asyncio.get_event_loop_policy().get_event_loop()
        self.services.ensure_run_panel_visible()
        self.task = loop.create_task(self.controller.drag(quality))
        return self.task

    def render_final(self) -> asyncio.Future[object] | None:
        """The Preview result's points again, at Final quality (same LoRA: no retraining)."""
        self.controller.discard()
        return self.start(Quality.FINAL)

    def set_quality(self, quality: Quality) -> None:
        self.controller.quality = quality
        if self.frame.prefs.get("drag_quality") != quality.value:
            self.frame.prefs.update(drag_quality=quality.value)
        buttons = self.progress
        if buttons.preview_button.isChecked() != (quality == Quality.PREVIEW):
            (
                buttons.preview_button if quality == Quality.PREVIEW else buttons.final_button
            ).setChecked(True)

    def cancel(self) -> None:
        self.controller.cancel()

    def accept(self) -> None:
        pending = self.controller.pending
        doc = self.document
        if pending is None or self.controller.busy or doc.image is not pending.before:
            return
        self.controller.take_pending()
        self.undo_stack.push(AcceptResult(doc, pending.history_entry(doc.pairs)))
        self.frame.status.showMessage("Result accepted: place new points to drag on", 5000)

    def discard(self) -> None:
        self.controller.discard()

    def retrain_lora(self) -> None:
        self.controller.retrain_next = True
        self.progress.status.setText("The next drag fine-tunes a fresh LoRA.")

    def _set_keep_photo_lora(self, keep: bool) -> None:
        self.controller.keep_photo_lora = keep
        self.frame.prefs.update(keep_photo_lora=keep)

    @property
    def host(self) -> Any:
        """The engine host (local or remote); swapping it moves the job-end subscription."""
        return self._host

    @host.setter
    def host(self, host: Any) -> None:
        unsubscribe = getattr(self, "_unsubscribe_host", None)
        if unsubscribe is not None:
            unsubscribe()
        self._host = host
        if hasattr(self, "preparer"):
            self.preparer.set_host(host)
        if hasattr(self, "controller"):  # after construction: follow the new host at once
            self.controller.host = host
            self._unsubscribe_host = host.on_busy_changed(self._host_busy_changed)
            self.update_enabled()

    def _host_busy_changed(self, _busy: bool) -> None:
        self.update_enabled()

    def new_document(self, *, keep_progress: bool = False) -> None:
        """Another photo or project is open: nothing of the last one's job stays on screen."""
        if not keep_progress:
            self.progress.clear()
        self.canvas.set_live_handles(None)
        if self._step_message and self.frame.status.currentMessage() == self._step_message:
            self.frame.status.clearMessage()
        self._step_message = ""
        self.update_enabled()

    def _set_prepare_in_background(self, on: bool) -> None:
        self.preparer.set_enabled(on)
        self.frame.prefs.update(prepare_in_background=on)

    def shutdown(self) -> None:
        self.preparer.close()
        self._unsubscribe()
        self._unsubscribe_host()
        self.host.shutdown()

    # -- reactions ---------------------------------------------------------------------------

    def _show_preparation(self, what: str, event: object = None) -> None:
        """The background preparation in the stage rows, quietly: never over a job's rows (a
        Drag that continues the preparation reports its progress itself)."""
        if self.controller.busy or self.controller.pending is not None:
            self._preparation_shown = False  # a job's rows, or a result to compare, stay
            return
        p = self.progress
        task = self.preparer.task
        if what == "started":
            self._preparation_shown = True
            p.preparation_started()
            return
        if not self._preparation_shown:
            if what != "event" or task is None or task.done():
                return
            self._preparation_shown = True  # a Drag that continued it was cancelled: it goes on
        if what == "event":
            p.preparation_event(event)
        elif what == "done":
            p.preparation_done()
        else:
            self._preparation_shown = False
            p.preparation_stopped()

    def _busy_changed(self, busy: bool) -> None:
        if busy:
            self._preparation_shown = False
        self.progress.set_running(busy)
        if busy:
            self.canvas.set_live_handles(None)
            self.services.ensure_run_panel_visible()
        elif self._step_message:
            if self.frame.status.currentMessage() == self._step_message:
                self.frame.status.clearMessage()
            self._step_message = ""
        if not busy:
            self.preparer.schedule()  # e.g. an accepted result or a cancelled drag
        self.update_enabled()

    def _stage_started(self, event: StageStarted) -> None:
        self.progress.stage_started(event)
        if event.stage == Stage.DRAG:
            self.canvas.set_live_handles(None)

    def _step(self, event: StepProgress) -> None:
        self.progress.step_progress(event)
        if event.preview is not None and self.progress.previews_shown == 1:
            self.services.ensure_run_panel_visible()  # the first preview makes the panel taller
        if event.handles is not None:
            self.canvas.set_live_handles(event.handles)
            if event.loss is not None:
                self._step_message = (
                    f"Optimisation step {event.step}/{event.total} · loss {event.loss:.4g}"
                )
                self.frame.status.showMessage(self._step_message)

    def _result_changed(self, pending: PendingResult | None) -> None:
        canvas = self.canvas
        if pending is None:
            canvas.set_result(None)
            canvas.set_live_handles(None)
            self.result_bar.setVisible(False)
            if self.progress.status.text() == RESULT_READY:
                self.progress.status.setText("")  # accepted or discarded: nothing to compare
        else:
            self.preparer.note_edited(pending.request)
            canvas.set_result(pending.image)
            preview = ""
            if pending.quality == Quality.PREVIEW:
                p = pending.request.params
                preview = f"{p.working_width} px, {p.inference_steps} DDIM steps"
            self.result_bar.show_result(
                pending.seconds,
                pending.lora_summary,
                list(pending.trace.final_distances),
                preview,
            )
            self.progress.status.setText(RESULT_READY)
        self.update_enabled()

    def _failed(self, failure: Failure) -> None:
        self.canvas.set_live_handles(None)
        self.progress.status.setText(failure.message)
        self.services.show_failure(failure)

    def _cancelled(self) -> None:
        self.canvas.set_live_handles(None)
        self.progress.reset()
        note = " (the engine stops at its next step)" if self.host.engine_busy else ""
        self.progress.status.setText(f"Cancelled; nothing changed{note}.")

    def _model_unavailable(self, spec: str) -> None:
        self.canvas.set_live_handles(None)
        self.progress.reset()
        why = self._missing_note or "no other model was chosen"
        self.progress.status.setText(f"Did not drag: {spec} is not on this computer and {why}.")

    def _on_document(self, notice: Notice) -> None:
        if notice.change == Change.IMAGE:
            pending = self.controller.pending
            if pending is not None and self.document.image is not pending.before:
                self.controller.discard()
            if self.controller.busy and self.task is not None:
                self.controller.cancel()
        self.update_enabled()

    def blocker(self) -> str:
        """Why Drag cannot run now ("" when it can, or when it runs and so can be cancelled)."""
        other = self.other_job() if not self.controller.busy and self.host.busy else ""
        on_server = not isinstance(self.host, EngineHost)  # its model names are not paths here
        return drag_blocker(
            self.document, drag_running=self.controller.busy, other_job=other, on_server=on_server
        )

    def update_enabled(self) -> None:
        busy, actions = self.controller.busy, self.frame.actions
        has_result = self.controller.pending is not None and not busy
        reason = self.blocker()
        actions["drag"].setEnabled(not reason)
        self.progress.drag_button.setEnabled(not reason)
        self.progress.set_reason(reason)
        if not reason:
            self.progress.drag_button.setToolTip(
                "Stop the edit (Esc)" if busy else "Run the edit (Ctrl+Enter)"
            )
        actions["cancel"].setEnabled(busy)
        for name in ("accept", "discard", "show_before"):
            actions[name].setEnabled(has_result)
        self.result_bar.setVisible(has_result)

    # -- missing model -----------------------------------------------------------------------

    async def _resolve_missing_model(self, spec: str, failure: Failure) -> str | None:
        self._missing_note = ""
        self.progress.status.setText(f"The model {spec} is not on this computer.")
        choice = await self.services.ask_missing_model(spec, failure)
        picker = self.model_picker
        if choice == ModelChoice.DOWNLOAD:
            self.progress.status.setText(f"Downloading {spec}…")
            try:
                await download_with_dialog(self.frame.window, spec)
            except Exception as exc:
                from dragstudio.runner import describe_failure

                found = describe_failure(exc)
                self._missing_note = (
                    "its download was cancelled" if found.cancelled else "its download failed"
                )
                if not found.cancelled:
                    self.services.show_failure(
                        Failure(
                            found.message.rstrip(".") + ".",
                            "DragStudio keeps working: choose a model folder or a "
                            ".safetensors checkpoint already on disk, or try again when online.",
                            found.details,
                        )
                    )
                return None
            return spec
        if choice in (ModelChoice.FOLDER, ModelChoice.FILE):
            folder = choice == ModelChoice.FOLDER
            path = await choose_existing_path(
                self.frame.window,
                "Choose a diffusers model folder" if folder else "Choose a checkpoint",
                folder=folder,
                name_filter="" if folder else CHECKPOINT_FILTER,
            )
            if path:
                picker.choose(path)
                return path
            self._missing_note = "no folder was chosen" if folder else "no checkpoint was chosen"
        return None


def model_on_disk(spec: str) -> bool:
    """A hub id must already be in the local Hugging Face cache; local paths the engine checks."""
    return not looks_like_hub_id(spec) or hub_model_cached(spec)


def show_failure_dialog(window: QWidget, failure: Failure) -> None:
    """Shown without blocking: this is often called from inside a running coroutine."""
    box = failure_box(window, failure)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
