"""Run engine jobs on one engine thread and hand their events to the asyncio (GUI) thread.

Qt-free so it can be tested against a scripted engine. The engine is created lazily *on* the
engine thread, so importing this module (and starting the GUI) never imports torch. Every job
gets an id and a cancel token; events reach the listener on the loop's thread and only while
their job is the current one, so a cancelled or superseded job can never touch the window.
Cancelling resolves the awaiting coroutine at once; the engine stops at its next step check
and the next job simply queues behind it on the one-worker executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from backend.cancel import CancelToken
from backend.errors import Cancelled, DragStudioError, ModelNotFound, VaeNotFound
from backend.events import Event, Stage, StageFinished, StageStarted, StepProgress
from backend.preparation import preparation_key
from backend.request import DragRequest
from backend.result import EditResult


class CancelTokenLike(Protocol):
    def cancel(self) -> None: ...

    @property
    def cancelled(self) -> bool: ...


class EngineLike(Protocol):
    """What the host needs of :class:`backend.engine.Engine` (a fake stands in for tests)."""

    def load_model(self, spec: str, vae: str | None = None) -> float: ...

    def edit(self, request: DragRequest, on_event: Any, cancel: Any) -> Any: ...

    def prepare(self, request: DragRequest, on_event: Any, cancel: Any) -> Any: ...

    def forget_lora(self) -> None: ...

    def release_memory(self) -> None: ...


EngineFactory = Callable[[], EngineLike]
TokenFactory = Callable[[], CancelTokenLike]
Listener = Callable[[int, Event], None]


def default_engine_factory(
    device: str = "auto",
    lora_cache_dir: str | None = None,
    lora_cache: Any = None,
    single_file_config: str | None = None,
    memory: str = "auto",
) -> EngineFactory:
    """Build the real engine with the on-disk LoRA cache (torch is imported here, late).

    ``lora_cache`` shares the window's cache object, so its settings dialog changes the limit
    the engine evicts by (the cache itself is plain file work, safe from either thread)."""

    def make() -> EngineLike:
        from pathlib import Path

        from backend.engine import Engine
        from backend.lora_cache import LoraCache

        cache = lora_cache or LoraCache(Path(lora_cache_dir) if lora_cache_dir else None)
        # Never fetch from the hub by itself (a project file names its model): a missing model
        # fails to load, and the window asks, showing the repo id, before downloading it.
        return Engine(
            device,
            lora_cache=cache,
            single_file_config=single_file_config,
            allow_download=False,
            memory=memory,
        )

    return make


@dataclass(frozen=True)
class Failure:
    """A failed job, ready for a dialog: what happened, what to try, and the traceback."""

    message: str
    suggestion: str = ""
    details: str = ""
    cancelled: bool = False
    out_of_memory: bool = False
    model_missing: bool = False


# The engine's messages name command-line flags; the window has settings and pickers instead.
GUI_WORDS: tuple[tuple[str, str], ...] = (
    ("use --device cpu", "set `device` to cpu in the settings file"),
    ("Pass --model-config with", "Set `model_config` in the settings file to"),
    ("pass --model-config with", "set `model_config` in the settings file to"),
    ("with --model", "in the model picker"),
)


def gui_wording(message: str) -> str:
    """``message`` with command-line flags replaced by what a window user can change."""
    for flag, words in GUI_WORDS:
        message = message.replace(flag, words)
    return message


def describe_failure(exc: BaseException) -> Failure:
    """Turn an exception from the engine thread into words a user can act on."""
    details = "".join(traceback.format_exception(exc))
    if isinstance(exc, Cancelled):
        return Failure("Cancelled.", cancelled=True)
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return Failure(
            "The GPU ran out of memory.",
            "Try the 6gb memory plan (beside the model), a smaller working width, closing "
            "other programs that use the GPU, or running on the CPU.",
            details,
            out_of_memory=True,
        )
    if isinstance(exc, VaeNotFound):
        return Failure(
            gui_wording(str(exc)),
            "Choose another VAE, or clear the VAE field to use the model's own.",
            details,
        )
    if isinstance(exc, ModelNotFound):
        return Failure(
            gui_wording(str(exc)),
            "Download the model, or choose a local model folder or checkpoint file.",
            details,
            model_missing=True,
        )
    if isinstance(exc, DragStudioError):
        return Failure(
            gui_wording(str(exc)), "Check the points, mask and parameters, then try again.", details
        )
    return Failure(
        f"The edit failed unexpectedly ({name}: {exc}).",
        "Try a smaller working width or fewer LoRA steps, or switch to the CPU. If it keeps "
        "happening, please report it with the details below.",
        details,
    )


@dataclass(eq=False)
class Preparation:
    """The one background preparation: its key, its token, and who listens to its events."""

    job_id: int
    key: str
    model: str
    token: CancelTokenLike
    listeners: list[Callable[[Event], None]] = field(default_factory=list)
    last_started: Event | None = None
    last_step: Event | None = None
    done: asyncio.Future[Outcome] | None = None
    model_ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the preparation has loaded its model (a Drag waits for that, not for all of it)."""

    def deliver(self, event: Event) -> None:
        """On the loop's thread: hand an event to the listeners, remembering the last stage and
        step so a job that joins later starts from where the preparation is."""
        if self.token.cancelled:
            return
        if isinstance(event, StageFinished) and event.stage == Stage.LOAD:
            self.model_ready.set()
        if isinstance(event, StageStarted):
            self.last_started, self.last_step = event, None
        elif isinstance(event, StepProgress):
            self.last_step = event
        for each in list(self.listeners):
            each(event)

    def follow(self, deliver: Callable[[Event], None]) -> Callable[[Event], None]:
        """Show this preparation's progress through ``deliver`` of a job that continues it:
        where it is now, then each event. Returns the filter for the job's own events, which
        drops the stages the preparation showed (the job's 0-step "reusing" would repeat them).
        """
        shown: set[Any] = set()

        def own(event: Event) -> None:
            if shown and not self.token.cancelled:
                stage = getattr(event, "stage", None)
                if stage in shown or stage == Stage.LOAD:
                    return
            deliver(event)

        def follow(event: Event) -> None:
            if isinstance(event, StageStarted):
                if not shown and event.stage != Stage.LOAD:
                    # The model was loaded for the preparation: say so first, in order.
                    deliver(StageStarted(Stage.LOAD, 1, "loaded for the preparation"))
                    deliver(StageFinished(Stage.LOAD, 0.0))
                shown.add(event.stage)
            deliver(event)

        for event in (self.last_started, self.last_step):  # catch up, then follow
            if event is not None:
                follow(event)
        self.listeners.append(follow)
        return own


