"""The client side of the protocol: an asyncio connection, and a blocking engine for the CLI.

:class:`ServerClient` speaks the protocol on the caller's event loop (the GUI's qasync loop or a
private one). :func:`remote_edit` and :func:`remote_generate` upload what a job needs (each blob
once per connection, by content hash), submit it, relay its typed events, and fetch the result
by hash; :func:`remote_prepare` prepares a photo in the background (feature ``prepare``).
:class:`RemoteEngine` wraps them behind the local engine's blocking ``edit`` and ``generate`` for
``dragstudio-cli --server``. torch is never imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend import __version__
from backend.errors import Cancelled, DragStudioError, InvalidRequest, ModelNotFound
from backend.events import Event
from backend.generation import Generation
from backend.request import DragRequest
from backend.result import EditResult
from backend.server.codec import (
    decode_png,
    event_from_json,
    generation_to_json,
    request_to_json,
    sha256,
    trace_from_json,
    upload_parts,
)
from backend.server.protocol import (
    INVALID,
    MODEL_NOT_ALLOWED,
    PROTOCOL_VERSION,
    Limits,
    ProtocolError,
    pack,
    require_bool,
    require_int,
    require_memory_plan,
    require_obj,
    require_sha,
    require_str,
    unpack,
)

EventSink = Callable[[Event], None]
LOST = (
    "Lost the connection to the server ({why}). Nothing was changed here; check that the "
    "server is running and reachable, then try again."
)


class ConnectionLost(DragStudioError):
    """The connection dropped (or never opened); whatever was running there is gone."""


class ServerRefused(DragStudioError):
    """The server answered but would not talk: a wrong token, another protocol version."""


class RemoteError(DragStudioError):
    """The server rejected one message; ``code`` says why (see docs/server.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class JobFailed(DragStudioError):
    """A job ended without a result; ``kind`` is cancelled, invalid, out_of_memory, …"""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def raise_for(exc: JobFailed | RemoteError) -> None:
    """Re-raise a remote failure as the local engine's error of the same kind."""
    kind = exc.kind if isinstance(exc, JobFailed) else exc.code
    if kind == "cancelled":
        raise Cancelled() from exc
    if kind in ("model_missing", MODEL_NOT_ALLOWED):
        raise ModelNotFound(str(exc)) from exc
    if kind == INVALID or kind == "invalid":
        raise InvalidRequest(str(exc)) from exc
    if kind == "out_of_memory":
        raise RuntimeError(f"out of memory on the server: {exc}") from exc
    raise exc


@dataclass(eq=False)
class RemoteJob:
    id: int
    messages: asyncio.Queue[dict[str, Any] | BaseException] = field(default_factory=asyncio.Queue)

    async def wait(self, on_event: EventSink | None, max_pixels: int) -> dict[str, Any]:
        """Relay events until the job ends; return its ``done`` message or raise JobFailed."""
        while True:
            msg = await self.messages.get()
            if isinstance(msg, BaseException):
                raise msg
            kind = msg["type"]
            if kind == "event":
                event = event_from_json(msg["event"], msg.get("_payload"), max_pixels=max_pixels)
                if on_event is not None:
                    on_event(event)
            elif kind == "done":
                return msg
            elif kind == "failed":
                failure = require_obj(msg.get("failure"), "failure")
                raise JobFailed(
                    require_str(failure.get("kind"), "failure.kind", 40),
                    require_str(failure.get("message"), "failure.message", 4000),
                )


class ServerClient:
    """One connection to a DragStudio server, on the running event loop."""

    def __init__(self, url: str, token: str, *, cafile: Path | None = None) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("ws://", "wss://")):
            raise InvalidRequest(f"the server address must start with ws:// or wss://: {url!r}")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.token = token
        self.cafile = cafile
        self.welcome: dict[str, Any] = {}
        self.limits = Limits()
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], str]] = {}
        self._jobs: dict[int, RemoteJob] = {}
        self._uploaded: set[str] = set()
        self._lost: str | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._lost is None

    @property
    def models(self) -> list[str]:
        return list(self.welcome.get("models", []))

    @property
    def features(self) -> frozenset[str]:
        """The optional fields the server accepts (``protocol.FEATURES``; none before them)."""
        raw = self.welcome.get("features", [])
        return (
            frozenset(f for f in raw if isinstance(f, str))
            if isinstance(raw, list)
            else frozenset()
        )

    async def connect(self, timeout: float = 15.0) -> dict[str, Any]:
        """Open the connection and shake hands; returns the server's welcome."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

        context = None
        if self.url.startswith("wss://"):
            context = ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)
        try:
            self._ws = await connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {self.token}"},
                open_timeout=timeout,
                max_size=self.limits.max_frame_bytes,
                compression=None,
                proxy=None,
                ssl=context,
                ping_interval=20,
                ping_timeout=60,
                user_agent_header=f"DragStudio/{__version__}",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise ServerRefused(
                    "the server refused the token (check it, and no spaces)"
                ) from None
            raise ServerRefused(f"the server answered HTTP {status}") from None
        except InvalidURI:
            raise InvalidRequest(f"not a server address: {self.url!r}") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ConnectionLost(LOST.format(why=_why(exc))) from None
        try:
            await self._ws.send(pack({"type": "hello", "protocol": PROTOCOL_VERSION,
                                      "client": __version__}))  # fmt: skip
            header, _ = unpack(await asyncio.wait_for(self._ws.recv(), timeout))
        except Exception as exc:
            await self.close()
            raise ConnectionLost(LOST.format(why=_why(exc))) from None
        if header.get("type") != "welcome":
            await self.close()
            raise ServerRefused(str(header.get("message", "the server refused the session")))
        self.welcome = header
        self.limits = Limits.from_json(header.get("limits", {}))
        self._reader = asyncio.create_task(self._read())
        return header

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        self._fail_all("the connection was closed")

    def _fail_all(self, why: str) -> None:
        self._lost = self._lost or why
        error = ConnectionLost(LOST.format(why=why))
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        for job in self._jobs.values():
            job.messages.put_nowait(error)
        self._jobs.clear()

    async def _read(self) -> None:
        why = "the server closed it"
        try:
            async for frame in self._ws:
                header, payload = unpack(frame)
                self._dispatch(header, payload)
        except ProtocolError as exc:
            why = f"the server sent a malformed message: {exc}"
        except Exception as exc:
            why = _why(exc)
        self._fail_all(why)

    def _dispatch(self, header: dict[str, Any], payload: bytes | None) -> None:
        kind = header["type"]
        if kind in ("event", "done", "failed"):
            job = self._jobs.get(require_int(header.get("job"), "job", 0, 2**53))
            if job is not None:
                if payload is not None:
                    header["_payload"] = payload
                job.messages.put_nowait(header)
                if kind != "event":
                    self._jobs.pop(job.id, None)
            return
        pending = self._pending.pop(header.get("id"), None)  # type: ignore[arg-type]
        if pending is None:
            return
        future, sent = pending
        if future.done():
            return
        if kind == "error":
            future.set_exception(
                RemoteError(str(header.get("code")), str(header.get("message", ""))[:4000])
            )
            return
        if sent in ("edit", "generate", "prepare"):
            job_id = require_int(header.get("job"), "job", 0, 2**53)
            self._jobs[job_id] = RemoteJob(job_id)  # before any of its events is read
        future.set_result((header, payload))

    async def call(
        self, header: dict[str, Any], payload: bytes | None = None
    ) -> tuple[dict[str, Any], bytes | None]:
        """Send one message and await its reply (raises RemoteError or ConnectionLost)."""
        if not self.connected:
            raise ConnectionLost(LOST.format(why=self._lost or "not connected"))
        msg_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = (future, header["type"])
        try:
            await self._ws.send(pack({**header, "id": msg_id}, payload))
        except Exception as exc:
            self._pending.pop(msg_id, None)
            raise ConnectionLost(LOST.format(why=_why(exc))) from None
        reply: tuple[dict[str, Any], bytes | None] = await future
        return reply

    async def upload(self, kind: str, data: bytes) -> str:
        """Upload ``data`` unless this connection did already; returns its sha256."""
        digest = sha256(data)
        if digest not in self._uploaded:
            await self.call({"type": "upload", "kind": kind, "sha256": digest}, data)
            self._uploaded.add(digest)
        return digest

    def forget_upload(self, digest: str) -> None:
        self._uploaded.discard(digest)

    async def submit(self, header: dict[str, Any]) -> RemoteJob:
        reply, _ = await self.call(header)
        return self._jobs.get(reply["job"]) or RemoteJob(reply["job"])

    async def cancel(self, job_id: int) -> None:
        await self.call({"type": "cancel", "job": job_id})

    async def fetch(self, kind: str, ref: str) -> bytes:
        _, payload = await self.call({"type": "fetch", "kind": kind, "ref": ref})
        if payload is None or (sha256(payload) != ref and kind != "lora"):
            raise ProtocolError(INVALID, f"the server sent a {kind} that does not match its hash")
        return payload

    async def jobs(self) -> list[dict[str, Any]]:
        reply, _ = await self.call({"type": "jobs"})
        return list(reply.get("jobs", []))


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- jobs -------------------------------------------------------------------------------------


JobStarted = Callable[[RemoteJob], None]


async def _upload_all(client: ServerClient, parts: dict[str, tuple[str, bytes]]) -> dict[str, str]:
    blobs = {}
    for role, (kind, data) in parts.items():
        try:
            blobs[role] = await client.upload(kind, data)
        except RemoteError as exc:
            raise InvalidRequest(f"the server refused the {role.replace('_', ' ')}: {exc}") from exc
    return blobs


async def _request_header(
    client: ServerClient, kind: str, request: DragRequest, memory: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """An ``edit`` or ``prepare`` message for ``request``, its blobs uploaded; and their hashes."""
    parts = await asyncio.to_thread(upload_parts, request)
    blobs = await _upload_all(client, parts)
    header: dict[str, Any] = {"type": kind, "request": request_to_json(request, blobs)}
    if memory is not None and "memory" in client.features:
        header["memory"] = require_memory_plan(memory, "memory")
    return header, blobs


async def _run_job(
    client: ServerClient,
    header: dict[str, Any],
    on_event: EventSink | None,
    started: JobStarted | None,
    blobs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Submit a job, relay its events, return its ``done`` message; failures raise the local
    engine's errors (an evicted upload of ``blobs`` is sent again next time)."""
    try:
        job = await client.submit(header)
        if started is not None:
            started(job)
        return await job.wait(on_event, client.limits.max_pixels)
    except (JobFailed, RemoteError) as exc:
        if isinstance(exc, RemoteError) and exc.code == "missing_blob":
            for digest in (blobs or {}).values():
                client.forget_upload(digest)  # evicted there: the next try uploads again
        raise_for(exc)
        raise


