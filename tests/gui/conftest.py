"""GUI tests run headless on Qt's offscreen platform, with settings in a temporary file."""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QSettings

DEV = Path("/work/shared/data/dragbench-dev")
SAMPLE = DEV / "animals" / "JH_2023-09-14-1820-16" / "original_image.png"


@pytest.fixture
def sample_image(tmp_path: Path) -> Path:
    """A DragBench dev photo, or a generated stand-in where the data set is absent."""
    if SAMPLE.exists():
        return SAMPLE
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    path = tmp_path / "stand_in.png"
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), np.uint8)).save(path)
    return path


@pytest.fixture(autouse=True)
def no_close_questions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing a window with unsaved work would ask; headless tests answer "discard"."""
    from dragstudio.main_window import MainWindow

    monkeypatch.setattr(MainWindow, "ask_save_changes", lambda self: "discard")
    monkeypatch.setattr(MainWindow, "ask_recover", lambda self, path: False)


@pytest.fixture
def settings(tmp_path: Path) -> QSettings:
    """Background preparation off: these tests time and cancel the Drag's own stages
    (tests/gui/test_prepare_window.py turns it on)."""
    (tmp_path / "settings.json").write_text('{"version": 1, "prepare_in_background": false}')
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, settings: QSettings) -> Iterator[object]:
    from dragstudio.main_window import MainWindow

    w = MainWindow(settings)
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    qtbot.waitExposed(w)
    # Dialogs would block a headless run: record them instead.
    w.errors = []  # type: ignore[attr-defined]
    w.show_error = lambda title, message: w.errors.append((title, message))  # type: ignore[method-assign]
    w.confirm_discard = lambda: True  # type: ignore[method-assign]
    yield w


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A qasync event loop for tests that await engine jobs.

    It is not closed: an engine thread still finishing a cancelled job may post to it later,
    and posting to a closed qasync loop crashes Qt (seen as a segfault in a later test). Its
    default executor (``asyncio.to_thread``, used by the remote host) is a plain thread pool:
    qasync's own would leave QThreads running at exit, which aborts the process.
    """
    from concurrent.futures import ThreadPoolExecutor

    import qasync
    from PySide6.QtWidgets import QApplication

    class Loop(qasync.QEventLoop):
        """After stopping, qasync's ``run_until_complete`` lets Qt process the events left once
        more, but after ``run_forever`` has unset the running loop: a task step dispatched
        then (a remote host's connect, scheduled as the awaited future completed) found "no
        running event loop" and the job failed in 2 ms (seen once in a full run). Here those
        last events run inside the loop, as they do in the app, whose loop runs till it quits."""

        def run_until_complete(self, future: Any) -> Any:
            future = asyncio.ensure_future(future, loop=self)

            def stop(_future: Any) -> None:
                self.stop()

            future.add_done_callback(stop)
            try:
                self.run_forever()
            finally:
                future.remove_done_callback(stop)
            asyncio._set_running_loop(self)
            try:
                app.processEvents()
            finally:
                asyncio._set_running_loop(None)
            if not future.done():
                raise RuntimeError("Event loop stopped before Future completed.")
            return future.result()

    app = QApplication.instance() or QApplication([])
    event_loop = Loop(app)
    executor = ThreadPoolExecutor(thread_name_prefix="test-loop")
    event_loop.set_default_executor(executor)
    asyncio.set_event_loop(event_loop)
    yield event_loop
    asyncio.set_event_loop(None)
    executor.shutdown(wait=False, cancel_futures=True)
