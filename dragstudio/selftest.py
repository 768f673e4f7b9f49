"""``dragstudio --self-test``: drive the real window through one short drag on a tiny model.

It checks what a user would notice first if packaging or an upgrade broke something: the
window opens, a model loads on the engine thread, stages arrive in order, the handles move,
a result appears and can be accepted. One line per check; exit status 0 only if all passed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from backend.events import DRAG_STAGES

STAGES = tuple(s.value for s in DRAG_STAGES)


def sample_image(width: int = 256, height: int = 192) -> np.ndarray:
    """A procedural 'photo': soft sky, a hill and a sun, textured enough to track features."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([90 + 0.3 * y, 140 + 0.25 * y, 210 - 0.1 * y], axis=-1)
    hill = y > height * 0.62 + 18 * np.sin(x / 29.0)
    image = np.where(
        hill[..., None], np.stack([60 + 20 * np.sin(x / 7.0), 130 + 0 * x, 70 + 0 * x], -1), sky
    )
    sun = (x - width * 0.3) ** 2 + (y - height * 0.32) ** 2 < (height * 0.12) ** 2
    image[sun] = (250, 210, 90)
    image += np.random.default_rng(0).normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


class Checks:
    def __init__(self) -> None:
        self.failed: str | None = None

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {name}{f' ({detail})' if detail else ''}", flush=True)
        if not ok and self.failed is None:
            self.failed = name
        return ok


async def _run(window: object, checks: Checks, folder: Path) -> None:
    from backend.document import Pair
    from backend.request import LoraParams
    from dragstudio.commands import EditMask

    w = window  # MainWindow
    host = w.drag_ui.host  # type: ignore[attr-defined]
    controller = w.drag_ui.controller  # type: ignore[attr-defined]
    doc = w.document  # type: ignore[attr-defined]

    from backend.tiny import save_tiny_model  # imports torch, so it runs on the engine thread

    made = await host.call(save_tiny_model, folder / "tiny", 0)
    if not checks.check("tiny model written", made.ok, str(made.failure or "")):
        return
    w.model_picker.choose(str(made.value))  # type: ignore[attr-defined]

    doc.set_image(sample_image())
    checks.check("sample image opened", doc.has_image, f"{doc.size[0]}×{doc.size[1]}")
    doc.set_pairs([Pair((70.0, 60.0), (100.0, 70.0))])
    edit = doc.fill_edit(True)
    w.undo_stack.push(EditMask(doc, edit, "Fill mask", applied=False))  # type: ignore[attr-defined]
    doc.set_params(
        replace(doc.params, working_width=128, inference_steps=10, drag_steps=6, preview_every=0),
        LoraParams(steps=1, batch_size=1, rank=4, resolution=128),
    )
    checks.check("points and mask placed", bool(doc.complete_pairs) and bool(doc.mask.any()))
    _check_repaints(w, checks)

    handle_updates: list[tuple[float, float]] = []
    controller.stepProgress.connect(
        lambda e: e.handles is not None and handle_updates.append(e.handles[0])
    )
    w.actions["drag"].trigger()  # type: ignore[attr-defined]
    task = w.drag_ui.task  # type: ignore[attr-defined]
    if not checks.check("drag started", task is not None):
        return
    outcome = await task
    failure = getattr(outcome, "failure", None)
    checks.check("drag finished", failure is None, getattr(failure, "message", ""))
    started = [e.stage.value for e in controller.events if type(e).__name__ == "StageStarted"]
    checks.check("stage events in order", tuple(started) == STAGES, " → ".join(started))
    moved = len(handle_updates) > 0
    checks.check("tracking events arrived", moved, f"{len(handle_updates)} handle updates")
    pending = controller.pending
    stages = controller.pending.trace.stages if controller.pending is not None else {}
    print("     stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    checks.check(
        "result arrived",
        pending is not None and pending.image.shape == doc.image.shape,
        "" if pending is None else f"{pending.seconds:.1f} s",
    )
    if pending is not None:
        w.drag_ui.accept()  # type: ignore[attr-defined]
        checks.check("result accepted", len(doc.history) == 1 and doc.image is pending.image)


def _check_repaints(window: object, checks: Checks) -> None:
    """The canvas repaints with points, mask and brush cursor without losing references to None.

    Bindings that do (PySide6 6.12.0 on Python 3.11) abort the process within a minute of
    painting; this is the check that would have caught them.
    """
    from PySide6.QtCore import QEvent, QPointF, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    from dragstudio.bindings_check import none_refcount_change
    from dragstudio.canvas import Tool

    canvas = window.canvas  # type: ignore[attr-defined]
    canvas.set_tool(Tool.BRUSH)
    centre = QPointF(canvas.width() / 2, canvas.height() / 2)
    no = Qt.MouseButton.NoButton
    hover = QMouseEvent(
        QEvent.Type.MouseMove,
        centre,
        canvas.mapToGlobal(centre),
        no,
        no,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(canvas, hover)  # the brush cursor is drawn where the mouse is
    change = none_refcount_change(canvas.repaint, 300)
    canvas.set_tool(Tool.POINT)
    checks.check("canvas repaints keep None's references", change >= 0, f"{change:+d} over 300")


def run_self_test(argv: list[str] | None = None) -> int:
    """Run the checks in a fresh QApplication; 0 if all pass, 1 otherwise."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    import qasync
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from dragstudio.bindings_check import binding_problem
    from dragstudio.main_window import MainWindow
    from dragstudio.resources import apply_theme
    from dragstudio.runner import EngineHost, default_engine_factory

    checks = Checks()
    app = QApplication.instance() or QApplication([sys.argv[0], *(argv or [])])
    assert isinstance(app, QApplication)
    apply_theme(app)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    with tempfile.TemporaryDirectory(prefix="dragstudio-selftest-") as tmp:
        folder = Path(tmp)
        settings = QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)
        host = EngineHost(default_engine_factory("cpu", str(folder / "lora-cache")))
        os.environ["DRAGSTUDIO_DATA_DIR"] = str(folder / "data")  # never touch real recovery
        window = MainWindow(settings, host)
        window.ask_save_changes = lambda: "discard"  # type: ignore[method-assign]
        window.show_failure = lambda f: print(f"     failure: {f.message}")  # type: ignore[method-assign]
        window.show()
        checks.check("main window opened", window.isVisible(), app.platformName())
        problem = binding_problem()
        sound = checks.check("Qt bindings sound", problem is None, problem or "")
        try:
            if sound:  # unsound bindings would abort the process mid-check
                loop.run_until_complete(asyncio.wait_for(_run(window, checks, folder), 300))
        except Exception as exc:  # a crash is a failed check, not a traceback in CI logs only
            checks.check("self-test ran to the end", False, f"{type(exc).__name__}: {exc}")
        window.undo_stack.blockSignals(True)  # no title updates while Qt tears the window down
        window.close()
        host.shutdown()
    elapsed = time.perf_counter() - start
    if checks.failed:
        print(f"self-test FAILED at: {checks.failed} ({elapsed:.1f} s)")
        return 1
    print(f"self-test passed in {elapsed:.1f} s")
    return 0
