"""What a window part (Drag, Generate, Engine, Help) gets from the window it sits in.

The parts are built with these narrow inputs instead of the whole ``MainWindow``, so they
cannot reach into its private methods and never import it (``lint-imports`` holds that):

- :class:`WindowFrame`: the chrome a part adds to (Qt's window as the parent of its dialogs,
  the actions, the docks, the menus, the status bar) and the preferences;
- :class:`WindowServices`: the few questions and messages only the window asks and shows. The
  window passes itself; calls are looked up when made, so a test that replaces one of them on
  the window (to answer a dialog headlessly) reaches every part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDockWidget, QMainWindow, QMenu, QStatusBar, QWidget

from backend.settings import SettingsStore
from dragstudio.dialogs import ModelChoice
from dragstudio.resources import icon
from dragstudio.runner import Failure


def shortcut_text(shortcuts: Sequence[QKeySequence]) -> str:
    return ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in shortcuts)


class ActionRegistry(dict[str, QAction]):
    """Every action of the window by name (menus, toolbars and tests look them up here)."""

    def __init__(self, owner: QWidget) -> None:
        super().__init__()
        self.owner = owner
        """The widget whose shortcuts the actions are (the main window)."""

    def add(
        self,
        name: str,
        text: str,
        slot: Callable[[], object] | None = None,
        *,
        shortcuts: Sequence[QKeySequence | QKeySequence.StandardKey | str] = (),
        icon_name: str = "",
        tip: str = "",
        checkable: bool = False,
    ) -> QAction:
        """A new action whose tooltip names its shortcuts."""
        action = QAction(text, self.owner)
        action.setObjectName(name)
        keys = [QKeySequence(s) for s in shortcuts]
        if keys:
            action.setShortcuts(keys)
        if icon_name:
            action.setIcon(icon(icon_name))
        action.setCheckable(checkable)
        tip = tip or text.replace("&", "").rstrip("…")
        action.setToolTip(f"{tip} ({shortcut_text(keys)})" if keys else tip)
        action.setStatusTip(tip)
        if slot is not None:
            action.triggered.connect(lambda *_: slot())
        self.register(name, action)
        return action

    def register(self, name: str, action: QAction) -> None:
        """An action made elsewhere (the undo stack's) under ``name``."""
        self.owner.addAction(action)
        self[name] = action


class DockArea:
    """The right-hand docks: each is listed in the View menu so a closed one can come back."""

    def __init__(self, window: QMainWindow, view_menu: QMenu) -> None:
        self.window = window
        self.view_menu = view_menu
        self.docks: list[QDockWidget] = []
        self.tab_with: QDockWidget | None = None
        """Panels added with ``tabbed=True`` share this dock's place as tabs (History)."""

    def add(self, title: str, name: str, widget: QWidget, *, tabbed: bool = False) -> QDockWidget:
        dock = QDockWidget(title, self.window)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
        )
        self.window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.view_menu.addAction(dock.toggleViewAction())
        self.docks.append(dock)
        if tabbed and self.tab_with is not None:
            self.window.tabifyDockWidget(self.tab_with, dock)
        return dock

    def raise_tab_anchor(self) -> None:
        """Bring the first tab (History) to the front again."""
        if self.tab_with is not None:
            self.tab_with.raise_()


@dataclass(frozen=True)
class WindowFrame:
    """The window's chrome that the parts add their menus, docks and status labels to."""

    window: QMainWindow
    """Qt's window: the parent of the parts' dialogs, and its menu bar."""
    actions: ActionRegistry
    docks: DockArea
    status: QStatusBar
    file_menu: QMenu
    help_menu: QMenu
    prefs: SettingsStore


class WindowServices(Protocol):
    """The questions and messages of the window that its parts use (``MainWindow`` has them)."""

    def show_error(self, title: str, message: str) -> None: ...

    def show_failure(self, failure: Failure) -> None: ...

    async def ask_missing_model(self, spec: str, failure: Failure) -> ModelChoice: ...

    def confirm_discard(self) -> bool:
        """Unsaved work is about to be replaced: True once it is saved or may go."""
        ...

    def ensure_run_panel_visible(self) -> None:
        """A job started: its Drag/Cancel button and progress rows must be on screen."""
        ...
