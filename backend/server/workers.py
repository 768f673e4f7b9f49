"""Engine workers: one engine per device, each on its own thread, each draining its own queue.

The engine is created on its thread (torch is imported there, late). A job reports through
callbacks the server schedules onto its event loop; the worker never touches a socket. A
preparation is background work: it runs only when nothing else waits, and any job that arrives
while it runs cancels it, except its own session's edit of the same inputs, which waits for it
and then starts at the optimisation.
"""

from __future__ import annotations

import itertools
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backend.cancel import CancelToken
from backend.errors import Cancelled, DragStudioError, InvalidRequest, ModelNotFound
from backend.events import Event
from backend.generation import Generation
from backend.request import DragRequest
from backend.server.queue import FairQueue

log = logging.getLogger("dragstudio.server")
_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    """One client's edit, generation or preparation, from submission to its last message."""

    owner: Any
    """The session that submitted it; the only one that may see or cancel it."""
    kind: str  # "edit", "generate" or "prepare"
    model: str
    """The allow-listed name the client asked for."""
    spec: str
    """What that name loads on this server (never sent back)."""
    request: DragRequest | None = None
    generation: Generation | None = None
    retrain_lora: bool = False
    lora_file: bytes | None = None
    """A project's bundled LoRA, adopted into the cache when it fits the request."""
    memory: str = "auto"
    """The memory plan setting the client chose (``auto`` when it sent none)."""
    key: str | None = None
    """The preparation key (:func:`backend.preparation.preparation_key`, of the client's
    request) of a preparation, or of an edit that may continue one; None otherwise."""
    id: int = field(default_factory=lambda: next(_ids))
    token: CancelToken = field(default_factory=CancelToken)
    state: str = "queued"  # queued, running, done, failed, cancelled
    on_event: Callable[[Job, Event], None] = lambda _j, _e: None
    on_end: Callable[[Job, dict[str, Any] | None, dict[str, Any] | None], None] = (
        lambda _j, _r, _f: None
    )
    """``on_end(job, outcome, failure)``, called on the engine thread exactly once."""

    def continues(self, preparation: Job) -> bool:
        """Whether this job waits for the running ``preparation`` rather than cancel it: its
        own session's edit of the same inputs, which then reuses what it filled."""
        return (
            self.kind == "edit"
            and self.owner is preparation.owner
            and self.key is not None
            and self.key == preparation.key
        )


def classify(exc: BaseException) -> dict[str, str]:
    """A failure as the protocol's ``{kind, message}`` (the traceback stays in the server log)."""
    if isinstance(exc, Cancelled):
        return {"kind": "cancelled", "message": "Cancelled."}
    text = str(exc)
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return {"kind": "out_of_memory", "message": "The server's GPU ran out of memory."}
    if isinstance(exc, ModelNotFound):
        return {"kind": "model_missing", "message": text}
    if isinstance(exc, InvalidRequest):
        return {"kind": "invalid", "message": text}
    if isinstance(exc, DragStudioError):
        return {"kind": "error", "message": text}
    return {"kind": "error", "message": f"The job failed on the server ({type(exc).__name__})."}


