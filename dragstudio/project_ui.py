"""The window's File side: projects (save, open, recent), export, autosave and recovery.

Projects are read and written by the Qt-free :mod:`backend.project`; nothing here touches
torch. A LoRA this machine trained reaches a project through the on-disk LoRA cache (the trace
names its key; a save bundles that file's bytes). A project's bundled LoRA never enters the
shared cache: it stays with the document, and the engine host installs it into the engine's
memory for this document's drags after checking it fully against the model. If its key no
longer matches (another prompt, model or image) or it is unusable, the engine retrains and the
status bar says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from PySide6.QtCore import QCoreApplication, QEventLoop, QTimer
from PySide6.QtGui import QGuiApplication, QKeySequence
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMenu

from backend.document import Change, Notice
from backend.errors import DragStudioError
from backend.events import Stage, StageStarted
from backend.export import edit_record, export_image, export_series
from backend.lora_cache import LoraCache
from backend.project import SUFFIX, BundledLora, Project, read_project, save_project
from backend.session import bundle_lora
from dragstudio.drag_controller import PendingResult
from dragstudio.project_dialogs import CacheSettingsDialog
from dragstudio.qtimage import rgb_to_qimage
from dragstudio.recovery import RecoveryStore

if TYPE_CHECKING:
    from dragstudio.main_window import MainWindow

T = TypeVar("T")
PROJECT_FILTER = f"DragStudio projects (*{SUFFIX})"
EXPORT_FILTERS = "PNG image (*.png);;JPEG image (*.jpg *.jpeg);;WebP image (*.webp)"
AUTOSAVE_MS = 3 * 60 * 1000


def data_dir() -> Path:
    """Where recovery files go: the platform's user data folder, or ``$DRAGSTUDIO_DATA_DIR``."""
    override = os.environ.get("DRAGSTUDIO_DATA_DIR")
    if override:
        return Path(override)
    from platformdirs import user_data_dir

    return Path(user_data_dir("DragStudio", appauthor=False))


