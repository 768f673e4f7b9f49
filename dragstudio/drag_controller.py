"""The Qt side of running jobs: builds requests from the document, awaits the engine host,
and re-emits its events as signals the panels and the canvas listen to. Edits and generations
both report their progress through these signals (:meth:`DragController.generate`).

It also holds the one pending result (shown over the original until accepted or discarded):
the document itself is never touched by a running job, which is why cancelling leaves it
exactly as it was.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from backend.document import Document, HistoryEntry, Pair
from backend.errors import InvalidRequest
from backend.events import Stage, StageFinished, StageStarted, StepProgress
from backend.request import DragRequest
from backend.result import Trace
from backend.session import history_entry
from dragstudio.quality import Quality, params_for
from dragstudio.runner import EngineHost, Failure, Outcome

ModelResolver = Callable[[str, Failure], Awaitable[str | None]]
"""Asked when the model is missing: returns another model to try, or None to give up."""


@dataclass(frozen=True, eq=False)
class PendingResult:
    """A finished edit waiting for Accept or Discard."""

    image: np.ndarray
    before: np.ndarray
    request: DragRequest
    trace: Trace = field(repr=False)
    seconds: float = 0.0
    quality: Quality = Quality.FINAL
    lora_file: bytes | None = field(default=None, repr=False)
    """The LoRA the edit used, as the engine host handed it over (None: the host gave none)."""
    lora_watched: bool = False
    """The job showed LoRA training steps: it continued a background preparation that was
    still training, so its LoRA, found in memory, was trained while the user waited."""

    @property
    def lora_reused(self) -> bool:
        return self.trace.lora.cached

    @property
    def lora_summary(self) -> str:
        """What the LoRA stage did, in the words the result bar shows."""
        lora = self.trace.lora
        if lora.source == "generated":
            return "no LoRA needed: generated image"
        if lora.source == "none" or not lora.steps:
            return "LoRA skipped: 0 steps"
        if lora.cached and self.lora_watched:
            return "LoRA trained by the background preparation"
        if lora.cached:
            return "LoRA reused"
        return "LoRA trained"

    def history_entry(self, pairs: tuple[Pair, ...]) -> HistoryEntry:
        return history_entry(
            self.request, self.before, self.image, self.trace, seconds=self.seconds, pairs=pairs
        )


class DragController(QObject):
    busyChanged = Signal(bool)
    modelLoading = Signal(str)
    modelLoaded = Signal(str, float)
    stageStarted = Signal(object)
    stepProgress = Signal(object)
    stageFinished = Signal(object)
    resultChanged = Signal(object)
    """The pending result (:class:`PendingResult`), or None once accepted or discarded."""
    failed = Signal(object)
    """A :class:`Failure` worth a dialog (not a cancel)."""
    cancelled = Signal()
    modelUnavailable = Signal(str)
    """The model was missing and no other one was found or chosen: nothing ran."""

    def __init__(
        self,
        document: Document,
        host: EngineHost,
        parent: QObject | None = None,
        *,
        preview_every: int = 0,
    ) -> None:
        super().__init__(parent)
        self.document = document
        self.host = host
        self.preview_every = preview_every
        self.keep_photo_lora = True
        """Drags on accepted results reuse the photo's LoRA (a setting)."""
        self.retrain_next = False
        self.resolve_missing_model: ModelResolver | None = None
        self.quality = Quality.FINAL
        """Preview drags smaller and with fewer DDIM steps (see :mod:`dragstudio.quality`)."""
        self.model_on_disk: Callable[[str], bool] = lambda _spec: True
        """Checked before loading: a model known to be missing goes straight to the resolver,
        without the engine first waiting on an unreachable hub."""
        self.pending: PendingResult | None = None
        self.last_quality = Quality.FINAL
        self.events: list[object] = []
        """Every event of the latest job, in arrival order (for tests and the self-test)."""
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busyChanged.emit(busy)

    def build_request(self, quality: Quality | None = None) -> DragRequest:
        """The document as a request, validated; raises InvalidRequest with the reason."""
        request = self.build_request_unchecked(quality)
        request.validate()
        return request

    def build_request_unchecked(self, quality: Quality | None = None) -> DragRequest:
        """The document as the next Drag would send it (at the chosen quality), not validated:
        background preparation needs it before any point exists."""
        request = self.document.to_request(keep_photo_lora=self.keep_photo_lora)
        run = params_for(request.params, quality or self.quality)
        if run != request.params:
            request = replace(request, params=run)
        if self.preview_every != request.params.preview_every:
            request = replace(
                request, params=replace(request.params, preview_every=self.preview_every)
            )
        return request

    def cancel(self) -> None:
        if self.host.cancel():
            self._set_busy(False)
            self.cancelled.emit()

    def discard(self) -> None:
        if self.pending is not None:
            self.pending = None
            self.resultChanged.emit(None)

    def take_pending(self) -> PendingResult | None:
        """Hand the pending result over (to an Accept command) and clear it."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self.resultChanged.emit(None)
        return pending

    async def drag(self, quality: Quality | None = None) -> Outcome | None:
        """Run the document's edit; returns how it ended (None if it never started).

        ``quality`` overrides the chosen one for this run (Render Final after a Preview)."""
        if self._busy:
            return None
        self.last_quality = quality or self.quality
        try:
            request = self.build_request(self.last_quality)
        except InvalidRequest as exc:
            self.failed.emit(Failure(f"Cannot drag yet: {exc}.", "", ""))
            return None
        self.discard()
        self.events = []
        self._set_busy(True)
        try:
            model = await self._ensure_model(request.model)
            if model is None:
                return None
            if model != request.model:
                request = replace(request, model=model)
            retrain, self.retrain_next = self.retrain_next, False
            before = self.document.image  # the document's own array: Accept checks identity
            assert before is not None
            outcome = await self.host.run_edit(request, self._on_event, retrain_lora=retrain)
            if outcome.failure is not None:
                if retrain:
                    self.retrain_next = True
                self._report(outcome.failure)
                return outcome
            result = outcome.value
            self.pending = PendingResult(
                result.image,
                before,
                request,
                result.trace,
                outcome.seconds,
                self.last_quality,
                lora_file=getattr(result, "lora_file", None),
                lora_watched=any(
                    isinstance(e, StepProgress) and e.stage == Stage.LORA for e in self.events
                ),
            )
            self.resultChanged.emit(self.pending)
            return outcome
        finally:
            if self.host.current_job is None:
                self._set_busy(False)

    async def _ensure_model(self, spec: str) -> str | None:
        """Load ``spec`` in the background, asking what to do while it cannot be found."""
        while True:
            if self.host.loaded_model == spec:
                return spec
            if not self.model_on_disk(spec) and self.resolve_missing_model is not None:
                missing = Failure(
                    f"The model {spec} is not in the local Hugging Face cache.", model_missing=True
                )
                other = await self.resolve_missing_model(spec, missing)
                if other is None:
                    self.modelUnavailable.emit(spec)
                    return None
                if other != spec:
                    spec = other
                    continue  # check the newly chosen one the same way
            self.modelLoading.emit(spec)
            start = time.perf_counter()
            outcome = await self.host.load_model(spec)
            if outcome.failure is None:
                self.modelLoaded.emit(spec, time.perf_counter() - start)
                return spec
            if outcome.failure.model_missing and self.resolve_missing_model is not None:
                other = await self.resolve_missing_model(spec, outcome.failure)
                if other is None:
                    self.modelUnavailable.emit(spec)
                    return None
                spec = other
                continue
            self._report(outcome.failure)
            return None

    async def generate(self, spec: Any, model: str) -> Outcome:
        """Generate an image from ``spec`` (a ``GenerationSpec``); its stages and steps arrive
        through the same signals as a drag's. The caller opens the image and says how it ended
        (a generation is not a pending result: it replaces the document)."""
        self.events = []
        return await self.host.run_generate(spec, model, self._on_event)

    def _report(self, failure: Failure) -> None:
        if failure.cancelled:
            self.cancelled.emit()
        else:
            self.failed.emit(failure)

    def _on_event(self, _job: int, event: object) -> None:
        self.events.append(event)
        if isinstance(event, StageStarted):
            self.stageStarted.emit(event)
        elif isinstance(event, StepProgress):
            self.stepProgress.emit(event)
        elif isinstance(event, StageFinished):
            self.stageFinished.emit(event)
