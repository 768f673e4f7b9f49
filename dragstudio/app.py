"""Start DragStudio: parse the command line, build the window, run Qt under asyncio (qasync).

Only Qt and the Qt-free document are imported here; the engine (torch, diffusers) is loaded
later, when the first edit runs, so the window appears at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from backend import __version__

QUIT_WAIT_S = 1.5
"""How long quitting waits for the engine thread after cancelling before the process exits."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dragstudio", description="Point-based (drag) photo editing."
    )
    parser.add_argument("image", nargs="?", help="a photo to open")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="run one short drag on a tiny random model, print each check and exit",
    )
    # Qt's own options (-platform, -style, ...) pass through to QApplication.
    args, _unknown = parser.parse_known_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.version:
        print(f"DragStudio {__version__}")
        return 0
    if args.self_test:
        from dragstudio.selftest import run_self_test

        return run_self_test(argv)

    import qasync
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from dragstudio.bindings_check import binding_problem
    from dragstudio.main_window import MainWindow
    from dragstudio.resources import app_icon, apply_theme

    QApplication.setOrganizationName("DragStudio")
    QApplication.setApplicationName("DragStudio")
    QApplication.setApplicationVersion(__version__)
    QApplication.setDesktopFileName("dragstudio")
    app = QApplication.instance() or QApplication([sys.argv[0], *argv])
    assert isinstance(app, QApplication)
    apply_theme(app)
    app.setWindowIcon(app_icon())
    if problem := binding_problem():  # these bindings would abort the process mid-edit
        from PySide6.QtWidgets import QMessageBox

        print(f"dragstudio: {problem}", file=sys.stderr)
        QMessageBox.critical(None, "DragStudio cannot start", problem)
        return 1

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    closed = asyncio.Event()
    app.aboutToQuit.connect(closed.set)

    window = MainWindow()
    window.show()
    QTimer.singleShot(0, window.file_controller.offer_recovery)  # after a crash: offer the autosave
    if args.image:
        path = args.image
        QTimer.singleShot(0, lambda: window.open_path(path))
    with loop:
        loop.run_until_complete(closed.wait())
        # Before the loop closes (see EngineHost.wait_closed); a cancelled job stops at its next
        # step, but a model load cannot stop mid-way: past a few seconds, end the process (the
        # settings and the project are written by now) instead of lingering without a window.
        if not window.drag_ui.host.wait_closed(QUIT_WAIT_S):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0
