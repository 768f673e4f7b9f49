"""A remote engine host: the :class:`~dragstudio.runner.EngineHost` interface, served by a
DragStudio server instead of this computer's engine thread.

Qt-free, like the local host, so the GUI's drag controller and generate panel run unchanged
against either. Jobs are coroutines on the GUI's event loop (network I/O never blocks it; PNG
coding runs in worker threads). Cancelling resolves the awaiting coroutine at once and tells the
server; a lost connection ends the job with a clear message and the next job reconnects. The
document is never touched by a remote job, exactly as with the local one. Background preparation
runs on the server (feature ``prepare``), which also cancels it for any other job but this
session's Drag of the same inputs; that Drag waits for it there and shows its progress here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from backend.cancel import CancelToken
from backend.errors import Cancelled, InvalidRequest
from backend.events import Event
from backend.preparation import preparation_key
from backend.request import DragRequest
from dragstudio.runner import (
    CANCELLED,
    BusyNotifier,
    Failure,
    Listener,
    Outcome,
    Preparation,
    PreparationSlot,
    describe_failure,
)

StatusListener = Callable[[str, str], None]
"""``(state, text)``: state is "connected", "offline" or "error"."""
Work = Callable[[Any, Callable[[Event], None], Callable[[Any], None]], Awaitable[Any]]


def describe_remote_failure(exc: BaseException) -> Failure:
    """Words for a remote failure: connection problems first, then the engine's own kinds."""
    from backend.server.client import (
        ConnectionLost,
        JobFailed,
        RemoteError,
        ServerRefused,
        raise_for,
    )

    details = "".join(traceback.format_exception(exc))
    if isinstance(exc, ConnectionLost):
        return Failure(
            str(exc),
            "The document is unchanged. Drag again once the server is back: it reconnects "
            "and sends the job again.",
            details,
        )
    if isinstance(exc, ServerRefused):
        return Failure(
            f"The server refused the connection: {exc}.",
            "Check the address and token in Settings → Engine.",
            details,
        )
    if isinstance(exc, RemoteError) and exc.code == "model_not_allowed":
        return Failure(str(exc), "Choose one of the server's models.", details)
    if isinstance(exc, (JobFailed, RemoteError)):
        try:
            raise_for(exc)
        except BaseException as converted:
            exc = converted
    failure = describe_failure(exc)
    if failure.out_of_memory:
        return Failure(
            "The server's GPU ran out of memory.",
            "Try a smaller working width or fewer LoRA steps, or wait for other users' jobs.",
            details,
            out_of_memory=True,
        )
    return failure


