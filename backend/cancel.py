"""Cooperative cancellation, torch-free so the GUI thread can create tokens."""

from __future__ import annotations

import threading

from backend.errors import Cancelled


class CancelToken:
    """Set from any thread; the engine checks it at every step of every loop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()
