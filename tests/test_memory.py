"""Memory plans: choice, each technique alone, tolerances vs ``high``, out-of-memory fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.bench.dragbench import load_case
from backend.ddim import Schedule
from backend.document import load_image
from backend.engine import Engine
from backend.errors import DragStudioError
from backend.events import StageStarted
from backend.features import unet_with_features
from backend.lora import train_lora
from backend.memory import (
    GIB,
    PLANS,
    MemoryPlan,
    apply_plan,
    choose_plan,
    ensure_sdpa,
    micro_batches,
    next_plan,
    resolve_plan,
)
from backend.request import DragParams, DragRequest, LoraParams, PointPair
from backend.tiny import build_tiny_pipeline

FAST = DragParams(working_width=128, inference_steps=10, drag_steps=4)
LORA4 = LoraParams(steps=2, batch_size=4, resolution=128)


def test_auto_chooses_the_most_generous_plan_that_fits() -> None:
    assert choose_plan(None).name == "high"  # CPU / MPS: nothing to measure
    assert choose_plan(int(40 * GIB)).name == "high"
    assert choose_plan(int(7.9 * GIB)).name == "8gb"
    assert choose_plan(int(5.8 * GIB)).name == "6gb"
    assert choose_plan(int(1 * GIB)).name == "6gb"  # the leanest plan is the last resort
    assert resolve_plan("auto", torch.device("cpu")).name == "high"
    assert resolve_plan("6GB", torch.device("cpu")).name == "6gb"
    with pytest.raises(DragStudioError, match="unknown memory plan"):
        resolve_plan("4gb", torch.device("cpu"))
    assert [next_plan(PLANS[n]) for n in ("high", "8gb", "6gb")] == [
        PLANS["8gb"],
        PLANS["6gb"],
        None,
    ]


def test_micro_batches_cover_the_batch() -> None:
    assert micro_batches(4, 0) == [(0, 4)]
    assert micro_batches(4, 1) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert micro_batches(4, 3) == [(0, 3), (3, 4)]
    assert micro_batches(4, 8) == [(0, 4)]


def _photo(size: int = 160) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / 13), 128 + 90 * np.cos(y / 11), 128 + 50 * x / size])
    return np.clip(img.transpose(1, 2, 0), 0, 255).astype(np.uint8)


def _train(pipe, micro: int, checkpointing: bool) -> dict[str, torch.Tensor]:
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    else:
        pipe.unet.disable_gradient_checkpointing()
    schedule = Schedule.from_scheduler(pipe.scheduler, 10)
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    params = LoraParams(steps=3, batch_size=4, resolution=128)
    # A non-square photo: four different crops per batch, so micro-batches see different rows.
    image = np.concatenate([_photo(), _photo()[:, :40]], axis=1)
    return train_lora(
        pipe.unet,
        pipe.vae,
        text,
        image,
        schedule,
        params,
        device=torch.device("cpu"),
        micro_batch=micro,
    )


def test_lora_micro_batches_and_checkpointing_give_the_batch_4_result() -> None:
    pipe = build_tiny_pipeline(0)
    pipe.unet.requires_grad_(False)
    whole = _train(pipe, 0, checkpointing=False)
    for micro, ckpt in ((1, False), (2, False), (0, True), (1, True)):
        other = _train(pipe, micro, checkpointing=ckpt)
        assert other.keys() == whole.keys()
        worst = max(float((other[k] - whole[k]).abs().max()) for k in whole)
        assert worst < 1e-5, (micro, ckpt, worst)
    # The comparison can fail: a different seed gives a different adapter.
    moved = max(float(v.abs().max()) for v in whole.values())
    assert moved > 1e-3


def test_checkpointing_keeps_the_feature_hook_and_latent_gradients() -> None:
    pipe = build_tiny_pipeline(0)
    unet = pipe.unet.requires_grad_(False).eval()
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2))
    z0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))

    def grads(checkpointing: bool) -> tuple[torch.Tensor, torch.Tensor]:
        (
            unet.enable_gradient_checkpointing
            if checkpointing
            else unet.disable_gradient_checkpointing
        )()
        z = z0.clone().requires_grad_(True)
        out, feats = unet_with_features(unet, z, 500, text, 2, (32, 32))
        (feats[..., 5:9, 5:9].abs().sum() + out.square().mean()).backward()
        return feats.detach(), z.grad

    f_plain, g_plain = grads(False)
    f_ckpt, g_ckpt = grads(True)
    assert unet.is_gradient_checkpointing
    assert torch.allclose(f_plain, f_ckpt, atol=1e-6)
    assert float(g_plain.abs().max()) > 0
    assert torch.allclose(g_plain, g_ckpt, atol=1e-6)


def test_ensure_sdpa_replaces_the_slow_processor_only() -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    pipe = build_tiny_pipeline(0)
    assert ensure_sdpa(pipe.unet) == 0  # diffusers' default is already SDPA
    pipe.unet.set_attn_processor(AttnProcessor())
    n = len(pipe.unet.attn_processors)
    assert ensure_sdpa(pipe.unet) == n
    assert all(type(p) is AttnProcessor2_0 for p in pipe.unet.attn_processors.values())


def test_apply_plan_switches_techniques_on_and_off() -> None:
    pipe = build_tiny_pipeline(0)
    cpu = torch.device("cpu")
    apply_plan(pipe, PLANS["6gb"], cpu)
    assert pipe.unet.is_gradient_checkpointing
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    apply_plan(pipe, PLANS["high"], cpu)
    assert not pipe.unet.is_gradient_checkpointing
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling


def _dev_requests(dev_data: Path, model: Path, n: int = 3) -> list[DragRequest]:
    """The first case of each of the first ``n`` categories (different kinds of picture)."""
    out = []
    for category in sorted(p for p in dev_data.iterdir() if p.is_dir())[:n]:
        case = load_case(sorted(p for p in category.iterdir() if p.is_dir())[0])
        out.append(
            DragRequest(
                image=load_image(case.image_path),
                pairs=case.pairs,
                mask=case.mask,
                prompt=case.prompt,
                params=FAST,
                lora=LORA4,
                model=str(model),
            )
        )
    return out


@pytest.fixture(scope="module")
def high_edits(dev_data, tiny_model_dir):
    """The dev cases and their ``high`` results, computed once for both lean plans."""
    requests = _dev_requests(dev_data, tiny_model_dir)
    high = Engine("cpu", memory="high")
    return [(request, high.edit(request)) for request in requests]


@pytest.mark.parametrize("name", ["8gb", "6gb"])
def test_each_plan_stays_within_its_tolerance_of_high(name, high_edits, tiny_model_dir) -> None:
    plan = Engine("cpu", memory=name)
    assert plan.plan.name == name
    tol = PLANS[name]
    assert len({request.prompt for request, _ in high_edits}) == 3  # three different cases
    for request, a in high_edits:
        b = plan.edit(request)
        assert a.trace.memory_plan == "high" and b.trace.memory_plan == name
        moved = np.abs(np.subtract(a.trace.final_distances, b.trace.final_distances))
        assert float(moved.max()) <= tol.tolerance_px
        diff = np.abs(a.image.astype(np.float64) - b.image.astype(np.float64)).mean()
        assert diff <= tol.tolerance_pixels
        # The edits did something, so equal distances are not an accident of nothing moving.
        assert a.trace.drag_iterations > 0


def _oom_once(monkeypatch, times: int) -> list[int]:
    import backend.engine as engine_module

    real = engine_module.optimize_latent
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            # Hold some memory the way a real failure would, to be released.
            _ballast = torch.ones(1024, 1024)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "optimize_latent", flaky)
    return calls


def test_out_of_memory_falls_back_to_the_next_plan_once(monkeypatch, tiny_model_dir, photo) -> None:
    engine = Engine("cpu", memory="8gb")
    request = DragRequest(
        image=photo,
        pairs=(PointPair((80.0, 128.0), (150.0, 128.0)),),
        prompt="a photo",
        params=FAST,
        lora=LoraParams(steps=1, batch_size=1, resolution=128),
        model=str(tiny_model_dir),
    )
    original = photo.copy()
    calls = _oom_once(monkeypatch, times=1)
    events: list = []
    result = engine.edit(request, events.append)
    assert len(calls) == 2
    notes = [
        e.detail for e in events if isinstance(e, StageStarted) and "out of memory" in e.detail
    ]
    assert notes == ["out of memory with the 8gb plan: trying once more with the 6gb plan"]
    assert result.trace.memory_plan == "6gb"
    assert result.trace.to_dict()["memory"]["fallback"] == {
        "from": "8gb",
        "to": "6gb",
        "reason": "out of memory",
    }
    assert engine.plan.name == "6gb" and engine.pipe.unet.is_gradient_checkpointing
    assert np.array_equal(request.image, original)
    # The LoRA trained before the failure is kept, so the retry reuses it.
    assert result.trace.lora.source == "memory"


def test_out_of_memory_twice_fails_cleanly_and_loses_nothing(
    monkeypatch, tiny_model_dir, photo
) -> None:
    engine = Engine("cpu", memory="8gb")
    request = DragRequest(
        image=photo,
        pairs=(PointPair((80.0, 128.0), (150.0, 128.0)),),
        prompt="a photo",
        params=FAST,
        lora=LoraParams(steps=0),
        model=str(tiny_model_dir),
    )
    original = photo.copy()
    calls = _oom_once(monkeypatch, times=99)
    with pytest.raises(torch.OutOfMemoryError):
        engine.edit(request)
    assert len(calls) == 2  # once with 8gb, once with 6gb, then no more
    assert engine.plan.name == "6gb"
    assert np.array_equal(request.image, original)
    # The engine still works afterwards.
    monkeypatch.undo()
    assert engine.edit(request).image.shape == photo.shape


def test_plans_are_frozen_and_documented() -> None:
    for plan in PLANS.values():
        assert isinstance(plan, MemoryPlan) and plan.summary
        assert plan.describe()["name"] == plan.name
    assert PLANS["high"].tolerance_px == 0.0 and not PLANS["high"].checkpointing


def test_cli_accepts_memory_plans() -> None:
    from backend.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["edit", "--image", "x.png", "--out", "y.png", "--memory", "6gb"])
    assert args.memory == "6gb"
    assert parser.parse_args(["edit", "--image", "x.png", "--out", "y.png"]).memory == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["edit", "--image", "x.png", "--out", "y.png", "--memory", "4gb"])


def test_settings_offer_the_same_plans_as_the_engine() -> None:
    from backend.memory import CHOICES
    from backend.settings import MEMORY_PLANS, Settings, check_value

    assert MEMORY_PLANS == CHOICES and Settings().memory == "auto"
    assert check_value("memory", "8gb") == "8gb"
    with pytest.raises(ValueError):
        check_value("memory", "4gb")


def test_the_engine_follows_a_changed_setting_and_keeps_a_fallback(tiny_model_dir) -> None:
    engine = Engine("cpu", memory="auto")
    engine.load_model(str(tiny_model_dir))
    assert engine.plan.name == "high" and not engine.pipe.unet.is_gradient_checkpointing
    engine.use_memory_setting("6gb")
    assert engine.plan.name == "6gb" and engine.pipe.unet.is_gradient_checkpointing
    engine.set_memory_plan(PLANS["8gb"])  # as a fallback would
    engine.use_memory_setting("6gb")  # unchanged setting: the plan stays
    assert engine.plan.name == "8gb"


def test_vae_tiling_changes_nothing_up_to_512_pixels() -> None:
    """Plans tile the VAE, which only acts above its 512-pixel sample size."""
    vae = build_tiny_pipeline(0).vae.eval()
    z = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(4))
    big = torch.randn(1, 4, 96, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        vae.disable_tiling()
        plain, plain_big = vae.decode(z).sample, vae.decode(big).sample
        vae.enable_tiling()
        tiled, tiled_big = vae.decode(z).sample, vae.decode(big).sample
    assert torch.equal(plain, tiled)
    assert not torch.equal(plain_big, tiled_big)  # 768 px: tiles, so the test can tell