def _reason(exc: BaseException) -> str:
    """Our errors say what happened; anything else is named with its type."""
    if isinstance(exc, DragStudioError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _off_the_gui_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` on a worker thread; the window keeps painting (user input waits) meanwhile.

    Reading a large project decodes hundreds of megapixels; the GUI must not freeze for it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="project-read") as pool:
        future = pool.submit(fn, *args)
        while True:
            try:
                return future.result(timeout=0.03)
            except FutureTimeout:
                QCoreApplication.processEvents(
                    QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents, 30
                )


def is_project(path: str | Path) -> bool:
    return Path(path).suffix.lower() == SUFFIX


class ProjectUI:
    def __init__(self, window: MainWindow, cache: LoraCache) -> None:
        self.window = window
        self.cache = cache
        self.path: Path | None = None
        """The project file the document was opened from or last saved to."""
        self.bundled: BundledLora | None = None
        """The LoRA that belongs with the document: from the opened project or the last drag."""
        self._trained: tuple[str, PendingResult] | None = None
        self.recovery_dir = data_dir() / "recovery"
        self.recovery = RecoveryStore(self.recovery_dir)
        self._build_actions()
        self.timer = QTimer(window)
        self.timer.setInterval(AUTOSAVE_MS)
        self.timer.timeout.connect(self.autosave)
        self.timer.start()
        runner = window.drag_ui.runner
        window.drag_ui.host.document_lora = lambda: self.bundled
        runner.resultChanged.connect(self._result_changed)
        runner.stageStarted.connect(self._stage_started)
        self._history_len = 0
        self._unsubscribe = window.document.subscribe(self._on_document)

    # -- actions -----------------------------------------------------------------------------

    def _build_actions(self) -> None:
        w, a = self.window, self.window._action
        a("save", "&Save Project", self.save, shortcuts=[QKeySequence.StandardKey.Save])
        a("save_as", "Save Project &As…", self.save_as, shortcuts=["Ctrl+Shift+S"])
        a("export", "&Export Image…", self.export_dialog, shortcuts=["Ctrl+E"])
        a("export_series", "Export All Res&ults…", self.export_series_dialog)
        a("copy_image", "&Copy Image", self.copy_image, shortcuts=["Ctrl+Shift+C"])
        a("cache_settings", "LoRA Cac&he…", self.cache_dialog, tip="Size, limit and clearing")
        self.recent_menu = QMenu("Open &Recent", w)
        self.recent_menu.setObjectName("recentMenu")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        menu, quit_action = w.file_menu, w.actions["quit"]
        menu.insertMenu(quit_action, self.recent_menu)
        menu.insertSeparator(quit_action)
        for name in ("save", "save_as", "-", "export", "export_series", "copy_image", "-",
                     "cache_settings", "-"):  # fmt: skip
            if name == "-":
                menu.insertSeparator(quit_action)
            else:
                menu.insertAction(quit_action, w.actions[name])
        self.update_enabled()

    def reset(self) -> None:
        """A photo was opened: no project file, no LoRA belongs to it yet."""
        self.path, self.bundled, self._trained = None, None, None
        self._history_len = 0
        self.update_enabled()

    def update_enabled(self) -> None:
        doc, actions = self.window.document, self.window.actions
        for name in ("save", "save_as", "export", "copy_image"):
            actions[name].setEnabled(doc.has_image)
        actions["export_series"].setEnabled(bool(doc.history))

    # -- recent ------------------------------------------------------------------------------

    def recent(self) -> list[str]:
        return list(self.window.prefs.get("recent_projects"))

    def remember_recent(self, path: Path) -> None:
        """Photos go on the Open Recent list too, not only projects."""
        self._remember(path)

    def _remember(self, path: Path) -> None:
        self.window.prefs.push_recent("recent_projects", str(path.resolve()))

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        items = self.recent()
        for n, item in enumerate(items, 1):
            act = self.recent_menu.addAction(f"&{n} {Path(item).name}")
            act.setToolTip(item)
            act.triggered.connect(lambda *_, p=item: self.window.open_path(p))
        if not items:
            self.recent_menu.addAction("No recent files").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear Recent", self._clear_recent)

    def _clear_recent(self) -> None:
        self.window.prefs.update(recent_projects=[])

    # -- open --------------------------------------------------------------------------------

    def open_project(self, path: str | Path, *, recovered: bool = False) -> bool:
        """Read, validate, then replace the document; a bad file changes nothing."""
        path = Path(path)
        QGuiApplication.setOverrideCursor(self.window.cursor())
        try:
            project = _off_the_gui_thread(read_project, path)
        except DragStudioError as exc:
            self.window.show_error("Cannot open project", str(exc))
            return False
        finally:
            QGuiApplication.restoreOverrideCursor()
        w = self.window
        if not recovered and not w.undo_stack.isClean() and not w.confirm_discard():
            return False
        w.drag_ui.runner.discard()
        project.apply(w.document, path)
        w.undo_stack.clear()
        self._history_len = len(w.document.history)
        self.path = None if recovered else path
        self.bundled = project.lora  # it stays with the document: never the shared cache
        self._trained = None
        if recovered:
            w.undo_stack.resetClean()  # recovered work is unsaved work
        else:
            self._remember(path)
            w.prefs.update(last_dir=str(path.resolve().parent))
        w.document_opened()
        w._update_title()
        self.update_enabled()
        w.statusBar().showMessage(f"Opened {path.name}", 4000)
        return True

    # -- save --------------------------------------------------------------------------------

    def current_lora(self) -> BundledLora | None:
        """The LoRA of the latest drag (read back from the cache), else the opened project's."""
        if self._trained is not None:
            key, pending = self._trained
            data = self.cache.read_bytes(key)
            if data is not None:
                return bundle_lora(key, data, pending.request)
        return self.bundled

    def project(self) -> Project:
        return Project.from_document(self.window.document, self.current_lora())

    def save(self) -> bool:
        if self.path is None:
            return self.save_as()
        return self.save_to(self.path)

    def save_as(self) -> bool:
        doc = self.window.document
        if not doc.has_image:
            return False
        start = self.window.prefs.get("last_dir")
        base = self.path or (doc.path.with_suffix(SUFFIX) if doc.path else Path("Untitled"))
        suggestion = str(Path(start) / base.with_suffix(SUFFIX).name) if start else base.name
        path, _ = QFileDialog.getSaveFileName(
            self.window, "Save project", suggestion, PROJECT_FILTER
        )
        if not path:
            return False
        target = Path(path)
        if target.suffix.lower() != SUFFIX:
            target = target.with_name(target.name + SUFFIX)
        return self.save_to(target)

    def save_to(self, path: Path) -> bool:
        w = self.window
        try:
            save_project(self.project(), path)
        except Exception as exc:  # every failure gets a dialog; the document stays as it is
            w.show_error("Cannot save project", _reason(exc))
            return False
        self.path = path
        w.document.path = path
        w.undo_stack.setClean()
        self._remember(path)
        w._update_title()
        self.remove_recovery()
        w.statusBar().showMessage(f"Saved {path.name}", 4000)
        return True

    def may_close(self) -> bool:
        """Ask about unsaved work; False keeps the window open."""
        w = self.window
        if not w.document.has_image or w.undo_stack.isClean():
            self.remove_recovery()
            return True
        answer = w.ask_save_changes()
        if answer == "cancel" or (answer == "save" and not self.save()):
            return False
        self.remove_recovery()
        return True

    # -- autosave and recovery -----------------------------------------------------------------

    @property
    def recovery_file(self) -> Path:
        """This instance's own recovery file (other running instances have theirs)."""
        return self.recovery.project

    def autosave(self) -> bool:
        """Write the recovery file when there is unsaved work; quietly, never a dialog."""
        w = self.window
        if not w.document.has_image or w.undo_stack.isClean():
            return False
        try:
            project = self.project()
            self.recovery.write(lambda p: save_project(project, p, compress_level=1), self.path)
        except Exception as exc:  # autosave never raises into the event loop
            w.statusBar().showMessage(f"Autosave failed: {_reason(exc)}", 8000)
            return False
        return True

    def remove_recovery(self) -> None:
        self.recovery.remove()

    def offer_recovery(self) -> bool:
        """After a crash: offer autosaved work of instances that are no longer running (never a
        live one's). Returns whether something was recovered."""
        orphans = self.recovery.orphans()
        try:
            while orphans:
                orphan = orphans.pop(0)
                if not self.window.ask_recover(orphan.project):
                    self.recovery.discard(orphan)
                    continue
                if not self.open_project(orphan.project, recovered=True):
                    self.recovery.release([orphan])  # unreadable here: left as it is
                    continue
                self.path = orphan.saved_from()
                if self.path is not None:
                    self.window.document.path = self.path
                    self.window._update_title()
                self.recovery.adopt(orphan)
                return True
            return False
        finally:
            self.recovery.release(orphans)

    # -- export ------------------------------------------------------------------------------

    def _ask_path(self, title: str) -> tuple[Path, int] | None:
        w, doc = self.window, self.window.document
        start = w.prefs.get("export_dir") or w.prefs.get("last_dir")
        stem = (self.path or doc.path or Path("edited")).stem
        path, chosen = QFileDialog.getSaveFileName(
            w, title, str(Path(start) / f"{stem}-edited.png"), EXPORT_FILTERS
        )
        if not path:
            return None
        target = Path(path)
        if target.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            target = target.with_suffix(".jpg" if "JPEG" in chosen else
                                        ".webp" if "WebP" in chosen else ".png")  # fmt: skip
        quality = w.prefs.get("export_quality")
        if target.suffix.lower() != ".png":
            quality, ok = QInputDialog.getInt(w, "Export quality", "Quality (1–100):",
                                              quality, 1, 100)  # fmt: skip
            if not ok:
                return None
            w.prefs.update(export_quality=quality)
        w.prefs.update(export_dir=str(target.parent))
        return target, quality

    def export_dialog(self) -> None:
        chosen = self._ask_path("Export image")
        if chosen is not None:
            self.export_to(*chosen)

    def export_series_dialog(self) -> None:
        chosen = self._ask_path("Export all accepted results (numbered)")
        if chosen is not None:
            self.export_series_to(*chosen)

    def export_to(self, path: Path, quality: int = 92) -> bool:
        """The current image at its full resolution, with the edit in its metadata."""
        doc = self.window.document
        if doc.image is None:
            return False
        record = edit_record(
            doc.pairs, doc.prompt, doc.params, doc.lora, doc.model, history=doc.history
        )
        try:
            export_image(doc.image, path, record, quality=quality)
        except Exception as exc:
            self.window.show_error("Cannot export", _reason(exc))
            return False
        self.window.statusBar().showMessage(f"Exported {path.name}", 4000)
        return True

    def export_series_to(self, path: Path, quality: int = 92) -> list[Path]:
        try:
            paths = export_series(self.window.document.history, path, quality=quality)
        except Exception as exc:
            self.window.show_error("Cannot export", _reason(exc))
            return []
        self.window.statusBar().showMessage(f"Exported {len(paths)} results", 4000)
        return paths

    def copy_image(self) -> None:
        image = self.window.document.image
        if image is not None:
            QGuiApplication.clipboard().setImage(rgb_to_qimage(image))
            self.window.statusBar().showMessage("Image copied to the clipboard", 3000)

    def cache_dialog(self) -> None:
        CacheSettingsDialog(self.cache, self.window.prefs, self.window).exec()

    # -- reactions ---------------------------------------------------------------------------

    def _result_changed(self, pending: PendingResult | None) -> None:
        if pending is None:
            return
        lora = pending.trace.lora
        key = lora.key
        if key:
            self._trained = (str(key), pending)
        if lora.cache_warning:
            self.window.statusBar().showMessage(f"Warning: {lora.cache_warning}", 10000)

    def _stage_started(self, event: StageStarted) -> None:
        bundled = self.bundled
        if event.stage != Stage.LORA or bundled is None or event.total == 0:
            return
        try:
            request = self.window.drag_ui.runner.build_request()
        except DragStudioError:
            return
        report = self.window.drag_ui.host.bundled_report
        why = (
            report.get("why")
            or bundled.mismatch(request)
            or "the model's weights differ from the ones it fitted"
        )
        message = f"Retraining the LoRA from the project: {why}."
        self.window.drag_ui.progress.status.setText(message)
        self.window.statusBar().showMessage(message, 10000)
        self.bundled = None

    def _on_document(self, notice: Notice) -> None:
        if notice.change in (Change.IMAGE, Change.HISTORY):
            self.update_enabled()
        if notice.change == Change.HISTORY:
            n = len(self.window.document.history)
            grew = n > self._history_len
            self._history_len = n
            if grew:  # after each accepted result, once the stack has recorded it
                QTimer.singleShot(0, self.autosave)

    def shutdown(self) -> None:
        self.timer.stop()
        self._unsubscribe()
        self.recovery.close()
