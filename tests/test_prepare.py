"""Background preparation: Engine.prepare fills the caches a Drag fills, with the same result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.engine import CancelToken, Engine
from backend.errors import Cancelled, InvalidRequest
from backend.events import Stage, StageStarted, StepProgress
from backend.methods import GOODDRAG
from backend.preparation import RECORDING_REFERENCE, preparation_key
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


def _unet_batches(eng: Engine, model_dir) -> tuple[list[int], Callable[[], None]]:
    """Record the batch size of every UNet call from now on; call the second item to stop."""
    eng.load_model(str(model_dir))
    batches: list[int] = []
    hook = eng.pipe.unet.register_forward_pre_hook(
        lambda _m, args: batches.append(int(args[0].shape[0]))
    )
    return batches, hook.remove


def _steps(events: list, stage: Stage) -> list[StepProgress]:
    return [e for e in events if isinstance(e, StepProgress) and e.stage == stage]


DENOISE_STEPS = 7  # 10 DDIM steps from t at strength 0.7


def test_prepared_edit_is_bit_identical_and_skips_lora_and_inversion(tiny_model_dir, photo) -> None:
    req = _request(photo, tiny_model_dir)
    before: list = []
    fresh = Engine("cpu")
    plain_batches, stop = _unet_batches(fresh, tiny_model_dir)
    try:
        plain = fresh.edit(req, before.append)
    finally:
        stop()
    # Without preparation the denoising stage records the reference rows first, then the edit.
    assert [e.step for e in _steps(before, Stage.DENOISE)] == list(range(1, 2 * DENOISE_STEPS + 1))

    eng = Engine("cpu")
    events: list = []
    done = eng.prepare(replace(req, pairs=()), events.append)  # no points needed
    assert done["prepared"] and done["lora"].source == "trained" and done["reference"]
    assert {"lora", "inversion", "reference"} <= set(done["stages"])
    lora_steps = [e.step for e in events if isinstance(e, StepProgress) and e.stage == Stage.LORA]
    assert lora_steps == [1, 2]
    inversion = [e for e in events if isinstance(e, StageStarted) and e.stage == Stage.INVERSION]
    assert [(e.total, e.detail) for e in inversion] == [(7, ""), (7, RECORDING_REFERENCE)]
    inv = _steps(events, Stage.INVERSION)
    assert [e.step for e in inv] == [*range(1, 8), *range(1, DENOISE_STEPS + 1)]
    assert not _steps(events, Stage.DENOISE)  # a joined Drag shows its own denoising

    after: list = []
    batches, stop = _unet_batches(eng, tiny_model_dir)
    try:
        prepared = eng.edit(req, after.append)
    finally:
        stop()
    assert np.array_equal(prepared.image, plain.image)
    assert np.array_equal(prepared.working_image, plain.working_image)
    assert prepared.trace.iterations == plain.trace.iterations
    assert prepared.trace.final_handles == plain.trace.final_handles
    details = {e.stage: e.detail for e in after if isinstance(e, StageStarted)}
    assert "reusing" in details[Stage.LORA] and "reusing" in details[Stage.INVERSION]
    assert not any(
        isinstance(e, StepProgress) and e.stage in (Stage.LORA, Stage.INVERSION) for e in after
    )
    # Pressing Drag costs the optimisation and the edited row's denoising only.
    denoise = _steps(after, Stage.DENOISE)
    assert [(e.step, e.total) for e in denoise] == [(i, 7) for i in range(1, 8)]
    assert batches[-DENOISE_STEPS:] == [1] * DENOISE_STEPS
    # The unprepared edit ran the same calls plus 2 LoRA steps, 7 inversion and 7 reference steps.
    assert len(batches) == len(plain_batches) - 2 - 7 - DENOISE_STEPS


def test_first_edit_redrag_and_prepared_edit_agree_bit_for_bit(tiny_model_dir, photo) -> None:
    """Recording the reference alone and replaying it is the one route wherever the recording
    is kept: a re-drag with the same points repeats the first edit exactly."""
    req = _request(photo, tiny_model_dir)
    eng = Engine("cpu")
    first = eng.edit(req)
    again = eng.edit(req)
    assert again.trace.lora.source == "memory"
    assert np.array_equal(again.image, first.image)


def test_the_route_moves_the_output_by_float_rounding_only(tiny_model_dir, photo) -> None:
    """Against denoising ``[reference, edited]`` in one batch (the route when nothing is kept):
    the handle trajectory is the same, the image differs by float rounding."""
    req = _request(photo, tiny_model_dir, lora=replace(LORA, steps=0))
    batched = Engine("cpu", reuse_reference=False).edit(req)
    replayed = Engine("cpu").edit(req)
    assert replayed.trace.iterations == batched.trace.iterations
    diff = np.abs(replayed.working_image.astype(int) - batched.working_image.astype(int))
    assert diff.max() <= 2, diff.max()


@pytest.mark.parametrize("engine_kw", [{"memory": "6gb"}, {"reuse_reference": False}])
def test_nothing_is_recorded_where_the_plan_keeps_no_reference(
    engine_kw, tiny_model_dir, photo
) -> None:
    req = _request(photo, tiny_model_dir)
    plain = Engine("cpu", **engine_kw).edit(req)
    eng = Engine("cpu", **engine_kw)
    done = eng.prepare(req)
    assert done["prepared"] and not done["reference"] and "reference" not in done["stages"]
    assert eng.caches.reference is None
    after: list = []
    prepared = eng.edit(req, after.append)
    assert eng.caches.reference is None
    assert np.array_equal(prepared.image, plain.image)
    # Both rows are denoised together, as before.
    assert [e.total for e in _steps(after, Stage.DENOISE)] == [DENOISE_STEPS] * DENOISE_STEPS


def test_gooddrag_preparation_records_no_reference(tiny_model_dir, photo) -> None:
    """GoodDrag's reference starts after its drag phase: nothing to record ahead."""
    eng = Engine("cpu")
    done = eng.prepare(_request(photo, tiny_model_dir, method=GOODDRAG))
    assert done["prepared"] and not done["reference"]
    assert eng.caches.reference is None


