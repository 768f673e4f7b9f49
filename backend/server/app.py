"""``dragstudio-server``: the engine on this machine's GPUs, served over WebSocket.

One :class:`~backend.server.workers.EngineWorker` per device; each client connection is a
session bound to one of them (its LoRA and latents stay warm there) and owns its uploads, jobs
and results. Only the session that submitted a job can see it, cancel it or fetch its result.
A session has at most one background preparation: a new one supersedes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import signal
import ssl
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

from backend import __version__
from backend.errors import DragStudioError, InvalidRequest
from backend.events import Event
from backend.preparation import preparation_key
from backend.server.auth import bearer, default_token_file, load_or_create_token, token_matches
from backend.server.blobs import BlobStore, RateLimit
from backend.server.codec import (
    event_to_json,
    generation_from_json,
    plain,
    request_from_json,
    sha256,
)
from backend.server.protocol import (
    DEFAULT_PORT,
    FEATURES,
    FETCH_KINDS,
    INVALID,
    MODEL_NOT_ALLOWED,
    NOT_FOUND,
    PATH,
    PROTOCOL_VERSION,
    QUEUE_FULL,
    VERSION,
    Limits,
    ProtocolError,
    fail,
    pack,
    require_bool,
    require_int,
    require_keys,
    require_memory_plan,
    require_sha,
    require_str,
    unpack,
)
from backend.server.workers import EngineWorker, Job

log = logging.getLogger("dragstudio.server")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class ServerConfig:
    token: str
    models: dict[str, str]
    """Allow-list: the name a client sends → what this server loads for it."""
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    devices: tuple[str, ...] = ("auto",)
    cache_limit_bytes: int = 20 * 2**30
    certfile: Path | None = None
    keyfile: Path | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass(eq=False)
class Session:
    id: int
    worker: EngineWorker
    blobs: BlobStore
    out: asyncio.Queue[str | bytes]
    jobs: dict[int, Job] = field(default_factory=dict)
    results: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    latents: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    lora_keys: set[str] = field(default_factory=set)
    job_rate: RateLimit = field(default_factory=lambda: RateLimit(120))
    open: bool = True

    def post(self, header: dict[str, Any], payload: bytes | None = None) -> None:
        if self.open:
            self.out.put_nowait(pack(header, payload))


def _keep(store: OrderedDict[str, bytes], key: str, data: bytes, most: int) -> None:
    store[key] = data
    store.move_to_end(key)
    while len(store) > most:
        store.popitem(last=False)


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.workers = [
            EngineWorker(d, config.cache_dir / "lora", config.cache_limit_bytes)
            for d in config.devices
        ]
        self.sessions: set[Session] = set()
        self._ids = itertools.count(1)
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = config.port

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        for worker in self.workers:
            worker.start()
        context = None
        if self.config.certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.config.certfile, self.config.keyfile)
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._check_request,
            max_size=self.limits.max_frame_bytes,
            compression=None,
            ssl=context,
            ping_interval=20,
            ping_timeout=60,
            server_header=f"DragStudio/{__version__}",
        )
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.certfile else "ws"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{scheme}://{host}:{self.port}{PATH}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.to_thread(lambda: [w.stop() for w in self.workers])

    # -- connections -------------------------------------------------------------------------

    def _check_request(self, connection: Any, request: Any) -> Any:
        """Before the handshake: the path, the token (constant-time), and the session cap."""
        if request.path.split("?")[0] != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"DragStudio: connect to {PATH}\n")
        given = bearer(request.headers.get("Authorization"))
        if not token_matches(self.config.token, given):
            log.warning("refused a connection with a wrong or missing token")
            return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")
        if len(self.sessions) >= self.limits.max_sessions:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many sessions\n")
        return None

    async def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        session: Session | None = None
        sender: asyncio.Task[None] | None = None
        try:
            hello, _ = unpack(await asyncio.wait_for(ws.recv(), 30))
            if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL_VERSION:
                await ws.send(pack({"type": "error", "id": None, "code": VERSION, "message":
                    f"this server speaks protocol {PROTOCOL_VERSION}, DragStudio "
                    f"{__version__}; update the app or the server"}))  # fmt: skip
                await ws.close(1008, "protocol version")
                return
            worker = min(self.workers, key=lambda w: sum(s.worker is w for s in self.sessions))
            session = Session(next(self._ids), worker, BlobStore(self.limits), asyncio.Queue())
            session.job_rate = RateLimit(self.limits.jobs_per_minute)
            self.sessions.add(session)
            log.info("session %d connected from %s", session.id, ws.remote_address)
            session.post(self._welcome(session))
            sender = asyncio.create_task(self._send_loop(ws, session))
            async for frame in ws:
                await self._receive(session, frame)
        except (ConnectionClosed, TimeoutError):
            pass
        except ProtocolError as exc:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(pack({"type": "error", "id": None, "code": exc.code,
                                    "message": str(exc)}))  # fmt: skip
        finally:
            if session is not None:
                self._end_session(session)
            if sender is not None:
                sender.cancel()

    def _welcome(self, session: Session) -> dict[str, Any]:
        return {
            "type": "welcome",
            "protocol": PROTOCOL_VERSION,
            "server": __version__,
            "session": session.id,
            "models": sorted(self.config.models),
            "devices": [w.device for w in self.workers],
            "limits": self.limits.to_json(),
            "features": list(FEATURES),
        }

    async def _send_loop(self, ws: Any, session: Session) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(await session.out.get())

    def _end_session(self, session: Session) -> None:
        session.open = False
        self.sessions.discard(session)
        for job in list(session.jobs.values()):
            session.worker.queue.remove(job)
            job.token.cancel()
        session.jobs.clear()
        log.info("session %d closed", session.id)

    async def _receive(self, session: Session, frame: str | bytes) -> None:
        msg_id: Any = None
        try:
            header, payload = unpack(frame)
            msg_id = header.get("id")
            require_int(msg_id, "id", 0, 2**53)
            await self._dispatch(session, header, payload)
        except ProtocolError as exc:
            session.post({"type": "error", "id": msg_id, "code": exc.code, "message": str(exc)})
        except InvalidRequest as exc:
            session.post({"type": "error", "id": msg_id, "code": INVALID, "message": str(exc)})

    async def _dispatch(self, s: Session, h: dict[str, Any], payload: bytes | None) -> None:
        kind = h["type"]
        if kind == "upload":
            require_keys(h, "upload", {"type", "id", "kind", "sha256"}, set())
            if payload is None:
                raise fail("upload", "the bytes must follow in the same binary frame")
            digest = require_sha(h["sha256"], "upload.sha256")
            blob_kind = require_str(h["kind"], "upload.kind", 20)
            await asyncio.to_thread(s.blobs.add, blob_kind, digest, payload)
            s.post({"type": "ok", "id": h["id"], "sha256": digest})
        elif kind in ("edit", "generate", "prepare"):
            await self._submit(s, h)
        elif kind == "cancel":
            require_keys(h, "cancel", {"type", "id", "job"}, set())
            job = s.jobs.get(require_int(h["job"], "cancel.job", 0, 2**53))
            if job is None:
                raise ProtocolError(NOT_FOUND, "no such job of yours (it may have finished)")
            self._cancel(s, job)
            s.post({"type": "ok", "id": h["id"], "job": job.id})
        elif kind == "fetch":
            require_keys(h, "fetch", {"type", "id", "kind", "ref"}, set())
            what = require_str(h["kind"], "fetch.kind", 20)
            ref = require_sha(h["ref"], "fetch.ref")
            data = self._fetch(s, what, ref)
            s.post({"type": "fetched", "id": h["id"], "kind": what, "ref": ref}, data)
        elif kind == "jobs":
            require_keys(h, "jobs", {"type", "id"}, set())
            mine = [{"job": j.id, "kind": j.kind, "state": j.state,
                     "position": s.worker.queue.position(j)} for j in s.jobs.values()]  # fmt: skip
            s.post({"type": "ok", "id": h["id"], "jobs": mine})
        elif kind == "ping":
            s.post({"type": "ok", "id": h["id"]})
        else:
            raise fail("type", f"unknown message type {kind[:40]!r}")

    def _fetch(self, s: Session, what: str, ref: str) -> bytes:
        if what not in FETCH_KINDS:
            raise fail("fetch.kind", f"expected one of {', '.join(FETCH_KINDS)}")
        data: bytes | None = None
        if what == "result":
            data = s.results.get(ref)
        elif what == "latents":
            data = s.latents.get(ref)
        elif ref in s.lora_keys:
            from backend.lora_cache import LoraCache

            data = LoraCache(self.config.cache_dir / "lora").read_bytes(ref)
        if data is None:
            raise ProtocolError(NOT_FOUND, f"no {what} {ref[:12]}… of yours on this server")
        return data

    # -- jobs --------------------------------------------------------------------------------

    def _cancel(self, s: Session, job: Job) -> None:
        """A queued job ends at once, a running one at the engine's next step check."""
        job.token.cancel()
        if s.worker.queue.remove(job):
            self._ended(s, job, None, {"kind": "cancelled", "message": "Cancelled."})

    async def _submit(self, s: Session, h: dict[str, Any]) -> None:
        kind = h["type"]
        if kind == "edit":
            require_keys(h, "edit", {"type", "id", "request"}, {"retrain_lora", "lora", "memory"})
            model = h["request"].get("model") if isinstance(h["request"], dict) else None
        elif kind == "prepare":
            require_keys(h, "prepare", {"type", "id", "request"}, {"memory"})
            model = h["request"].get("model") if isinstance(h["request"], dict) else None
        else:
            require_keys(h, "generate", {"type", "id", "generation", "model"}, set())
            model = h["model"]
        if not isinstance(model, str) or model not in self.config.models:
            raise ProtocolError(MODEL_NOT_ALLOWED, f"this server does not offer the model "
                                f"{str(model)[:200]!r}; it offers: "
                                f"{', '.join(sorted(self.config.models)) or 'none'}")  # fmt: skip
        if kind != "generate" and h["request"].get("vae") is not None:
            # Models are the operator's choice; a client's VAE would be a path on this machine.
            raise ProtocolError(MODEL_NOT_ALLOWED, "this server uses each model's own VAE; "
                                "clear the VAE choice to edit here")  # fmt: skip
        # A new preparation replaces the session's older one: that one does not count.
        older = [j for j in s.jobs.values() if j.kind == "prepare"] if kind == "prepare" else []
        if len(s.jobs) - len(older) >= self.limits.max_queued_jobs:
            raise ProtocolError(QUEUE_FULL, f"you have {len(s.jobs)} jobs waiting; at most "
                                f"{self.limits.max_queued_jobs}")  # fmt: skip
        s.job_rate.take("jobs")
        spec = self.config.models[model]
        if kind == "edit":
            request = request_from_json(h["request"], s.blobs.get)
            lora = h.get("lora")
            retrain = require_bool(h.get("retrain_lora", False), "edit.retrain_lora")
            job = Job(
                s,
                "edit",
                model,
                spec,
                request=request,
                retrain_lora=retrain,
                lora_file=None if lora is None else s.blobs.get("lora", require_sha(lora, "lora")),
                memory=require_memory_plan(h.get("memory", "auto"), "edit.memory"),
                # An edit that retrains replaces what a preparation would give it.
                key=None if retrain else await asyncio.to_thread(preparation_key, request),
            )
        elif kind == "prepare":
            request = request_from_json(h["request"], s.blobs.get, require_pairs=False)
            job = Job(
                s,
                "prepare",
                model,
                spec,
                request=request,
                memory=require_memory_plan(h.get("memory", "auto"), "prepare.memory"),
                key=await asyncio.to_thread(preparation_key, request),
            )
            for old in older:
                if old.id in s.jobs:
                    self._cancel(s, old)
        else:
            generation = generation_from_json(h["generation"], "generation")
            job = Job(s, "generate", model, spec, generation=generation)
        loop = self._loop
        assert loop is not None

        def on_event(job: Job, event: Event) -> None:  # engine thread
            header, preview = event_to_json(event)
            loop.call_soon_threadsafe(s.post, {"type": "event", "job": job.id, "event": header},
                                      preview)  # fmt: skip

        def on_end(job: Job, outcome: dict[str, Any] | None, failure: Any) -> None:
            if outcome is not None and job.token.cancelled:
                outcome, failure = None, {"kind": "cancelled", "message": "Cancelled."}
            loop.call_soon_threadsafe(self._ended, s, job, outcome, failure)

        job.on_event, job.on_end = on_event, on_end
        s.jobs[job.id] = job
        s.worker.submit(job)
        position = s.worker.queue.position(job)
        s.post({"type": "ok", "id": h["id"], "job": job.id, "position": max(position, 0)})

    def _ended(
        self, s: Session, job: Job, outcome: dict[str, Any] | None, failure: Any | None
    ) -> None:
        """On the loop: file the result under its hash and tell the session, exactly once."""
        if s.jobs.pop(job.id, None) is None:
            return
        if outcome is None:
            s.post({"type": "failed", "job": job.id, "failure": failure})
            return
        if job.kind == "prepare":  # what was done, no image: the caches hold the work
            s.post({"type": "done", "job": job.id, **outcome})
            return
        png = outcome["image"]
        digest = sha256(png)
        _keep(s.results, digest, png, self.limits.max_results)
        message: dict[str, Any] = {"type": "done", "job": job.id, "result": digest}
        if "trace" in outcome:
            trace = plain(outcome["trace"])
            key = trace.get("lora", {}).get("key")
            if isinstance(key, str):
                s.lora_keys.add(key)
            message["trace"] = trace
        if "latents" in outcome:
            ldigest = sha256(outcome["latents"])
            _keep(s.latents, ldigest, outcome["latents"], self.limits.max_results)
            message["latents"] = ldigest
        s.post(message)


