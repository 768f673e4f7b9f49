"""On-disk LoRA cache: re-dragging the same image never pays for fine-tuning twice.

Entries are safetensors files named by the LoRA key (a hash of the image pixels, the model, the
prompt and the LoRA parameters), written atomically so a crash or cancel never leaves a half
entry. The total size is bounded; the least recently used entries go first. A corrupt entry is
dropped and the LoRA retrained.

The cache holds bytes and needs no torch (the GUI's settings dialog uses it); turning an entry
into tensors is :func:`backend.lora.cached_lora` / :func:`backend.lora.cache_lora`.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

from backend.atomicio import write_atomic

DEFAULT_LIMIT_BYTES = 4 * 2**30
_KEY = re.compile(r"^[0-9a-f]{64}$")


def default_cache_dir() -> Path:
    """The platform's user cache folder, or ``$DRAGSTUDIO_CACHE_DIR`` (tests, portable setups)."""
    override = os.environ.get("DRAGSTUDIO_CACHE_DIR")
    if override:
        return Path(override) / "lora"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("DragStudio", appauthor=False)) / "lora"


class LoraCache:
    """Size, eviction and clearing need no torch, so the settings dialog can use it directly."""

    def __init__(self, directory: Path | None = None, limit_bytes: int = DEFAULT_LIMIT_BYTES):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.limit_bytes = limit_bytes

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError("not a LoRA cache key")
        return self.directory / f"{key}.safetensors"

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a LoRA file's bytes as they are (a project's bundled LoRA), atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(key), data)
        self.evict(keep=key)

    def entry_path(self, key: str) -> Path | None:
        """The file of the entry for ``key``, or None when there is none."""
        path = self._path(key)
        return path if path.is_file() else None

    def touch(self, key: str) -> None:
        """Mark an entry as recently used (eviction removes the least recently used first)."""
        with contextlib.suppress(OSError):
            os.utime(self._path(key))

    def read_bytes(self, key: str) -> bytes | None:
        """A cached entry's file as it is, or None (:func:`backend.lora.cached_lora` validates
        it)."""
        try:
            return self._path(key).read_bytes()
        except OSError:
            return None

    def drop(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self._path(key).unlink()

    def entries(self) -> list[tuple[Path, int, float]]:
        """``(path, size, last used)`` of every entry, oldest first."""
        if not self.directory.is_dir():
            return []
        out = []
        for p in self.directory.glob("*.safetensors"):
            if _KEY.match(p.stem):
                with contextlib.suppress(OSError):
                    st = p.stat()
                    out.append((p, st.st_size, st.st_mtime))
        return sorted(out, key=lambda e: e[2])

    def size_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: str | None = None) -> None:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.limit_bytes:
                break
            if keep and path.stem == keep:
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size

    def clear(self) -> None:
        for path, _, _ in self.entries():
            with contextlib.suppress(OSError):
                path.unlink()
        # Temporary files of writers that crashed long ago.
        if self.directory.is_dir():
            for tmp in self.directory.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    if time.time() - tmp.stat().st_mtime > 3600:
                        tmp.unlink()
