"""The window keeps its preferences in the typed settings file; QSettings only for geometry."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import QSettings

from dragstudio.prefs import prefs_path


def test_old_qsettings_keys_migrate_into_the_settings_file(qtbot, tmp_path: Path) -> None:
    from dragstudio.main_window import MainWindow

    ini = QSettings(str(tmp_path / "old.ini"), QSettings.Format.IniFormat)
    ini.setValue("paths/last_dir", "/home/me/photos")
    ini.setValue("model/current", "my/model")
    ini.setValue("export/quality", 70)
    ini.sync()
    w = MainWindow(ini)
    qtbot.addWidget(w)
    assert w.prefs.get("last_dir") == "/home/me/photos"
    assert w.model_picker.combo.currentText() == "my/model"
    data = json.loads(prefs_path(ini).read_text())
    assert data["export_quality"] == 70 and data["version"] >= 1
    w.model_picker.choose("other/model")
    assert (
        w.prefs.get("recent_models")[0] == "other/model" and w.prefs.get("model") == "other/model"
    )
    w.close()
    keys = set(QSettings(str(tmp_path / "old.ini"), QSettings.Format.IniFormat).allKeys())
    assert {"window/geometry", "window/state"} <= keys
