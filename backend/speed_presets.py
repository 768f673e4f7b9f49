"""Named fast options: fewer or cheaper steps than the paper, at a price in quality.

None is the default: ``paper`` (the paper's settings) is. Each preset is a set of overrides of
:class:`DragParams` and :class:`LoraParams`; choosing one (``--speed`` on ``dragstudio-cli
edit``/``bench``, the Speed box in the Edit panel) applies them over the method's defaults for
the knobs presets touch and records its name in the request, the trace, projects and history.
``benchmarks/speed.py`` times them; ``benchmarks/presets.py`` measures their price in tracked
distance; docs/benchmarks.md has both. Torch-free: the GUI thread and the CLI parser use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from backend.errors import InvalidRequest
from backend.params import DragParams, LoraParams

PAPER_SPEED = "paper"
"""The paper's settings: no preset."""


@dataclass(frozen=True)
class SpeedPreset:
    name: str
    summary: str
    drag: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)

    def apply(self, params: DragParams, lora: LoraParams) -> tuple[DragParams, LoraParams]:
        return replace(params, **self.drag), replace(lora, **self.lora)


PRESETS: dict[str, SpeedPreset] = {
    p.name: p
    for p in (
        SpeedPreset(
            "lora-40-fast-lr",
            "LoRA: 40 steps at twice the learning rate (half the LoRA time)",
            lora={"steps": 40, "learning_rate": 1e-3},
        ),
        SpeedPreset(
            "lora-256",
            "LoRA trained on 256² crops instead of 512² (about a quarter of the LoRA time)",
            lora={"resolution": 256},
        ),
        SpeedPreset(
            "ddim-25",
            "25 DDIM steps instead of 50 (half the inversion and denoising)",
            drag={"inference_steps": 25},
        ),
    )
}
"""The named fast options, by name."""

SPEEDS: tuple[str, ...] = (PAPER_SPEED, *PRESETS)
"""The choices of ``--speed`` and of the Speed box, the paper's first."""

SUMMARIES: dict[str, str] = {
    PAPER_SPEED: "The paper's settings: 80 LoRA steps on 512² crops, 50 DDIM steps.",
    **{name: p.summary for name, p in PRESETS.items()},
}
PRICES: dict[str, str] = {
    PAPER_SPEED: "",
    "lora-40-fast-lr": "Costs: a less faithful LoRA (the photo's identity may drift more).",
    "lora-256": "Costs: the LoRA learns less fine detail.",
    "ddim-25": "Costs: coarser inversion and denoising steps (less detail, handles may land "
    "less exactly).",
}
"""What each choice costs, in one line for the GUI (measured numbers: docs/benchmarks.md)."""

TOUCHED_DRAG: frozenset[str] = frozenset(k for p in PRESETS.values() for k in p.drag)
TOUCHED_LORA: frozenset[str] = frozenset(k for p in PRESETS.values() for k in p.lora)
"""The knobs some preset sets: switching presets puts them back to the method's defaults."""


def check_speed(speed: Any) -> str:
    if speed not in SPEEDS:
        raise InvalidRequest(f"unknown speed {speed!r}: use one of {', '.join(SPEEDS)}")
    return str(speed)


def with_speed(
    params: DragParams, lora: LoraParams, speed: str, method: str = "paper"
) -> tuple[DragParams, LoraParams]:
    """``params``/``lora`` with every knob a preset touches at ``method``'s default, then
    ``speed``'s overrides (``paper``: none); every other knob is kept."""
    from backend.methods import with_method_defaults

    check_speed(speed)
    base, base_lora = with_method_defaults(DragParams(), LoraParams(), method)
    params = replace(params, **{k: getattr(base, k) for k in TOUCHED_DRAG})
    lora = replace(lora, **{k: getattr(base_lora, k) for k in TOUCHED_LORA})
    if speed == PAPER_SPEED:
        return params, lora
    return PRESETS[speed].apply(params, lora)
