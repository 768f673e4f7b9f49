"""Mouse helpers for GUI tests: exact sub-pixel positions and explicit button state."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QPointF, QSettings, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication, QWidget


def mouse(
    widget: QWidget,
    kind: QEvent.Type,
    pos: QPointF,
    button: Qt.MouseButton = Qt.MouseButton.LeftButton,
    buttons: Qt.MouseButton | None = None,
) -> None:
    """Send one mouse event with an exact (sub-pixel) position and the right button state."""
    if buttons is None:
        held = kind in (QEvent.Type.MouseButtonPress, QEvent.Type.MouseMove)
        buttons = button if held else Qt.MouseButton.NoButton
    event = QMouseEvent(
        kind, pos, widget.mapToGlobal(pos), button, buttons, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(widget, event)


def click(widget: QWidget, pos: QPointF) -> None:
    mouse(widget, QEvent.Type.MouseButtonPress, pos)
    mouse(widget, QEvent.Type.MouseButtonRelease, pos)


def drag(
    widget: QWidget,
    points: list[QPointF],
    button: Qt.MouseButton = Qt.MouseButton.LeftButton,
) -> None:
    mouse(widget, QEvent.Type.MouseButtonPress, points[0], button)
    for p in points[1:]:
        mouse(widget, QEvent.Type.MouseMove, p, Qt.MouseButton.NoButton, button)
    mouse(widget, QEvent.Type.MouseButtonRelease, points[-1], button)


def make_window(qtbot: Any, settings: QSettings, host: Any) -> Any:
    """The real main window on ``host``, shown, with dialogs recorded instead of shown."""
    from dragstudio.main_window import MainWindow
    from dragstudio.runner import Failure

    w = MainWindow(settings, host)
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    qtbot.waitExposed(w)
    w.failures = []
    w.show_failure = w.failures.append
    w.show_error = lambda title, message: w.failures.append(Failure(f"{title}: {message}"))
    w.confirm_discard = lambda: True
    return w
