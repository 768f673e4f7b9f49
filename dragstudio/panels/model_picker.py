"""Choose the Stable Diffusion model (a hub id, a local diffusers folder or one checkpoint file)
and, optionally, a VAE to use instead of its own (a diffusers VAE folder or hub id).

The choice is a preference rather than an edit, so it is remembered in settings and is not on
the undo stack; the document carries it so that the request names the model it ran with.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
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

        self.vae_edit = QLineEdit()
        self.vae_edit.setPlaceholderText("model's own VAE")
        self.vae_edit.setClearButtonEnabled(True)
        self.vae_edit.setToolTip(
            "A VAE to use instead of the model's own: a diffusers VAE folder or a hub id such as "
            "stabilityai/sd-vae-ft-mse. Empty: the model's own VAE."
        )
        self.vae_button = QToolButton(icon=icon("folder"), toolTip="Use a local VAE folder…")
        vae_row = QHBoxLayout()
        vae_row.setContentsMargins(0, 0, 0, 0)
        vae_row.setSpacing(4)
        vae_row.addWidget(self.vae_edit, 1)
        vae_row.addWidget(self.vae_button)
        layout.addLayout(vae_row)

        self.combo.activated.connect(lambda _i: self.choose(self.combo.currentText()))
        self.combo.lineEdit().editingFinished.connect(lambda: self.choose(self.combo.currentText()))
        self.folder_button.clicked.connect(self._browse_folder)
        self.file_button.clicked.connect(self._browse_file)
        self.vae_edit.editingFinished.connect(lambda: self.choose_vae(self.vae_edit.text()))
        self.vae_button.clicked.connect(self._browse_vae)

        remembered = prefs.get("model") or DEFAULT_MODEL
        self._fill(remembered)
        document.set_model(remembered)
        document.set_vae(prefs.get("vae"))
        self.vae_edit.setText(document.vae or "")
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

    def choose_vae(self, vae: str) -> None:
        """Use ``vae`` instead of the model's own from now on (empty: the model's own)."""
        self._prefs.update(vae=vae.strip())
        self._doc.set_vae(vae)
        if self.vae_edit.text() != (self._doc.vae or ""):
            self.vae_edit.setText(self._doc.vae or "")

    def _on_document(self, notice: Notice) -> None:
        if notice.change != Change.MODEL:
            return
        if self.combo.currentText() != self._doc.model:
            self._fill(self._doc.model)
        if self.vae_edit.text().strip() != (self._doc.vae or ""):
            self.vae_edit.setText(self._doc.vae or "")

    def _browse_vae(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a diffusers VAE folder")
        if folder:
            self.choose_vae(folder)

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a diffusers model folder")
        if folder:
            self.choose(folder)

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint", "", CHECKPOINT_FILTER)
        if path:
            self.choose(path)
