"""Benchmark case discovery for DragBench and GoodDrag's Drag100, told apart automatically.

DragBench: ``<category>/<case>/original_image.png`` + ``meta_data.pkl`` (restricted unpickler).
Drag100: ``<case>/original.jpg`` + ``mask.png`` (0/255) + ``points.json`` (``{"points": [[x, y],
...]}``, handle and target alternating) and no prompt, so the prompt is empty. Results mirror the
data's folders, so one ``relpath`` names a case in both trees.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.bench.dragbench import _pairs, load_case
from backend.errors import InvalidRequest
from backend.request import PointPair

DRAGBENCH = "dragbench"
DRAG100 = "drag100"
NO_CATEGORY = "uncategorized"
EDITED_NAME = "dragged_image.png"


@dataclass(frozen=True, eq=False)
class Case:
    """One benchmark case, its points in the source image's pixels."""

    relpath: str
    """Folder relative to the data root (``category/case``); the results use the same path."""
    category: str
    name: str
    image_path: Path
    prompt: str
    pairs: tuple[PointPair, ...]
    mask: np.ndarray  # H×W bool, True = editable
    fmt: str


def _is_dragbench(folder: Path) -> bool:
    return (folder / "original_image.png").is_file() and (folder / "meta_data.pkl").is_file()


def _is_drag100(folder: Path) -> bool:
    return all((folder / n).is_file() for n in ("original.jpg", "mask.png", "points.json"))


def _kind(folder: Path) -> str | None:
    if _is_dragbench(folder):
        return DRAGBENCH
    if _is_drag100(folder):
        return DRAG100
    return None


def discover(root: Path) -> list[tuple[Path, str]]:
    """Case folders under ``root`` (one or two levels deep), sorted, with their format.

    A data folder must hold a single format: mixing them would make one table of numbers that
    mean different things.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidRequest(f"no benchmark data at {root}: not a folder")
    found: list[tuple[Path, str]] = []
    if (kind := _kind(root)) is not None:
        found.append((root, kind))
    else:
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            if (kind := _kind(child)) is not None:
                found.append((child, kind))
                continue
            for grandchild in sorted(p for p in child.iterdir() if p.is_dir()):
                if (kind := _kind(grandchild)) is not None:
                    found.append((grandchild, kind))
    if not found:
        raise InvalidRequest(
            f"no benchmark cases in {root}: expected DragBench (original_image.png + "
            "meta_data.pkl) or Drag100 (original.jpg + mask.png + points.json) case folders"
        )
    kinds = {k for _, k in found}
    if len(kinds) > 1:
        raise InvalidRequest(f"{root} mixes DragBench and Drag100 cases; score them separately")
    return found


def _load_drag100(folder: Path) -> tuple[str, tuple[PointPair, ...], np.ndarray, Path]:
    from backend.imagefile import DECODE_ERRORS, open_image

    try:
        data = json.loads((folder / "points.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{folder}/points.json is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise InvalidRequest(f'{folder}/points.json: expected {{"points": [[x, y], ...]}}')
    pairs = _pairs(data["points"], str(folder))
    try:
        with open_image(folder / "mask.png", photo=False) as im:
            mask = np.asarray(im.convert("L")) > 127
    except InvalidRequest as exc:
        raise InvalidRequest(f"cannot read {folder}/mask.png: {exc}") from exc
    except DECODE_ERRORS as exc:
        raise InvalidRequest(f"cannot read {folder}/mask.png: {exc}") from exc
    return "", pairs, mask, folder / "original.jpg"


def load(root: Path, folder: Path, kind: str) -> Case:
    """Load one case found by :func:`discover`."""
    rel = folder.relative_to(root)
    parts = rel.parts
    category = parts[0] if len(parts) >= 2 else NO_CATEGORY
    if kind == DRAGBENCH:
        c = load_case(folder)
        prompt, pairs, mask, image_path = c.prompt, c.pairs, c.mask, c.image_path
    else:
        prompt, pairs, mask, image_path = _load_drag100(folder)
    return Case(
        relpath=rel.as_posix() if parts else folder.name,
        category=category,
        name=folder.name,
        image_path=image_path,
        prompt=prompt,
        pairs=pairs,
        mask=mask,
        fmt=kind,
    )


def load_cases(
    root: Path, categories: Sequence[str] | None = None, limit: int | None = None
) -> list[Case]:
    """All cases under ``root``, optionally only some categories and the first ``limit``."""
    root = Path(root)
    found = discover(root)
    cases = [load(root, folder, kind) for folder, kind in found]
    if categories:
        known = {c.category for c in cases}
        unknown = sorted(set(categories) - known)
        if unknown:
            raise InvalidRequest(
                f"unknown categories {', '.join(unknown)}; {root} has {', '.join(sorted(known))}"
            )
        cases = [c for c in cases if c.category in set(categories)]
    if limit is not None:
        cases = cases[: max(0, limit)]
    return cases
