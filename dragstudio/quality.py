"""Preview and Final quality: the same edit, fast for trying points out, or as set for keeps.

Preview drags at a small working width with fewer DDIM steps; both are outside the LoRA's key
(photo, model, prompt, LoRA settings), so the LoRA trained by one is reused by the other and a
Final render after a few Previews costs only the drag itself. Qt-free.
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum

from backend.request import DragParams

PREVIEW_WORKING_WIDTH = 256
PREVIEW_DDIM_STEPS = 20


class Quality(StrEnum):
    PREVIEW = "preview"
    FINAL = "final"


def params_for(params: DragParams, quality: Quality) -> DragParams:
    """``params`` as the chosen quality runs them (Final: exactly as set)."""
    if quality == Quality.FINAL:
        return params
    width = min(params.working_width, PREVIEW_WORKING_WIDTH)
    steps = min(params.inference_steps, PREVIEW_DDIM_STEPS)
    # Keep at least one inverted step at this strength (what DragParams.validate asks for).
    while round(params.inversion_strength * steps) < 1 and steps < params.inference_steps:
        steps += 1
    return replace(params, working_width=width, inference_steps=steps)


def describe(params: DragParams, quality: Quality) -> str:
    run = params_for(params, quality)
    return f"{run.working_width} px, {run.inference_steps} DDIM steps"
