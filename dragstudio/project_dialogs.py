"""Small dialogs for projects: the LoRA cache settings and the export quality question.

The cache dialog works on the same :class:`~backend.lora_cache.LoraCache` object the engine
uses (it needs no torch), so a new limit applies to the very next LoRA the engine stores.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from backend.lora_cache import LoraCache
from backend.settings import SettingsStore


def cache_limit_bytes(prefs: SettingsStore) -> int:
    return int(max(0.1, prefs.get("lora_cache_limit_gb")) * 2**30)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class CacheSettingsDialog(QDialog):
    """Where the LoRA cache lives, how big it is, its limit, and a Clear button."""

    def __init__(self, cache: LoraCache, prefs: SettingsStore, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("LoRA Cache")
        self.cache, self.prefs = cache, prefs
        folder = QLabel(str(cache.directory))
        folder.setWordWrap(True)
        self.size_label = QLabel()
        self.size_label.setObjectName("cacheSize")
        self.limit = QDoubleSpinBox()
        self.limit.setObjectName("cacheLimit")
        self.limit.setRange(0.1, 1000.0)
        self.limit.setDecimals(1)
        self.limit.setSingleStep(0.5)
        self.limit.setSuffix(" GB")
        self.limit.setValue(cache.limit_bytes / 2**30)
        self.limit.setToolTip("When the cache grows past this, the least recently used go first")
        self.limit.valueChanged.connect(self.set_limit)
        self.clear_button = QPushButton("Clear Cache")
        self.clear_button.setObjectName("clearCache")
        self.clear_button.clicked.connect(self.clear)

        form = QFormLayout()
        form.addRow("Folder", folder)
        form.addRow("Size", self.size_label)
        form.addRow("Limit", self.limit)
        note = QLabel(
            "Fine-tuned LoRAs are kept here so dragging the same photo again (same model, "
            "prompt and LoRA settings) skips fine-tuning. Clearing only costs retraining."
        )
        note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.clear_button)
        layout.addWidget(buttons)
        self.setMinimumWidth(460)
        self.refresh()

    def refresh(self) -> None:
        entries = self.cache.entries()
        size = sum(s for _, s, _ in entries)
        self.size_label.setText(f"{human_size(size)} in {len(entries)} LoRA(s)")
        self.clear_button.setEnabled(bool(entries))

    def set_limit(self, gb: float) -> None:
        self.cache.limit_bytes = int(gb * 2**30)
        self.prefs.update(lora_cache_limit_gb=gb)
        self.cache.evict()
        self.refresh()

    def clear(self) -> None:
        self.cache.clear()
        self.refresh()
