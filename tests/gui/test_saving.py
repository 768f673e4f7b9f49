"""Saving off the GUI thread: the window keeps running while a project is written, a second
save to the same file waits (the newest one wins), failures get the dialog, quitting waits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer

import dragstudio.file_controller as file_controller
from backend.project import read_project, save_project
from tests.project_helpers import sample_project


class SlowWriter:
    """Stands in for ``save_project``: blocks on the saving thread until released, records
    which thread wrote and how many writers ever ran at once, then really writes."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: list[int] = []
        self.prompts: list[str] = []
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def __call__(self, project, path, **kwargs) -> None:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            self.threads.append(threading.get_ident())
            assert self.release.wait(30), "the test never released the save"
            self.prompts.append(project.prompt)
            save_project(project, path, **kwargs)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def slow(monkeypatch: pytest.MonkeyPatch) -> SlowWriter:
    writer = SlowWriter()
    monkeypatch.setattr(file_controller, "save_project", writer)
    return writer


def _open_edited(window, tmp_path: Path) -> Path:
    src = tmp_path / "p.dragstudio"
    save_project(sample_project(), src)
    assert window.open_path(src)
    window.fill_mask()
    assert not window.undo_stack.isClean()
    return src


def _ticker(window) -> list[int]:
    """A timer on the GUI thread; it only ticks while that thread runs its event loop."""
    ticks: list[int] = []
    timer = QTimer(window)
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    return ticks


def test_the_window_keeps_running_while_a_save_is_written(window, qtbot, tmp_path, slow):
    _open_edited(window, tmp_path)
    ui, out = window.file_controller, tmp_path / "out.dragstudio"
    ticks = _ticker(window)
    assert ui.save_to(out)  # returns at once: the writer is still blocked
    assert ui.saves.busy and not out.exists()
    assert window.statusBar().currentMessage() == "Saving out.dragstudio…"
    qtbot.waitUntil(lambda: len(ticks) >= 20, timeout=20000)
    assert ui.saves.busy and not out.exists()  # 20 ticks on the GUI thread during the save
    assert slow.threads and slow.threads[0] != threading.get_ident()
    slow.release.set()
    qtbot.waitUntil(lambda: not ui.saves.busy, timeout=20000)
    assert read_project(out).mask.all()
    assert window.undo_stack.isClean() and window.document.path == out
    assert window.statusBar().currentMessage() == "Saved out.dragstudio"
    assert not window.errors


def test_a_large_real_save_leaves_the_gui_thread_free(window, qtbot, tmp_path, monkeypatch):
    """The real writer (a 12 MP noise photo compresses slowly) never runs on the GUI thread."""
    import numpy as np

    threads: list[int] = []

    def recording(project, path, **kwargs):
        threads.append(threading.get_ident())
        save_project(project, path, **kwargs)

    monkeypatch.setattr(file_controller, "save_project", recording)
    rng = np.random.default_rng(0)
    window.document.set_image(rng.integers(0, 256, (3000, 4000, 3), np.uint8))
    window.fill_mask()
    ticks = _ticker(window)
    assert window.file_controller.save_to(tmp_path / "big.dragstudio")
    start = len(ticks)
    qtbot.waitUntil(lambda: not window.file_controller.saves.busy, timeout=120000)
    assert threads and threads[0] != threading.get_ident()
    assert len(ticks) > start  # the GUI thread ran its timer while the photo was encoded
    assert read_project(tmp_path / "big.dragstudio").original.shape == (3000, 4000, 3)


def test_a_failing_background_save_shows_the_dialog_and_stays_modified(
    window, qtbot, tmp_path, monkeypatch
):
    _open_edited(window, tmp_path)

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_controller, "save_project", broken)
    ui = window.file_controller
    assert ui.save_to(tmp_path / "out.dragstudio")
    qtbot.waitUntil(lambda: bool(window.errors), timeout=20000)
    assert window.errors[-1][0] == "Cannot save project"
    assert "No space left on device" in window.errors[-1][1]
    assert not window.undo_stack.isClean() and window.isWindowModified()
    assert window.document.path == tmp_path / "p.dragstudio"
    assert "Could not save out.dragstudio" in window.statusBar().currentMessage()


