"""Atomic file writes: a reader, or a crash, sees the old file or the whole new one.

The new content goes to ``.NAME.XXXXXXXX.tmp`` beside the target. A writer holds an advisory
lock on its temporary file while it writes, so a later writer can tell a temporary left by a
killed process (unlocked: removed) from one still being written by another (locked: kept).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _default_mode(path: Path) -> int:
    """Keep an existing file's permissions; new files get the usual ones (umask applied)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


STALE_WITHOUT_LOCKS_S = 24 * 3600
"""Where advisory locks do not exist (Windows), only temporaries this old count as stale."""


def _try_lock(fd: int) -> bool:
    """Take an exclusive advisory lock without waiting; True also where locks do not exist."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporaries of ``path`` (our naming only) whose writer is gone."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
    try:
        names = [n for n in os.listdir(folder) if pattern.match(n)]
    except OSError:
        return []
    out = []
    for name in names:
        tmp = folder / name
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                continue
            if not _has_locks() and time.time() - os.fstat(fd).st_mtime < STALE_WITHOUT_LOCKS_S:
                continue
            out.append(tmp)
        finally:
            os.close(fd)
    return out


def _has_locks() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return False
    return True


def remove_stale_temporaries(path: str | Path) -> int:
    """Delete what killed writers of ``path`` left behind; returns how many went."""
    removed = 0
    for tmp in stale_temporaries(path):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_file(path: str | Path, *, sync_folder: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file in ``path``'s folder; on success it is flushed, synced and renamed
    over ``path``, on failure removed. ``sync_folder`` also makes the rename itself durable."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    mode = _default_mode(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    lock_fd = os.dup(fd)  # the lock lives until the rename is done, not just the write
    _try_lock(lock_fd)  # marks the temporary as being written
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(lock_fd)
    if sync_folder:
        with contextlib.suppress(OSError):
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
