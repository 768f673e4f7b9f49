"""Saving off the GUI thread: one writer at a time, in the order asked, the newest per file.

Encoding a project (PNG-compressing a 12 MP photo and its results) takes seconds; on the GUI
thread every autosave froze the window for that long. The window now takes a snapshot of the
document (its arrays are never changed in place, so the snapshot costs references and a mask
copy) and hands a job to this queue. The jobs run one after another, each on a daemon thread
of its own, so no two writers ever touch a file; a job for a file that already has one
*waiting* replaces it (the newer snapshot wins; the one being written finishes first).
Results come back on the GUI thread through a queued signal. Files are written atomically
(``backend.atomicio``), so a process that quits before a job ends leaves the previous file
whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, Qt, Signal, Slot

Work = Callable[[], None]
Done = Callable[[BaseException | None], None]


@dataclass(eq=False)
class SaveJob:
    """``work`` runs on the saving thread; ``done(error)`` on the GUI thread afterwards."""

    target: Path
    """The file it writes: a waiting job for the same file is replaced by a newer one."""
    work: Work
    done: Done = field(default=lambda _error: None)
    name: str = ""
    """Shown while it runs ("Saving NAME…")."""


class SaveQueue(QObject):
    """Runs :class:`SaveJob` s one at a time on a background thread."""

    started = Signal(object)
    """A job began writing (its :class:`SaveJob`)."""
    idle = Signal()
    """Nothing runs or waits any more."""
    _finished = Signal(object, object)  # (job, error), emitted on the saving thread

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._running: SaveJob | None = None
        self._waiting: list[SaveJob] = []
        self._wake = threading.Event()
        """Set by the saving thread when a job ends, so a wait does not spin."""
        self._finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)

    @property
    def busy(self) -> bool:
        return self._running is not None or bool(self._waiting)

    @property
    def running(self) -> SaveJob | None:
        return self._running

    def submit(self, job: SaveJob) -> None:
        """Queue ``job``; a job for the same file that has not started yet is dropped."""
        key = file_key(job.target)
        self._waiting = [j for j in self._waiting if file_key(j.target) != key]
        self._waiting.append(job)
        self._start_next()

    def _start_next(self) -> None:
        if self._running is not None:
            return
        if not self._waiting:
            self.idle.emit()
            return
        job = self._running = self._waiting.pop(0)
        self.started.emit(job)
        thread = threading.Thread(target=self._work, args=(job,), name="save", daemon=True)
        thread.start()

    def _work(self, job: SaveJob) -> None:
        error: BaseException | None = None
        try:
            job.work()
        except BaseException as exc:  # reported on the GUI thread, never lost
            error = exc
        self._wake.set()
        self._finished.emit(job, error)

    @Slot(object, object)
    def _on_finished(self, job: SaveJob, error: BaseException | None) -> None:
        self._running = None
        try:
            job.done(error)
        finally:
            self._start_next()

    def wait(self, timeout_s: float) -> bool:
        """Let every queued job finish, painting meanwhile (user input waits); False when
        ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.busy:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._wake.wait(min(0.03, left))
            self._wake.clear()
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents, 30)
        return True


def file_key(path: Path) -> Path:
    """The file a path names, for telling two saves to one file apart."""
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
