"""The GPU memory combo: saved as a preference, read back, and handed to the engine host."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from backend.settings import MEMORY_PLANS


def test_memory_combo_saves_the_plan_and_tells_the_host(qtbot, tmp_path: Path) -> None:
    from dragstudio.main_window import MainWindow
    from dragstudio.runner import EngineHost

    ini = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    host = EngineHost(lambda: None)  # type: ignore[arg-type, return-value]
    w = MainWindow(ini, host)
    qtbot.addWidget(w)
    combo = w.memory_combo
    assert [combo.itemData(i) for i in range(combo.count())] == list(MEMORY_PLANS)
    assert combo.plan == "auto" and host.memory == "auto"
    combo.setCurrentIndex(combo.findData("6gb"))
    assert w.prefs.get("memory") == "6gb" and host.memory == "6gb"
    w.close()
    w2 = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), EngineHost())
    qtbot.addWidget(w2)
    assert w2.memory_combo.plan == "6gb" and w2.drag_ui.host.memory == "6gb"
    w2.close()
