"""The two drag methods an edit can use, GoodDrag's own knobs and each method's defaults.

``paper`` is DragDiffusion as published (the reference; its results must never change).
``gooddrag`` is GoodDrag (Zhang et al., 2024): the same LoRA, inversion, features, tracking and
reference-latent-control, but drag steps alternate with denoising steps over the first
``drag_end_step`` timesteps (AlDD) and each handle is supervised with its *original* feature.
Torch-free: the GUI thread, the CLI parser and the project reader use it.

Defaults are those of GoodDrag's benchmark script (``bench_gooddrag.py``), which produced its
published numbers; its Gradio UI differs in two (λ 0.2 and an early stop after 10 unchanged
trackings). Values shared with the paper (r1, r2, λ, learning rate, inversion strength, LoRA
steps) stay in :class:`~backend.request.DragParams` / ``LoraParams`` and are switched by
:func:`with_method_defaults`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from backend.errors import InvalidRequest

if TYPE_CHECKING:
    from backend.request import DragParams, LoraParams

PAPER = "paper"
GOODDRAG = "gooddrag"
METHODS: tuple[str, ...] = (PAPER, GOODDRAG)

SUMMARIES: dict[str, str] = {
    PAPER: "DragDiffusion (the paper): all drag steps at one timestep, then denoise. "
    "Up to 80 drag steps.",
    GOODDRAG: "GoodDrag: drag steps alternate with the first 7 denoising steps and keep each "
    "handle's original look. Up to 210 drag steps (about 2.6× the paper's drag work); its "
    "authors report more accurate drags.",
}
"""One line per method for the GUI and ``--help``: what it does and what it costs."""

# GoodDrag's values for the knobs both methods have (bench_gooddrag.py / gooddrag_ui.py).
GOODDRAG_SHARED: dict[str, Any] = {
    "inversion_strength": 0.75,
    "latent_lr": 0.02,
    "lam": 0.1,
    "r1": 4,
    "r2": 12,
}
GOODDRAG_LORA: dict[str, Any] = {"steps": 70}
"""GoodDrag's LoRA: rank 16, lr 5e-4, batch 4 like the paper's, but 70 steps."""


def _check(name: str, value: Any, lo: float, hi: float, *, integer: bool) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        kind = "a whole number" if integer else "a number"
        raise InvalidRequest(f"GoodDrag {name} must be {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"GoodDrag {name} must be finite, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidRequest(f"GoodDrag {name} must be between {lo:g} and {hi:g}, got {value!r}")


@dataclass(frozen=True)
class GoodDragParams:
    """GoodDrag's own knobs (AlDD schedule, supervision step, early stop); unused in paper mode.

    Per timestep of the drag range the latent gets up to ``tracks_per_step`` rounds of
    ``drags_per_track`` motion-supervision steps, each round ended by point tracking; so at
    most ``drag_end_step · tracks_per_step · drags_per_track`` drag steps in all (210).
    """

    drag_end_step: int = 7
    """How many denoising timesteps, from the inverted one on, get drag steps before them.
    1 puts all drag steps at the first timestep (no alternation); 0 drags nothing."""
    tracks_per_step: int = 10
    """Point-tracking rounds per timestep."""
    drags_per_track: int = 3
    """Motion-supervision steps between two point trackings."""
    step_size: float = 4.0
    """How far (feature pixels) each step pulls the handle's patch: ``min(d, distance)``."""
    loss_threshold: float = 0.0
    """Track early when the drag loss falls to this times ``(2·r1)²`` (0: never early)."""
    max_track_no_change: int = 5
    """Stop dragging for good after this many trackings in a row leave every handle put."""

    def validate(self) -> None:
        _check("drag end step", self.drag_end_step, 0, 1000, integer=True)
        _check("tracks per step", self.tracks_per_step, 1, 1000, integer=True)
        _check("drags per track", self.drags_per_track, 1, 1000, integer=True)
        _check("step size", self.step_size, 1e-3, 1e3, integer=False)
        _check("loss threshold", self.loss_threshold, 0.0, 1e6, integer=False)
        _check("early stop (unchanged trackings)", self.max_track_no_change, 1, 1000, integer=True)

    @property
    def max_drag_steps(self) -> int:
        return self.drag_end_step * self.tracks_per_step * self.drags_per_track


def check_method(method: Any) -> str:
    if method not in METHODS:
        raise InvalidRequest(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    return str(method)


def with_method_defaults(
    params: DragParams, lora: LoraParams, method: str
) -> tuple[DragParams, LoraParams]:
    """``params``/``lora`` with the shared knobs set to ``method``'s defaults, the rest kept."""
    from backend.request import DragParams, LoraParams

    check_method(method)
    if method == GOODDRAG:
        return replace(params, **GOODDRAG_SHARED), replace(lora, **GOODDRAG_LORA)
    paper, paper_lora = DragParams(), LoraParams()
    shared = {k: getattr(paper, k) for k in GOODDRAG_SHARED}
    lora_shared = {k: getattr(paper_lora, k) for k in GOODDRAG_LORA}
    return replace(params, **shared), replace(lora, **lora_shared)


def parse_gooddrag(items: list[str] | None, base: GoodDragParams | None = None) -> GoodDragParams:
    """``base`` (default: GoodDrag's defaults) with knobs from ``KEY=VALUE`` texts (the CLI's
    ``--gooddrag``), checked."""
    from dataclasses import fields

    kinds = {f.name: type(getattr(GoodDragParams(), f.name)) for f in fields(GoodDragParams)}
    values: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in kinds:
            raise InvalidRequest(
                f"--gooddrag {item!r}: expected KEY=VALUE with KEY one of {', '.join(kinds)}"
            )
        try:
            values[key] = kinds[key](text.strip())
        except ValueError:
            kind = "a whole number" if kinds[key] is int else "a number"
            raise InvalidRequest(f"--gooddrag {key} must be {kind}, got {text!r}") from None
    params = replace(base or GoodDragParams(), **values)
    params.validate()
    return params
