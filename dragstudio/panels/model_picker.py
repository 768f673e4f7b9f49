"""Choose the Stable Diffusion model: a hub id, a local diffusers folder or one checkpoint file.

The choice is a preference rather than an edit, so it is remembered in settings and is not on
the undo stack; the document carries it so that the request names the model it ran with.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from backend.document import Change, Document, Notice
from backend.request import DEFAULT_MODEL
from backend.settings import SettingsStore
from dragstudio.resources import icon

CHECKPOINT_FILTER = "Checkpoints (*.safetensors);;All files (*)"


class ModelPicker(QWidget):
    modelChosen = Signal(str)

    def __init__(self, document: Document, prefs: SettingsStore) -> None:
        super().__init__()
        self._doc = document
        self._prefs = prefs

        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setToolTip(
            "The Stable Diffusion 1.5-style model to edit with: a Hugging Face hub id, "
            "a local diffusers folder, or a single .safetensors checkpoint."
        )
        self.combo.lineEdit().setPlaceholderText(DEFAULT_MODEL)
        self.folder_button = QToolButton(icon=icon("folder"), toolTip="Use a local model folder…")
        self.file_button = QToolButton(icon=icon("file"), toolTip="Use a checkpoint file…")

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(4)
        row.addWidget(self.combo, 1)
        row.addWidget(self.folder_button)
        row.addWidget(self.file_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)

        self.combo.activated.connect(lambda _i: self.choose(self.combo.currentText()))
        self.combo.lineEdit().editingFinished.connect(lambda: self.choose(self.combo.currentText()))
        self.folder_button.clicked.connect(self._browse_folder)
        self.file_button.clicked.connect(self._browse_file)

        remembered = prefs.get("model") or DEFAULT_MODEL
        self._fill(remembered)
        document.set_model(remembered)
        self._unsubscribe = document.subscribe(self._on_document)
        self.destroyed.connect(lambda *_: self._unsubscribe())

    def _recent(self) -> list[str]:
        return [m for m in self._prefs.get("recent_models") if m]

    def _fill(self, current: str) -> None:
        items = [current] + [m for m in [*self._recent(), DEFAULT_MODEL] if m != current]
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems(list(dict.fromkeys(items)))
        self.combo.setCurrentIndex(0)
        self.combo.blockSignals(False)

    def choose(self, model: str) -> None:
        """Use ``model`` from now on and remember it (an empty text means the default)."""
        model = model.strip() or DEFAULT_MODEL
        self._prefs.push_recent("recent_models", model)
        self._prefs.update(model=model)
        if model != self._doc.model:
            self._doc.set_model(model)
            self.modelChosen.emit(model)
        if self.combo.currentText() != model or self.combo.itemText(0) != model:
            self._fill(model)

    def _on_document(self, notice: Notice) -> None:
        if notice.change == Change.MODEL and self.combo.currentText() != self._doc.model:
            self._fill(self._doc.model)

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a diffusers model folder")
        if folder:
            self.choose(folder)

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint", "", CHECKPOINT_FILTER)
        if path:
            self.choose(path)
