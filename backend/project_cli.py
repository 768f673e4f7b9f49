"""Project files on the command line: ``edit --project/--save-project`` and ``project info``.

Kept out of ``cli.py`` so the edit command only gains two hooks. An edit saved with
``--save-project`` is stored as an accepted result (the photo, the result, the points and
parameters that made it) with its trained LoRA, exactly like a GUI session; ``--project``
continues from there and installs the bundled LoRA when it fits, so nothing is retrained.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from backend.errors import InvalidRequest
from backend.params import apply_param_flags
from backend.project import (
    Project,
    describe,
    read_project,
    save_project,
)
from backend.request import DragRequest, PointPair


def add_project_command(sub: Any) -> dict[str, Any]:
    project = sub.add_parser(
        "project",
        help="inspect .dragstudio project files",
        description="Inspect DragStudio project files.",
    )
    actions = project.add_subparsers(dest="project_command", required=True, metavar="ACTION")
    info = actions.add_parser(
        "info", help="validate a project and print a summary (exit 1 if it is damaged)"
    )
    info.add_argument("file", type=Path)
    return {"project": cmd_project}


def cmd_project(args: argparse.Namespace) -> int:
    project = read_project(args.file)
    print(describe(project, args.file))
    return 0


def request_from_project(args: argparse.Namespace, project: Project) -> DragRequest:
    """The project's next edit, with the command line's flags applied on top."""
    from backend.cli import _load_mask

    request = project.to_request()
    image = request.image
    size = (image.shape[1], image.shape[0])
    changes: dict[str, Any] = {}
    if args.pair:
        changes["pairs"] = tuple(PointPair((hx, hy), (tx, ty)) for hx, hy, tx, ty in args.pair)
    if args.mask is not None:
        changes["mask"] = _load_mask(args.mask, size)
    if args.prompt is not None:
        changes["prompt"] = args.prompt
    if args.model is not None:
        changes["model"] = args.model
    params, lora = apply_param_flags(args, request.params, request.lora)
    if request.generation is not None and "model" in changes and changes["model"] != project.model:
        # Kept latents belong to the model that made them; another model drags it as a photo.
        changes["generation"] = None
    request = replace(request, params=params, lora=lora, **changes)
    if not request.pairs:
        raise InvalidRequest("the project has no point pairs: give --pair HX,HY,TX,TY")
    request.validate()
    return request


def install_bundled_lora(engine: Any, project: Project, request: DragRequest) -> dict[str, Any]:
    """Put the project's LoRA into the engine when it fits ``request``; say why when it doesn't.

    Returns what happened, for the trace. Loading the model first is free: ``edit`` would.
    """
    if project.lora is None:
        return {"bundled": False}
    report: dict[str, Any] = engine.install_bundled(project.lora, request)
    return report


def save(path: Path, project: Project, quiet: bool) -> None:
    save_project(project, path)
    if not quiet:
        lora = "with its LoRA" if project.lora is not None else "without a LoRA"
        print(f"saved the project {path} ({lora})", file=sys.stderr)
