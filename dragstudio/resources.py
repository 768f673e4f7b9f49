"""The theme: stylesheet, palette and icons from ``resources/`` at the top of the checkout."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication


def resources_dir() -> Path:
    """``resources/`` next to the package, or inside a PyInstaller bundle."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


@cache
def icon(name: str) -> QIcon:
    """An SVG icon by name (``resources/icons/<name>.svg``); an empty icon if it is missing."""
    path = resources_dir() / "icons" / f"{name}.svg"
    return QIcon(str(path)) if path.exists() else QIcon()


def app_icon() -> QIcon:
    return QIcon(str(resources_dir() / "dragstudio.svg"))


def _dark_palette() -> QPalette:
    p = QPalette()
    colors = {
        QPalette.ColorRole.Window: "#23262b",
        QPalette.ColorRole.WindowText: "#dfe3ea",
        QPalette.ColorRole.Base: "#1b1d21",
        QPalette.ColorRole.AlternateBase: "#272a30",
        QPalette.ColorRole.ToolTipBase: "#30343b",
        QPalette.ColorRole.ToolTipText: "#eef1f5",
        QPalette.ColorRole.PlaceholderText: "#7d8592",
        QPalette.ColorRole.Text: "#dfe3ea",
        QPalette.ColorRole.Button: "#2c3036",
        QPalette.ColorRole.ButtonText: "#dfe3ea",
        QPalette.ColorRole.BrightText: "#ff6b6b",
        QPalette.ColorRole.Highlight: "#3d8bff",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: "#6aa8ff",
    }
    for role, value in colors.items():
        p.setColor(role, QColor(value))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b717c"))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.WindowText, QColor("#6b717c"))
    return p


def apply_theme(app: QApplication) -> None:
    """Fusion with a dark palette, refined by ``resources/style.qss``."""
    app.setStyle("Fusion")
    app.setPalette(_dark_palette())
    qss = resources_dir() / "style.qss"
    if qss.exists():
        # Style sheets resolve url() against the working directory, so anchor them here.
        icons = (resources_dir() / "icons").as_posix()
        app.setStyleSheet(qss.read_text(encoding="utf-8").replace("@ICONS@", icons))
