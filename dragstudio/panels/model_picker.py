"""Choose the Stable Diffusion model: a hub id, a local diffusers folder or one checkpoint file.

The choice is a preference rather than an edit, so it is remembered in settings and is not on
the undo stack; the document carries it so that the request names the model it ran with.
"""

from __future__ import annotations

from PySide6.QtCore import QSettings, Signal
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
from dragstudio.resources import icon

RECENT_KEY = "model/recent"
CURRENT_KEY = "model/current"
MAX_RECENT = 8
CHECKPOINT_FILTER = "Checkpoints (*.safetensors *.ckpt);;All files (*)"


class ModelPicker(QWidget):
    modelChosen = Signal(str)

    def __init__(self, document: Document, settings: QSettings) -> None:
        super().__init__()
        self._doc = document
        self._settings = settings

        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setToolTip(
            "The Stable Diffusion 1.5-style model to edit with: a Hugging Face hub id, "
            "a local diffusers folder, or a single .safetensors/.ckpt checkpoint."
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

        remembered = settings.value(CURRENT_KEY, DEFAULT_MODEL, type=str) or DEFAULT_MODEL
        self._fill(remembered)
        document.set_model(remembered)
        self._unsubscribe = document.subscribe(self._on_document)
        self.destroyed.connect(lambda *_: self._unsubscribe())

    def _recent(self) -> list[str]:
        value = self._settings.value(RECENT_KEY, [], type=list)
        return [str(v) for v in value if v]

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
        recent = [model] + [m for m in self._recent() if m != model]
        self._settings.setValue(RECENT_KEY, recent[:MAX_RECENT])
        self._settings.setValue(CURRENT_KEY, model)
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
