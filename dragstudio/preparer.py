"""Prepare the open photo in the background so a Drag starts at optimisation.

When a photo opens, or its prompt, model or LoRA/inversion settings change, a debounce timer
starts; when it fires and the engine is idle, :meth:`EngineHost.prepare` trains the LoRA,
inverts the photo and records the reference rows' attention on the engine thread. Photos only
glanced at never get that far. Switching or closing the photo cancels the preparation (the
engine stops within one step); a Drag of the same inputs waits for it instead of starting over.
The status bar shows it quietly. On a server the preparation runs there (``RemoteEngineHost``),
where the server lists the feature.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QTimer, Signal

from backend.document import Change, Document, Notice
from backend.errors import InvalidRequest
from backend.events import Event, Stage, StageStarted, StepProgress
from backend.preparation import RECORDING_REFERENCE, preparation_key
from backend.request import DragRequest
from dragstudio.drag_readiness import hub_model_cached, looks_like_hub_id
from dragstudio.runner import EngineHost, Outcome, PreparationSlot

if TYPE_CHECKING:
    from dragstudio.remote import RemoteEngineHost

DEBOUNCE_MS = 1500
"""How long the inputs must stay unchanged before preparing (a glance costs nothing)."""
STAGE_NAMES = {Stage.LOAD: "model", Stage.LORA: "LoRA", Stage.INVERSION: "inversion"}
INPUTS = (Change.IMAGE, Change.PROMPT, Change.PARAMS, Change.MODEL, Change.HISTORY)
"""Changes that may change what preparation depends on (points and mask never do)."""


class Preparer(QObject):
    statusChanged = Signal(str)
    """One quiet line, e.g. "Preparing · LoRA 34/80"; empty when there is nothing to say."""
    prepared = Signal(str)
    """The key of a finished preparation."""
    started = Signal()
    """A preparation began (the progress panel clears its rows for it)."""
    eventReceived = Signal(object)
    """Each engine event of the running preparation (stage started, step, stage finished)."""
    interrupted = Signal()
    """A preparation stopped without finishing (cancelled, superseded or failed)."""

    def __init__(
        self,
        document: Document,
        host: EngineHost | RemoteEngineHost,
        build_request: Callable[[], DragRequest],
        *,
        enabled: bool = True,
        delay_ms: int = DEBOUNCE_MS,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.document = document
        self.host = host
        self.build_request = build_request
        """The document as the next Drag would send it (points not needed)."""
        self.enabled = enabled
        self.task: asyncio.Future[Outcome] | None = None
        self.done_key: str | None = None
        self._part = ""
        """What the preparation does now, for the status line."""
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self.start_now)
        self._unsubscribe = document.subscribe(self._on_document)

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            self.schedule()
        else:
            self.cancel()

    def set_host(self, host: EngineHost | RemoteEngineHost) -> None:
        """The engine moved (this computer ↔ a server): stop preparing on the old one."""
        self.cancel()
        self.host = host
        self.done_key = None
        self.schedule()

    @property
    def supported(self) -> bool:
        """Hosts without background preparation (a server without the feature) are left
        alone."""
        return isinstance(self.host, PreparationSlot) and self.host.supports_preparation

    def schedule(self) -> None:
        """(Re)start the debounce; preparation begins when the inputs have settled."""
        if self.enabled and self.supported and self.document.has_image:
            self._timer.start()

    def cancel(self) -> None:
        """Stop the timer and any preparation (the engine stops at its next step)."""
        self._timer.stop()
        if self.supported and self.host.cancel_preparation():
            self.statusChanged.emit("")
            self.interrupted.emit()

    def close(self) -> None:
        self.cancel()
        self._unsubscribe()

    def note_edited(self, request: DragRequest) -> None:
        """A finished edit filled the caches a preparation of its inputs would fill (LoRA,
        inversion, reference): preparing them again would only repeat its "reusing" stages."""
        self.done_key = preparation_key(replace(request, pairs=()))

    def current_key(self) -> tuple[DragRequest, str] | None:
        try:
            request = self.build_request()
            request = replace(request, pairs=())  # points never matter here
            request.validate(require_pairs=False)
        except InvalidRequest:
            return None
        key = preparation_key(request)
        return (request, key) if key is not None else None

    def start_now(self) -> asyncio.Future[Outcome] | None:
        """Prepare the document's current inputs unless that is done or running already."""
        if not self.enabled or not self.supported or self.host.busy:
            return None  # a running job fills the caches itself; we try again when it ends
        current = self.current_key()
        if current is None:
            self.cancel()
            return None
        request, key = current
        if key in (self.done_key, self.host.preparing):
            return None
        local = isinstance(self.host, EngineHost)  # a server's models are the server's business
        if local and looks_like_hub_id(request.model) and not hub_model_cached(request.model):
            # Never downloads: a model not yet on this computer waits for Drag, which asks.
            self.statusChanged.emit("")
            return None
        loop = asyncio.get_event_loop_policy().get_event_loop()
        self.task = loop.create_task(self._run(request, key))
        return self.task

    async def _run(self, request: DragRequest, key: str) -> Outcome:
        self.statusChanged.emit("Preparing…")
        self.started.emit()
        outcome = await self.host.prepare(request, self._on_event)
        if outcome.ok and not self.supported:  # a server that turned out not to prepare
            self.statusChanged.emit("")
            self.interrupted.emit()
        elif outcome.ok:
            self.done_key = key
            self.statusChanged.emit("Ready to drag")
            self.prepared.emit(key)
        elif self.host.preparing is None:  # not superseded by a newer one
            failure = outcome.failure
            note = "" if failure is None or failure.cancelled else f": {failure.message}"
            self.statusChanged.emit(f"Not prepared{note}" if note else "")
            self.interrupted.emit()
        return outcome

    def _on_event(self, event: Event) -> None:
        self.eventReceived.emit(event)
        if isinstance(event, StageStarted) and event.stage in STAGE_NAMES:
            reference = event.detail == RECORDING_REFERENCE  # the inversion stage's second part
            self._part = "reference" if reference else STAGE_NAMES[event.stage]
            self.statusChanged.emit(f"Preparing · {self._part}")
        elif isinstance(event, StepProgress) and event.stage in STAGE_NAMES:
            self.statusChanged.emit(f"Preparing · {self._part} {event.step}/{event.total}")

    def _on_document(self, notice: Notice) -> None:
        if notice.change == Change.IMAGE:
            self.cancel()  # another photo (or none): the running preparation is moot
        if notice.change in INPUTS:
            self.schedule()
