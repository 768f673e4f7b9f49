"""The GPU memory plan combo (auto, high, 8gb, 6gb), saved as the ``memory`` preference."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QWidget

from backend.settings import MEMORY_PLANS, SettingsStore

LABELS: dict[str, tuple[str, str]] = {
    "auto": ("Auto", "Choose from the GPU's free memory when an edit starts (high on the CPU)."),
    "high": ("High (12+ GB)", "Everything on the GPU: the fastest plan."),
    "8gb": (
        "8 GB",
        "Gradient checkpointing; text encoder and VAE off the GPU when idle; VAE tiled above "
        "512 px. Results within rounding of High, about 1.2–1.4× its time.",
    ),
    "6gb": (
        "6 GB",
        "The 8 GB plan with the LoRA batch in micro-batches of one and no reference cache for "
        "re-drags. Results within rounding of High.",
    ),
}


class MemoryCombo(QComboBox):
    """One combo; ``planChanged`` carries the plan's key after the preference is saved."""

    planChanged = Signal(str)

    def __init__(self, prefs: SettingsStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.prefs = prefs
        for key in MEMORY_PLANS:
            label, tip = LABELS[key]
            self.addItem(label, key)
            self.setItemData(self.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.setToolTip("GPU memory plan: how the model fits the GPU (see docs/engine.md)")
        self.setCurrentIndex(max(0, self.findData(prefs.get("memory"))))
        self.currentIndexChanged.connect(self._changed)

    @property
    def plan(self) -> str:
        return str(self.currentData())

    def _changed(self, _index: int) -> None:
        self.prefs.update(memory=self.plan)
        self.planChanged.emit(self.plan)
