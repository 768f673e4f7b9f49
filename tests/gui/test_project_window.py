"""Projects in the window: round trip, bad files, close prompt, recovery, export, cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from backend.export import read_record
from backend.lora_cache import LoraCache
from backend.project import read_project, save_project
from tests.project_helpers import KEY, assert_same_project, sample_project


def test_open_then_save_round_trips_everything(window, tmp_path: Path) -> None:
    src, out = tmp_path / "in.dragstudio", tmp_path / "out.dragstudio"
    project = sample_project()
    save_project(project, src)
    assert window.open_path(src)
    doc = window.document
    assert doc.image is not None and np.array_equal(doc.image, project.history[-1].after)
    assert doc.pairs == project.pairs and doc.prompt == project.prompt
    assert window.parameters is not None and window.windowTitle().startswith("in.dragstudio")
    # The bundled LoRA stays with the document (the engine host hands it to the next drag);
    # the shared cache holds only LoRAs this machine trained.
    assert window.lora_cache.read_bytes(KEY) is None
    assert window.drag_ui.host.document_lora().data == project.lora.data
    assert window.file_controller.save_to(out, wait=True)
    assert_same_project(project, read_project(out))
    assert window.undo_stack.isClean()
    assert window.file_controller.recent()[0] == str(out.resolve())


def test_a_bad_project_names_the_problem_and_changes_nothing(window, tmp_path, sample_image):
    assert window.open_path(sample_image)
    before = window.document.image
    bad = tmp_path / "bad.dragstudio"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert not window.open_path(bad)
    assert window.errors and "bad.dragstudio" in window.errors[-1][1]
    assert window.document.image is before


def test_closing_with_unsaved_work_asks(window, sample_image) -> None:
    assert window.open_path(sample_image)
    window.clear_points()
    window.fill_mask()
    assert not window.undo_stack.isClean()
    asked = []
    window.ask_save_changes = lambda: asked.append(1) or "cancel"
    assert not window.close() and window.isVisible() and asked
    window.ask_save_changes = lambda: "discard"
    assert window.close()


def test_autosave_and_recovery(window, qtbot, settings, tmp_path: Path) -> None:
    save_project(sample_project(), tmp_path / "p.dragstudio")
    assert window.open_path(tmp_path / "p.dragstudio")
    window.fill_mask()
    ui = window.file_controller
    assert ui.autosave(wait=True) and ui.recovery_file.is_file()
    from dragstudio.main_window import MainWindow

    again = MainWindow(settings)
    qtbot.addWidget(again)
    asked: list[Path] = []
    again.ask_recover = lambda path: asked.append(path) or False
    assert not again.file_controller.offer_recovery()  # the first instance still runs: not offered
    assert not asked and ui.recovery_file.is_file()  # and its file is not deleted
    ui.recovery.lock.release()  # as if the first instance were killed
    again.ask_recover = lambda path: True
    assert again.file_controller.offer_recovery()
    assert again.document.mask.all() and not again.undo_stack.isClean()
    assert again.file_controller.path == tmp_path / "p.dragstudio"
    again.ask_save_changes = lambda: "discard"
    again.close()
    assert not ui.recovery_file.exists()  # a deliberate close leaves nothing to recover


def test_export_png_jpeg_webp_and_series(window, tmp_path: Path) -> None:
    project = sample_project()
    save_project(project, tmp_path / "p.dragstudio")
    assert window.open_path(tmp_path / "p.dragstudio")
    ui = window.file_controller
    assert ui.export_to(tmp_path / "e.png")
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "e.png")), project.history[-1].after)
    record = read_record(tmp_path / "e.png")
    assert record["prompt"] == project.prompt and len(record["accepted_drags"]) == 2
    for name in ("e.jpg", "e.webp"):
        assert ui.export_to(tmp_path / name, quality=80)
        assert Image.open(tmp_path / name).size == (40, 32)
        assert read_record(tmp_path / name)["model"] == "tiny"
    paths = ui.export_series_to(tmp_path / "s.png")
    assert [p.name for p in paths] == ["s-0001.png", "s-0002.png"]
    assert read_record(paths[1])["pairs"][1]["target"] == [11.0, 12.0]
    ui.copy_image()
    from PySide6.QtGui import QGuiApplication

    assert QGuiApplication.clipboard().image().size().width() == 40


def test_cache_dialog_shows_limits_and_clears(window, tmp_path: Path) -> None:
    from backend.request import LoraParams
    from dragstudio.project_dialogs import CacheSettingsDialog
    from tests.project_helpers import lora_bytes

    cache = LoraCache(tmp_path / "cache")
    blob = lora_bytes(LoraParams())
    for n in range(3):
        cache.put_bytes(f"{n:064x}", blob)
    dialog = CacheSettingsDialog(cache, window.prefs, window)
    assert "in 3 LoRA(s)" in dialog.size_label.text()
    dialog.limit.setValue(0.1)  # far above 3 small entries: nothing goes
    assert len(cache.entries()) == 3 and window.prefs.get("lora_cache_limit_gb") == 0.1
    cache.limit_bytes = 2 * len(blob)
    cache.evict()
    assert [p.stem for p, _, _ in cache.entries()] == [f"{n:064x}" for n in (1, 2)]
    dialog.clear_button.click()
    assert cache.entries() == [] and "in 0 LoRA(s)" in dialog.size_label.text()


def test_lora_cache_stays_torch_free_and_drops_corrupt_entries(tmp_path: Path) -> None:
    code = "import sys, backend.lora_cache; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False"
    cache = LoraCache(tmp_path)
    cache.put_bytes(KEY, b"\x00" * 40)  # corrupt
    from backend.lora import cached_lora

    assert cached_lora(cache, KEY) is None and cache.read_bytes(KEY) is None  # dropped


def test_opening_a_project_goes_through_the_document_switch(window, tmp_path: Path) -> None:
    save_project(sample_project(), tmp_path / "p.dragstudio")
    steps: list[str] = []
    window.switch.on_leave(lambda: steps.append("leave"))
    window.switch.on_forget(lambda: steps.append("forget"))
    window.switch.on_opened(lambda _keep: steps.append("opened"))
    assert window.open_path(tmp_path / "p.dragstudio")
    assert steps == ["leave", "forget", "opened"]
    files = window.file_controller
    assert files.path == tmp_path / "p.dragstudio" and files.bundled is not None  # set after
    assert window.statusBar().currentMessage() == "Opened p.dragstudio"
    assert window.undo_stack.isClean() and window.windowTitle().startswith("p.dragstudio")
