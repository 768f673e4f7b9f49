"""Typed, immutable progress events the engine reports while it works.

The GUI turns them into signals on its own thread; the CLI prints them. They carry plain data
(tuples, numpy arrays) so they can cross threads without sharing tensors. They report progress
only: how a job ended is what the call returns (an :class:`~backend.result.EditResult`) or
raises, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Stage(StrEnum):
    """The stages of one edit, in the order they run."""

    LOAD = "load"
    LORA = "lora"
    INVERSION = "inversion"
    DRAG = "drag"
    DENOISE = "denoise"
    GENERATE = "generate"


DRAG_STAGES: tuple[Stage, ...] = (
    Stage.LOAD,
    Stage.LORA,
    Stage.INVERSION,
    Stage.DRAG,
    Stage.DENOISE,
)
"""The stages of a drag edit, in order (the one list the GUI, self-test and benchmark use)."""
GENERATE_STAGES: tuple[Stage, ...] = (Stage.LOAD, Stage.GENERATE)


@dataclass(frozen=True)
class StageStarted:
    stage: Stage
    total: int
    """Number of steps this stage will take at most (0 when unknown)."""
    detail: str = ""
    """Human-readable note, e.g. "reusing cached LoRA"."""


@dataclass(frozen=True)
class StepProgress:
    stage: Stage
    step: int
    """Steps done so far, 1-based."""
    total: int
    loss: float | None = None
    handles: tuple[tuple[float, float], ...] | None = None
    """Current handle positions in the user's image pixels (drag stage)."""
    preview: np.ndarray | None = field(default=None, compare=False)
    """Optional H×W×3 uint8 preview at working resolution."""


@dataclass(frozen=True)
class StageFinished:
    stage: Stage
    seconds: float
    detail: str = ""


Event = StageStarted | StepProgress | StageFinished
