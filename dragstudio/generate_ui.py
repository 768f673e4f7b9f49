"""The window's Generate workflow: the panel's dock, Ctrl+G, and running ``Engine.generate``.

The generation runs through the drag's :class:`DragController` on the same engine host (so
torch never touches the GUI thread, and one job runs at a time); its progress arrives through
the controller's signals, which the Drag part shows in the Edit panel's progress rows. The
image becomes a new document that keeps the generation, so saving writes its latents and the
first drag on it needs no LoRA and no inversion.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import QFrame, QScrollArea

from backend.document import Document
from backend.events import GENERATE_STAGES
from dragstudio.document_switch import DocumentSwitch
from dragstudio.drag_controller import DragController
from dragstudio.panels.generate import IDLE_NOTE, GeneratePanel
from dragstudio.panels.progress import ProgressPanel, format_seconds
from dragstudio.runner import Outcome
from dragstudio.window_services import WindowFrame, WindowServices


class GenerateUI:
    def __init__(
        self,
        frame: WindowFrame,
        services: WindowServices,
        controller: DragController,
        *,
        document: Document,
        undo_stack: QUndoStack,
        progress: ProgressPanel,
        switch: DocumentSwitch,
        running_changed: Callable[[], None] = lambda: None,
    ) -> None:
        """``controller`` runs the generation (its events reach ``progress``, the Edit
        panel's rows, through the Drag part); ``running_changed``: told when a generation
        starts or ends (the Drag button waits meanwhile)."""
        self.frame = frame
        self.services = services
        self.controller = controller
        self.document = document
        self.undo_stack = undo_stack
        self.progress = progress
        self.switch = switch
        self.running_changed = running_changed
        self.panel = GeneratePanel()
        # Scrolls like the Edit panel, so the form never sets the window's minimum height.
        scroll = QScrollArea()
        scroll.setObjectName("generateScroll")
        scroll.setWidget(self.panel)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Beside History and Results, not the Edit panel: its progress rows stay in view.
        self.dock = frame.docks.add("Generate", "generateDock", scroll, tabbed=True)
        frame.docks.raise_tab_anchor()
        self.task: asyncio.Future[Outcome | None] | None = None
        self.running = False
        self.panel.generateRequested.connect(self.toggle)
        action = frame.actions.add(
            "generate",
            "&Generate Image…",
            self.show_panel,
            shortcuts=["Ctrl+G"],
            tip="Generate a new image from a prompt (it drags without LoRA or inversion)",
        )
        frame.file_menu.insertAction(frame.file_menu.actions()[1], action)
        switch.on_opened(lambda _keep: self.new_document())

    @property
    def host(self) -> Any:
        """The engine host the generation runs on: the controller's (it follows Settings →
        Engine)."""
        return self.controller.host

    def show_panel(self) -> None:
        self.dock.show()
        self.dock.raise_()
        # Just the form's height: the Edit panel above keeps room for the progress rows.
        height = self.panel.sizeHint().height() + 30
        self.frame.window.resizeDocks([self.dock], [height], Qt.Orientation.Vertical)
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
        doc, stack = self.document, self.undo_stack
        if doc.has_image and not stack.isClean() and not self.services.confirm_discard():
            return None
        loop = asyncio.get_event_loop_policy().get_event_loop()
        self._set_running(True)  # at once: the button turns into Cancel before the task runs
        self.task = loop.create_task(self.generate())
        return self.task

    async def generate(self) -> Outcome | None:
        panel, progress, stack = self.panel, self.progress, self.undo_stack
        spec = panel.spec()
        model = self.document.model
        stack_index = stack.index()
        self._set_running(True)
        progress.reset()
        progress.show_stages(GENERATE_STAGES)
        progress.status.setText(f"Generating {spec.width}×{spec.height}…")
        self.services.ensure_run_panel_visible()
        panel.status.setText("Generating… (progress in the Edit panel)")
        try:
            outcome = await self.controller.generate(spec, model)
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
                self.services.show_failure(outcome.failure)
            return outcome
        image, generation = outcome.value
        changed = stack.index() != stack_index  # edited while it ran: ask again
        if changed and not stack.isClean() and not self.services.confirm_discard():
            panel.status.setText("Kept the open image; the generated one was dropped.")
            return outcome
        self._open(image, generation, model)
        took = format_seconds(outcome.seconds)
        panel.status.setText(f"Generated {generation.width}×{generation.height} in {took}.")
        progress.status.setText(f"Generated in {took}.")
        return outcome

    def _open(self, image: Any, generation: Any, model: str) -> None:
        """Make the generated image a new, unsaved document that keeps its latents."""

        def load(doc: Document) -> None:
            doc.set_image(image, None, generation=generation)
            doc.set_prompt(generation.prompt)
            doc.set_model(model)

        # Unsaved: it exists nowhere else yet, so closing asks to save it. The progress rows
        # describe how it was made, so they stay.
        self.switch.replace(
            load,
            unsaved=True,
            keep_progress=True,
            message="Generated a new image: it drags from its own latents, without LoRA or "
            "inversion",
            message_ms=6000,
        )

    def _set_running(self, running: bool) -> None:
        self.running = running
        self.panel.set_running(running)
        self.running_changed()

    def new_document(self) -> None:
        """Another document is open: the last generation's note no longer applies."""
        if not self.running:
            self.panel.status.setText(IDLE_NOTE)

    def shutdown(self) -> None:
        if self.running:
            self.host.cancel()
