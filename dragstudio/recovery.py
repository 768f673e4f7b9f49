"""Autosave recovery files, one set per running instance, each guarded by a lock.

Every window writes ``recovery-ID.dragstudio`` (and ``recovery-ID.json``: which project it
was) and holds an advisory lock on ``recovery-ID.lock`` for as long as it runs; the operating
system drops the lock when the process ends, kill -9 included. At start, only files whose lock
can be taken are offered: their instance is gone. Taking the lock also claims the file, so two
instances starting together never offer (or delete) the same one. Qt-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.atomicio import remove_stale_temporaries
from backend.project import SUFFIX

PREFIX = "recovery-"
_TEMPORARY = re.compile(rf"^\.({PREFIX}[0-9a-f-]+{re.escape(SUFFIX)})\.[A-Za-z0-9_]{{8}}\.tmp$")
LEGACY = f"recovery{SUFFIX}"
"""The single shared file of earlier versions: offered once, like an orphan."""


def _lock_fd(fd: int) -> bool:
    """An exclusive, non-blocking advisory lock on ``fd`` (released when it is closed)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class InstanceLock:
    """Held by one open file descriptor; nobody else (this process included) can take it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        if not _lock_fd(fd):
            os.close(fd)
            return False
        self._fd = fd
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def release(self, *, remove: bool = False) -> None:
        if self._fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


@dataclass
class Orphan:
    """A recovery file whose instance is no longer running, claimed by its lock."""

    project: Path
    note: Path
    lock: InstanceLock | None

    def saved_from(self) -> Path | None:
        """The project file the work came from, if it had one."""
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            note = json.loads(self.note.read_text())
            if note.get("project"):
                return Path(note["project"])
        return None


class RecoveryStore:
    """This instance's recovery files, and the orphans of instances that ended."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.project = folder / f"{PREFIX}{self.id}{SUFFIX}"
        self.note = folder / f"{PREFIX}{self.id}.json"
        self.lock = InstanceLock(folder / f"{PREFIX}{self.id}.lock")

    def _ensure_lock(self) -> None:
        if not self.lock.held:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self.lock.acquire():
                raise OSError(f"cannot lock {self.lock.path}")

    def write(self, save: Any, project_path: Path | None) -> None:
        """``save(path)`` writes the recovery project; then the note says where it came from."""
        self._ensure_lock()
        save(self.project)
        note = {"project": str(project_path) if project_path else None, "time": time.time()}
        self.note.write_text(json.dumps(note))

    def remove(self) -> None:
        """Deliberately closed or saved: nothing of this instance is left to recover."""
        for path in (self.project, self.note):
            with contextlib.suppress(OSError):
                path.unlink()

    def close(self) -> None:
        """The instance ends normally (its recovery files were removed or are wanted)."""
        self.lock.release(remove=not self.project.exists())

    def remove_stale_temporaries(self) -> int:
        """Half-written autosaves of instances killed mid-save (their writers' locks are gone)."""
        removed = 0
        with contextlib.suppress(OSError):
            for name in os.listdir(self.folder):
                found = _TEMPORARY.match(name)
                if found:
                    removed += remove_stale_temporaries(self.folder / found.group(1))
        return removed

    def orphans(self) -> list[Orphan]:
        """Recovery files of instances that are gone, newest first, each claimed."""
        if not self.folder.is_dir():
            return []
        self.remove_stale_temporaries()
        found: list[tuple[float, Orphan]] = []
        for path in self.folder.glob(f"{PREFIX}*{SUFFIX}"):
            if path == self.project:
                continue
            stem = path.name[: -len(SUFFIX)]
            lock = InstanceLock(self.folder / f"{stem}.lock")
            if not lock.acquire():
                continue  # its instance is still running
            found.append((_mtime(path), Orphan(path, self.folder / f"{stem}.json", lock)))
        legacy = self.folder / LEGACY
        if legacy.is_file():
            found.append((_mtime(legacy), Orphan(legacy, self.folder / "recovery.json", None)))
        return [o for _, o in sorted(found, key=lambda t: -t[0])]

    def discard(self, orphan: Orphan) -> None:
        for path in (orphan.project, orphan.note):
            with contextlib.suppress(OSError):
                path.unlink()
        if orphan.lock is not None:
            orphan.lock.release(remove=True)

    def adopt(self, orphan: Orphan) -> None:
        """Recovered: the orphan's file becomes this instance's recovery file until saved."""
        self._ensure_lock()
        with contextlib.suppress(OSError):
            os.replace(orphan.project, self.project)
        with contextlib.suppress(OSError):
            os.replace(orphan.note, self.note)
        self.discard(orphan)

    @staticmethod
    def release(orphans: list[Orphan]) -> None:
        """Leave these for a later start (unclaim them)."""
        for orphan in orphans:
            if orphan.lock is not None:
                orphan.lock.release()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
