"""The Drag button and one progress bar per stage, with step/total, time left, loss and a preview.

Time left is the stage's own pace so far (elapsed / steps done × steps left): stages differ too
much in cost per step for one overall estimate to mean anything. A stage's bar is busy (moving)
from its start until its first step, so a slow first step never looks like a hang. Under the
button a hint says why Drag cannot run, when it cannot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QButtonGroup,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from backend.events import (
    DRAG_STAGES,
    Stage,
    StageFinished,
    StageStarted,
    StepProgress,
)
from dragstudio.qtimage import rgb_to_qimage

STAGE_TITLES: dict[Stage, str] = {
    Stage.LOAD: "Model",
    Stage.GENERATE: "Generation",
    Stage.LORA: "LoRA fine-tuning",
    Stage.INVERSION: "Inversion",
    Stage.DRAG: "Optimisation",
    Stage.DENOISE: "Denoising",
}
PREVIEW_WIDTH = 240
PREVIEW_HEIGHT = 150
"""The preview fits this box: the panel's height must not depend on the photo's aspect."""
BAR_HEIGHT = 18
"""Tall enough for its caption: a bar is never a hairline."""


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s"


class BarText(QObject):
    """A stage's caption (steps, time left, loss), written inside its bar: one line per stage
    keeps the whole panel short enough to stay in view beside the preview."""

    def __init__(self, bar: QProgressBar) -> None:
        super().__init__(bar)
        self.bar = bar
        self._text = ""
        self._short = ""
        bar.installEventFilter(self)  # a narrower panel may need the short caption

    def setText(self, text: str, short: str = "") -> None:
        """Show ``text``, or ``short`` where ``text`` would not fit the bar (cut at both ends,
        it lost what matters: "…using the LoRA in memory · done in 0.0 s"); the tooltip and
        :meth:`text` always have all of it."""
        self._text, self._short = text, short
        self.bar.setToolTip(text)
        self._fit()

    def _fit(self) -> None:
        shown = self._text
        room = self.bar.contentsRect().width() - 8
        if self._short and self.bar.fontMetrics().horizontalAdvance(shown) > room:
            shown = self._short
        self.bar.setFormat(shown.replace("%", "%%"))

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Resize:
            self._fit()
        return False

    def text(self) -> str:
        return self._text


@dataclass
class _Row:
    title: QLabel
    bar: QProgressBar
    note: BarText
    started: float = 0.0
    total: int = 0
    detail: str = ""
    base_step: int = 0
    """The pace counts from this step (and ``started``): 0, or the step at which this row
    joined a stage already under way (a Drag continuing a background preparation)."""
    stepped: bool = False


class ProgressPanel(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("progressPanel")
        self.preview_button = QToolButton(text="Preview", checkable=True)
        self.preview_button.setObjectName("qualityPreview")
        self.preview_button.setToolTip(
            "Fast drags for trying points out: a small working width and fewer DDIM steps "
            "(the LoRA is the same as Final's, so switching costs no retraining)"
        )
        self.final_button = QToolButton(text="Final", checkable=True, checked=True)
        self.final_button.setObjectName("qualityFinal")
        self.final_button.setToolTip("Drags at the working width and DDIM steps set above")
        self.quality_group = QButtonGroup(self)
        self.quality_group.setExclusive(True)
        quality = QHBoxLayout()
        quality.setContentsMargins(0, 0, 0, 0)
        quality.setSpacing(4)
        quality.addWidget(QLabel("Quality"))
        for button in (self.preview_button, self.final_button):
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            self.quality_group.addButton(button)
            quality.addWidget(button)
        quality.addStretch(1)
        self.drag_button = QPushButton("Drag")
        self.drag_button.setObjectName("dragButton")
        self.drag_button.setMinimumHeight(34)
        self.reason = QLabel("")
        """Why Drag cannot run now (empty and hidden when it can)."""
        self.reason.setObjectName("dragReason")
        self.reason.setWordWrap(True)
        self.reason.setVisible(False)
        self.status = QLabel("")
        self.status.setObjectName("progressStatus")
        self.status.setWordWrap(True)

        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(4)
        grid.setColumnStretch(1, 1)
        self.rows: dict[Stage, _Row] = {}
        for i, (stage, title) in enumerate(STAGE_TITLES.items()):
            label = QLabel(title)
            bar = QProgressBar()
            bar.setObjectName(f"progress_{stage.value}")
            bar.setRange(0, 1)
            bar.setValue(0)
            bar.setTextVisible(True)
            bar.setFixedHeight(BAR_HEIGHT)
            bar.setAlignment(Qt.AlignmentFlag.AlignCenter)
            note = BarText(bar)
            note.setText("")
            grid.addWidget(label, i, 0)
            grid.addWidget(bar, i, 1)
            self.rows[stage] = _Row(label, bar, note)

        self.preview = QLabel()
        self.preview.setObjectName("preview")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setVisible(False)
        self.previews_shown = 0

        self._layout = layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addLayout(quality)
        layout.addWidget(self.drag_button)
        layout.addWidget(self.reason)
        layout.addWidget(self.status)
        layout.addLayout(grid)
        layout.addWidget(self.preview)
        self.show_stages(DRAG_STAGES)

    def show_stages(self, stages: tuple[Stage, ...]) -> None:
        """Show only the rows a job has: a drag never generates, a generation never drags."""
        for stage, row in self.rows.items():
            for widget in (row.title, row.bar):
                widget.setVisible(stage in stages)

    def add_below_button(self, widget: QWidget) -> None:
        self._layout.insertWidget(3, widget)  # below the button and its hint

    def set_reason(self, reason: str) -> None:
        """Say why Drag cannot run (or nothing); the button's tooltip says it too."""
        self.reason.setText(reason)
        self.reason.setVisible(bool(reason))
        if reason:
            self.drag_button.setToolTip(reason)

    # -- state -------------------------------------------------------------------------------

    def set_running(self, running: bool) -> None:
        self.drag_button.setText("Cancel" if running else "Drag")
        self.drag_button.setToolTip(
            "Stop the edit (Esc)" if running else "Run the edit (Ctrl+Enter)"
        )
        if running:
            self.reset()
            self.show_stages(DRAG_STAGES)
            self.status.setText("Starting…")
            self.rows[Stage.LOAD].bar.setRange(0, 0)  # busy until the engine reports

    def clear(self) -> None:
        """A new document: no captions, bars or preview from the last one."""
        self.reset()
        self.status.setText("")

    def reset(self) -> None:
        for row in self.rows.values():
            row.bar.setRange(0, 1)
            row.bar.setValue(0)
            row.note.setText("")
            row.detail = ""
            row.base_step, row.stepped = 0, False
        self.preview.clear()
        self.preview.setVisible(False)
        self.previews_shown = 0

    def note(self, stage: Stage) -> str:
        return self.rows[stage].note.text()

    # -- events ------------------------------------------------------------------------------

    def model_loading(self, spec: str) -> None:
        row = self.rows[Stage.LOAD]
        row.bar.setRange(0, 0)  # busy: loading reports no steps
        row.note.setText(f"loading {spec}")
        self.status.setText("Loading the model (once; it stays in memory)…")

    def model_loaded(self, spec: str, seconds: float) -> None:
        row = self.rows[Stage.LOAD]
        row.bar.setRange(0, 1)
        row.bar.setValue(1)
        row.note.setText(f"loaded in {format_seconds(seconds)}")

    def stage_started(self, event: StageStarted) -> None:
        row = self.rows[event.stage]
        if event.stage == Stage.LOAD and row.note.text().startswith("loaded in"):
            return  # the background load already reported; the engine's own check is instant
        row.started = time.perf_counter()
        row.total = event.total
        row.detail = event.detail
        row.base_step, row.stepped = 0, False
        # Busy until the first step arrives: a first step can take a while (warm-up, CPU).
        row.bar.setRange(0, 0)
        row.note.setText(event.detail or (f"0 / {event.total}" if event.total else ""))
        self.status.setText(f"{STAGE_TITLES[event.stage]}…")

    def step_progress(self, event: StepProgress) -> None:
        row = self.rows[event.stage]
        total = event.total or row.total
        row.bar.setRange(0, max(total, 1))
        row.bar.setValue(min(event.step, max(total, 1)))
        now = time.perf_counter()
        if not row.stepped:
            row.stepped = True
            if event.step > 1:  # joined under way: its earlier steps' time is unknown here
                row.base_step, row.started = event.step, now
        done = event.step - row.base_step
        parts = [f"{event.step} / {total}"]
        if done > 0 and total > event.step:
            left = (now - row.started) / done * (total - event.step)
            parts.append(f"{format_seconds(left)} left")
        if event.loss is not None:
            parts.append(f"loss {event.loss:.3g}")
        # The stage's detail ("fine-tuning LoRA") was the bar's text until the first step; the
        # status line keeps saying which stage runs, so the bar keeps room for the numbers.
        row.note.setText(" · ".join(parts))
        if event.preview is not None:
            self.show_preview(event.preview)

    def stage_finished(self, event: StageFinished) -> None:
        row = self.rows[event.stage]
        if event.stage == Stage.LOAD and row.note.text().startswith("loaded in"):
            return  # the background load already said how long it took
        row.bar.setRange(0, 1)
        row.bar.setValue(1)
        done = f"done in {format_seconds(event.seconds)}"
        row.note.setText(f"{row.detail} · {done}" if row.detail else done, short=done)

    # -- background preparation (the window shows it only while no job runs) ------------------

    def preparation_started(self) -> None:
        self.reset()
        self.status.setText("Preparing in the background…")

    def preparation_event(self, event: object) -> None:
        """The same captions as a job's rows, under a status line that says it is background
        work: the user may press Drag at any moment, which continues it."""
        if isinstance(event, StageStarted):
            self.stage_started(event)
        elif isinstance(event, StepProgress):
            self.step_progress(event)
        elif isinstance(event, StageFinished):
            self.stage_finished(event)
        else:
            return
        stage = getattr(event, "stage", None)
        if stage in STAGE_TITLES:
            self.status.setText(f"Preparing in the background · {STAGE_TITLES[stage]}")

    def preparation_done(self) -> None:
        self.status.setText("Prepared: Drag starts at the optimisation.")

    def preparation_stopped(self) -> None:
        self.reset()
        self.status.setText("")

    def show_preview(self, image: object) -> None:
        qimage = rgb_to_qimage(image)  # type: ignore[arg-type]
        pixmap = QPixmap.fromImage(qimage).scaled(
            PREVIEW_WIDTH,
            PREVIEW_HEIGHT,
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
        self.preview.setPixmap(pixmap)
        self.preview.setToolTip("Preview of the edit (the predicted clean image)")
        self.preview.setVisible(True)
        self.previews_shown += 1
