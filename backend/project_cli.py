"""Project files on the command line: ``edit --project/--save-project`` and ``project info``.

Kept out of ``cli.py`` so the edit command only gains two hooks. An edit saved with
``--save-project`` is stored as an accepted result (the photo, the result, the points and
parameters that made it) with its trained LoRA, exactly like a GUI session; ``--project``
continues from there and installs the bundled LoRA when it fits, so nothing is retrained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backend.project import (
    Project,
    describe,
    read_project,
    save_project,
)
from backend.request import DragRequest


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
