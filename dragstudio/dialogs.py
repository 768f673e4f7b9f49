"""Dialogs for running edits: a readable failure, a missing model, a model download.

Failures say what happened and what to try, with the traceback behind "Show Details…", so a
user can act and a developer can debug from the same box. Dialogs asked from inside a coroutine
are awaited (:func:`run_dialog`), never ``exec()``-ed: a nested event loop inside a running
asyncio task is what made qasync print "Cannot enter into task … while another task is being
executed".
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from dragstudio.download import download_model
from dragstudio.drag_readiness import looks_like_hub_id
from dragstudio.project_dialogs import human_size
from dragstudio.runner import Failure


def failure_box(
    parent: QWidget | None, failure: Failure, title: str = "The edit failed"
) -> QMessageBox:
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(failure.message)
    if failure.suggestion:
        box.setInformativeText(failure.suggestion)
    if failure.details:
        box.setDetailedText(failure.details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    return box


class ModelChoice(StrEnum):
    DOWNLOAD = "download"
    FOLDER = "folder"
    FILE = "file"
    CANCEL = "cancel"


async def run_dialog(dialog: QDialog) -> int:
    """Show ``dialog`` window-modal and wait for it without a nested event loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def finished(result: int) -> None:
        if not done.done():
            done.set_result(result)

    dialog.finished.connect(finished)
    dialog.open()
    try:
        return await done
    finally:
        dialog.finished.disconnect(finished)
        dialog.hide()


async def choose_existing_path(
    parent: QWidget | None, title: str, *, folder: bool, name_filter: str = ""
) -> str:
    """A file dialog for an existing folder or file, awaited; "" when cancelled."""
    dialog = QFileDialog(parent, title)
    dialog.setFileMode(
        QFileDialog.FileMode.Directory if folder else QFileDialog.FileMode.ExistingFile
    )
    if folder:
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
    if name_filter:
        dialog.setNameFilter(name_filter)
    try:
        if await run_dialog(dialog) != QDialog.DialogCode.Accepted:
            return ""
        files = dialog.selectedFiles()
        return files[0] if files else ""
    finally:
        dialog.deleteLater()


async def ask_missing_model(parent: QWidget | None, spec: str, failure: Failure) -> ModelChoice:
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Model not found")
    box.setText(f"The model “{spec}” is not on this computer.")
    box.setInformativeText(
        "Download it from the Hugging Face hub (about 2 GB for Stable Diffusion 1.5), or "
        "choose a diffusers folder or a .safetensors checkpoint you already have."
    )
    box.setDetailedText(failure.message)
    buttons: dict[object, ModelChoice] = {}
    if looks_like_hub_id(spec):
        download = box.addButton("Download…", QMessageBox.ButtonRole.AcceptRole)
        buttons[download] = ModelChoice.DOWNLOAD
    buttons[box.addButton("Choose Folder…", QMessageBox.ButtonRole.ActionRole)] = ModelChoice.FOLDER
    buttons[box.addButton("Choose File…", QMessageBox.ButtonRole.ActionRole)] = ModelChoice.FILE
    box.addButton(QMessageBox.StandardButton.Cancel)
    try:
        await run_dialog(box)
        return buttons.get(box.clickedButton(), ModelChoice.CANCEL)
    finally:
        box.deleteLater()


class DownloadDialog(QDialog):
    """Bytes done of total, speed, and a Cancel that stops the download mid-file."""

    def __init__(self, parent: QWidget | None, repo_id: str) -> None:
        super().__init__(parent)
        self.setWindowTitle("Downloading model")
        self.setModal(True)
        self.cancel_event = threading.Event()
        self._start = time.perf_counter()
        self.label = QLabel(f"Downloading {repo_id} from the Hugging Face hub…")
        self.bar = QProgressBar()
        self.bar.setRange(0, 0)
        self.numbers = QLabel("Connecting…")
        cancel = QPushButton("Cancel")
        cancel.clicked.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        layout.addWidget(self.numbers)
        layout.addWidget(cancel)
        self.rejected.connect(self.cancel_event.set)
        self.resize(440, 140)

    def progress(self, done: int, total: int) -> None:
        speed = done / max(time.perf_counter() - self._start, 1e-3)
        if total:
            self.bar.setRange(0, 1000)
            self.bar.setValue(round(1000 * done / total))
            left = (total - done) / speed if speed > 0 else 0
            rate = f"{human_size(speed)}/s"
            self.numbers.setText(
                f"{human_size(done)} of {human_size(total)} · {rate} · {left:.0f} s left"
            )
        else:
            self.numbers.setText(f"{human_size(done)} · {human_size(speed)}/s")


async def download_with_dialog(parent: QWidget | None, repo_id: str) -> str:
    """Download in a worker thread behind a progress dialog; raises Cancelled or ModelNotFound."""
    loop = asyncio.get_running_loop()
    dialog = DownloadDialog(parent, repo_id)
    dialog.show()

    def report(done: int, total: int) -> None:
        loop.call_soon_threadsafe(dialog.progress, done, total)

    # Its own thread: the engine's must stay free, and qasync's default executor outlives tests.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download")
    try:
        return await loop.run_in_executor(
            executor, download_model, repo_id, report, dialog.cancel_event
        )
    finally:
        executor.shutdown(wait=False)
        dialog.cancel_event.set()
        dialog.close()
        dialog.deleteLater()
