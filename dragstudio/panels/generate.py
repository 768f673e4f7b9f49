"""The Generate panel: prompt, negative prompt, size, seed, guidance and steps for a new image.

Only the form: :mod:`dragstudio.generate_ui` runs it on the engine thread. Sizes are multiples
of 8 (the VAE's factor), so the generation's latents map onto the image exactly.
"""

from __future__ import annotations

import random

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from backend.generation import Generation

PRESETS: tuple[tuple[int, int], ...] = ((512, 512), (768, 512), (512, 768), (512, 1024),
                                        (1024, 512), (768, 768))  # fmt: skip
CUSTOM = "Custom"
MAX_SEED = 2**31 - 1
"""QSpinBox holds a C int; the engine accepts larger seeds, the panel does not need them."""

IDLE_NOTE = "A generated image drags without LoRA or inversion."


def _side_spin(value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(64, 2048)
    spin.setSingleStep(8)
    spin.setSuffix(" px")
    spin.setValue(value)
    spin.setKeyboardTracking(False)
    return spin


class GeneratePanel(QWidget):
    generateRequested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("generatePanel")
        self.prompt = QPlainTextEdit()
        self.prompt.setObjectName("generatePrompt")
        self.prompt.setPlaceholderText("What to generate, e.g. a photo of a cat on a sofa")
        self.prompt.setTabChangesFocus(True)
        self.prompt.setFixedHeight(self.fontMetrics().lineSpacing() * 3 + 12)
        self.negative = QLineEdit()
        self.negative.setObjectName("generateNegative")
        self.negative.setPlaceholderText("What to avoid (optional)")

        self.size_combo = QComboBox()
        self.size_combo.setObjectName("generateSize")
        for w, h in PRESETS:
            self.size_combo.addItem(f"{w} × {h}")
        self.size_combo.addItem(CUSTOM)
        self.width_spin = _side_spin(512)
        self.width_spin.setObjectName("generateWidth")
        self.height_spin = _side_spin(512)
        self.height_spin.setObjectName("generateHeight")
        sides = QHBoxLayout()
        sides.setContentsMargins(0, 0, 0, 0)
        sides.addWidget(self.width_spin, 1)
        sides.addWidget(QLabel("×"))
        sides.addWidget(self.height_spin, 1)

        self.seed_spin = QSpinBox()
        self.seed_spin.setObjectName("generateSeed")
        self.seed_spin.setRange(0, MAX_SEED)
        self.dice = QToolButton()
        self.dice.setObjectName("generateDice")
        self.dice.setText("Random")  # not a die emoji: many Linux fonts lack it
        self.dice.setToolTip("Pick a random seed")
        seed_row = QHBoxLayout()
        seed_row.setContentsMargins(0, 0, 0, 0)
        seed_row.addWidget(self.seed_spin, 1)
        seed_row.addWidget(self.dice)

        self.guidance = QDoubleSpinBox()
        self.guidance.setObjectName("generateGuidance")
        self.guidance.setRange(1.0, 50.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(1)
        self.guidance.setValue(7.5)
        self.guidance.setToolTip("Classifier-free guidance: higher follows the prompt more")
        self.steps = QSpinBox()
        self.steps.setObjectName("generateSteps")
        self.steps.setRange(2, 1000)
        self.steps.setValue(50)
        self.steps.setToolTip("DDIM steps; the drag later starts from one of these latents")

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Negative", self.negative)
        form.addRow("Size", self.size_combo)
        form.addRow("", sides)
        form.addRow("Seed", seed_row)
        form.addRow("Guidance", self.guidance)
        form.addRow("Steps", self.steps)

        self.button = QPushButton("Generate")
        self.button.setObjectName("generateButton")
        self.button.setMinimumHeight(32)
        self.status = QLabel(IDLE_NOTE)
        self.status.setObjectName("generateStatus")
        self.status.setWordWrap(True)
        self.status.setProperty("muted", True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.addWidget(QLabel("Prompt"))
        layout.addWidget(self.prompt)
        layout.addLayout(form)
        layout.addWidget(self.button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.size_combo.currentIndexChanged.connect(self._preset_chosen)
        self.width_spin.valueChanged.connect(self._side_changed)
        self.height_spin.valueChanged.connect(self._side_changed)
        self.dice.clicked.connect(self.roll_seed)
        self.button.clicked.connect(self.generateRequested)
        self.prompt.textChanged.connect(self._update_enabled)
        self._fields: tuple[QWidget, ...] = (
            self.prompt, self.negative, self.size_combo, self.width_spin, self.height_spin,
            self.seed_spin, self.dice, self.guidance, self.steps,
        )  # fmt: skip
        self._running = False
        self._update_enabled()

    # -- size --------------------------------------------------------------------------------

    def set_size(self, width: int, height: int) -> None:
        """Choose a size; one that is a preset selects it, any other shows as Custom."""
        for spin, value in ((self.width_spin, width), (self.height_spin, height)):
            spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(False)
        self._side_changed()

    def _preset_chosen(self, index: int) -> None:
        if 0 <= index < len(PRESETS):
            self.set_size(*PRESETS[index])

    def _side_changed(self, *_: object) -> None:
        # Snap to multiples of 8: typed values need not be.
        for spin in (self.width_spin, self.height_spin):
            snapped = round(spin.value() / 8) * 8
            if snapped != spin.value():
                spin.blockSignals(True)
                spin.setValue(snapped)
                spin.blockSignals(False)
        size = (self.width_spin.value(), self.height_spin.value())
        index = PRESETS.index(size) if size in PRESETS else -1  # items are PRESETS, in order
        self.size_combo.blockSignals(True)
        self.size_combo.setCurrentIndex(index if index >= 0 else self.size_combo.count() - 1)
        self.size_combo.blockSignals(False)

    # -- state -------------------------------------------------------------------------------

    def roll_seed(self) -> None:
        self.seed_spin.setValue(random.randint(0, MAX_SEED))

    def set_running(self, running: bool) -> None:
        self._running = running
        self.button.setText("Cancel" if running else "Generate")
        self.button.setToolTip("Stop generating" if running else "Generate a new image (Ctrl+G)")
        for widget in self._fields:
            widget.setEnabled(not running)
        self._update_enabled()

    def _update_enabled(self) -> None:
        self.button.setEnabled(self._running or bool(self.prompt.toPlainText().strip()))

    def spec(self) -> Generation:
        """What to generate (the engine fills in the trajectory)."""
        w, h, steps = self.width_spin.value(), self.height_spin.value(), self.steps.value()
        return Generation(
            prompt=self.prompt.toPlainText().strip(),
            negative_prompt=self.negative.text().strip(),
            seed=self.seed_spin.value(),
            width=w,
            height=h,
            guidance_scale=round(self.guidance.value(), 2),
            steps=steps,
        )
