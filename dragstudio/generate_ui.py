"""The window's Generate workflow: the panel's dock, Ctrl+G, and running ``Engine.generate``.

The generation runs on the engine thread through the same :class:`EngineHost` as drags (so
torch never touches the GUI thread, and one job runs at a time); its progress shows in the
Edit panel's progress rows. The image becomes a new document that keeps the generation, so
saving writes its latents and the first drag on it needs no LoRA and no inversion.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QScrollArea

from backend.events import GENERATE_STAGES, StageFinished, StageStarted, StepProgress
from dragstudio.panels.generate import IDLE_NOTE, GeneratePanel
from dragstudio.panels.progress import format_seconds
from dragstudio.runner import Outcome

if TYPE_CHECKING:
    from dragstudio.main_window import MainWindow


class GenerateUI:
    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self.host = window.drag_ui.host
        self.progress = window.drag_ui.progress
        self.panel = GeneratePanel()
        # Scrolls like the Edit panel, so the form never sets the window's minimum height.
        scroll = QScrollArea()
        scroll.setObjectName("generateScroll")
        scroll.setWidget(self.panel)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.dock = window._dock("Generate", "generateDock", scroll)
        # Beside History and Results, not the Edit panel: its progress rows stay in view.
        window.tabifyDockWidget(window.history_dock, self.dock)
        window.history_dock.raise_()
        self.task: asyncio.Future[Outcome | None] | None = None
        self.running = False
        self.panel.generateRequested.connect(self.toggle)
        window._action(
            "generate",
            "&Generate Image…",
            self.show_panel,
            shortcuts=["Ctrl+G"],
            tip="Generate a new image from a prompt (it drags without LoRA or inversion)",
        )
        window.file_menu.insertAction(window.file_menu.actions()[1], window.actions["generate"])

    def show_panel(self) -> None:
        self.dock.show()
        self.dock.raise_()
        # Just the form's height: the Edit panel above keeps room for the progress rows.
        height = self.panel.sizeHint().height() + 30
        self.window.resizeDocks([self.dock], [height], Qt.Orientation.Vertical)
        self.panel.prompt.setFocus(Qt.FocusReason.ShortcutFocusReason)

    def toggle(self) -> None:
        if self.running:
            self.host.cancel()
        else:
            self.start()

    def start(self) -> asyncio.Future[Outcome | None] | None:
        """Start generating on the event loop; the task is kept so callers (tests) can await it."""
        if self.running or self.host.busy:
            self.panel.status.setText("Wait for the running job to finish (or cancel it).")
            return None
        w = self.window
        if w.document.has_image and not w.undo_stack.isClean() and not w.confirm_discard():
            return None
        loop = asyncio.get_event_loop_policy().get_event_loop()
        self._set_running(True)  # at once: the button turns into Cancel before the task runs
        self.task = loop.create_task(self.generate())
        return self.task

    async def generate(self) -> Outcome | None:
        w, panel, progress = self.window, self.panel, self.progress
        spec = panel.spec()
        model = w.document.model
        stack_index = w.undo_stack.index()
        self._set_running(True)
        progress.reset()
        progress.show_stages(GENERATE_STAGES)
        progress.status.setText(f"Generating {spec.width}×{spec.height}…")
        w.ensure_run_panel_visible()
        panel.status.setText("Generating… (progress in the Edit panel)")
        try:
            outcome = await self.host.run_generate(spec, model, self._on_event)
        finally:
            self._set_running(False)
        if outcome.failure is not None:
            progress.reset()
            if outcome.failure.cancelled:
                panel.status.setText("Cancelled; nothing changed.")
                progress.status.setText("Generation cancelled.")
            else:
                panel.status.setText(outcome.failure.message)
                progress.status.setText(outcome.failure.message)
                w.show_failure(outcome.failure)
            return outcome
        image, generation = outcome.value
        changed = w.undo_stack.index() != stack_index  # edited while it ran: ask again
        if changed and not w.undo_stack.isClean() and not w.confirm_discard():
            panel.status.setText("Kept the open image; the generated one was dropped.")
            return outcome
        self._open(image, generation, model)
        took = format_seconds(outcome.seconds)
        panel.status.setText(f"Generated {generation.width}×{generation.height} in {took}.")
        progress.status.setText(f"Generated in {took}.")
        return outcome

    def _open(self, image: Any, generation: Any, model: str) -> None:
        """Make the generated image a new, unsaved document that keeps its latents."""
        w = self.window
        w.drag_ui.runner.discard()
        w.document.set_image(image, None, generation=generation)
        w.document.set_prompt(generation.prompt)
        w.document.set_model(model)
        w.undo_stack.clear()
        w.project_ui.reset()
        w.undo_stack.resetClean()  # it exists nowhere else yet: closing asks to save it
        w.document_opened(keep_progress=True)
        w._update_title()
        w.canvas.setFocus()
        w.statusBar().showMessage(
            "Generated a new image: it drags from its own latents, without LoRA or inversion",
            6000,
        )

    def _set_running(self, running: bool) -> None:
        self.running = running
        self.panel.set_running(running)
        self.window.drag_ui._update_enabled()

    def _on_event(self, _job: int, event: object) -> None:
        if isinstance(event, StageStarted):
            self.progress.stage_started(event)
        elif isinstance(event, StepProgress):
            self.progress.step_progress(event)
        elif isinstance(event, StageFinished):
            self.progress.stage_finished(event)

    def new_document(self) -> None:
        """Another document is open: the last generation's note no longer applies."""
        if not self.running:
            self.panel.status.setText(IDLE_NOTE)

    def shutdown(self) -> None:
        if self.running:
            self.host.cancel()
