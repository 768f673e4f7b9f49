"""The Help menu's sheet of keyboard shortcuts and its link to the documentation.

The sheet is built from the window's own menus and actions when it opens, so it lists exactly
the shortcuts that work, under the menu each lives in.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QMenu,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from dragstudio.resources import resources_dir
from dragstudio.window_services import WindowFrame, WindowServices

CANVAS_KEYS: tuple[tuple[str, str], ...] = (
    ("Click, click", "Place a handle, then its target"),
    ("Drag a point", "Move a handle or a target"),
    ("Space + drag, middle button", "Pan the view"),
    ("Wheel", "Zoom around the cursor"),
)
"""Mouse gestures on the canvas, which no menu shows."""


def docs_path() -> Path:
    """The README that documents the app (next to ``resources/`` in a checkout or a bundle)."""
    return resources_dir().parent / "README.md"


def menu_shortcuts(menu: QMenu) -> list[tuple[str, str]]:
    """(keys, command) for every action with a shortcut in ``menu`` and its submenus."""
    rows: list[tuple[str, str]] = []
    for action in menu.actions():
        sub = action.menu()
        if isinstance(sub, QMenu):
            rows.extend(menu_shortcuts(sub))
            continue
        keys = action.shortcuts()
        if keys:
            text = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in keys)
            rows.append((text, action.text().replace("&", "").rstrip("…")))
    return rows


def shortcuts_html(window: QWidget) -> str:
    """The sheet: one table per menu, then the canvas gestures."""
    parts = ["<style>td { padding: 2px 12px 2px 0; } th { text-align: left; }</style>"]
    bar = window.menuBar() if hasattr(window, "menuBar") else None
    menus = [a.menu() for a in bar.actions()] if bar is not None else []
    for menu in menus:
        if not isinstance(menu, QMenu):
            continue
        rows = menu_shortcuts(menu)
        if not rows:
            continue
        parts.append(f"<h3>{escape(menu.title().replace('&', ''))}</h3><table>")
        parts += [f"<tr><td><b>{escape(k)}</b></td><td>{escape(t)}</td></tr>" for k, t in rows]
        parts.append("</table>")
    parts.append("<h3>Canvas</h3><table>")
    parts += [f"<tr><td><b>{escape(k)}</b></td><td>{escape(t)}</td></tr>" for k, t in CANVAS_KEYS]
    parts.append("</table>")
    return "".join(parts)


class ShortcutsDialog(QDialog):
    def __init__(self, window: QWidget) -> None:
        super().__init__(window)
        self.setObjectName("shortcutsDialog")
        self.setWindowTitle("Keyboard Shortcuts")
        self.text = QTextBrowser()
        self.text.setHtml(shortcuts_html(window))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(buttons)
        self.resize(480, 560)


class HelpUI:
    def __init__(self, frame: WindowFrame, services: WindowServices) -> None:
        self.frame = frame
        self.services = services
        self.dialog: ShortcutsDialog | None = None
        shortcuts = frame.actions.add(
            "shortcuts",
            "&Keyboard Shortcuts",
            self.show_shortcuts,
            shortcuts=["F1", "Ctrl+/"],
            tip="Every keyboard shortcut, by menu",
        )
        docs = frame.actions.add(
            "docs", "&Documentation", self.open_docs, tip="Open the user guide (README)"
        )
        help_menu = frame.help_menu
        about: QAction = frame.actions["about"]
        help_menu.insertAction(about, shortcuts)
        help_menu.insertAction(about, docs)
        help_menu.insertSeparator(about)

    def show_shortcuts(self) -> ShortcutsDialog:
        """Non-modal, so it can stay open beside the canvas while learning the keys."""
        window = self.frame.window
        if self.dialog is None:
            self.dialog = ShortcutsDialog(window)
        else:
            self.dialog.text.setHtml(shortcuts_html(window))
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.setWindowState(self.dialog.windowState() & ~Qt.WindowState.WindowMinimized)
        return self.dialog

    def open_docs(self) -> bool:
        path = docs_path()
        if not path.is_file():
            self.services.show_error("Documentation", f"The user guide is not at {path}.")
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