def test_saves_to_one_file_never_overlap_and_the_newest_wins(window, qtbot, tmp_path, slow):
    _open_edited(window, tmp_path)
    ui, out = window.file_controller, tmp_path / "out.dragstudio"
    for prompt in ("first", "second", "third"):
        window.document.set_prompt(prompt)
        assert ui.save_to(out)
    qtbot.waitUntil(lambda: len(slow.threads) == 1)
    slow.release.set()
    assert ui.saves.wait(60)
    # The first was already writing; "second" was replaced by "third" while it waited.
    assert slow.prompts == ["first", "third"] and slow.most_active == 1
    assert read_project(out).prompt == "third"


def test_an_edit_during_the_save_keeps_the_document_modified(window, qtbot, tmp_path, slow):
    _open_edited(window, tmp_path)
    ui, out = window.file_controller, tmp_path / "out.dragstudio"
    assert ui.save_to(out)
    qtbot.waitUntil(lambda: len(slow.threads) == 1)
    window.invert_mask()  # after the snapshot: the file will not hold it
    slow.release.set()
    assert ui.saves.wait(60)
    assert read_project(out).mask.all()  # the snapshot, not the inverted mask
    assert not window.undo_stack.isClean() and not window.errors
    assert window.document.path == out  # the next Ctrl+S goes there without asking


def test_a_save_that_ends_after_another_photo_opened_leaves_it_alone(
    window, qtbot, tmp_path, slow, sample_image
):
    _open_edited(window, tmp_path)
    ui, out = window.file_controller, tmp_path / "out.dragstudio"
    assert ui.save_to(out)
    qtbot.waitUntil(lambda: len(slow.threads) == 1)
    assert window.open_path(sample_image)
    window.fill_mask()
    slow.release.set()
    assert ui.saves.wait(60)
    assert read_project(out).pairs == sample_project().pairs  # the project was saved
    assert window.document.path == Path(sample_image) and ui.path is None
    assert not window.undo_stack.isClean()  # the photo's own edit is still unsaved


def test_closing_waits_for_a_running_save(window, qtbot, tmp_path, slow):
    _open_edited(window, tmp_path)
    ui, out = window.file_controller, tmp_path / "out.dragstudio"
    assert ui.save_to(out)
    qtbot.waitUntil(lambda: len(slow.threads) == 1)
    QTimer.singleShot(50, slow.release.set)  # the save ends while close() waits for it
    assert window.close()
    assert read_project(out).mask.all()  # written before the window went
    assert not ui.saves.busy


def test_closing_after_the_bounded_wait_asks(window, qtbot, tmp_path, slow):
    _open_edited(window, tmp_path)
    ui = window.file_controller
    ui.save_wait_s = 0.2
    asked: list[str] = []
    ui.ask_close_while_saving = lambda name: asked.append(name) or False
    assert ui.save_to(tmp_path / "out.dragstudio")
    qtbot.waitUntil(lambda: len(slow.threads) == 1)
    assert not window.close() and window.isVisible()  # "Close anyway?" — No
    assert asked == ["out.dragstudio"]
    assert "Finishing saving out.dragstudio" in window.statusBar().currentMessage()
    slow.release.set()
    assert ui.saves.wait(60) and window.undo_stack.isClean()
    assert window.close()


def test_autosave_runs_in_the_background_and_a_removal_waits_behind_it(
    window, qtbot, tmp_path, slow
):
    _open_edited(window, tmp_path)
    ui = window.file_controller
    assert ui.autosave()
    qtbot.waitUntil(lambda: len(slow.threads) == 1)
    window.undo_stack.setClean()  # as if the project were saved meanwhile: nothing to recover
    ui.remove_recovery()
    assert not ui.autosave()  # a clean document has nothing to autosave
    slow.release.set()
    assert ui.saves.wait(60)
    assert not ui.recovery_file.exists()  # the autosave did not bring it back


def test_closing_anyway_does_not_wait_again(window, qtbot, tmp_path, slow, monkeypatch):
    _open_edited(window, tmp_path)
    ui = window.file_controller
    ui.save_wait_s = 0.2
    ui.ask_close_while_saving = lambda name: True  # "Close anyway?" — Yes
    assert ui.save_to(tmp_path / "out.dragstudio")
    qtbot.waitUntil(lambda: len(slow.threads) == 1)
    waits: list[float] = []
    real_wait = ui.saves.wait
    monkeypatch.setattr(ui.saves, "wait", lambda s: waits.append(s) or real_wait(s))
    assert window.close()
    assert waits == [0.2]  # the bounded wait before asking; none after the answer
    assert ui.saves.busy and not (tmp_path / "out.dragstudio").exists()
    slow.release.set()  # let the abandoned writer end before the window goes
    assert real_wait(60)
