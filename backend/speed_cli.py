"""``--speed PRESET`` for ``dragstudio-cli edit`` and ``bench``.

Choosing a preset sets the knobs presets touch (LoRA steps, learning rate and resolution, DDIM
steps) to the method's defaults and then to the preset's values, except those the user gave as
flags; the request (and so the trace) records its name.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from backend.params import apply_param_flags
from backend.speed_presets import PAPER_SPEED, PRESETS, SPEEDS, with_speed


def add_speed_args(p: argparse.ArgumentParser) -> None:
    names = "; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items())
    p.add_argument(
        "--speed",
        choices=SPEEDS,
        help=f"a named fast option (default: paper, the paper's settings, or the project's). "
        f"{names}. Each costs accuracy: see docs/benchmarks.md",
    )


def speed_settings(
    args: argparse.Namespace, params: Any, lora: Any, method: str, speed: str = PAPER_SPEED
) -> tuple[str, Any, Any]:
    """The speed label and parameters ``--speed`` asks for, from ``params``/``lora`` built with
    the user's flags (``speed``: the one so far, e.g. a project's)."""
    chosen = getattr(args, "speed", None)
    if chosen is None and getattr(args, "method", None) is not None:
        chosen = speed  # --method reset the shared knobs: the preset goes back on top
    if chosen is None:
        return speed, params, lora
    # The preset's knobs, then the user's flags again: flags win.
    new_params, new_lora = apply_param_flags(args, *with_speed(params, lora, chosen, method))
    return chosen, new_params, new_lora


def apply_speed_args(args: argparse.Namespace, request: Any) -> Any:
    """``request`` with the speed and knobs ``--speed`` asks for (after ``--method``)."""
    speed, params, lora = speed_settings(
        args, request.params, request.lora, request.method, request.speed
    )
    out = replace(request, speed=speed, params=params, lora=lora)
    out.validate()
    return out
