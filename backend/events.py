"""Typed, immutable progress events the engine reports while it works.

The GUI turns them into signals on its own thread; the CLI prints them. They carry plain data
(tuples, numpy arrays) so they can cross threads without sharing tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class Stage(StrEnum):
    """The stages of one edit, in the order they run."""

    LOAD = "load"
    LORA = "lora"
    INVERSION = "inversion"
    DRAG = "drag"
    DENOISE = "denoise"
    GENERATE = "generate"


STAGE_ORDER: tuple[Stage, ...] = (
    Stage.LOAD,
    Stage.LORA,
    Stage.INVERSION,
    Stage.DRAG,
    Stage.DENOISE,
)
"""The stages of a drag edit (generation has its own: load, generate)."""


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


@dataclass(frozen=True)
class Finished:
    image: np.ndarray = field(compare=False)
    """The edited image, H×W×3 uint8 at the user's resolution."""
    trace: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class Failed:
    message: str
    """One line for the user."""
    details: str = ""
    """The technical story (traceback) for "Show details"."""
    cancelled: bool = False


Event = StageStarted | StepProgress | StageFinished | Finished | Failed
