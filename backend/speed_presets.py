"""Named fast options: fewer or cheaper steps than the paper, at a price in quality.

None is the default. Each is a set of overrides of :class:`DragParams` and
:class:`LoraParams`; ``benchmarks/speed.py`` times them beside the paper's defaults and
docs/benchmarks.md records what they cost. Their price in tracking accuracy can only be measured
with real weights (``dragstudio-cli bench`` on the dev cases): see docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from backend.request import DragParams, LoraParams


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
