"""The window's File side: projects (open, save, recent), export, autosave and recovery.

:class:`FileController` owns those File-menu actions. It is built from narrow inputs (the
window's chrome as a ``WindowFrame``, the document, its undo stack, the drag controller, and
the few questions only the window asks: :class:`FileWindow`), never the whole
``MainWindow``. Saving and autosaving run off the GUI thread (:mod:`dragstudio.saving`).

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
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from PySide6.QtCore import QCoreApplication, QEventLoop, QTimer
from PySide6.QtGui import QGuiApplication, QKeySequence, QUndoStack
from PySide6.QtWidgets import (
    QFileDialog,
    QInputDialog,
    QLabel,
    QMenu,
    QMessageBox,
    QStatusBar,
)

from backend.document import Change, Document, Notice
from backend.errors import DragStudioError
from backend.events import Stage, StageStarted
from backend.export import edit_record, export_image, export_series
from backend.lora_cache import LoraCache
from backend.project import SUFFIX, BundledLora, Project, read_project, save_project
from backend.session import bundle_lora
from dragstudio.document_switch import DocumentSwitch
from dragstudio.drag_controller import DragController, PendingResult
from dragstudio.project_dialogs import CacheSettingsDialog
from dragstudio.qtimage import rgb_to_qimage
from dragstudio.recovery import RecoveryStore
from dragstudio.saving import SaveJob, SaveQueue, file_key
from dragstudio.window_services import WindowFrame

T = TypeVar("T")
PROJECT_FILTER = f"DragStudio projects (*{SUFFIX})"
EXPORT_FILTERS = "PNG image (*.png);;JPEG image (*.jpg *.jpeg);;WebP image (*.webp)"
AUTOSAVE_MS = 3 * 60 * 1000
SAVE_WAIT_S = 120.0
"""How long "save before closing/replacing" and quitting wait for a save to finish."""


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


class FileWindow(Protocol):
    """What the File side asks of the window around it (``MainWindow`` has these). Looked up
    when called, so a test that answers a question on the window reaches this part too."""

    def show_error(self, title: str, message: str) -> None: ...

    def confirm_discard(self) -> bool:
        """Unsaved work is about to be replaced: True once it is saved or may go."""
        ...

    def ask_save_changes(self) -> str:
        """Closing with unsaved work: "save", "discard" or "cancel"."""
        ...

    def ask_recover(self, path: Path) -> bool: ...

    def open_path(self, path: str | Path) -> bool: ...


class FileController:
    """Projects, export, recent files, autosave and recovery: the File menu's actions."""

    def __init__(
        self,
        frame: WindowFrame,
        window: FileWindow,
        *,
        document: Document,
        undo_stack: QUndoStack,
        switch: DocumentSwitch,
        cache: LoraCache,
        controller: DragController,
        progress_status: QLabel,
        refresh_title: Callable[[], None],
    ) -> None:
        """``frame``: the window's chrome (the File menu is filled above its Quit action);
        ``switch``: replaces the document when a project opens (and calls :meth:`reset` for
        any other document);
        ``controller``: the drag controller, whose results bring a trained LoRA;
        ``progress_status``: the Drag panel's status line; ``refresh_title``: the window's
        title shows the file and whether it is saved."""
        self.frame = frame
        self.parent = frame.window
        self.window = window
        self.document = document
        self.undo_stack = undo_stack
        self.switch = switch
        self.prefs = frame.prefs
        self.cache = cache
        self.controller = controller
        self.progress_status = progress_status
        self.actions = frame.actions
        self._refresh_title = refresh_title
        self.path: Path | None = None
        """The project file the document was opened from or last saved to."""
        self.bundled: BundledLora | None = None
        """The LoRA that belongs with the document: from the opened project or the last drag."""
        self._trained: tuple[str, PendingResult] | None = None
        self.recovery_dir = data_dir() / "recovery"
        self.recovery = RecoveryStore(self.recovery_dir)
        self.saves = SaveQueue(self.parent)
        """Project saves and autosaves, written one at a time off the GUI thread."""
        self.saves.started.connect(self._save_started)
        self.save_wait_s = SAVE_WAIT_S
        self._abandon_saves = False
        """The user chose to close while a save was still writing (it is not waited for)."""
        self._outcomes: dict[Path, bool] = {}
        """Whether the last finished save to each file succeeded."""
        self._edits = 0
        """Counts undo-stack moves: a save marks the document clean only if none came since
        its snapshot."""
        self._document_id = 0
        """Changes when another document is opened (a late save leaves that one alone)."""
        undo_stack.indexChanged.connect(self._count_edit)
        self._build_actions()
        self.timer = QTimer(self.parent)
        self.timer.setInterval(AUTOSAVE_MS)
        self.timer.timeout.connect(self.autosave)
        self.timer.start()
        controller.host.document_lora = lambda: self.bundled
        controller.resultChanged.connect(self._result_changed)
        controller.stageStarted.connect(self._stage_started)
        self._history_len = 0
        self._opening = False
        self._unsubscribe = document.subscribe(self._on_document)
        switch.on_forget(self.reset)

    @property
    def status(self) -> QStatusBar:
        return self.frame.status

    # -- actions -----------------------------------------------------------------------------

    def _build_actions(self) -> None:
        a = self.actions.add
        a("save", "&Save Project", self.save, shortcuts=[QKeySequence.StandardKey.Save])
        a("save_as", "Save Project &As…", self.save_as, shortcuts=["Ctrl+Shift+S"])
        a("export", "&Export Image…", self.export_dialog, shortcuts=["Ctrl+E"])
        a("export_series", "Export All Res&ults…", self.export_series_dialog)
        a("copy_image", "&Copy Image", self.copy_image, shortcuts=["Ctrl+Shift+C"])
        a("cache_settings", "LoRA Cac&he…", self.cache_dialog, tip="Size, limit and clearing")
        self.recent_menu = QMenu("Open &Recent", self.parent)
        self.recent_menu.setObjectName("recentMenu")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        menu, quit_action = self.frame.file_menu, self.actions["quit"]
        menu.insertMenu(quit_action, self.recent_menu)
        menu.insertSeparator(quit_action)
        for name in ("save", "save_as", "-", "export", "export_series", "copy_image", "-",
                     "cache_settings", "-"):  # fmt: skip
            if name == "-":
                menu.insertSeparator(quit_action)
            else:
                menu.insertAction(quit_action, self.actions[name])
        self.update_enabled()

    def reset(self) -> None:
        """Another document is open: no project file, no LoRA belongs to it (yet)."""
        self.path, self.bundled, self._trained = None, None, None
        self._document_id += 1
        self._history_len = 0
        self.update_enabled()

    def update_enabled(self) -> None:
        doc, actions = self.document, self.actions
        for name in ("save", "save_as", "export", "copy_image"):
            actions[name].setEnabled(doc.has_image)
        actions["export_series"].setEnabled(bool(doc.history))

    # -- recent ------------------------------------------------------------------------------

    def recent(self) -> list[str]:
        return list(self.prefs.get("recent_projects"))

    def remember_recent(self, path: Path) -> None:
        """Photos go on the Open Recent list too, not only projects."""
        self._remember(path)

    def _remember(self, path: Path) -> None:
        self.prefs.push_recent("recent_projects", str(path.resolve()))

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
        self.prefs.update(recent_projects=[])

    # -- open --------------------------------------------------------------------------------

    def open_project(self, path: str | Path, *, recovered: bool = False) -> bool:
        """Read, validate, then replace the document; a bad file changes nothing."""
        path = Path(path)
        QGuiApplication.setOverrideCursor(self.parent.cursor())
        try:
            project = _off_the_gui_thread(read_project, path)
        except DragStudioError as exc:
            self.window.show_error("Cannot open project", str(exc))
            return False
        finally:
            QGuiApplication.restoreOverrideCursor()
        if not recovered and not self.undo_stack.isClean() and not self.window.confirm_discard():
            return False

        def load(doc: Document) -> None:
            self._opening = True  # its history is not a newly accepted result
            try:
                project.apply(doc, path)
            finally:
                self._opening = False

        # Recovered work is unsaved work. The switch forgets the last file (``reset``) before
        # the new one's path and LoRA are set here.
        self.switch.replace(load, unsaved=recovered, message=f"Opened {path.name}")
        self._history_len = len(self.document.history)
        self.path = None if recovered else path
        self.bundled = project.lora  # it stays with the document: never the shared cache
        if not recovered:
            self._remember(path)
            self.prefs.update(last_dir=str(path.resolve().parent))
        self._refresh_title()
        self.update_enabled()
        return True

    # -- save --------------------------------------------------------------------------------

    def snapshot(self) -> Callable[[], Project]:
        """The document as it is now, cheaply (its arrays are replaced, never changed in place;
        the mask is copied); the LoRA's bytes are read and hashed when the result is called,
        on the saving thread."""
        base = Project.from_document(self.document)
        cache, trained, bundled = self.cache, self._trained, self.bundled
        return lambda: replace(base, lora=_current_lora(cache, trained, bundled))

    def save(self, *, wait: bool = False) -> bool:
        """Save to the project's file (asking for one the first time). In the background;
        ``wait``: until it is written, and say whether it was."""
        if self.path is None:
            return self.save_as(wait=wait)
        return self.save_to(self.path, wait=wait)

    def save_as(self, *, wait: bool = False) -> bool:
        doc = self.document
        if not doc.has_image:
            return False
        start = self.prefs.get("last_dir")
        base = self.path or (doc.path.with_suffix(SUFFIX) if doc.path else Path("Untitled"))
        suggestion = str(Path(start) / base.with_suffix(SUFFIX).name) if start else base.name
        path, _ = QFileDialog.getSaveFileName(
            self.parent, "Save project", suggestion, PROJECT_FILTER
        )
        if not path:
            return False
        target = Path(path)
        if target.suffix.lower() != SUFFIX:
            target = target.with_name(target.name + SUFFIX)
        return self.save_to(target, wait=wait)

    def save_to(self, path: Path, *, wait: bool = False) -> bool:
        """Write the document to ``path`` on the saving thread; True once queued (``wait``:
        once written). A failure shows a dialog and leaves the document modified."""
        w = self.window
        try:
            build = self.snapshot()
        except Exception as exc:
            w.show_error("Cannot save project", _reason(exc))
            return False
        edits, document_id = self._edits, self._document_id

        def work() -> None:
            save_project(build(), path)

        def done(error: BaseException | None) -> None:
            self._outcomes[file_key(path)] = error is None
            if error is not None:  # every failure gets a dialog; the document stays modified
                self.status.showMessage(f"Could not save {path.name}", 8000)
                w.show_error("Cannot save project", _reason(error))
                return
            if document_id != self._document_id:  # another document is open now
                self._remember(path)
                self.status.showMessage(f"Saved {path.name}", 4000)
                return
            self._saved(path, clean=edits == self._edits)

        self._outcomes.pop(file_key(path), None)
        self.saves.submit(SaveJob(path, work, done, path.name))
        return self._finish(path) if wait else True

    def _finish(self, path: Path) -> bool:
        """Wait for the queued saves; whether the one to ``path`` was written."""
        return self.saves.wait(self.save_wait_s) and self._outcomes.get(file_key(path), False)

    def _save_started(self, job: SaveJob) -> None:
        if job.name:
            self.status.showMessage(f"Saving {job.name}…")

    def _saved(self, path: Path, *, clean: bool) -> None:
        """The open document was saved to ``path``; ``clean`` unless it was edited since the
        snapshot (then the file is behind and the document stays modified)."""
        self.path = path
        self.document.path = path
        self._remember(path)
        if clean:
            self.undo_stack.setClean()
            self.remove_recovery()
        self._refresh_title()
        self.status.showMessage(f"Saved {path.name}", 4000)

    def _count_edit(self, _index: int) -> None:
        self._edits += 1

    def may_close(self) -> bool:
        """Let running saves finish, then ask about unsaved work; False keeps the window open."""
        if not self.finish_saves():
            return False
        if not self.document.has_image or self.undo_stack.isClean():
            self.remove_recovery()
            return True
        answer = self.window.ask_save_changes()
        if answer == "cancel" or (answer == "save" and not self.save(wait=True)):
            return False
        self.remove_recovery()
        return True

    def finish_saves(self) -> bool:
        """Before quitting: wait (boundedly) for the saves under way. If one is still writing
        then, ask whether to quit anyway (its file keeps its previous version)."""
        if not self.saves.busy:
            return True
        running = self.saves.running
        name = running.name if running is not None and running.name else "the autosave"
        self.status.showMessage(f"Finishing saving {name} before closing…")
        if self.saves.wait(self.save_wait_s):
            return True
        self._abandon_saves = self.ask_close_while_saving(name)
        return self._abandon_saves

    def ask_close_while_saving(self, name: str) -> bool:
        answer = QMessageBox.question(
            self.parent,
            "Still saving",
            f"Saving {name} has not finished after {self.save_wait_s:.0f} seconds. Close "
            "anyway? The file keeps its previous version.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    # -- autosave and recovery -----------------------------------------------------------------

    @property
    def recovery_file(self) -> Path:
        """This instance's own recovery file (other running instances have theirs)."""
        return self.recovery.project

    def autosave(self, *, wait: bool = False) -> bool:
        """Write the recovery file when there is unsaved work, in the background; quietly,
        never a dialog. True once queued (``wait``: once written)."""
        if not self.document.has_image or self.undo_stack.isClean():
            return False
        target, store, project_path = self.recovery.project, self.recovery, self.path
        try:
            build = self.snapshot()
        except Exception as exc:  # autosave never raises into the event loop
            self.status.showMessage(f"Autosave failed: {_reason(exc)}", 8000)
            return False

        def work() -> None:
            project = build()
            store.write(lambda p: save_project(project, p, compress_level=1), project_path)

        def done(error: BaseException | None) -> None:
            self._outcomes[file_key(target)] = error is None
            if error is not None:
                self.status.showMessage(f"Autosave failed: {_reason(error)}", 8000)

        self._outcomes.pop(file_key(target), None)
        self.saves.submit(SaveJob(target, work, done))
        return self._finish(target) if wait else True

    def remove_recovery(self) -> None:
        """Queued behind any autosave, so a running one cannot bring the file back."""
        self.saves.submit(SaveJob(self.recovery.project, self.recovery.remove))

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
                    self.document.path = self.path
                    self._refresh_title()
                self.recovery.adopt(orphan)
                return True
            return False
        finally:
            self.recovery.release(orphans)

    # -- export ------------------------------------------------------------------------------

    def _ask_path(self, title: str) -> tuple[Path, int] | None:
        prefs, doc = self.prefs, self.document
        start = prefs.get("export_dir") or prefs.get("last_dir")
        stem = (self.path or doc.path or Path("edited")).stem
        path, chosen = QFileDialog.getSaveFileName(
            self.parent, title, str(Path(start) / f"{stem}-edited.png"), EXPORT_FILTERS
        )
        if not path:
            return None
        target = Path(path)
        if target.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            target = target.with_suffix(".jpg" if "JPEG" in chosen else
                                        ".webp" if "WebP" in chosen else ".png")  # fmt: skip
        quality = prefs.get("export_quality")
        if target.suffix.lower() != ".png":
            quality, ok = QInputDialog.getInt(self.parent, "Export quality", "Quality (1–100):",
                                              quality, 1, 100)  # fmt: skip
            if not ok:
                return None
            prefs.update(export_quality=quality)
        prefs.update(export_dir=str(target.parent))
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
        doc = self.document
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
        self.status.showMessage(f"Exported {path.name}", 4000)
        return True

    def export_series_to(self, path: Path, quality: int = 92) -> list[Path]:
        try:
            paths = export_series(self.document.history, path, quality=quality)
        except Exception as exc:
            self.window.show_error("Cannot export", _reason(exc))
            return []
        self.status.showMessage(f"Exported {len(paths)} results", 4000)
        return paths

    def copy_image(self) -> None:
        image = self.document.image
        if image is not None:
            QGuiApplication.clipboard().setImage(rgb_to_qimage(image))
            self.status.showMessage("Image copied to the clipboard", 3000)

    def cache_dialog(self) -> None:
        CacheSettingsDialog(self.cache, self.prefs, self.parent).exec()

    # -- reactions ---------------------------------------------------------------------------

    def _result_changed(self, pending: PendingResult | None) -> None:
        if pending is None:
            return
        lora = pending.trace.lora
        key = lora.key
        if key:
            self._trained = (str(key), pending)
        if lora.cache_warning:
            self.status.showMessage(f"Warning: {lora.cache_warning}", 10000)

    def _stage_started(self, event: StageStarted) -> None:
        bundled = self.bundled
        if event.stage != Stage.LORA or bundled is None or event.total == 0:
            return
        try:
            request = self.controller.build_request()
        except DragStudioError:
            return
        report = self.controller.host.bundled_report
        why = (
            report.get("why")
            or bundled.mismatch(request)
            or "the model's weights differ from the ones it fitted"
        )
        message = f"Retraining the LoRA from the project: {why}."
        self.progress_status.setText(message)
        self.status.showMessage(message, 10000)
        self.bundled = None

    def _on_document(self, notice: Notice) -> None:
        if notice.change in (Change.IMAGE, Change.HISTORY):
            self.update_enabled()
        if notice.change == Change.HISTORY and not self._opening:
            n = len(self.document.history)
            grew = n > self._history_len
            self._history_len = n
            if grew:  # after each accepted result, once the stack has recorded it
                QTimer.singleShot(0, self.autosave)

    def shutdown(self) -> None:
        self.timer.stop()
        self._unsubscribe()
        if not self._abandon_saves:  # the recovery file's removal, at least
            self.saves.wait(self.save_wait_s)
        self.recovery.close()


def _current_lora(
    cache: LoraCache, trained: tuple[str, PendingResult] | None, bundled: BundledLora | None
) -> BundledLora | None:
    """The LoRA of the latest drag, else the opened project's. The engine host hands the LoRA
    over with the result; only a host that does not (a remote engine of an older version, a
    test double) leaves it to be read back from the shared cache."""
    if trained is not None:
        key, pending = trained
        data = pending.lora_file if pending.lora_file is not None else cache.read_bytes(key)
        if data is not None:
            return bundle_lora(key, data, pending.request)
    return bundled
