"""The wire protocol's constants, limits and framing (described in ``docs/server.md``).

Control messages are JSON text frames. A message that carries bytes (an upload, a fetched
result, a preview) is one binary frame: a 4-byte big-endian length, that many bytes of JSON
header, then the payload. Nothing is ever unpickled; every header is checked field by field.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any

from backend.errors import DragStudioError
from backend.settings import MEMORY_PLANS

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change; a client and server of different versions refuse."""
PATH = "/v1"
FEATURES: tuple[str, ...] = ("memory", "prepare")
"""Optional fields and messages added to protocol 1 after its first release. Headers are strict
(a server refuses fields and types it does not know), so the welcome lists what this server
accepts and a client sends such a field or message only to a server that names it; older clients
never send them. Compatible
additions go here; anything else bumps ``PROTOCOL_VERSION``.

``memory``: an ``edit`` may carry ``"memory": "auto"|"high"|"8gb"|"6gb"``, the memory plan the
server's engine runs it with (``backend/memory.py``; absent: ``auto``).

``prepare``: a ``prepare`` message (a request as in ``edit``, points optional, and ``memory``)
trains the LoRA and inverts the photo in the background at the lowest priority, so the session's
Drag of the same inputs starts at the optimisation (``docs/server.md``, "Scheduling")."""
DEFAULT_PORT = 8765
MAX_HEADER_BYTES = 1 * 2**20
"""A JSON header or control message (requests carry hashes, never pixels)."""

SHA256 = re.compile(r"^[0-9a-f]{64}$")
BLOB_KINDS = ("image", "mask", "latents", "lora")
FETCH_KINDS = ("result", "latents", "lora")

# Error codes a client can act on.
BAD_MESSAGE = "bad_message"
VERSION = "version"
TOO_LARGE = "too_large"
RATE_LIMITED = "rate_limited"
INVALID = "invalid"
MISSING_BLOB = "missing_blob"
NOT_FOUND = "not_found"
MODEL_NOT_ALLOWED = "model_not_allowed"
QUEUE_FULL = "queue_full"


class ProtocolError(DragStudioError):
    """A message that breaks the protocol; ``code`` is one of the error codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    """What one session may upload and queue. The defaults suit a personal GPU server."""

    max_image_bytes: int = 64 * 2**20
    max_latents_bytes: int = 256 * 2**20
    max_lora_bytes: int = 256 * 2**20
    max_pixels: int = 40_000_000
    max_side: int = 16384
    max_blobs: int = 32
    """Uploads kept per session; older unused ones are dropped first."""
    max_session_bytes: int = 1 * 2**30
    uploads_per_minute: int = 120
    jobs_per_minute: int = 120
    max_queued_jobs: int = 16
    """Queued or running jobs per session."""
    max_results: int = 16
    """Finished results kept per session for fetching."""
    max_sessions: int = 64

    def max_bytes(self, kind: str) -> int:
        return {
            "image": self.max_image_bytes,
            "mask": self.max_image_bytes,
            "latents": self.max_latents_bytes,
            "lora": self.max_lora_bytes,
        }[kind]

    @property
    def max_frame_bytes(self) -> int:
        biggest = max(self.max_image_bytes, self.max_latents_bytes, self.max_lora_bytes)
        return biggest + MAX_HEADER_BYTES + 4

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Limits:
        obj = require_obj(data, "limits")
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for name, value in obj.items():
            if name in known:
                kwargs[name] = require_int(value, f"limits.{name}", 0, 2**62)
        return cls(**kwargs)


# -- framing ----------------------------------------------------------------------------------


def pack(header: dict[str, Any], payload: bytes | None = None) -> str | bytes:
    """A message as a frame: text when it carries no bytes, binary when it does."""
    text = json.dumps(header, separators=(",", ":"), allow_nan=False)
    if payload is None:
        return text
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw + payload


def unpack(frame: str | bytes) -> tuple[dict[str, Any], bytes | None]:
    """``(header, payload)`` of a frame; raises :class:`ProtocolError` on anything malformed."""
    if isinstance(frame, str):
        if len(frame) > MAX_HEADER_BYTES:
            raise ProtocolError(TOO_LARGE, "control message too large")
        return _header(frame), None
    if len(frame) < 4:
        raise ProtocolError(BAD_MESSAGE, "binary frame too short")
    (n,) = struct.unpack(">I", frame[:4])
    if n > min(len(frame) - 4, MAX_HEADER_BYTES):
        raise ProtocolError(BAD_MESSAGE, "binary frame header length is out of range")
    try:
        text = frame[4 : 4 + n].decode()
    except UnicodeDecodeError:
        raise ProtocolError(BAD_MESSAGE, "binary frame header is not UTF-8") from None
    return _header(text), bytes(frame[4 + n :])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _header(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_MESSAGE, f"not JSON: {str(exc)[:80]}") from None
    obj = require_obj(data, "message")
    require_str(obj.get("type"), "type", 40)
    return obj


# -- field checks (shared by the server, the client and the codec) ----------------------------


def fail(where: str, why: str) -> ProtocolError:
    return ProtocolError(BAD_MESSAGE, f"{where}: {why}")


def require_obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(where, "expected an object")
    return value


def require_keys(obj: dict[str, Any], where: str, required: set[str], optional: set[str]) -> None:
    """Exactly the known keys: a missing one or an unknown one is an error."""
    missing = required - obj.keys()
    if missing:
        raise fail(where, f"missing {', '.join(sorted(missing))}")
    unknown = obj.keys() - required - optional
    if unknown:
        raise fail(where, f"unknown field {sorted(unknown)[0][:40]!r}")


def require_str(value: Any, where: str, most: int) -> str:
    if not isinstance(value, str):
        raise fail(where, "expected text")
    if len(value) > most:
        raise fail(where, f"longer than {most} characters")
    return value


def require_int(value: Any, where: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise fail(where, f"expected a whole number between {lo} and {hi}")
    return value


def require_float(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise fail(where, "expected a number")
    if not math.isfinite(value):
        raise fail(where, "expected a finite number")
    return float(value)


def require_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, "expected true or false")
    return value


def require_memory_plan(value: Any, where: str) -> str:
    """One of the memory plan settings, exactly as spelled in ``MEMORY_PLANS``."""
    if not isinstance(value, str) or value not in MEMORY_PLANS:
        raise fail(where, f"must be one of {', '.join(MEMORY_PLANS)}")
    return value


def require_sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SHA256.match(value):
        raise fail(where, "expected a sha256 hex digest")
    return value


def require_list(value: Any, where: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise fail(where, "expected a list")
    if len(value) > most:
        raise fail(where, f"more than {most} items")
    return value