@dataclass
class Outcome:
    """How a job ended: a value, or a failure (cancelled included)."""

    job_id: int
    value: Any = None
    failure: Failure | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


class BusyNotifier:
    """Tells listeners when a host's job starts or ends (shared by the local and remote hosts)."""

    _busy_listeners: list[Callable[[bool], None]]

    def on_busy_changed(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``listener(busy)`` on the loop's thread whenever a job starts or ends.

        The one signal for "a job ended" (finished, failed or cancelled), so whatever depends on
        :attr:`busy` is recomputed then, not guessed while the job still counts as running.
        Returns a function that unsubscribes."""
        if not hasattr(self, "_busy_listeners"):
            self._busy_listeners = []
        self._busy_listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._busy_listeners:
                self._busy_listeners.remove(listener)

        return unsubscribe

    def _notify_busy(self, busy: bool) -> None:
        for listener in list(getattr(self, "_busy_listeners", ())):
            listener(busy)


CANCELLED = Failure("Cancelled.", cancelled=True)


class PreparationSlot:
    """A host's one background preparation (shared by the local and the remote host): the same
    key joins it, another key supersedes it, :meth:`cancel_preparation` stops it. It is never
    the host's current job."""

    _preparation: Preparation | None = None
    _ids: Iterator[int]

    @property
    def supports_preparation(self) -> bool:
        """Whether :meth:`prepare` does anything here (the window leaves a host alone if not)."""
        return True

    @property
    def preparing(self) -> str | None:
        """Key of the background preparation that runs now, if any."""
        prep = self._preparation
        return prep.key if prep is not None and not prep.token.cancelled else None

    def cancel_preparation(self) -> bool:
        """Stop the background preparation at its next step. False if none was running."""
        prep, self._preparation = self._preparation, None
        if prep is None or prep.token.cancelled:
            return False
        prep.token.cancel()
        return True

    def _continue_or_cancel_preparation(
        self,
        continues: str | None,
        listener: Any,
        deliver: Callable[[Event], None],
    ) -> Callable[[Event], None]:
        """Before another job on the engine: the running preparation is cancelled, since it
        would delay the job, unless the job continues it (``continues`` is its key) and so waits
        for it, showing its progress through ``deliver`` when it has a ``listener``. Returns
        the filter for the job's own events."""
        prep = self._preparation
        if prep is not None and (continues is None or continues != prep.key):
            self.cancel_preparation()
        elif prep is not None and listener is not None:
            return prep.follow(deliver)
        return deliver

    async def _prepare_once(
        self,
        request: DragRequest,
        listener: Callable[[Event], None] | None,
        make_token: TokenFactory,
        run: Callable[[Preparation], Awaitable[Outcome]],
    ) -> Outcome:
        """Join a running preparation of ``request``'s key, or supersede it with a new one that
        ``run`` carries out (feeding :meth:`Preparation.deliver`)."""
        key = preparation_key(request)
        if key is None:
            return Outcome(0, {"prepared": False})
        running = self._preparation
        if running is not None and running.key == key and not running.token.cancelled:
            if listener is not None:
                running.listeners.append(listener)
            assert running.done is not None
            return await asyncio.shield(running.done)
        self.cancel_preparation()
        prep = Preparation(next(self._ids), key, request.model, make_token())
        if listener is not None:
            prep.listeners.append(listener)
        prep.done = asyncio.get_running_loop().create_future()
        self._preparation = prep
        outcome = Outcome(prep.job_id, failure=CANCELLED)
        try:
            outcome = await run(prep)
            if prep.token.cancelled and outcome.failure is None:
                outcome = replace(outcome, failure=CANCELLED)
        finally:
            if self._preparation is prep:
                self._preparation = None
            if not prep.done.done():
                prep.done.set_result(outcome)  # joiners hear how it ended, even if cancelled
        return outcome


class EngineHost(BusyNotifier, PreparationSlot):
    """Owns the engine thread, the engine on it, job ids and cancel tokens."""

    def __init__(
        self,
        engine_factory: EngineFactory | None = None,
        token_factory: TokenFactory = CancelToken,
    ) -> None:
        self._factory = engine_factory or default_engine_factory()
        self._token_factory = token_factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._engine: EngineLike | None = None
        self._ids = itertools.count(1)
        self._current: tuple[int, CancelTokenLike, asyncio.Event] | None = None
        self._preparation: Preparation | None = None
        self._pending_engine_work = 0
        self._pending_lock = threading.Lock()
        self._futures: set[Future[Any]] = set()
        self.loaded_model: str | None = None
        self._busy_listeners = []
        self.document_lora: Callable[[], Any] | None = None
        """The open document's bundled LoRA, if any (set by the window's project side)."""
        self.bundled_report: dict[str, Any] = {}
        """What became of the document's LoRA in the last edit (used, or why not)."""
        self._installed_bundle: str | None = None
        """Key of a document's LoRA the engine holds in memory (never in the shared cache)."""
        self.memory: str | None = None
        """The memory plan setting the next edit uses (None: the engine's own)."""
        self.engine_thread: int | None = None
        """Ident of the thread that owns the engine, once it exists (tests check it)."""

    # -- state -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A job is current (the GUI's view; the engine may still be finishing a cancelled one)."""
        return self._current is not None

    def _set_current(self, current: tuple[int, CancelTokenLike, asyncio.Event] | None) -> None:
        was = self._current is not None
        self._current = current
        if was != (current is not None):
            self._notify_busy(current is not None)

    @property
    def engine_busy(self) -> bool:
        """The engine thread still has work, e.g. a cancelled step that has not ended yet."""
        return self._pending_engine_work > 0

    @property
    def current_job(self) -> int | None:
        return self._current[0] if self._current else None

    def cancel(self) -> bool:
        """Cancel the current job; its awaiter returns at once. False if nothing was running."""
        if self._current is None:
            return False
        _, token, stopped = self._current
        token.cancel()
        stopped.set()
        return True

    def shutdown(self) -> None:
        """Cancel what runs and let the engine thread end after it (does not block the GUI)."""
        self.cancel_preparation()
        self.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the engine thread has finished (at most one engine step after a cancel).

        Called at exit while the event loop still exists, so a cancelled job completing its
        future never posts into a closed loop. With a ``timeout`` it gives up after that many
        seconds and returns False: some engine work (loading a model) cannot stop mid-way, and
        the caller then ends the process rather than keep the user waiting.
        """
        self.cancel_preparation()
        self.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        _done, running = futures_wait(list(self._futures), timeout=timeout)
        if running:
            return False
        self._executor.shutdown(wait=True)
        return True

    # -- jobs --------------------------------------------------------------------------------

    def _engine_on_thread(self) -> EngineLike:
        if self._engine is None:
            self.engine_thread = threading.get_ident()
            self._engine = self._factory()
        return self._engine

    async def run_edit(
        self,
        request: DragRequest,
        listener: Listener | None = None,
        *,
        retrain_lora: bool = False,
    ) -> Outcome:
        """Run one edit; its events go to ``listener(job_id, event)`` on this loop's thread."""

        bundled = None if self.document_lora is None or retrain_lora else self.document_lora()

        def work(engine: EngineLike, token: CancelTokenLike, emit: Callable[[Event], None]) -> Any:
            if retrain_lora:
                if request.vae is None:
                    engine.load_model(request.model)
                else:
                    engine.load_model(request.model, request.vae)
                engine.forget_lora()
                cache = getattr(engine, "lora_cache", None)
                key_for = getattr(engine, "lora_key_for", None)
                if cache is not None and key_for is not None:
                    cache.drop(key_for(request))
            self._use_document_lora(engine, bundled, request)
            use_memory = getattr(engine, "use_memory_setting", None)
            if self.memory is not None and use_memory is not None:
                use_memory(self.memory)
            return _with_lora_file(engine, engine.edit(request, emit, token))

        continues = None if retrain_lora else preparation_key(request)
        return await self._submit(work, listener, continues=continues)

    async def prepare(
        self, request: DragRequest, listener: Callable[[Event], None] | None = None
    ) -> Outcome:
        """Train the LoRA and invert ``request``'s photo in the background (``Engine.prepare``).

        At most one runs: one with the same key is joined, not repeated; another key supersedes
        (cancels) it. Jobs that need the engine for something else cancel it too, so it never
        delays them, except a Drag of the same key, which waits for it and shows its progress.
        It is never the host's current job: :attr:`busy` stays False and :meth:`cancel` leaves
        it alone (:meth:`cancel_preparation` stops it).
        """

        async def run(prep: Preparation) -> Outcome:
            loop = asyncio.get_running_loop()

            def on_loop(event: Event) -> None:
                loaded = isinstance(event, StageFinished) and event.stage == Stage.LOAD
                if loaded and not prep.token.cancelled:
                    self.loaded_model = request.model  # a Drag waits for this, not for all
                prep.deliver(event)

            def emit(event: Event) -> None:  # on the engine thread
                if not prep.token.cancelled:
                    loop.call_soon_threadsafe(on_loop, event)

            def work(engine: Any, tok: CancelTokenLike, on_event: Callable[[Event], None]) -> Any:
                value = engine.prepare(request, on_event, tok)
                self.loaded_model = request.model
                return value

            future = self._execute(work, prep.token, emit, need_engine=True)
            try:
                value, failure, seconds = await asyncio.wrap_future(future, loop=loop)
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # this coroutine itself was cancelled
                return Outcome(prep.job_id, failure=CANCELLED)  # dropped unstarted (shutdown)
            return Outcome(prep.job_id, value, failure, seconds)

        return await self._prepare_once(request, listener, self._token_factory, run)

    def _use_document_lora(self, engine: Any, bundled: Any, request: DragRequest) -> None:
        """On the engine thread: a document's LoRA goes into the engine's memory for its own
        document's edits only, after a full check; another document never sees it."""
        held = self._installed_bundle
        current = getattr(engine, "current_lora", None)
        if held is not None and (bundled is None or bundled.key != held):
            if current is not None and current.key == held:
                engine.forget_lora()
            self._installed_bundle = None
        self.bundled_report = {}
        if bundled is None or not hasattr(engine, "install_bundled"):
            return
        if self._installed_bundle == bundled.key and getattr(current, "key", None) == bundled.key:
            return  # still in memory from this document's last edit
        self.bundled_report = engine.install_bundled(bundled, request)
        if self.bundled_report.get("used"):
            self._installed_bundle = bundled.key

    async def run_generate(
        self, generation: Any, model: str, listener: Listener | None = None
    ) -> Outcome:
        """Generate an image on the engine thread; the value is ``(image, generation)``."""

        def work(engine: Any, token: CancelTokenLike, emit: Callable[[Event], None]) -> Any:
            out = engine.generate(generation, model, emit, token)
            self.loaded_model = model
            return out

        return await self._submit(work, listener)

    async def load_model(self, spec: str) -> Outcome:
        """Load ``spec`` on the engine thread (a no-op when it is loaded already)."""

        def work(engine: EngineLike, _token: CancelTokenLike, _emit: Any) -> float:
            seconds = engine.load_model(spec)
            self.loaded_model = spec
            return seconds

        prep = self._preparation
        if prep is not None and prep.model == spec and not prep.token.cancelled:
            # The preparation loads this model itself: wait for that (not for its LoRA and
            # inversion, which a Drag continues and shows), and never cancel it.
            assert prep.done is not None
            ready = asyncio.ensure_future(prep.model_ready.wait())
            await asyncio.wait({ready, prep.done}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if self.loaded_model == spec:
                return Outcome(0, 0.0)
        continues = prep.key if prep is not None and prep.model == spec else None
        return await self._submit(work, None, continues=continues)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Outcome:
        """Run any function on the engine thread (e.g. writing a model): torch stays off the GUI."""
        return await self._submit(lambda _e, _t, _emit: fn(*args), None, need_engine=False)

    async def _submit(
        self,
        work: Callable[[EngineLike, CancelTokenLike, Callable[[Event], None]], Any],
        listener: Listener | None,
        *,
        need_engine: bool = True,
        continues: str | None = None,
    ) -> Outcome:
        """Run ``work`` as the current job. ``continues``: the key of a background preparation
        this job builds on; it then waits for it (and hears its events) instead of cancelling."""
        loop = asyncio.get_running_loop()
        if self._current is not None:
            self.cancel()  # a new job supersedes the current one
        job_id = next(self._ids)
        token = self._token_factory()
        stopped = asyncio.Event()
        self._set_current((job_id, token, stopped))

        def deliver(event: Event) -> None:
            if listener is not None and self.current_job == job_id and not token.cancelled:
                listener(job_id, event)

        own = self._continue_or_cancel_preparation(continues, listener, deliver)

        def emit(event: Event) -> None:  # on the engine thread
            if not token.cancelled:
                loop.call_soon_threadsafe(own, event)

        future = self._execute(work, token, emit, need_engine=need_engine)
        wrapped = asyncio.wrap_future(future, loop=loop)
        waiter = asyncio.ensure_future(stopped.wait())
        try:
            await asyncio.wait({wrapped, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if self.current_job == job_id:
                self._set_current(None)
        if not wrapped.done() or token.cancelled:
            wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
            return Outcome(job_id, failure=CANCELLED)
        value, failure, seconds = wrapped.result()
        return Outcome(job_id, value, failure, seconds)

    def _execute(
        self,
        work: Callable[[EngineLike, CancelTokenLike, Callable[[Event], None]], Any],
        token: CancelTokenLike,
        emit: Callable[[Event], None],
        *,
        need_engine: bool,
    ) -> Future[tuple[Any, Failure | None, float]]:
        """Queue ``work`` on the engine thread; it resolves to ``(value, failure, seconds)``."""

        def run() -> tuple[Any, Failure | None, float]:
            start = time.perf_counter()
            engine: Any = None
            try:
                if token.cancelled:
                    raise Cancelled()
                engine = self._engine_on_thread() if need_engine else None
                value = work(engine, token, emit)
                return value, None, time.perf_counter() - start
            except BaseException as exc:
                failure = describe_failure(exc)
                if engine is not None and not failure.cancelled:
                    with contextlib.suppress(Exception):
                        engine.release_memory()
                return None, failure, time.perf_counter() - start
            finally:
                with self._pending_lock:
                    self._pending_engine_work -= 1

        with self._pending_lock:
            self._pending_engine_work += 1
        future: Future[tuple[Any, Failure | None, float]] = self._executor.submit(run)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future


def _with_lora_file(engine: Any, result: Any) -> Any:
    """``result`` with the LoRA it used attached as a file (on the engine thread, where the
    adapter lives), so a project save never has to read it back from the shared cache."""
    export = getattr(engine, "export_lora", None)
    trace = getattr(result, "trace", None)
    key = getattr(getattr(trace, "lora", None), "key", None)
    if export is None or not isinstance(key, str) or not isinstance(result, EditResult):
        return result
    return replace(result, lora_file=export(key))
