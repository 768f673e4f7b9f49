"""Background preparation: Engine.prepare fills the caches a Drag fills, with the same result."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from backend.engine import CancelToken, Engine
from backend.errors import Cancelled, InvalidRequest
from backend.events import Stage, StageStarted, StepProgress
from backend.preparation import preparation_key
from backend.request import DragParams, DragRequest, LoraParams, PointPair

FAST = DragParams(working_width=128, inference_steps=10, drag_steps=3)
LORA = LoraParams(steps=2, batch_size=1, resolution=128)


def _request(photo: np.ndarray, model_dir, **kw) -> DragRequest:
    base = dict(
        image=photo,
        pairs=(PointPair((70.0, 128.0), (150.0, 128.0)),),
        prompt="a photo",
        params=FAST,
        lora=LORA,
        model=str(model_dir),
    )
    base.update(kw)
    return DragRequest(**base)


def test_prepared_edit_is_bit_identical_and_skips_lora_and_inversion(tiny_model_dir, photo) -> None:
    req = _request(photo, tiny_model_dir)
    plain = Engine("cpu").edit(req)

    eng = Engine("cpu")
    events: list = []
    done = eng.prepare(replace(req, pairs=()), events.append)  # no points needed
    assert done["prepared"] and done["lora"].source == "trained"
    lora_steps = [e.step for e in events if isinstance(e, StepProgress) and e.stage == Stage.LORA]
    assert lora_steps == [1, 2]
    inv = [e for e in events if isinstance(e, StepProgress) and e.stage == Stage.INVERSION]
    assert len(inv) == 7

    after: list = []
    prepared = eng.edit(req, after.append)
    assert np.array_equal(prepared.image, plain.image)
    assert prepared.trace.final_handles == plain.trace.final_handles
    details = {e.stage: e.detail for e in after if isinstance(e, StageStarted)}
    assert "reusing" in details[Stage.LORA] and "reusing" in details[Stage.INVERSION]
    assert not any(
        isinstance(e, StepProgress) and e.stage in (Stage.LORA, Stage.INVERSION) for e in after
    )


def test_cancelled_preparation_keeps_no_half_trained_lora(tiny_model_dir, photo) -> None:
    eng = Engine("cpu")
    token = CancelToken()

    def on_event(event) -> None:
        if isinstance(event, StepProgress) and event.stage == Stage.LORA:
            token.cancel()

    with pytest.raises(Cancelled):
        eng.prepare(_request(photo, tiny_model_dir), on_event, token)
    assert eng.current_lora is None
    # A later edit trains from scratch and works.
    assert eng.edit(_request(photo, tiny_model_dir)).trace.lora.source == "trained"


def test_bad_input_is_refused_before_any_work(tiny_model_dir, photo) -> None:
    eng = Engine("cpu")
    with pytest.raises(InvalidRequest, match="LoRA steps"):
        eng.prepare(_request(photo, tiny_model_dir, lora=replace(LORA, steps=-1)))
    assert eng.pipe is None


def test_the_key_follows_what_lora_and_inversion_depend_on(photo) -> None:
    req = _request(photo, "m")
    key = preparation_key(req)
    assert key is not None
    # Points, mask and drag-only parameters do not matter.
    same = replace(
        req,
        pairs=(),
        mask=np.ones(photo.shape[:2], bool),
        params=replace(FAST, drag_steps=40, latent_lr=0.02),
    )
    assert preparation_key(same) == key
    other = photo.copy()
    other[0, 0, 0] ^= 1
    changed = [
        replace(req, image=other),
        replace(req, prompt="another"),
        replace(req, model="n"),
        replace(req, lora=replace(LORA, steps=3)),
        replace(req, params=replace(FAST, inversion_strength=0.5)),
        replace(req, params=replace(FAST, working_width=256)),
        replace(req, lora_image=other),
    ]
    assert len({preparation_key(r) for r in changed} | {key}) == len(changed) + 1
