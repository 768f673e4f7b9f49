"""The engine end to end on the tiny model: stages, cancellation, LoRA reuse, pixels, mapping."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.engine import CancelToken, Engine
from backend.errors import Cancelled
from backend.events import Stage, StageFinished, StageStarted, StepProgress
from backend.lora_cache import LoraCache
from backend.request import DragParams, DragRequest, LoraParams, PointPair

FAST = DragParams(working_width=128, inference_steps=10, drag_steps=3)
FAST_LORA = LoraParams(steps=1, batch_size=1, resolution=128)


def _request(image: np.ndarray, model_dir: Path, **kw) -> DragRequest:
    h, w = image.shape[:2]
    base = dict(
        image=image,
        pairs=(PointPair((w * 0.3, h * 0.5), (w * 0.6, h * 0.5)),),
        prompt="a photo",
        params=FAST,
        lora=FAST_LORA,
        model=str(model_dir),
    )
    base.update(kw)
    return DragRequest(**base)


def test_stages_run_in_order_and_report_handles(engine, tiny_model_dir, photo) -> None:
    events: list = []
    result = engine.edit(_request(photo, tiny_model_dir), events.append)
    started = [e.stage for e in events if isinstance(e, StageStarted)]
    assert started == [Stage.LOAD, Stage.LORA, Stage.INVERSION, Stage.DRAG, Stage.DENOISE]
    assert isinstance(events[-1], StageFinished) and events[-1].stage == Stage.DENOISE
    drag_steps = [e for e in events if isinstance(e, StepProgress) and e.stage == Stage.DRAG]
    assert drag_steps and all(e.handles and e.loss is not None for e in drag_steps)
    inversion = [e for e in events if isinstance(e, StepProgress) and e.stage == Stage.INVERSION]
    assert [e.step for e in inversion] == list(range(1, 8))  # 0.7 × 10 DDIM steps
    assert result.image.shape == photo.shape and result.image.dtype == np.uint8
    trace = result.trace
    assert set(trace.stages) >= {"load", "lora", "inversion", "drag", "denoise", "total"}
    assert trace.working_size == (128, 128) and trace.image_size == (256, 256)
    assert len(trace.iterations) == trace.drag_iterations


def test_points_and_sizes_map_exactly_for_odd_aspect_ratios(engine, tiny_model_dir) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)  # 3:2, not a multiple of 8
    pair = PointPair((150.0, 100.0), (210.0, 100.0))
    req = _request(image, tiny_model_dir, pairs=(pair,), lora=LoraParams(steps=0))
    result = engine.edit(req)
    # 128 wide → 85.3 high → rounded to 88; features at half that.
    assert result.trace.working_size == (128, 88)
    assert result.trace.feature_size == (64, 44)
    assert result.image.shape == (200, 300, 3)
    # (150, 100) → feature (32, 22) exactly → back to (150, 100).
    assert result.trace.iterations[0].handles == ((150.0, 100.0),)


def test_original_pixels_are_kept_outside_the_mask(engine, tiny_model_dir, photo) -> None:
    mask = np.zeros(photo.shape[:2], bool)
    mask[64:192, 40:200] = True
    req = _request(photo, tiny_model_dir, mask=mask, lora=LoraParams(steps=0))
    kept = engine.edit(req).image
    assert np.array_equal(kept[~mask], photo[~mask])
    assert not np.array_equal(kept[mask], photo[mask])
    raw = engine.edit(replace(req, params=replace(FAST, keep_unmasked_pixels=False))).image
    assert not np.array_equal(raw[~mask], photo[~mask])  # the VAE round trip shows


def test_an_empty_mask_constrains_nothing(engine, tiny_model_dir, photo) -> None:
    empty = np.zeros(photo.shape[:2], bool)
    a = engine.edit(_request(photo, tiny_model_dir, mask=empty, lora=LoraParams(steps=0)))
    b = engine.edit(_request(photo, tiny_model_dir, mask=None, lora=LoraParams(steps=0)))
    assert np.array_equal(a.image, b.image)


def test_redrag_reuses_the_lora_from_memory_then_disk(tiny_model_dir, photo, tmp_path) -> None:
    cache = LoraCache(tmp_path / "lora")
    first = Engine("cpu", lora_cache=cache)
    req = _request(photo, tiny_model_dir)
    t1 = first.edit(req).trace
    assert t1.lora.cached is False and t1.lora.source == "trained"
    events: list = []
    other_points = replace(req, pairs=(PointPair((50, 60), (80, 60)),))
    t2 = first.edit(other_points, events.append).trace
    assert t2.lora.cached is True and t2.lora.source == "memory"
    assert any(isinstance(e, StageStarted) and "reusing" in e.detail for e in events)
    # Nothing trained: not one LoRA step ran (a count, not a wall-clock bound).
    assert not any(isinstance(e, StepProgress) and e.stage == Stage.LORA for e in events)
    # An accepted result dragged again keeps the photo's LoRA.
    edited = replace(req, image=first.edit(req).image, lora_image=photo)
    assert first.edit(edited).trace.lora.cached is True
    # A fresh engine (next app start) finds it on disk.
    second = Engine("cpu", lora_cache=cache)
    t3 = second.edit(req).trace
    assert t3.lora.cached is True and t3.lora.source == "disk"
    # Different LoRA parameters mean a different adapter.
    t4 = second.edit(replace(req, lora=replace(FAST_LORA, seed=1))).trace
    assert t4.lora.cached is False


_COMPLETE: dict[str, dict] = {}


def _complete_caches(req: DragRequest) -> dict:
    """What an uncancelled edit of ``req`` leaves in the caches (computed once)."""
    if "caches" not in _COMPLETE:
        eng = Engine("cpu")
        eng.edit(req)
        _COMPLETE["caches"] = eng.caches.snapshot()
    return _COMPLETE["caches"]


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("stage", [Stage.LORA, Stage.INVERSION, Stage.DRAG, Stage.DENOISE])
def test_cancel_stops_each_stage_within_one_step(stage, tiny_model_dir, photo, tmp_path) -> None:
    cache = LoraCache(tmp_path / "lora")
    eng = Engine("cpu", lora_cache=cache)
    token = CancelToken()
    seen: list[StepProgress] = []

    def on_event(event) -> None:
        if isinstance(event, StepProgress) and event.stage == stage:
            seen.append(event)
            token.cancel()

    req = _request(photo, tiny_model_dir, lora=LoraParams(steps=3, batch_size=1, resolution=128))
    with pytest.raises(Cancelled):
        eng.edit(req, on_event, token)
    assert [e.step for e in seen] == [1]  # nothing ran after the step that saw the cancel
    if stage == Stage.LORA:
        # A half-trained adapter is neither kept in memory nor written to the cache.
        assert eng.current_lora is None
        assert cache.entries() == []
    else:
        assert eng.current_lora is not None
    # No partial cache entry, checked in the one place the engine keeps them: each entry left
    # is exactly what an uncancelled edit stores under the same key, and none comes from the
    # stage that was cut short (or later).
    held = eng.caches.snapshot()
    complete = _complete_caches(req)
    expected = {"lora", "latent", "inversion"}
    expected &= {Stage.LORA: set(), Stage.INVERSION: {"lora", "latent"}}.get(stage, expected)
    assert {k for k in held if not k.startswith("text:")} == expected
    for name, (key, value) in held.items():
        assert complete[name][0] == key, name
        assert _same(complete[name][1], value), name
    # The engine works normally afterwards.
    assert eng.edit(req).image.shape == photo.shape


def test_a_missing_model_raises_and_keeps_the_loaded_one(engine, tiny_model_dir, photo) -> None:
    # How a job ends is what edit returns or raises; the host turns errors into dialogs
    # (tests/test_runner.py covers out-of-memory).
    from backend.errors import DragStudioError

    bad = _request(photo, tiny_model_dir, model=str(tiny_model_dir / "missing"))
    with pytest.raises(DragStudioError, match="not found"):
        engine.edit(bad)
    assert engine.model_spec == str(tiny_model_dir)  # the loaded model survived


def test_invalid_requests_fail_before_any_work(engine, tiny_model_dir, photo) -> None:
    from backend.errors import InvalidRequest

    events: list = []
    outside = _request(photo, tiny_model_dir, pairs=(PointPair((10, 10), (400, 10)),))
    with pytest.raises(InvalidRequest, match="outside"):
        engine.edit(outside, events.append)
    wrong_mask = _request(photo, tiny_model_dir, mask=np.ones((10, 10), bool))
    with pytest.raises(InvalidRequest, match="mask"):
        engine.edit(wrong_mask, events.append)
    with pytest.raises(InvalidRequest, match="LoRA steps"):
        engine.edit(_request(photo, tiny_model_dir, lora=LoraParams(steps=-1)), events.append)
    assert events == []


def test_redrags_reuse_the_inversion_and_the_reference_rows(tiny_model_dir, photo) -> None:
    """A second drag on the same photo skips inversion and denoises only the edited row,
    with the same result (to float rounding) as an engine that recomputes everything."""
    cached, fresh = Engine("cpu"), Engine("cpu", reuse_reference=False)
    first = _request(photo, tiny_model_dir, lora=LoraParams(steps=0))
    second = replace(first, pairs=(PointPair((60.0, 200.0), (90.0, 180.0)),))
    cached.edit(first)
    batches: list[int] = []
    cached.load_model(str(tiny_model_dir))
    hook = cached.pipe.unet.register_forward_pre_hook(
        lambda _m, args: batches.append(int(args[0].shape[0]))
    )
    events: list = []
    try:
        again = cached.edit(second, events.append)
    finally:
        hook.remove()
    notes = {e.stage: e.detail for e in events if isinstance(e, StageStarted)}
    assert notes[Stage.INVERSION] == "reusing the inverted latent"
    denoise_steps = 10 - 3  # 7 of 10 DDIM steps
    assert batches[-denoise_steps:] == [1] * denoise_steps  # only the edited row ran
    reference = fresh.edit(second)
    diff = np.abs(again.image.astype(int) - reference.image.astype(int))
    assert diff.max() <= 2, diff.max()
    assert again.trace.final_handles == reference.trace.final_handles