# -- command line -----------------------------------------------------------------------------


def _models(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, spec = item.partition("=")
        out[name if sep else item] = spec if sep else item
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dragstudio-server",
        description="Serve this machine's DragStudio engine to DragStudio apps and "
        "`dragstudio-cli --server` over WebSocket (see docs/server.md).",
    )
    p.add_argument("--config", type=Path, help="JSON file with any of these options")
    p.add_argument("--host", help="address to bind (127.0.0.1; anything else exposes it)")
    p.add_argument("--port", type=int, help=f"port ({DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--devices", help="comma-separated devices, one engine each (auto)")
    p.add_argument(
        "--allow-model",
        action="append",
        metavar="NAME[=SPEC]",
        help="a model clients may use: NAME is what they send, SPEC the hub id, folder or "
        ".safetensors it loads here (repeatable; required)",
    )
    p.add_argument("--cache-dir", type=Path, help="LoRA cache folder")
    p.add_argument("--cache-limit-gb", type=float, help="LoRA cache size limit (20)")
    p.add_argument("--token-file", type=Path, help="where the access token lives")
    p.add_argument("--certfile", type=Path, help="TLS certificate (PEM), for wss://")
    p.add_argument("--keyfile", type=Path, help="TLS private key (PEM)")
    p.add_argument("--max-pixels", type=int, help="largest uploaded image, in pixels")
    p.add_argument("--max-upload-mb", type=int, help="largest uploaded image file, in MiB")
    p.add_argument("--max-queued-jobs", type=int, help="queued jobs per session (16)")
    p.add_argument("--max-sessions", type=int, help="concurrent sessions (64)")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    return p