def test_cancelled_reference_recording_keeps_no_partial_entry(tiny_model_dir, photo) -> None:
    req = _request(photo, tiny_model_dir)
    plain = Engine("cpu").edit(req)
    eng = Engine("cpu")
    token = CancelToken()
    seen: list[int] = []
    recording = False

    def on_event(event) -> None:
        nonlocal recording
        if isinstance(event, StageStarted):
            recording = event.detail == RECORDING_REFERENCE
        elif recording and isinstance(event, StepProgress):
            seen.append(event.step)
            token.cancel()

    with pytest.raises(Cancelled):
        eng.prepare(req, on_event, token)
    assert seen == [1]  # stopped within one step
    assert eng.caches.reference is None  # no partial recording
    assert eng.caches.get("inversion", eng.caches.snapshot()["inversion"][0]) is not None
    # The Drag records it itself and gives the same result.
    assert np.array_equal(eng.edit(req).image, plain.image)
    assert eng.caches.reference is not None


def test_a_drag_cancelled_after_recording_keeps_the_complete_recording(
    tiny_model_dir, photo
) -> None:
    req = _request(photo, tiny_model_dir)
    complete = Engine("cpu")
    plain = complete.edit(req)
    assert complete.caches.reference is not None
    eng = Engine("cpu")
    token = CancelToken()

    def on_event(event) -> None:
        if (
            isinstance(event, StepProgress)
            and event.stage == Stage.DENOISE
            and event.step == DENOISE_STEPS + 1  # the first step of the edited row
        ):
            token.cancel()

    with pytest.raises(Cancelled):
        eng.edit(req, on_event, token)
    held, whole = eng.caches.reference, complete.caches.reference
    assert held is not None and held[0] == whole[0]
    assert held[1].store.keys() == whole[1].store.keys()
    assert all(
        torch.equal(a, b)
        for k in whole[1].store
        for a, b in zip(held[1].store[k], whole[1].store[k], strict=True)
    )
    assert np.array_equal(eng.edit(req).image, plain.image)


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
        replace(req, params=replace(FAST, ref_control_blocks=(3,))),
        replace(req, method=GOODDRAG),
    ]
    assert len({preparation_key(r) for r in changed} | {key}) == len(changed) + 1


def test_switching_to_a_plan_that_keeps_no_reference_drops_the_recording(
    tiny_model_dir, photo
) -> None:
    from backend.memory import PLANS

    eng = Engine("cpu")
    eng.prepare(_request(photo, tiny_model_dir))
    assert eng.caches.reference is not None
    eng.set_memory_plan(PLANS["8gb"])
    assert eng.caches.reference is not None
    eng.set_memory_plan(PLANS["6gb"])
    assert eng.caches.reference is None
