"""What an edit returns: the image and a typed :class:`Trace` of how it was made.

Torch-free (numpy and plain values only), so the GUI thread, the CLI, the project writer and the
benchmark read the same fields by name instead of a string-keyed dictionary. ``to_dict`` gives
the JSON the CLI's ``--trace`` and the benchmark write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from backend.params import DragParams, LoraParams, params_to_dict

LoraSource = Literal["none", "memory", "disk", "trained", "generated"]
Point = tuple[float, float]


@dataclass(frozen=True)
class LoraOutcome:
    """Where the edit's LoRA came from."""

    steps: int
    cached: bool
    """True when nothing was trained (reused from memory or the disk cache)."""
    source: LoraSource
    key: str | None = None
    """The LoRA key (:func:`backend.lora.lora_key`); None when no LoRA was used."""
    cache_warning: str = ""
    """Why a freshly trained LoRA could not be kept in the cache (the edit went on)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": self.steps, "cached": self.cached, "source": self.source}
        if self.key is not None:
            out["key"] = self.key
        if self.cache_warning:
            out["cache_warning"] = self.cache_warning
        return out


@dataclass(frozen=True)
class Iteration:
    """One latent-optimisation step: where the handles were (image pixels) and the loss."""

    step: int
    handles: tuple[Point, ...]
    loss: float
    timestep: int | None = None
    """The timestep it was taken at (GoodDrag drags at several; paper mode: the trace's one)."""

    def to_dict(self) -> dict[str, Any]:
        out = {"step": self.step, "handles": [list(h) for h in self.handles], "loss": self.loss}
        if self.timestep is not None:
            out["timestep"] = self.timestep
        return out


@dataclass(frozen=True)
class Trace:
    """How one edit ran: per-stage seconds, the handles' travel, and what it was run with."""

    stages: dict[str, float]
    """Seconds per stage name (``load``, ``lora``, ``inversion``, ``drag``, ``denoise``) and
    ``total``."""
    lora: LoraOutcome
    iterations: tuple[Iteration, ...]
    drag_iterations: int
    reached: bool
    """Every handle arrived within the stop distance."""
    final_handles: tuple[Point, ...]
    handles: tuple[Point, ...]
    targets: tuple[Point, ...]
    final_distances: tuple[float, ...]
    """Pixels from each final handle to its target."""
    image_size: tuple[int, int]
    working_size: tuple[int, int]
    feature_size: tuple[int, int]
    optimized_timestep: int
    device: str
    dtype: str
    model: str
    prompt: str
    generated: bool
    guidance_scale: float
    ddim_steps: int
    params: DragParams
    lora_params: LoraParams
    memory: dict[str, float] = field(default_factory=dict)
    memory_plan: str = "high"
    """The memory plan the edit ran with (backend/memory.py)."""
    memory_fallback: dict[str, str] | None = None
    """``{"from", "to", "reason"}`` when an out-of-memory error made it switch plans."""
    method: str = "paper"
    """The drag method (:mod:`backend.methods`)."""
    gooddrag: dict[str, Any] | None = None
    """GoodDrag's knobs and what its drag phase did (per-timestep blocks), in gooddrag mode."""
    speed: str = "paper"
    """The named fast option the request chose (:mod:`backend.speed_presets`); in the JSON
    only when it is not ``paper``, so traces of paper edits read as before."""

    @property
    def seconds(self) -> float:
        return self.stages.get("total", 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples)."""

        def points(pts: tuple[Point, ...]) -> list[list[float]]:
            return [list(p) for p in pts]

        return {
            "stages": dict(self.stages),
            "lora": self.lora.to_dict(),
            "iterations": [it.to_dict() for it in self.iterations],
            "drag_iterations": self.drag_iterations,
            "reached": self.reached,
            "final_handles": points(self.final_handles),
            "handles": points(self.handles),
            "targets": points(self.targets),
            "final_distances": list(self.final_distances),
            "image_size": list(self.image_size),
            "working_size": list(self.working_size),
            "feature_size": list(self.feature_size),
            "optimized_timestep": self.optimized_timestep,
            "device": self.device,
            "dtype": self.dtype,
            "model": self.model,
            "prompt": self.prompt,
            "generated": self.generated,
            "guidance_scale": self.guidance_scale,
            "ddim_steps": self.ddim_steps,
            "params": params_to_dict(self.params),
            "lora_params": params_to_dict(self.lora_params),
            "memory": {
                **self.memory,
                "plan": self.memory_plan,
                **({"fallback": dict(self.memory_fallback)} if self.memory_fallback else {}),
            },
            "method": self.method,
            **({} if self.gooddrag is None else {"gooddrag": self.gooddrag}),
            **({} if self.speed == "paper" else {"speed": self.speed}),
        }


@dataclass
class EditResult:
    image: np.ndarray
    """The edited image at the user's resolution."""
    trace: Trace
    working_image: np.ndarray | None = field(default=None, repr=False)
    """The decoded result at working resolution, before resizing and compositing."""
    lora_file: bytes | None = field(default=None, repr=False)
    """The LoRA the edit used, as a safetensors file, when the engine host attaches it: how a
    trained LoRA reaches a project without the window reading the shared cache."""
