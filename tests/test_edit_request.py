"""``dragstudio-cli edit``'s one request builder: a photo and a project take the same flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import build_parser
from backend.document import Pair
from backend.edit_request import build_request
from backend.errors import InvalidRequest
from backend.generation import Generation
from backend.project import Project, project_from_generation
from backend.request import DragParams, LoraParams


def _args(*flags: str):
    return build_parser().parse_args(["edit", *flags, "--out", "x.png"])


def _photo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), np.uint8)).save(tmp_path / "p.png")
    mask = np.zeros((64, 80), np.uint8)
    mask[5:40, 5:50] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    return tmp_path / "p.png"


def _project() -> Project:
    image = np.zeros((64, 80, 3), np.uint8)
    return Project(original=image, mask=None, pairs=(Pair((1.0, 2.0), (3.0, 4.0)),),
                   prompt="kept", params=DragParams(drag_steps=7), lora_params=LoraParams(),
                   model="saved-model", vae="saved-vae")  # fmt: skip


FLAGS = ["--pair", "10,11,20,21", "--prompt", "a cat", "--drag-steps", "3", "--vae", " v "]


def test_photo_and_project_take_the_same_flags(tmp_path: Path) -> None:
    photo = _photo(tmp_path)
    mask = ["--mask", str(tmp_path / "m.png")]
    fresh = build_request(_args("--image", str(photo), "--model", "m", *FLAGS, *mask))
    on_project = build_request(_args("--project", "p", "--model", "m", *FLAGS, *mask), _project())
    for r in (fresh, on_project):
        assert [(p.handle, p.target) for p in r.pairs] == [((10.0, 11.0), (20.0, 21.0))]
        assert (r.prompt, r.model, r.vae, r.params.drag_steps) == ("a cat", "m", "v", 3)
        assert r.mask is not None and r.mask.shape == (64, 80) and r.mask[10, 10]
    assert fresh.params.working_width == on_project.params.working_width


def test_a_project_keeps_what_no_flag_changes() -> None:
    r = build_request(_args("--project", "p"), _project())
    assert (r.prompt, r.model, r.vae, r.params.drag_steps) == (
        "kept",
        "saved-model",
        "saved-vae",
        7,
    )
    assert build_request(_args("--project", "p", "--vae", ""), _project()).vae is None


def test_missing_pairs_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"^no point pairs: give --pair"):
        build_request(_args("--image", str(_photo(tmp_path)), "--model", "m"))
    empty = Project(**{**_project().__dict__, "pairs": ()})
    with pytest.raises(InvalidRequest, match="the project has no point pairs"):
        build_request(_args("--project", "p"), empty)


def test_another_model_drops_a_generations_latents() -> None:
    g = Generation(prompt="p", width=64, height=64, steps=2,
                   trajectory=np.zeros((3, 4, 8, 8), np.float32))  # fmt: skip
    project = project_from_generation(np.zeros((64, 64, 3), np.uint8), g, "maker")
    pair = ["--pair", "1,1,5,5"]
    assert build_request(_args("--project", "p", *pair), project).generation is g
    same = build_request(_args("--project", "p", "--model", "maker", *pair), project)
    assert same.generation is g
    assert build_request(_args("--project", "p", "--model", "o", *pair), project).generation is None


def test_a_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(InvalidRequest, match="the mask is 10×10 but the image is 80×64"):
        build_request(_args("--project", "p", "--mask", str(tmp_path / "small.png")), _project())
