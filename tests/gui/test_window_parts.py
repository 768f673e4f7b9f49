"""Canvas navigation, side panels, status bar, shortcuts, settings and start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gui_helpers import drag, mouse
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from backend.request import DEFAULT_MODEL, DragParams, LoraParams
from dragstudio.canvas import Tool
from dragstudio.panels.parameters import SPECS

REPO = Path(__file__).resolve().parents[2]


def wheel(widget, pos: QPointF, delta: int) -> None:
    event = QWheelEvent(
        pos,
        widget.mapToGlobal(pos),
        QPoint(0, 0),
        QPoint(0, delta),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


def test_wheel_zooms_around_the_cursor(window, sample_image: Path) -> None:
    window.open_path(sample_image)
    canvas = window.canvas
    anchor = QPointF(300.0, 200.0)
    under = canvas.view_to_image(anchor)
    zoom = canvas.zoom
    wheel(canvas, anchor, 240)
    assert canvas.zoom == pytest.approx(zoom * 2**0.5)
    after = canvas.view_to_image(anchor)
    assert after == pytest.approx(under, abs=1e-6)
    wheel(canvas, anchor, -480)
    assert canvas.zoom == pytest.approx(zoom / 2**0.5)


def test_fit_actual_size_and_status(window, sample_image: Path) -> None:
    window.open_path(sample_image)
    canvas = window.canvas
    w, h = window.document.size
    rect = canvas.transform.image_rect(w, h)
    assert rect.width() <= canvas.width() and rect.height() <= canvas.height()
    assert max(rect.width() / canvas.width(), rect.height() / canvas.height()) > 0.9
    window.actions["actual_size"].trigger()
    assert canvas.zoom_percent == pytest.approx(100.0)
    assert window.zoom_label.text() == "100 %"
    window.actions["fit"].trigger()
    assert canvas.transform.image_rect(w, h) == rect
    assert window.size_label.text() == f"{w} × {h} px"
    mouse(canvas, QEvent.Type.MouseMove, canvas.image_to_view((12.0, 34.0)), buttons=None)
    assert window.position_label.text() == "x 12, y 34"


def test_pan_with_middle_button_and_space(window, sample_image: Path, qtbot) -> None:
    window.open_path(sample_image)
    canvas = window.canvas
    t0 = canvas.transform
    drag(canvas, [QPointF(200, 200), QPointF(230, 180)], Qt.MouseButton.MiddleButton)
    t1 = canvas.transform
    assert (t1.ox - t0.ox, t1.oy - t0.oy) == pytest.approx((30, -20))
    assert window.document.pairs == ()  # panning never places points
    canvas.setFocus()
    qtbot.keyPress(canvas, Qt.Key.Key_Space)
    drag(canvas, [QPointF(200, 200), QPointF(190, 215)])
    qtbot.keyRelease(canvas, Qt.Key.Key_Space)
    t2 = canvas.transform
    assert (t2.ox - t1.ox, t2.oy - t1.oy) == pytest.approx((-10, 15))
    assert window.document.pairs == ()


def test_tools_have_shortcuts_shown_in_tooltips(window) -> None:
    for name in ["tool_point", "tool_brush", "tool_eraser", "tool_pan", "open", "undo", "redo",
                 "delete_pair", "clear_mask", "invert_mask", "fill_mask", "fit", "actual_size",
                 "toggle_overlay", "brush_smaller", "brush_larger"]:  # fmt: skip
        action = window.actions[name]
        assert not action.shortcut().isEmpty(), name
        assert action.shortcut().toString() in action.toolTip(), name
    assert window.actions["tool_brush"].shortcut().toString() == "B"
    shortcuts = {s.toString() for s in window.actions["redo"].shortcuts()}
    assert shortcuts == {"Ctrl+Shift+Z", "Ctrl+Y"}
    assert window.actions["undo"].shortcut().toString() == "Ctrl+Z"


def test_tool_switching_and_brush_size(window) -> None:
    window.actions["tool_brush"].trigger()
    assert window.canvas.tool == Tool.BRUSH
    assert window.tool_label.text().startswith("Mask brush")
    r = window.canvas.brush_radius
    window.actions["brush_larger"].trigger()
    assert window.canvas.brush_radius > r
    assert window.brush_spin.value() == round(window.canvas.brush_radius)
    window.actions["brush_smaller"].trigger()
    window.actions["brush_smaller"].trigger()
    assert window.canvas.brush_radius < r
    window.actions["tool_eraser"].trigger()
    assert window.canvas.tool == Tool.ERASER and window.tool_label.text().startswith("Mask eraser")


def test_parameters_panel_edits_are_undoable(window) -> None:
    panel, doc, stack = window.parameters, window.document, window.undo_stack
    assert doc.params == DragParams() and doc.lora == LoraParams()
    for spec in SPECS:
        assert len(panel.spins[spec.key].toolTip()) > 20, spec.key
    assert panel.spins["lora_steps"].value() == 80
    assert panel.spins["inversion_strength"].value() == pytest.approx(0.7)
    assert panel.spins["latent_lr"].value() == pytest.approx(0.01)
    panel.spins["drag_steps"].setValue(50)
    panel.spins["drag_steps"].setValue(60)  # merges with the previous change
    panel.spins["lam"].setValue(0.3)
    panel.spins["seed"].setValue(42)
    assert doc.params.drag_steps == 60 and doc.params.lam == pytest.approx(0.3)
    assert doc.lora.seed == 42
    assert stack.count() == 3 and window.isWindowModified()
    stack.undo()
    assert doc.lora.seed == 0 and panel.spins["seed"].value() == 0
    stack.undo()
    stack.undo()
    assert doc.params.drag_steps == 80 and panel.spins["drag_steps"].value() == 80
    stack.redo()
    panel.reset_to_defaults()
    assert doc.params == DragParams() and panel.spins["drag_steps"].value() == 80
    stack.undo()
    assert doc.params.drag_steps == 60


def test_prompt_typing_is_one_undo_step(window, qtbot) -> None:
    line = window.parameters.prompt
    qtbot.keyClicks(line, "a corgi")
    assert window.document.prompt == "a corgi"
    assert window.undo_stack.count() == 1
    window.undo_stack.undo()
    assert window.document.prompt == "" and line.text() == ""


def test_model_picker_is_remembered(window, settings, tmp_path) -> None:
    from dragstudio.main_window import MainWindow

    assert window.document.model == DEFAULT_MODEL
    window.model_picker.choose(str(tmp_path / "my-model.safetensors"))
    assert window.document.model.endswith("my-model.safetensors")
    window.close()
    again = MainWindow(settings)
    try:
        assert again.document.model.endswith("my-model.safetensors")
        assert again.model_picker.combo.currentText() == again.document.model
    finally:
        again.deleteLater()


def test_window_geometry_is_remembered(window, settings) -> None:
    from dragstudio.main_window import MainWindow

    window.resize(730, 520)  # within the offscreen 800×600 screen
    window.close()
    again = MainWindow(settings)
    try:
        assert (again.width(), again.height()) == (730, 520)
    finally:
        again.deleteLater()


def test_drop_a_file_onto_the_window(window, sample_image: Path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(sample_image))])
    event = QDropEvent(
        QPointF(50, 50),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)
    assert window.document.has_image and window.document.path == sample_image


def test_version_flag(capsys) -> None:
    from dragstudio.app import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "DragStudio 0.1.0"


def test_startup_imports_no_torch_nor_the_engine(sample_image: Path, tmp_path) -> None:
    # Startup is quick because nothing heavy loads: checked by what is imported, not by a
    # wall-clock bound that a loaded machine could break.
    code = textwrap.dedent(
        f"""
        import sys
        from PySide6.QtCore import QSettings
        from PySide6.QtWidgets import QApplication
        import dragstudio.app
        from dragstudio.main_window import MainWindow
        from dragstudio.resources import apply_theme
        app = QApplication([])
        apply_theme(app)
        w = MainWindow(QSettings({str(tmp_path / "s.ini")!r}, QSettings.Format.IniFormat))
        w.show()
        app.processEvents()
        assert w.open_path({str(sample_image)!r})
        app.processEvents()
        heavy = ("torch", "diffusers", "transformers", "peft", "accelerate", "backend.engine",
                 "backend.lora", "backend.models")
        loaded = [m for m in heavy if m in sys.modules]
        assert not loaded, loaded
        print("ok")
        """
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "ok"


def test_the_vae_field_reaches_the_request_is_remembered_and_reset(
    window, settings, sample_image: Path, qtbot, tmp_path
) -> None:
    from backend.document import Pair
    from dragstudio.main_window import MainWindow

    field = window.model_picker.vae_edit
    assert field.placeholderText() == "model's own VAE" and field.text() == ""
    window.open_path(sample_image)
    window.document.set_pairs([Pair((10.0, 10.0), (20.0, 10.0))])
    assert window.drag_ui.controller.build_request().vae is None
    vae = str(tmp_path / "sd-vae-ft-mse")
    qtbot.keyClicks(field, vae)
    qtbot.keyClick(field, Qt.Key.Key_Return)
    assert window.document.vae == vae
    assert window.drag_ui.controller.build_request().vae == vae
    window.close()
    again = MainWindow(settings)
    try:
        assert again.document.vae == vae and again.model_picker.vae_edit.text() == vae
        again.parameters.reset_button.click()
        assert again.document.vae is None and again.model_picker.vae_edit.text() == ""
    finally:
        again.deleteLater()
    third = MainWindow(settings)
    try:
        assert third.document.vae is None  # the reset is remembered
    finally:
        third.deleteLater()
