"""What a session uploaded, by content hash: checked, decoded once, bounded in count and bytes.

Every upload is validated with the code that reads local files (the project reader's PNG,
latent and LoRA checks) and never names a server path: it is addressed only by its hash.
"""

from __future__ import annotations

import json
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from backend.errors import DragStudioError, InvalidRequest
from backend.server.codec import decode_png, sha256
from backend.server.protocol import (
    BLOB_KINDS,
    INVALID,
    MISSING_BLOB,
    RATE_LIMITED,
    TOO_LARGE,
    Limits,
    ProtocolError,
)


class RateLimit:
    """A token bucket: ``per_minute`` events a minute, in bursts of at most that many."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, per_minute))
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self, what: str) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            raise ProtocolError(RATE_LIMITED, f"too many {what}; wait a moment and try again")
        self.tokens -= 1.0


@dataclass
class Blob:
    kind: str
    value: Any
    """Decoded: an image or mask array, a trajectory array, or a LoRA file's bytes."""
    size: int


def lora_header_key(data: bytes) -> str:
    """The key a DragStudio LoRA file names in its metadata, after the project reader's check."""
    from backend.project import ProjectError, _check_safetensors

    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + min(n, 100 * 2**20)])
        key = str(header.get("__metadata__", {}).get("key", ""))
        _check_safetensors(data, key)
    except ProjectError as exc:
        raise InvalidRequest(f"the uploaded LoRA: {exc}") from None
    except (struct.error, ValueError, AttributeError, TypeError):
        raise InvalidRequest("the uploaded LoRA is not a safetensors file") from None
    return key


def decode_latents(data: bytes) -> Any:
    """A generation's kept trajectory, read by the project reader (shape taken from its header,
    then checked against the generation's settings when a request uses it)."""
    from backend.project import ProjectError, _latents

    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + min(n, 2**20)])
        shape = header["trajectory"]["shape"]
        ok = isinstance(shape, list) and len(shape) == 4
        if not ok or not all(isinstance(s, int) and 1 <= s <= 1001 for s in shape):
            raise InvalidRequest("the uploaded latents have an unsupported shape")
        return _latents(data, tuple(shape))
    except ProjectError as exc:
        raise InvalidRequest(f"the uploaded latents: {exc}") from None
    except (struct.error, ValueError, KeyError, TypeError):
        raise InvalidRequest("the uploaded latents are not a safetensors file") from None


class BlobStore:
    """One session's uploads. The least recently used go first when a bound is reached; a job
    already holds its decoded arrays, so dropping a blob never disturbs a running job."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._blobs: OrderedDict[str, Blob] = OrderedDict()
        self._rate = RateLimit(limits.uploads_per_minute)

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self._blobs.values())

    def __contains__(self, digest: str) -> bool:
        return digest in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    def add(self, kind: str, digest: str, data: bytes) -> None:
        if kind not in BLOB_KINDS:
            raise ProtocolError(INVALID, f"unknown upload kind {kind[:20]!r}")
        most = self.limits.max_bytes(kind)
        if len(data) > most:
            raise ProtocolError(TOO_LARGE, f"the {kind} is {len(data):,} bytes; at most {most:,}")
        if sha256(data) != digest:
            raise ProtocolError(INVALID, f"the {kind}'s bytes do not match its sha256")
        self._rate.take("uploads")
        existing = self._blobs.get(digest)
        if existing is not None and existing.kind == kind:
            self._blobs.move_to_end(digest)
            return
        value = self._decode(kind, data)
        size = max(len(data), int(getattr(value, "nbytes", 0)))
        if size > self.limits.max_session_bytes:
            raise ProtocolError(TOO_LARGE, f"the {kind} needs {size:,} bytes of server memory")
        self._blobs[digest] = Blob(kind, value, size)
        while len(self._blobs) > self.limits.max_blobs or (
            self.total_bytes > self.limits.max_session_bytes and len(self._blobs) > 1
        ):
            self._blobs.popitem(last=False)

    def _decode(self, kind: str, data: bytes) -> Any:
        try:
            if kind in ("image", "mask"):
                where = "the uploaded mask" if kind == "mask" else "the uploaded image"
                return decode_png(data, where, mask=kind == "mask",
                                  max_pixels=self.limits.max_pixels)  # fmt: skip
            if kind == "latents":
                return decode_latents(data)
            lora_header_key(data)
            return data
        except DragStudioError as exc:
            raise ProtocolError(INVALID, str(exc)) from None

    def get(self, kind: str, digest: str) -> Any:
        blob = self._blobs.get(digest)
        if blob is None or blob.kind != kind:
            raise ProtocolError(MISSING_BLOB, f"no uploaded {kind} {digest[:12]}…; upload it first")
        self._blobs.move_to_end(digest)
        return blob.value
