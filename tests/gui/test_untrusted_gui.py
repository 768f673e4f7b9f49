"""The window's side of issue 13: recovery per instance (item 2), failing saves and exports
always get a dialog and never stop autosave (items 3, 6)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from backend.project import read_project, save_project
from dragstudio.recovery import RecoveryStore
from tests.project_helpers import sample_project


def test_a_killed_instances_recovery_file_is_offered_only_once_it_is_gone(tmp_path: Path) -> None:
    """A second instance must not see (or delete) a live one's file; after kill -9 it may."""
    folder = tmp_path / "recovery"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from dragstudio.recovery import RecoveryStore
        store = RecoveryStore(Path({str(folder)!r}))
        store.write(lambda p: p.write_bytes(b"work"), None)
        print("saved", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "saved"
        second = RecoveryStore(folder)
        assert second.orphans() == []  # alive: not offered
        assert len(list(folder.glob("recovery-*.dragstudio"))) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    (orphan,) = second.orphans()
    assert orphan.project.read_bytes() == b"work"
    assert RecoveryStore(folder).orphans() == []  # claimed by the second instance meanwhile
    second.adopt(orphan)
    assert second.project.read_bytes() == b"work" and not orphan.project.exists()


def test_answering_no_in_one_window_leaves_another_windows_work(
    window, qtbot, settings, tmp_path: Path
) -> None:
    from dragstudio.main_window import MainWindow

    save_project(sample_project(), tmp_path / "p.dragstudio")
    assert window.open_path(tmp_path / "p.dragstudio")
    window.fill_mask()
    assert window.file_controller.autosave(wait=True)
    other = MainWindow(settings)
    qtbot.addWidget(other)
    other.ask_recover = lambda path: False  # "No": discard what is offered
    assert not other.file_controller.offer_recovery()
    assert window.file_controller.recovery_file.is_file()  # the live window's work survives
    assert other.file_controller.recovery_file != window.file_controller.recovery_file
    other.close()


def test_a_failing_save_shows_a_dialog_and_autosave_keeps_going(window, tmp_path, monkeypatch):
    save_project(sample_project(), tmp_path / "p.dragstudio")
    assert window.open_path(tmp_path / "p.dragstudio")
    window.document.set_prompt("broken \ud800 text")  # e.g. pasted from a broken source
    window.fill_mask()
    ui = window.file_controller
    assert ui.autosave(wait=True) and read_project(ui.recovery_file).prompt == "broken \ufffd text"
    assert ui.save_to(tmp_path / "q.dragstudio", wait=True)
    assert read_project(tmp_path / "q.dragstudio").prompt == "broken \ufffd text"

    import dragstudio.file_controller as file_controller

    def explode(*_a, **_k):
        raise ValueError("something unexpected")

    monkeypatch.setattr(file_controller, "save_project", explode)
    window.invert_mask()
    assert not window.undo_stack.isClean()
    assert not ui.save_to(tmp_path / "r.dragstudio", wait=True)
    assert window.errors[-1][0] == "Cannot save project" and "unexpected" in window.errors[-1][1]
    assert not ui.autosave(
        wait=True
    )  # reported in the status bar, never raised into the event loop
    assert "Autosave failed" in window.statusBar().currentMessage()


def test_a_long_history_exports_as_jpeg_and_failures_get_a_dialog(window, tmp_path: Path) -> None:
    from backend.export import read_record

    project = sample_project()
    long = project.history * 300  # a history whose record is far beyond EXIF's 64 KB
    save_project(sample_project(), tmp_path / "p.dragstudio")
    assert window.open_path(tmp_path / "p.dragstudio")
    window.document.history = list(long)
    ui = window.file_controller
    assert ui.export_to(tmp_path / "e.jpg")
    record = read_record(tmp_path / "e.jpg")
    assert record["summary"] is True and record["accepted_drags"] == 600
    assert ui.export_to(tmp_path / "e.webp")  # WebP keeps the full record (XMP)
    assert len(read_record(tmp_path / "e.webp")["accepted_drags"]) == 600
    assert not window.errors
    assert not ui.export_to(tmp_path / "missing-folder" / "e.png")
    assert window.errors[-1][0] == "Cannot export"
    window.document.history = list(project.history)
    assert np.array_equal(window.document.image, project.history[-1].after)


def test_a_half_written_autosave_of_a_killed_instance_is_cleaned_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "recovery"
    folder.mkdir()
    stale = folder / ".recovery-123-0badf00d.dragstudio.abcd_123.tmp"
    stale.write_bytes(b"half a zip")
    mine = folder / ".unrelated.dragstudio.abcd_123.tmp"
    mine.write_bytes(b"not ours to remove")
    store = RecoveryStore(folder)
    assert store.orphans() == []
    assert not stale.exists() and mine.exists()