class _NotifyingToken(CancelToken):
    """A cancel token that also runs callbacks (on the loop's thread) when it is cancelled: a
    remote preparation tells the server and stops waiting at once."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def on_cancel(self, callback: Callable[[], None]) -> None:
        if self.cancelled:
            callback()
        else:
            self._callbacks.append(callback)

    def cancel(self) -> None:
        if not self.cancelled:
            super().cancel()
            for callback in self._callbacks:
                callback()


class RemoteEngineHost(BusyNotifier, PreparationSlot):
    """Same surface as :class:`~dragstudio.runner.EngineHost`; jobs run on a server."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        lora_cache: Any = None,
        cafile: Any = None,
    ) -> None:
        self.url = url
        self.token = token
        self.cafile = cafile
        self.lora_cache = lora_cache
        """The window's local LoRA cache: LoRAs the server trains are copied there, so saving
        a project bundles them as with the local engine."""
        self.lora_provider: Callable[[], Any] | None = None
        """Returns the open project's bundled LoRA (or None); it is uploaded when it fits."""
        self.memory: str | None = None
        """The memory plan setting sent with the next edit (None: the server's own), as
        :attr:`EngineHost.memory` is handed to the local engine."""
        self.status_listener: StatusListener | None = None
        self.status = ("offline", "not connected yet")
        self.loaded_model: str | None = None
        self.engine_thread: int | None = None
        self._client: Any = None
        self._connecting: asyncio.Lock | None = None
        self._sending_preparation: asyncio.Lock | None = None
        """Held from a preparation's upload until the server has its message (see prepare)."""
        self._ids = itertools.count(1)
        self._current: tuple[int, asyncio.Event, dict[str, Any]] | None = None
        self._preparation: Preparation | None = None
        self._running = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="remote-call")
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- state (as EngineHost) ---------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def engine_busy(self) -> bool:
        """A cancelled job has not heard back from the server yet."""
        return self._running > 0

    @property
    def current_job(self) -> int | None:
        return self._current[0] if self._current else None

    @property
    def models(self) -> list[str]:
        return self._client.models if self._client is not None else []

    @property
    def supports_preparation(self) -> bool:
        """Unknown before the first connection (a preparation then connects and finds out);
        False once connected to a server that does not list the ``prepare`` feature."""
        return self._client is None or "prepare" in self._client.features

    def _set_status(self, state: str, text: str) -> None:
        self.status = (state, text)
        if self.status_listener is not None:
            self.status_listener(state, text)

    def cancel(self) -> bool:
        if self._current is None:
            return False
        _, stopped, remote = self._current
        stopped.set()
        self._cancel_remote(remote)
        return True

    def _cancel_remote(self, remote: dict[str, Any]) -> None:
        job, client = remote.get("job"), self._client
        if job is None or client is None or not client.connected:
            return

        async def send() -> None:
            with contextlib.suppress(Exception):
                await client.cancel(job)

        coro = send()
        try:
            self._spawn(coro)
        except RuntimeError:  # no event loop any more (exit): closing the connection cancels it
            coro.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def shutdown(self) -> None:
        self.cancel_preparation()
        self.cancel()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RuntimeError):
                self._spawn(client.close())
        self._executor.shutdown(wait=False, cancel_futures=True)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Nothing runs here but :meth:`call`'s thread; the server finishes on its own.

        With a ``timeout`` it does not wait for that thread (as :meth:`EngineHost.wait_closed`
        gives up then); True when nothing was left running."""
        self.cancel_preparation()
        self.cancel()
        if timeout is None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            return True
        self._executor.shutdown(wait=False, cancel_futures=True)
        return self._running == 0

    # -- connection --------------------------------------------------------------------------

    async def connect(self) -> Any:
        """The live client, connecting (again) when needed."""
        try:
            from backend.server.client import ServerClient
        except ImportError:
            raise InvalidRequest(
                "connecting to a server needs the websockets package: "
                'pip install "dragstudio[server]"'
            ) from None

        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is not None and self._client.connected:
                return self._client
            client = ServerClient(self.url, self.token, cafile=self.cafile)
            try:
                welcome = await client.connect()
            except Exception as exc:
                self._set_status("error", str(exc))
                raise
            self._client = client
            devices = ", ".join(welcome.get("devices", []))
            self._set_status("connected", f"server {welcome.get('server')} on {devices}")
            return client

    # -- jobs --------------------------------------------------------------------------------

    async def run_edit(
        self, request: DragRequest, listener: Listener | None = None, *, retrain_lora: bool = False
    ) -> Outcome:
        from backend.server.client import remote_edit

        async def work(client: Any, emit: Callable[[Event], None], started: Any) -> Any:
            lora_file = None
            bundled = self.lora_provider() if self.lora_provider is not None else None
            if bundled is not None and not retrain_lora and bundled.mismatch(request) is None:
                lora_file = bundled.data
            result = await remote_edit(client, request, emit, retrain_lora=retrain_lora,
                                       lora_file=lora_file, started=started,
                                       memory=self.memory)  # fmt: skip
            data = await self._keep_lora(client, result.trace)
            return result if data is None else replace(result, lora_file=data)

        # The server lets this Drag wait for its preparation of the same inputs.
        continues = None if retrain_lora else preparation_key(request)
        return await self._submit(work, listener, continues=continues)

    async def prepare(
        self, request: DragRequest, listener: Callable[[Event], None] | None = None
    ) -> Outcome:
        """As :meth:`EngineHost.prepare`, on the server: the LoRA, the inversion and the
        reference recording go into its engine's caches for this session's next Drag.

        One runs at a time (the same key joins it, another supersedes it); it is never the
        current job (:attr:`busy` stays False). The server runs it only while no one else's job
        waits and cancels it for any job but this session's Drag of the same key. A server
        without the feature prepares nothing (value ``{"prepared": False}``)."""
        from backend.server.client import remote_prepare

        async def run(prep: Preparation) -> Outcome:
            async def work(client: Any, emit: Callable[[Event], None], started: Any) -> Any:
                if "prepare" not in client.features:
                    return {"prepared": False, "reason": "this server does not prepare photos"}
                # The server lets a session's newer preparation supersede its older one, in the
                # order their messages arrive; so they are sent in the order they were asked
                # for, one at a time, and one superseded before it was sent is not sent at all
                # (its upload could finish after a newer one's and supersede that one there).
                if self._sending_preparation is None:
                    self._sending_preparation = asyncio.Lock()
                sent = asyncio.Event()

                def on_started(job: Any) -> None:
                    sent.set()
                    started(job)

                async with self._sending_preparation:
                    if prep.token.cancelled:
                        raise Cancelled()
                    job = asyncio.ensure_future(remote_prepare(
                        client, request, emit, started=on_started, memory=self.memory
                    ))  # fmt: skip
                    acknowledged = asyncio.ensure_future(sent.wait())
                    await asyncio.wait({job, acknowledged}, return_when=asyncio.FIRST_COMPLETED)
                    acknowledged.cancel()
                return await job

            stopped = asyncio.Event()
            remote: dict[str, Any] = {}
            assert isinstance(prep.token, _NotifyingToken)
            prep.token.on_cancel(lambda: (stopped.set(), self._cancel_remote(remote)))
            return await self._until_stopped(prep.job_id, work, prep.deliver, stopped, remote)

        return await self._prepare_once(request, listener, _NotifyingToken, run)

    async def _keep_lora(self, client: Any, trace: Any) -> bytes | None:
        """The server's LoRA for ``trace`` (None if it has none or the download failed), also
        kept in the local cache so the next remote edit of the photo can send it back."""
        key = trace.lora.key
        if not isinstance(key, str):
            return None
        cache = self.lora_cache
        if cache is not None:
            held = await asyncio.to_thread(cache.read_bytes, key)
            if held is not None:
                return bytes(held)
        try:
            data = bytes(await client.fetch("lora", key))
        except Exception:  # a project save then simply bundles no LoRA
            return None
        if cache is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cache.put_bytes, key, data)
        return data

    async def run_generate(
        self, generation: Any, model: str, listener: Listener | None = None
    ) -> Outcome:
        from backend.server.client import remote_generate

        async def work(client: Any, emit: Callable[[Event], None], started: Any) -> Any:
            out = await remote_generate(client, generation, model, emit, started=started)
            self.loaded_model = model
            return out

        return await self._submit(work, listener)

    async def load_model(self, spec: str) -> Outcome:
        """Check that the server offers ``spec`` (it loads it with the first job)."""

        async def work(client: Any, _emit: Any, _started: Any) -> float:
            if spec not in client.models:
                offered = ", ".join(client.models) or "none"
                raise _NotOffered(f"The server does not offer the model {spec!r}; it offers: "
                                  f"{offered}.")  # fmt: skip
            self.loaded_model = spec
            return 0.0

        return await self._submit(work, None, uses_server=False)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Outcome:
        """Run ``fn`` on a local worker thread (e.g. writing a file), never on the GUI's."""
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            value = await loop.run_in_executor(self._executor, fn, *args)
        except Exception as exc:
            return Outcome(0, failure=describe_failure(exc), seconds=time.perf_counter() - start)
        return Outcome(0, value, seconds=time.perf_counter() - start)

    async def _submit(
        self,
        work: Work,
        listener: Listener | None,
        *,
        continues: str | None = None,
        uses_server: bool = True,
    ) -> Outcome:
        """Run ``work`` as the current job. ``continues``: the key of the preparation this job
        builds on (the server lets it wait; here it shows its progress); any other job that
        reaches the server cancels the preparation."""
        if self._current is not None:
            self.cancel()  # a new job supersedes the current one, as on the local host
        job_id = next(self._ids)
        stopped = asyncio.Event()
        remote: dict[str, Any] = {}
        was_busy = self._current is not None
        self._current = (job_id, stopped, remote)
        if not was_busy:
            self._notify_busy(True)

        def deliver(event: Event) -> None:
            if listener is not None and self.current_job == job_id and not stopped.is_set():
                listener(job_id, event)

        own = deliver
        if uses_server:
            own = self._continue_or_cancel_preparation(continues, listener, deliver)
        try:
            return await self._until_stopped(job_id, work, own, stopped, remote)
        finally:
            if self.current_job == job_id:
                self._current = None
                self._notify_busy(False)  # a job ended: what depends on busy is recomputed

    async def _until_stopped(
        self,
        job_id: int,
        work: Work,
        deliver: Callable[[Event], None],
        stopped: asyncio.Event,
        remote: dict[str, Any],
    ) -> Outcome:
        """Run ``work`` against the connected client until it ends or ``stopped`` is set (then
        it is cancelled on the server, ``remote["job"]`` once known, and ends here at once)."""

        def started(job: Any) -> None:
            remote["job"] = job.id
            if stopped.is_set():
                self._cancel_remote(remote)

        async def run() -> tuple[Any, Failure | None, float]:
            start = time.perf_counter()
            try:
                client = await self.connect()
                value = await work(client, deliver, started)
                return value, None, time.perf_counter() - start
            except Exception as exc:
                if isinstance(exc, _NotOffered):
                    failure = Failure(str(exc), "Choose one of the server's models.")
                else:
                    failure = describe_remote_failure(exc)
                if not failure.cancelled and "connection" in failure.message.lower():
                    self._set_status("offline", failure.message)
                return None, failure, time.perf_counter() - start
            finally:
                self._running -= 1

        self._running += 1
        task = asyncio.ensure_future(run())
        waiter = asyncio.ensure_future(stopped.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not task.done() or stopped.is_set():
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return Outcome(job_id, failure=CANCELLED)
        value, failure, seconds = task.result()
        return Outcome(job_id, value, failure, seconds)


class _NotOffered(InvalidRequest):
    pass


async def check_connection(url: str, token: str, cafile: Any = None) -> str:
    """Connect, shake hands and hang up; a line for the settings dialog, or an exception."""
    from backend.server.client import ServerClient

    client = ServerClient(url, token, cafile=cafile)
    welcome = await client.connect()
    await client.close()
    models = ", ".join(welcome.get("models", [])) or "none"
    devices = ", ".join(welcome.get("devices", []))
    return (
        f"Connected: DragStudio server {welcome.get('server')}, protocol "
        f"{welcome.get('protocol')}, engines on {devices}; models: {models}."
    )