async def remote_prepare(
    client: ServerClient,
    request: DragRequest,
    on_event: EventSink | None = None,
    *,
    started: JobStarted | None = None,
    memory: str | None = None,
) -> dict[str, Any]:
    """Prepare ``request``'s photo on the server (feature ``prepare``): its engine trains or
    reuses the LoRA, inverts and records the reference, so this connection's edit of the same
    inputs starts at the optimisation. Points are not needed. It runs only while nothing else
    waits there and is cancelled by any other job but that edit. Returns what was done:
    ``{"prepared", "lora" (its source), "reference"}``; failures raise as :func:`remote_edit`.
    """
    if "prepare" not in client.features:
        raise InvalidRequest("this server does not prepare photos in the background")
    request.validate(require_pairs=False)
    header, blobs = await _request_header(client, "prepare", request, memory)
    done = await _run_job(client, header, on_event, started, blobs)
    return {
        "prepared": require_bool(done.get("prepared"), "done.prepared"),
        "lora": require_str(done.get("lora"), "done.lora", 20),
        "reference": require_bool(done.get("reference"), "done.reference"),
    }


async def remote_edit(
    client: ServerClient,
    request: DragRequest,
    on_event: EventSink | None = None,
    *,
    retrain_lora: bool = False,
    lora_file: bytes | None = None,
    started: JobStarted | None = None,
    memory: str | None = None,
) -> EditResult:
    """Run ``request`` on the server: upload, submit, relay events, fetch the result by hash.

    ``memory`` is the memory plan setting for the server's engine (None: the server's ``auto``);
    a server older than the ``memory`` feature is not sent it and runs its own choice.

    Failures raise the local engine's error types (Cancelled, InvalidRequest, ModelNotFound) or
    ConnectionLost; the caller's document is never touched by any of it.
    """
    request.validate()
    header, blobs = await _request_header(client, "edit", request, memory)
    if retrain_lora:
        header["retrain_lora"] = True
    if lora_file is not None:
        header["lora"] = await client.upload("lora", lora_file)
    done = await _run_job(client, header, on_event, started, blobs)
    try:
        result = require_sha(done.get("result"), "done.result")
        trace = trace_from_json(done.get("trace"))
        png = await client.fetch("result", result)
    except RemoteError as exc:
        raise_for(exc)
        raise
    image = await asyncio.to_thread(decode_png, png, "the result", max_pixels=2**31)
    return EditResult(image, trace)