def config_from_args(args: argparse.Namespace) -> tuple[ServerConfig, bool]:
    """The configuration (flags over the config file) and whether the token is new."""
    file: dict[str, Any] = {}
    if args.config is not None:
        try:
            file = json.loads(args.config.read_text())
        except (OSError, ValueError) as exc:
            raise DragStudioError(f"cannot read {args.config}: {exc}") from None
        if not isinstance(file, dict):
            raise DragStudioError(f"{args.config}: expected a JSON object")

    def pick(name: str, default: Any = None) -> Any:
        value = getattr(args, name.replace("-", "_"), None)
        return value if value is not None else file.get(name.replace("-", "_"), default)

    models_in = args.allow_model or file.get("models") or []
    models = dict(models_in) if isinstance(models_in, dict) else _models(models_in)
    if not models:
        raise DragStudioError("no models allowed: give --allow-model NAME[=SPEC] at least once")
    token_file = Path(pick("token-file") or default_token_file())
    token, created = load_or_create_token(token_file)
    from backend.lora_cache import default_cache_dir

    limits = Limits()
    over = {
        "max_pixels": pick("max-pixels"),
        "max_image_bytes": None if pick("max-upload-mb") is None else pick("max-upload-mb") * 2**20,
        "max_queued_jobs": pick("max-queued-jobs"),
        "max_sessions": pick("max-sessions"),
    }
    limits = replace(limits, **{k: int(v) for k, v in over.items() if v is not None})
    devices = str(pick("devices", "auto"))
    certfile, keyfile = pick("certfile"), pick("keyfile")
    if (certfile is None) != (keyfile is None):
        raise DragStudioError("TLS needs both --certfile and --keyfile")
    config = ServerConfig(
        token=token,
        models=models,
        cache_dir=Path(pick("cache-dir") or default_cache_dir().parent / "server"),
        host=str(pick("host", "127.0.0.1")),
        port=int(pick("port", DEFAULT_PORT)),
        devices=tuple(d.strip() for d in devices.split(",") if d.strip()),
        cache_limit_bytes=int(float(pick("cache-limit-gb", 20)) * 2**30),
        certfile=None if certfile is None else Path(certfile),
        keyfile=None if keyfile is None else Path(keyfile),
        limits=limits,
    )
    if created:
        print(
            f"A new access token was made and stored in {token_file} (owner-only).\n"
            f"It is shown this once; give it to the apps that connect:\n\n    {token}\n",
            flush=True,
        )
    return config, created


async def serve_until_stopped(config: ServerConfig) -> None:
    server = Server(config)
    await server.start()
    print(f"DragStudio server listening on {server.url}", flush=True)
    if config.host not in LOOPBACK and config.certfile is None:
        print(
            "warning: reachable from other machines without TLS: the token and images travel "
            "in clear text. Use --certfile/--keyfile or a TLS reverse proxy (docs/server.md).",
            file=sys.stderr,
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("DragStudio server stopping", flush=True)
    await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        import websockets  # noqa: F401
    except ImportError:
        print('dragstudio-server needs: pip install "dragstudio[server]"', file=sys.stderr)
        return 2
    try:
        config, _ = config_from_args(args)
        asyncio.run(serve_until_stopped(config))
    except DragStudioError as exc:
        print(f"dragstudio-server: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"dragstudio-server: error: {exc}", file=sys.stderr)
        return 1
    return 0
