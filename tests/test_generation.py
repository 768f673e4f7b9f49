"""Generated images (paper appendix C): reproducible, dragged without LoRA or inversion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import backend.engine as engine_module
from backend.generation import Generation, feature_weights
from backend.request import DragParams, DragRequest, LoraParams, PointPair

GEN = Generation(prompt="a red ball", negative_prompt="blurry", seed=7, width=128, height=96,
                 guidance_scale=5.0, steps=10)  # fmt: skip


@pytest.fixture(scope="module")
def generated(engine, tiny_model_dir):
    return engine.generate(GEN, str(tiny_model_dir))


def test_generation_is_reproducible_by_seed(engine, tiny_model_dir, generated) -> None:
    image, gen = generated
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    assert gen.trajectory.shape == (11, 4, 12, 16)
    again, gen2 = engine.generate(GEN, str(tiny_model_dir))
    assert np.array_equal(image, again) and np.array_equal(gen.trajectory, gen2.trajectory)
    other, _ = engine.generate(replace(GEN, seed=8), str(tiny_model_dir))
    assert not np.array_equal(image, other)


def _drag_request(image, gen, model, drag_steps=3) -> DragRequest:
    return DragRequest(
        image=image,
        pairs=(PointPair((40.0, 48.0), (80.0, 48.0)),),
        prompt=gen.prompt,
        params=DragParams(drag_steps=drag_steps),
        lora=LoraParams(),
        model=str(model),
        generation=gen,
    )


def test_drag_on_a_generated_image_skips_lora_and_inversion(
    engine, tiny_model_dir, generated, monkeypatch
) -> None:
    image, gen = generated

    def forbidden(*_a, **_k):
        raise AssertionError("must not run for a generated image")

    monkeypatch.setattr(engine_module, "train_lora", forbidden)
    monkeypatch.setattr(engine, "_invert", forbidden)
    monkeypatch.setattr(engine, "_encode", forbidden)
    shapes: list[tuple[int, ...]] = []
    real = engine_module.optimize_latent

    def spy(latent, forward, *args, **kwargs):
        _, feats = forward(latent)
        shapes.append(tuple(feats.shape))
        return real(latent, forward, *args, **kwargs)

    monkeypatch.setattr(engine_module, "optimize_latent", spy)
    result = engine.edit(_drag_request(image, gen, tiny_model_dir))
    trace = result.trace
    assert trace.generated is True and trace.lora.source == "generated"
    assert trace.lora.steps == 0 and trace.guidance_scale == 5.0
    # 0.7 of 10 steps: 7 "inverted" steps, i.e. the kept latent at timestep 601.
    assert trace.optimized_timestep == 601
    # With guidance the unconditional and conditional maps sit side by side: twice the channels.
    channels = engine.pipe.unet.up_blocks[2].resnets[-1].out_channels
    assert shapes == [(1, 2 * channels, 48, 64)]
    # Non-square: 128×96 → features 64×48; (40, 48) maps to (20, 24) and back exactly.
    assert trace.feature_size == (64, 48)
    assert trace.iterations[0].handles == ((40.0, 48.0),)
    assert result.image.shape == image.shape


def test_redenoising_the_kept_latent_reproduces_the_image(engine, tiny_model_dir, generated):
    image, gen = generated
    req = _drag_request(image, gen, tiny_model_dir, drag_steps=0)
    req = replace(req, params=replace(req.params, keep_unmasked_pixels=False))
    out = engine.edit(req).working_image
    assert out is not None
    diff = np.abs(out.astype(int) - image.astype(int))
    assert diff.max() <= 2, diff.max()


def test_feature_weights_follow_the_authors() -> None:
    wu, wc = feature_weights(7.5)
    assert wc == pytest.approx(7.5 / 14.0) and wu + wc == pytest.approx(1.0)
    assert feature_weights(1.0) == (0.0, 1.0)


def test_generation_validation() -> None:
    from backend.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="multiple of 8"):
        replace(GEN, width=100).validate()
    with pytest.raises(InvalidRequest, match="kept latents"):
        replace(GEN, trajectory=np.zeros((3, 4, 12, 16), np.float32)).validate()


def test_v_prediction_models_drag_photos(tmp_path, photo) -> None:
    from backend.engine import Engine
    from backend.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "v", prediction_type="v_prediction")
    eng = Engine("cpu")
    req = DragRequest(
        image=photo,
        pairs=(PointPair((80.0, 128.0), (150.0, 128.0)),),
        params=DragParams(working_width=128, inference_steps=10, drag_steps=2),
        lora=LoraParams(steps=1, batch_size=1, resolution=128),
        model=str(model),
    )
    result = eng.edit(req)
    assert eng.pipe.scheduler.config.prediction_type == "v_prediction"
    assert result.image.shape == photo.shape
    assert np.isfinite(result.trace.iterations[0].loss)
    # Generation with a v-prediction model works the same way.
    image, gen = eng.generate(replace(GEN, width=64, height=64, steps=4), str(model))
    assert image.shape == (64, 64, 3) and np.isfinite(gen.trajectory).all()


def test_training_target_respects_prediction_type() -> None:
    from diffusers import DDIMScheduler

    from backend.ddim import Schedule
    from backend.tiny import SD15_SCHEDULER

    x0, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([10, 900])
    eps = Schedule.from_scheduler(DDIMScheduler(**SD15_SCHEDULER), 50)
    assert torch.equal(eps.training_target(x0, noise, t), noise)
    vsched = DDIMScheduler(**{**SD15_SCHEDULER, "prediction_type": "v_prediction"})
    v = Schedule.from_scheduler(vsched, 50)
    torch.testing.assert_close(
        v.training_target(x0, noise, t), vsched.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5
    )
