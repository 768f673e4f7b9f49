"""Prompt and engine parameters, bound to the document through undoable commands.

Widgets never hold state of their own: edits push commands, and the panel redraws itself from
the document whenever it changes, so undo, reset and (later) opening a project all show up here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from backend.document import Change, Document, Notice
from backend.methods import METHODS, SUMMARIES, with_method_defaults
from backend.params import panel_specs
from backend.request import DragParams, LoraParams
from backend.speed_presets import PRICES, SPEEDS, with_speed
from backend.speed_presets import SUMMARIES as SPEED_SUMMARIES
from dragstudio.commands import SetMethod, SetParams, SetPrompt, SetSpeed
from dragstudio.panels.fold import Fold

SPEED_LABELS = {name: "Paper (full)" if name == "paper" else name for name in SPEEDS}


def speed_note(speed: str) -> str:
    """One line: what the choice saves and what it costs."""
    return " ".join(part for part in (SPEED_SUMMARIES[speed], PRICES[speed]) if part)


@dataclass(frozen=True)
class ParamSpec:
    """One knob: where it lives (``lora`` or ``params``), its range and its help text."""

    key: str
    label: str
    group: str
    field: str
    lo: float
    hi: float
    step: float
    decimals: int
    tooltip: str
    multiple_of: int = 1


SPECS: tuple[ParamSpec, ...] = tuple(
    ParamSpec(
        s.key, s.label, s.group, s.name, s.min, s.max, s.step, s.decimals, s.help, s.multiple_of
    )
    for s in panel_specs()
)
"""Ranges, labels and help come from :mod:`backend.params`: the spin boxes accept exactly
what validation accepts."""

SECTIONS: dict[str, str] = {
    "working_width": "Speed",
    "lora_steps": "LoRA fine-tuning",
    "inversion_strength": "Drag",
}
"""Headings in the Advanced form, placed before the knob named (in panel order)."""


def snapped(spec: ParamSpec, value: float) -> float:
    """``value`` on the knob's grid (working width: a multiple of 8), within its range."""
    if spec.multiple_of <= 1:
        return value
    m = spec.multiple_of
    v = math.floor(value / m + 0.5) * m  # half up: 500 -> 504, as a person would round
    lo = -(-int(spec.lo) // m) * m
    hi = int(spec.hi) // m * m
    return max(lo, min(hi, v))


def spec_value(doc: Document, spec: ParamSpec) -> float:
    source = doc.lora if spec.group == "lora" else doc.params
    return getattr(source, spec.field)


def with_value(doc: Document, spec: ParamSpec, value: float) -> tuple[DragParams, LoraParams]:
    """The document's parameters with one knob changed."""
    v: float | int = round(value) if spec.decimals == 0 else float(value)
    params, lora = doc.params, doc.lora
    if spec.group == "params":
        params = replace(params, **{spec.field: v})
    else:
        lora = replace(lora, **{spec.field: v})
    return params, lora


class ParametersPanel(QWidget):
    def __init__(self, document: Document, undo_stack: QUndoStack) -> None:
        super().__init__()
        self.setObjectName("parametersPanel")
        self._doc = document
        self._stack = undo_stack
        self._syncing = False

        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("Describe the photo (optional)")
        self.prompt.setToolTip(
            "A few words about the photo. It guides fine-tuning and denoising; "
            "it does not describe the change (the points do)."
        )
        self.prompt.setClearButtonEnabled(True)
        self.prompt.textEdited.connect(self._prompt_edited)

        form_host = QWidget()
        form = QFormLayout(form_host)
        form.setContentsMargins(0, 0, 0, 0)
        self.spins: dict[str, QSpinBox | QDoubleSpinBox] = {}
        for spec in SPECS:
            if spec.key in SECTIONS:
                heading = QLabel(SECTIONS[spec.key])
                heading.setObjectName("paramSection")
                form.addRow(heading)
            spin = self._make_spin(spec)
            label = QLabel(spec.label)
            label.setToolTip(spec.tooltip)
            label.setBuddy(spin)
            form.addRow(label, spin)
            self.spins[spec.key] = spin
        self.reset_button = QPushButton("Reset to defaults")
        self.reset_button.setToolTip(
            "Put every parameter back to the chosen method's defaults (with the chosen speed)."
        )
        self.reset_button.clicked.connect(self.reset_to_defaults)
        form.addRow(self.reset_button)
        self.advanced = Fold("Advanced", form_host)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Prompt"))
        layout.addWidget(self.prompt)
        layout.addSpacing(6)
        # Method: DragDiffusion (the paper) or GoodDrag; one line on what it does and costs.
        self.method = QComboBox()
        self.method.setObjectName("method")
        self.method.addItems(["Paper (DragDiffusion)", "GoodDrag"])
        self.method.currentIndexChanged.connect(self._method_changed)
        self.method_note = QLabel()
        self.method_note.setWordWrap(True)
        layout.addWidget(QLabel("Method"))
        layout.addWidget(self.method)
        layout.addWidget(self.method_note)
        layout.addSpacing(6)
        # Speed: the paper's settings or a named fast option; one line on what it costs.
        self.speed = QComboBox()
        self.speed.setObjectName("speed")
        self.speed.addItems([SPEED_LABELS[name] for name in SPEEDS])
        self.speed.setToolTip(
            "Named fast options: fewer or cheaper steps than the paper, at a price in accuracy "
            "(measured in docs/benchmarks.md)"
        )
        self.speed.currentIndexChanged.connect(self._speed_changed)
        self.speed_note = QLabel()
        self.speed_note.setObjectName("speedNote")
        self.speed_note.setWordWrap(True)
        layout.addWidget(QLabel("Speed"))
        layout.addWidget(self.speed)
        layout.addWidget(self.speed_note)
        layout.addSpacing(6)
        layout.addWidget(self.advanced)

        self._unsubscribe = document.subscribe(self._on_document)
        self.destroyed.connect(lambda *_: self._unsubscribe())
        self._sync()

    def _make_spin(self, spec: ParamSpec) -> QSpinBox | QDoubleSpinBox:
        spin: QSpinBox | QDoubleSpinBox
        if spec.decimals == 0:
            spin = QSpinBox()
            spin.setRange(int(spec.lo), int(spec.hi))
            spin.setSingleStep(int(spec.step))
            spin.valueChanged.connect(lambda v, s=spec: self._value_changed(s, v))
        else:
            spin = QDoubleSpinBox()
            spin.setDecimals(spec.decimals)
            spin.setRange(spec.lo, spec.hi)
            spin.setSingleStep(spec.step)
            spin.valueChanged.connect(lambda v, s=spec: self._value_changed(s, v))
        spin.setObjectName(spec.key)
        spin.setToolTip(spec.tooltip)
        spin.setKeyboardTracking(False)
        spin.setStepType(QAbstractSpinBox.StepType.DefaultStepType)
        spin.setMinimumWidth(96)
        return spin

    # -- edits -> commands -------------------------------------------------------------------

    def _prompt_edited(self, text: str) -> None:
        if not self._syncing:
            self._stack.push(SetPrompt(self._doc, text))

    def _method_changed(self, index: int) -> None:
        if not self._syncing and METHODS[index] != self._doc.method:
            self._stack.push(SetMethod(self._doc, METHODS[index]))

    def _speed_changed(self, index: int) -> None:
        if not self._syncing and SPEEDS[index] != self._doc.speed:
            self._stack.push(SetSpeed(self._doc, SPEEDS[index]))

    def _value_changed(self, spec: ParamSpec, value: float) -> None:
        if self._syncing:
            return
        on_grid = snapped(spec, value)
        if on_grid != value:  # e.g. a typed working width of 500: use 504, and show it
            self.spins[spec.key].setValue(on_grid)  # type: ignore[arg-type]
            return  # the spin box's own valueChanged comes back with the snapped value
        if spec_value(self._doc, spec) == value:
            return
        params, lora = with_value(self._doc, spec, value)
        text = f"{spec.label.split(' (')[0]} = {value:g}"
        self._stack.push(SetParams(self._doc, params, lora, text, key=spec.key))

    def reset_to_defaults(self) -> None:
        params, lora = with_method_defaults(DragParams(), LoraParams(), self._doc.method)
        params, lora = with_speed(params, lora, self._doc.speed, self._doc.method)
        if (self._doc.params, self._doc.lora) != (params, lora):
            self._stack.push(SetParams(self._doc, params, lora, "Reset parameters"))

    # -- document -> widgets -----------------------------------------------------------------

    def _on_document(self, notice: Notice) -> None:
        if notice.change in (Change.PROMPT, Change.PARAMS):
            self._sync()

    def _sync(self) -> None:
        self._syncing = True
        try:
            if self.prompt.text() != self._doc.prompt:
                self.prompt.setText(self._doc.prompt)
            self.method.setCurrentIndex(METHODS.index(self._doc.method))
            self.method_note.setText(SUMMARIES[self._doc.method])
            self.speed.setCurrentIndex(SPEEDS.index(self._doc.speed))
            self.speed_note.setText(speed_note(self._doc.speed))
            for spec in SPECS:
                spin = self.spins[spec.key]
                value = spec_value(self._doc, spec)
                if spin.value() != value:
                    spin.setValue(value)  # type: ignore[arg-type]
        finally:
            self._syncing = False
