"""The request ``dragstudio-cli edit`` runs: one builder for photos, DragBench cases and projects.

The base is the project's next edit (its photo or last result, points, mask, prompt, settings
and kept latents) or a fresh request on ``--image``/``--case``; the flags the user gave then
apply on top, the same way for all three. Torch-free: the engine is loaded later.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.errors import InvalidRequest
from backend.params import apply_param_flags
from backend.request import DragParams, DragRequest, LoraParams, PointPair

if TYPE_CHECKING:
    from backend.project import Project


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file of the image's ``(width, height)``: non-black = editable."""
    from backend.imagefile import DECODE_ERRORS, ImageRefused, open_image

    try:
        with open_image(path, photo=False) as im:
            im.load()
            mask = np.asarray(im.convert("L")) > 0
    except ImageRefused as exc:
        raise InvalidRequest(f"cannot read the mask {path}: {exc}") from None
    except DECODE_ERRORS as exc:
        raise InvalidRequest(f"cannot read the mask {path}: {exc}") from None
    if (mask.shape[1], mask.shape[0]) != size:
        raise InvalidRequest(
            f"the mask is {mask.shape[1]}×{mask.shape[0]} but the image is {size[0]}×{size[1]}"
        )
    return mask


def _fresh(args: argparse.Namespace) -> DragRequest:
    """``--image`` or ``--case`` with the paper's defaults (pairs may still be empty)."""
    from backend.bench.dragbench import load_case
    from backend.document import load_image

    if args.case is not None:
        case = load_case(args.case)
        image = load_image(case.image_path)
        if case.mask.shape != image.shape[:2]:
            raise InvalidRequest(f"{args.case}: the mask does not match the image size")
        return DragRequest(image=image, pairs=case.pairs, mask=case.mask, prompt=case.prompt,
                           params=DragParams(), lora=LoraParams(), model=args.model)  # fmt: skip
    image = load_image(args.image)
    return DragRequest(image=image, pairs=(), mask=None, prompt="", params=DragParams(),
                       lora=LoraParams(), model=args.model)  # fmt: skip


def build_request(args: argparse.Namespace, project: Project | None = None) -> DragRequest:
    """The edit the command line asks for: ``project``'s next edit (or a fresh one on the
    photo or case), with ``--pair``, ``--mask``, ``--prompt``, ``--model``, ``--vae`` and the
    parameter flags applied on top; validated."""
    base = _fresh(args) if project is None else project.to_request()
    size = (base.image.shape[1], base.image.shape[0])
    changes: dict[str, Any] = {}
    if args.pair:
        changes["pairs"] = tuple(PointPair((hx, hy), (tx, ty)) for hx, hy, tx, ty in args.pair)
    if args.mask is not None:
        changes["mask"] = load_mask(args.mask, size)
    if args.prompt is not None:
        changes["prompt"] = args.prompt
    if args.model is not None:
        changes["model"] = args.model
    if project is None or args.vae is not None:
        changes["vae"] = (args.vae or "").strip() or None  # with --project, "" = its own VAE
    if base.generation is not None and changes.get("model", base.model) != base.model:
        # Kept latents belong to the model that made them; another model drags it as a photo.
        changes["generation"] = None
    params, lora = apply_param_flags(args, base.params, base.lora)
    request = replace(base, params=params, lora=lora, **changes)
    if not request.pairs:
        where = "the project has no point pairs" if project else "no point pairs"
        raise InvalidRequest(f"{where}: give --pair HX,HY,TX,TY at least once")
    request.validate()
    return request
