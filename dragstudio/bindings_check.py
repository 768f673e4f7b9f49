"""Refuse Qt bindings that lose references to ``None`` before they lose the user's work.

PySide6 6.12.0 on Python 3.11 drops one reference to ``None`` on every void Qt call made from
Python (``QPainter.drawLine``, ``setPen``, ``setOpacity``…). The canvas makes hundreds per
repaint, so within a minute of painting CPython deallocates ``None`` and aborts the process
(``Fatal Python error: none_dealloc``), taking unsaved points and masks with it. From Python
3.12 ``None`` is immortal and the loss is harmless. ``pyproject.toml`` keeps pip from installing
the broken pair; this probe catches an environment that got it anyway (a forced install, a
distribution package) and is the check the self-test and the test suite run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

PROBE_CALLS = 64
"""Void calls the start-up probe makes: a leaking binding loses exactly one reference each."""


def none_refcount_change(action: Callable[[], object], repeats: int) -> int:
    """How ``sys.getrefcount(None)`` changes over ``repeats`` runs of ``action``.

    One warm-up run first, so that caches filled on first use don't count as a gain.
    """
    action()
    before = sys.getrefcount(None)
    for _ in range(repeats):
        action()
    return sys.getrefcount(None) - before


def probe_void_calls(calls: int = PROBE_CALLS) -> int:
    """References to ``None`` lost by ``calls`` void QPainter calls (0 on sound bindings)."""
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QColor, QImage, QPainter, QPen

    image = QImage(8, 8, QImage.Format.Format_ARGB32_Premultiplied)
    pen = QPen(QColor(255, 0, 0))
    a, b = QPointF(0, 0), QPointF(4, 4)
    painter = QPainter(image)
    try:

        def one_call() -> None:
            painter.setPen(pen)

        change = none_refcount_change(one_call, calls)
        painter.drawLine(a, b)
    finally:
        painter.end()
    return max(0, -change)


def binding_problem() -> str | None:
    """A sentence for the user if these Qt bindings would crash the editor, else None."""
    lost = probe_void_calls()
    if lost < PROBE_CALLS // 2:
        return None
    import PySide6

    py = ".".join(map(str, sys.version_info[:3]))
    return (
        f"PySide6 {PySide6.__version__} on Python {py} loses a reference to None on every "
        f"drawing call ({lost} of {PROBE_CALLS} in a probe), which crashes the editor within a "
        "minute of painting. Install a sound version with: "
        'pip install "PySide6-Essentials>=6.6,<6.12" — or run DragStudio on Python 3.12 or newer.'
    )