class EngineWorker:
    """An engine on ``device`` and the thread that runs its queue's jobs one at a time."""

    def __init__(self, device: str, cache_dir: Path, cache_limit_bytes: int) -> None:
        self.device = device
        self.cache_dir = cache_dir
        self.cache_limit_bytes = cache_limit_bytes
        self.queue: FairQueue[Job] = FairQueue()
        self.current: Job | None = None
        self.engine: Any = None
        self.done = 0
        self._lock = threading.Lock()
        """Orders taking a job against submitting one, so a preparation that starts just as
        an edit arrives is still cancelled for it."""
        self._thread = threading.Thread(target=self._loop, name=f"engine-{device}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``: a preparation behind every other job, others fairly. A preparation
        that runs now is cancelled unless ``job`` continues it (it never delays a user)."""
        with self._lock:
            self.queue.put(job, background=job.kind == "prepare")
            self._preempt()

    def _preempt(self) -> None:
        """Cancel the running preparation if a job that does not continue it waits (holding
        the lock)."""
        current = self.current
        if current is None or current.kind != "prepare":
            return
        if any(not job.continues(current) for job in self.queue.waiting()):
            current.token.cancel()

    def stop(self, timeout: float = 30.0) -> list[Job]:
        """Cancel the running job, stop taking more; return the jobs that never ran."""
        left = self.queue.close()
        current = self.current
        if current is not None:
            current.token.cancel()
        self._thread.join(timeout)
        return left

    def _make_engine(self) -> Any:
        from backend.engine import Engine
        from backend.lora_cache import LoraCache

        cache = LoraCache(self.cache_dir, limit_bytes=self.cache_limit_bytes)
        return Engine(self.device, lora_cache=cache)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            with self._lock:
                self.current = job
                self._preempt()
            try:
                self._run(job)
            finally:
                self.current = None
                self.done += 1

    def _run(self, job: Job) -> None:
        outcome: dict[str, Any] | None = None
        failure: dict[str, str] | None = None
        try:
            job.token.check()
            job.state = "running"
            if self.engine is None:
                self.engine = self._make_engine()
            run = {"edit": self._edit, "generate": self._generate, "prepare": self._prepare}
            outcome = run[job.kind](job)
        except BaseException as exc:
            failure = classify(exc)
            if failure["kind"] != "cancelled":
                log.warning("job %d failed:\n%s", job.id, "".join(traceback.format_exception(exc)))
                if self.engine is not None:
                    try:
                        self.engine.release_memory()
                    except Exception:
                        log.exception("releasing memory failed")
        job.state = "done" if failure is None else (
            "cancelled" if failure["kind"] == "cancelled" else "failed"
        )  # fmt: skip
        job.on_end(job, outcome, failure)

    def _emit(self, job: Job) -> Callable[[Event], None]:
        def emit(event: Event) -> None:
            if not job.token.cancelled:
                job.on_event(job, event)

        return emit

    def _edit(self, job: Job) -> dict[str, Any]:
        from backend.imagefile import png_bytes

        engine = self.engine
        assert job.request is not None
        request = replace(job.request, model=job.spec)
        # Each job runs with its own client's plan: the engine is shared by several sessions.
        engine.use_memory_setting(job.memory)
        if job.retrain_lora or job.lora_file is not None:
            engine.load_model(request.model, request.vae)
            key = engine.lora_key_for(request)
            if job.retrain_lora:
                engine.forget_lora()
                engine.lora_cache.drop(key)
            elif engine.lora_cache.read_bytes(key) is None:
                self._adopt_lora(engine, key, request, job.lora_file)
        result = engine.edit(request, self._emit(job), job.token)
        trace = result.trace.to_dict()
        trace["model"] = job.model  # the name the client knows, not this server's path
        return {"image": png_bytes(result.image), "trace": trace}

    @staticmethod
    def _adopt_lora(engine: Any, key: str, request: DragRequest, data: bytes | None) -> None:
        """File a project's LoRA under this server's key when it was trained for this request
        (same image, prompt and parameters; the key differs only by the model's location)."""
        from backend.lora import cache_lora, lora_from_bytes

        assert data is not None
        state, params, _ = lora_from_bytes(data)
        if params == request.lora:
            cache_lora(engine.lora_cache, key, state, params)

    def _prepare(self, job: Job) -> dict[str, Any]:
        """Load, train or reuse the LoRA, invert and record: the caches the edit of the same key
        fills (``Engine.prepare``). The outcome says what was done; it carries no image."""
        assert job.request is not None
        self.engine.use_memory_setting(job.memory)
        request = replace(job.request, model=job.spec)
        done = self.engine.prepare(request, self._emit(job), job.token)
        lora = done.get("lora")
        return {
            "prepared": bool(done.get("prepared")),
            "lora": getattr(lora, "source", "none"),
            "reference": bool(done.get("reference", False)),
        }

    def _generate(self, job: Job) -> dict[str, Any]:
        from backend.imagefile import png_bytes
        from backend.project import latents_bytes

        assert job.generation is not None
        image, generation = self.engine.generate(
            job.generation, job.spec, self._emit(job), job.token
        )
        return {"image": png_bytes(image), "latents": latents_bytes(generation.trajectory)}
