"""The pending result's controls (before/after, split, Accept, Discard) and the list of
accepted results with thumbnails, points, parameters and time taken.

The list is drawn from ``document.history``, which the undoable Accept command changes, so
undo and redo keep it right without the panel remembering anything itself.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from backend.document import Change, Document, HistoryEntry, Notice
from dragstudio.panels.progress import format_seconds
from dragstudio.qtimage import rgb_to_qimage

THUMB = 72


def thumbnail(image: np.ndarray, size: int = THUMB) -> QPixmap:
    pixmap = QPixmap.fromImage(rgb_to_qimage(image))
    return pixmap.scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )


class ResultBar(QWidget):
    """Shown while a result waits: compare it with the original, then accept or discard it."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("resultBar")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.before_button = QPushButton("Show before")
        self.before_button.setObjectName("showBefore")
        self.before_button.setCheckable(True)
        self.before_button.setToolTip("Toggle between the original and the result (O)")
        self.split = QSlider(Qt.Orientation.Horizontal)
        self.split.setObjectName("split")
        self.split.setRange(0, 100)
        self.split.setToolTip("Wipe: the original left of the line, the result right of it")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setObjectName("accept")
        self.accept_button.setToolTip("Make the result the image to drag further (Ctrl+Shift+A)")
        self.discard_button = QPushButton("Discard")
        self.discard_button.setObjectName("discard")
        self.discard_button.setToolTip("Drop the result and keep the image as it was")
        self.final_button = QPushButton("Render Final")
        self.final_button.setObjectName("renderFinal")
        self.final_button.setToolTip(
            "Drag the same points again at Final quality (reusing this photo's LoRA)"
        )
        self.final_button.setVisible(False)

        compare = QHBoxLayout()
        compare.addWidget(self.before_button)
        compare.addWidget(QLabel("Split"))
        compare.addWidget(self.split, 1)
        decide = QHBoxLayout()
        decide.addWidget(self.accept_button)
        decide.addWidget(self.discard_button)
        decide.addWidget(self.final_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addLayout(compare)
        layout.addLayout(decide)
        self.setVisible(False)

    def show_result(
        self, seconds: float, lora: str, distances: list[float], preview: str = ""
    ) -> None:
        """``lora`` says what the LoRA stage did (trained, reused, skipped); ``preview`` how a
        Preview-quality result was made ("" for Final)."""
        far = f", handles within {max(distances):.1f} px of targets" if distances else ""
        kind = f"Preview ({preview})" if preview else "Result"
        self.summary.setText(f"{kind} ready in {format_seconds(seconds)} ({lora}{far}).")
        self.final_button.setVisible(bool(preview))
        self.before_button.setChecked(False)
        self.split.setValue(0)
        self.setVisible(True)


def describe(entry: HistoryEntry) -> str:
    """The tooltip: points, parameters and time, so a user can tell what produced the image."""
    points = "\n".join(
        f"  {i}: ({p.handle[0]:.0f}, {p.handle[1]:.0f}) → ({p.target[0]:.0f}, {p.target[1]:.0f})"
        for i, p in enumerate(entry.pairs, 1)
        if p.target is not None
    )
    pr, lo = entry.params, entry.lora
    return (
        f"Points:\n{points}\n"
        f"Prompt: {entry.prompt or '(none)'}\n"
        f"Drag steps {pr.drag_steps}, DDIM steps {pr.inference_steps}, inversion "
        f"{pr.inversion_strength:g}, lr {pr.latent_lr:g}, λ {pr.lam:g}, r1 {pr.r1}, r2 {pr.r2}, "
        f"width {pr.working_width}\n"
        f"LoRA {lo.steps} steps (rank {lo.rank}, seed {lo.seed})"
        f"{', reused' if entry.lora_reused else ''}\n"
        f"Model: {entry.model}\nTime: {format_seconds(entry.seconds)}"
    )


class ResultsHistory(QListWidget):
    """Accepted results, newest last, each with its thumbnail and what produced it."""

    def __init__(self, document: Document) -> None:
        super().__init__()
        self.setObjectName("resultsHistory")
        self.setIconSize(QSize(THUMB, THUMB))
        self.document = document
        self._unsubscribe = document.subscribe(self._on_document)
        self.destroyed.connect(lambda *_: self._unsubscribe())
        self.refresh()

    def _on_document(self, notice: Notice) -> None:
        if notice.change == Change.HISTORY:
            self.refresh()

    def refresh(self) -> None:
        self.clear()
        original = self.document.original
        if original is not None:
            item = QListWidgetItem(QIcon(thumbnail(original)), "Original photo")
            self.addItem(item)
        for i, entry in enumerate(self.document.history, 1):
            n = len(entry.pairs)
            text = (
                f"Drag {i}: {n} pair{'s' if n != 1 else ''} · {format_seconds(entry.seconds)}"
                f"{' · LoRA reused' if entry.lora_reused else ''}"
            )
            item = QListWidgetItem(QIcon(thumbnail(entry.after)), text)
            item.setToolTip(describe(entry))
            self.addItem(item)