async def remote_generate(
    client: ServerClient,
    generation: Generation,
    model: str,
    on_event: EventSink | None = None,
    *,
    started: JobStarted | None = None,
) -> tuple[np.ndarray, Generation]:
    """Generate on the server; returns the image and the generation with its trajectory."""
    from dataclasses import replace

    from backend.server.blobs import decode_latents

    generation.validate(with_trajectory=False)
    header = {"type": "generate", "generation": generation_to_json(generation), "model": model}
    done = await _run_job(client, header, on_event, started)
    try:
        png = await client.fetch("result", require_sha(done.get("result"), "done.result"))
        raw = await client.fetch("latents", require_sha(done.get("latents"), "done.latents"))
    except RemoteError as exc:
        raise_for(exc)
        raise
    image = await asyncio.to_thread(decode_png, png, "the result", max_pixels=2**31)
    trajectory = await asyncio.to_thread(decode_latents, raw)
    done_generation = replace(generation, trajectory=trajectory)
    done_generation.validate()
    return image, done_generation


# -- a blocking engine for the command line ---------------------------------------------------


class RemoteEngine:
    """The parts of :class:`backend.engine.Engine` the CLI and the benchmark use, run remotely
    over one connection (kept on a private event loop thread)."""

    def __init__(self, url: str, token: str, *, cafile: Path | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.client = ServerClient(url, token, cafile=cafile)
        self._lora_file: bytes | None = None
        self.memory: str | None = None
        """The memory plan setting sent with each edit (None: the server's own)."""
        try:
            self._run(self.client.connect())
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def use_memory_setting(self, setting: str) -> None:
        """As :meth:`backend.engine.Engine.use_memory_setting`: the server's engine switches
        plans for this connection's edits."""
        self.memory = require_memory_plan(setting, "memory")

    def offer_lora(self, data: bytes | None) -> None:
        """A project's bundled LoRA for the next edit (the server files it if it fits)."""
        self._lora_file = data

    def edit(
        self, request: DragRequest, on_event: EventSink | None = None, cancel: Any = None
    ) -> EditResult:
        if cancel is not None and cancel.cancelled:
            raise Cancelled()
        lora, self._lora_file = self._lora_file, None
        result: EditResult = self._run(
            remote_edit(self.client, request, on_event, lora_file=lora, memory=self.memory)
        )
        return result

    def generate(
        self,
        generation: Generation,
        model: str,
        on_event: EventSink | None = None,
        cancel: Any = None,
    ) -> tuple[np.ndarray, Generation]:
        out: tuple[np.ndarray, Generation] = self._run(
            remote_generate(self.client, generation, model, on_event)
        )
        return out

    def export_lora(self, key: str) -> bytes | None:
        """The server's file of the LoRA ``key`` (one this connection's edits used), for a
        project to bundle; None when the server no longer has it."""
        try:
            data: bytes = self._run(self.client.fetch("lora", key))
        except (RemoteError, ConnectionLost):
            return None
        return data

    def release_memory(self) -> None:
        """Nothing to do here: the server manages its own memory."""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
