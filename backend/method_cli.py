"""``--method`` and ``--gooddrag KEY=VALUE`` for ``dragstudio-cli edit`` and ``bench``.

Choosing ``gooddrag`` switches the knobs both methods share (r1, r2, λ, learning rate,
inversion strength, LoRA steps) to GoodDrag's defaults, except those the user gave as flags.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from backend.methods import (
    METHODS,
    PAPER,
    SUMMARIES,
    GoodDragParams,
    parse_gooddrag,
    with_method_defaults,
)
from backend.params import apply_param_flags


def add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        choices=METHODS,
        help=f"drag method (default: paper, or the project's). paper: {SUMMARIES[PAPER]} "
        f"gooddrag: {SUMMARIES['gooddrag']} It sets r1 4, r2 12, λ 0.1, latent lr 0.02, "
        "inversion strength 0.75 and 70 LoRA steps unless given",
    )
    names = ", ".join(f"{k}={getattr(GoodDragParams(), k)}" for k in vars(GoodDragParams()))
    p.add_argument(
        "--gooddrag",
        action="append",
        metavar="KEY=VALUE",
        help=f"a GoodDrag knob (repeat for more; defaults {names})",
    )


def method_settings(
    args: argparse.Namespace,
    params: Any,
    lora: Any,
    method: str = PAPER,
    gooddrag: GoodDragParams | None = None,
) -> tuple[str, Any, Any, GoodDragParams]:
    """The method, parameters and GoodDrag knobs the flags ask for, from ``params``/``lora``
    built with the user's flags over the paper's defaults (``method``/``gooddrag``: the ones
    so far, e.g. a project's)."""
    method = args.method or method
    gd = parse_gooddrag(args.gooddrag, gooddrag or GoodDragParams())
    if args.method is None:
        return method, params, lora, gd
    # The method's defaults for the shared knobs, then the user's flags again: flags win.
    new_params, new_lora = apply_param_flags(args, *with_method_defaults(params, lora, method))
    return method, new_params, new_lora, gd


def apply_method_args(args: argparse.Namespace, request: Any) -> Any:
    """``request`` with the method, defaults and knobs the flags ask for."""
    method, params, lora, gd = method_settings(
        args, request.params, request.lora, request.method, request.gooddrag
    )
    out = replace(request, method=method, params=params, lora=lora, gooddrag=gd)
    out.validate()
    return out
