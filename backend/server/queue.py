"""One engine's job queue, fair across sessions: each session's jobs in order, sessions in turn.

A session that submits a batch of ten does not make another session's single drag wait for
all ten: the engine takes one job from each waiting session in round-robin order. Background
jobs (``put(job, background=True)``: a preparation) are taken only when no other job waits, in
the order they came. Thread-safe: the server's event loop puts and removes, the engine thread
takes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    @property
    def owner(self) -> Hashable: ...


J = TypeVar("J", bound=Queued)


class FairQueue(Generic[J]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._turns: OrderedDict[Hashable, deque[J]] = OrderedDict()
        self._background: deque[J] = deque()
        self._closed = False

    def put(self, job: J, *, background: bool = False) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the queue is closed")
            if background:
                self._background.append(job)
            else:
                self._turns.setdefault(job.owner, deque()).append(job)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> J | None:
        """The next job (round-robin over owners, then background jobs); None when closed or
        on timeout."""
        with self._cond:
            if not self._cond.wait_for(self._ready, timeout):
                return None
            if self._closed:
                return None
            if not self._turns:
                return self._background.popleft()
            owner, jobs = next(iter(self._turns.items()))
            job = jobs.popleft()
            del self._turns[owner]
            if jobs:
                self._turns[owner] = jobs  # back of the line
            return job

    def _ready(self) -> bool:
        return bool(self._turns or self._background or self._closed)

    def remove(self, job: J) -> bool:
        """Take a queued job out (a cancel); False if it is not waiting any more."""
        with self._cond:
            if job in self._background:
                self._background.remove(job)
                return True
            jobs = self._turns.get(job.owner)
            if jobs is None or job not in jobs:
                return False
            jobs.remove(job)
            if not jobs:
                del self._turns[job.owner]
            return True

    def position(self, job: J) -> int:
        """How many jobs the engine takes before this one (0: next), or -1 if not queued."""
        with self._cond:
            if job in self._background:
                waiting = sum(len(j) for j in self._turns.values())
                return waiting + self._background.index(job)
            jobs = self._turns.get(job.owner)
            if jobs is None or job not in jobs:
                return -1
            rank = list(jobs).index(job)
            ahead = 0
            for owner, other in self._turns.items():
                # Each round takes one job per owner; owners before ours in this round too.
                before = owner != job.owner and list(self._turns).index(owner) < list(
                    self._turns
                ).index(job.owner)
                ahead += min(len(other), rank + (1 if before else 0))
            return ahead

    def __len__(self) -> int:
        with self._cond:
            return sum(len(j) for j in self._turns.values()) + len(self._background)

    def waiting(self) -> list[J]:
        """The jobs that wait, background jobs left out (they never preempt anything)."""
        with self._cond:
            return [j for jobs in self._turns.values() for j in jobs]

    def close(self) -> list[J]:
        """Stop handing out jobs; return those still waiting."""
        with self._cond:
            self._closed = True
            left = [j for jobs in self._turns.values() for j in jobs] + list(self._background)
            self._turns.clear()
            self._background.clear()
            self._cond.notify_all()
            return left
