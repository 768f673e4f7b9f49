"""The session layer: one typed trace, one way to turn an edit into history and a project."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from backend.params import DragParams, LoraParams
from backend.project import sha256_pixels
from backend.request import DragRequest, PointPair
from backend.result import Iteration, LoraOutcome, Trace
from backend.session import bundle_lora, history_entry, project_after_edit
from tests.project_helpers import sample_project

KEY = "ab" * 32


def _trace(key: str | None = KEY, cached: bool = False) -> Trace:
    return Trace(
        stages={"load": 0.1, "lora": 1.0, "total": 3.5},
        lora=LoraOutcome(80, cached, "memory" if cached else "trained", key),
        iterations=(Iteration(1, ((10.0, 12.0),), 0.5), Iteration(2, ((11.0, 12.0),), 0.25)),
        drag_iterations=2,
        reached=False,
        final_handles=((11.0, 12.0),),
        handles=((10.0, 12.0),),
        targets=((20.0, 12.0),),
        final_distances=(9.0,),
        image_size=(40, 32),
        working_size=(512, 408),
        feature_size=(256, 204),
        optimized_timestep=701,
        device="cpu",
        dtype="float32",
        model="tiny",
        prompt="a cat",
        generated=False,
        guidance_scale=1.0,
        ddim_steps=50,
        params=DragParams(),
        lora_params=LoraParams(),
    )


def _request(image: np.ndarray) -> DragRequest:
    return DragRequest(image, (PointPair((10, 12), (20, 12)),), prompt="a cat", model="tiny")


def test_the_trace_is_json_with_the_documented_keys() -> None:
    data = json.loads(json.dumps(_trace().to_dict()))
    assert data["lora"] == {"steps": 80, "cached": False, "source": "trained", "key": KEY}
    assert data["iterations"][1] == {"step": 2, "handles": [[11.0, 12.0]], "loss": 0.25}
    assert data["working_size"] == [512, 408] and data["params"]["ref_control_blocks"] == [2, 3]
    assert "key" not in _trace(key=None).to_dict()["lora"]
    assert _trace().seconds == 3.5


def test_history_entry_from_a_result() -> None:
    image = np.zeros((32, 40, 3), np.uint8)
    after = image + 1
    entry = history_entry(_request(image), image, after, _trace(cached=True))
    assert entry.after is after and entry.before is image
    assert entry.seconds == 3.5 and entry.lora_reused is True
    assert entry.final_handles == ((11.0, 12.0),)
    assert [(p.handle, p.target) for p in entry.pairs] == [((10, 12), (20, 12))]
    assert history_entry(_request(image), image, after, _trace(), seconds=9.0).seconds == 9.0


def test_project_after_edit_bundles_the_lora_once() -> None:
    image = np.zeros((32, 40, 3), np.uint8)
    asked: list[str] = []

    def export(key: str) -> bytes | None:
        asked.append(key)
        return b"lora bytes"

    first = project_after_edit(_request(image), image + 1, _trace(), None, export)
    assert asked == [KEY] and first.lora is not None and first.lora.data == b"lora bytes"
    made = bundle_lora(KEY, b"lora bytes", _request(image))
    assert (first.lora.key, first.lora.image_sha256) == (made.key, sha256_pixels(image))
    assert (first.lora.prompt, first.lora.model, first.lora.params) == (
        "a cat",
        "tiny",
        made.params,
    )
    assert len(first.history) == 1 and first.pairs == ()
    # The previous project already carries this very LoRA: kept byte for byte, not exported.
    again = project_after_edit(_request(image), image + 2, _trace(), first, export)
    assert asked == [KEY] and again.lora is first.lora and len(again.history) == 2
    assert np.array_equal(again.original, image)
    # No LoRA used, or the engine no longer holds it: nothing bundled.
    assert project_after_edit(_request(image), image, _trace(key=None), None, export).lora is None
    gone = project_after_edit(_request(image), image, _trace(), None, lambda _k: None)
    assert gone.lora is None


def test_project_after_edit_keeps_a_previous_projects_photo_and_generation() -> None:
    previous = replace(sample_project(with_lora=False), generation=None)
    image = previous.history[-1].after
    after = project_after_edit(_request(image), image, _trace(None), previous, lambda _k: None)
    assert after.original is previous.original
    assert after.history[:-1] == previous.history
