"""LoRA training speed (issue 14): the exact speed-up changes nothing; each inexact option is
off by default, stays out of existing LoRA keys, and works."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

import backend.lora as lora_module
from backend.ddim import Schedule
from backend.lora import (
    SPEED_FIELDS,
    lora_key,
    remove_adapter,
    train_lora,
    training_precision,
)
from backend.params import all_specs
from backend.request import LoraParams

# Small crops (16×16 latents) keep these fast; the code path is the paper's.
SMALL = LoraParams(steps=3, batch_size=2, resolution=128, learning_rate=2e-3)


@pytest.fixture(scope="module")
def emb(pipe) -> torch.Tensor:
    ids = pipe.tokenizer("a photo", padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(ids.input_ids)[0]


def _image(size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / 37), 128 + 100 * np.cos(y / 23), 120 + 0 * x], -1)
    return img.astype(np.uint8)


def _train(pipe, emb, params: LoraParams, losses: list[float] | None = None):
    schedule = Schedule.from_scheduler(pipe.scheduler, 50)
    state = train_lora(
        pipe.unet,
        pipe.vae,
        emb,
        _image(160),
        schedule,
        params,
        device=torch.device("cpu"),
        on_step=(lambda _s, loss: losses.append(loss)) if losses is not None else None,
    )
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = pipe.unet(x, 300, encoder_hidden_states=emb).sample
    dtypes = {p.dtype for n, p in pipe.unet.named_parameters() if "lora_" in n}
    remove_adapter(pipe.unet)
    return state, out, dtypes


def test_speed_options_are_off_by_default_and_declared_for_cli_and_gui() -> None:
    defaults = LoraParams()
    names = {f.name for f in fields(LoraParams)}
    assert set(SPEED_FIELDS) <= names
    assert not any(getattr(defaults, n) for n in SPEED_FIELDS)
    specs = {s.name: s for s in all_specs().values() if s.group == "lora"}
    for name in SPEED_FIELDS:
        assert specs[name].kind == "bool" and specs[name].flag, name


def test_existing_lora_keys_stay_valid_and_options_change_the_key() -> None:
    img = _image()
    # Computed on main before the speed options existed: caches and projects keep their LoRAs.
    assert lora_key(img, "m", "p", LoraParams()) == (
        "0e16bd8c9c650ba40d0ff2e11c6cdeaf605535b722cd534bcc6641aa47b40257"
    )
    keys = {lora_key(img, "m", "p", LoraParams(**{n: True})) for n in SPEED_FIELDS}
    assert len(keys) == len(SPEED_FIELDS)
    assert lora_key(img, "m", "p", LoraParams()) not in keys


def test_foreach_adamw_is_bit_identical_to_the_per_tensor_loop(
    pipe, emb, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, out, _ = _train(pipe, emb, SMALL)
    optimizers: list[torch.optim.Optimizer] = []

    def per_tensor(trainable, params):
        opt = torch.optim.AdamW(
            trainable, lr=params.learning_rate, weight_decay=params.weight_decay, foreach=False
        )
        optimizers.append(opt)
        return opt

    monkeypatch.setattr(lora_module, "lora_optimizer", per_tensor)
    before, before_out, _ = _train(pipe, emb, SMALL)
    assert len(optimizers) == 1  # the loop really ran
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert torch.equal(out, before_out)


def test_fused_adamw_trains_within_float_rounding_of_the_default(pipe, emb) -> None:
    ref, ref_out, _ = _train(pipe, emb, SMALL)
    fused, fused_out, _ = _train(pipe, emb, LoraParams(**{**vars(SMALL), "fused_adamw": True}))
    diff = max(float((fused[k] - ref[k]).abs().max()) for k in ref)
    assert 0 < diff < 1e-5, diff
    assert torch.allclose(fused_out, ref_out, atol=1e-4)


def test_training_precision_per_device() -> None:
    cpu, cuda, mps = (torch.device(d) for d in ("cpu", "cuda", "mps"))
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    # Defaults unchanged: fp32 trains in fp32; half weights autocast as the engine always did.
    assert training_precision(cpu, f32, False) == (None, False)
    assert training_precision(cuda, f32, False) == (None, False)
    assert training_precision(cuda, f16, False) == (f16, True)
    assert training_precision(cuda, bf16, False) == (bf16, False)
    assert training_precision(cpu, bf16, False) == (bf16, False)
    # The option: fp16 with a scaler on GPUs, bf16 on the CPU.
    assert training_precision(cuda, f32, True) == (f16, True)
    assert training_precision(mps, f32, True) == (f16, True)
    assert training_precision(cpu, f32, True) == (bf16, False)


def test_mixed_precision_on_cpu_keeps_lora_weights_fp32_and_learns(pipe, emb) -> None:
    params = LoraParams(**{**vars(SMALL), "steps": 8, "mixed_precision": True})
    ref, ref_out, _ = _train(pipe, emb, LoraParams(**{**vars(params), "mixed_precision": False}))
    losses: list[float] = []
    state, out, dtypes = _train(pipe, emb, params, losses)
    assert dtypes == {torch.float32}
    assert all(v.dtype == torch.float32 for v in state.values())
    assert len(losses) == 8 and all(np.isfinite(losses))
    # bf16 autocast really ran: weights differ from fp32 training, but not wildly.
    diff = max(float((state[k] - ref[k]).abs().max()) for k in ref)
    scale = max(float(ref[k].abs().max()) for k in ref)
    assert 0 < diff < 0.1 * scale, (diff, scale)
    assert not torch.equal(out, ref_out)


def _eval_loss(pipe, emb) -> float:
    """Denoising loss on the training image at fixed timesteps and noise."""
    from backend.lora import CropEncoder, training_image

    schedule = Schedule.from_scheduler(pipe.scheduler, 50)
    enc = CropEncoder(pipe.vae, training_image(_image(160), 128), torch.device("cpu"),
                      torch.float32, 128)  # fmt: skip
    x0 = enc.posterior([(0, 0)])[0] * pipe.vae.config.scaling_factor
    gen = torch.Generator().manual_seed(123)
    losses = []
    with torch.no_grad():
        for t in (50, 250, 450, 650, 850):
            noise = torch.randn(x0.shape, generator=gen)
            tt = torch.tensor([t])
            noisy = schedule.add_noise(x0, noise, tt)
            pred = pipe.unet(noisy, tt, encoder_hidden_states=emb).sample
            losses.append(float(torch.nn.functional.mse_loss(pred, noise)))
    return float(np.mean(losses))


def test_mixed_precision_training_lowers_the_denoising_loss(pipe, emb) -> None:
    params = LoraParams(
        steps=12, batch_size=1, resolution=128, learning_rate=2e-3, mixed_precision=True
    )
    before = _eval_loss(pipe, emb)
    schedule = Schedule.from_scheduler(pipe.scheduler, 50)
    train_lora(pipe.unet, pipe.vae, emb, _image(160), schedule, params,
               device=torch.device("cpu"))  # fmt: skip
    after = _eval_loss(pipe, emb)
    remove_adapter(pipe.unet)
    assert after < 0.97 * before, (before, after)


def test_compile_option_trains_through_torch_compile(
    pipe, emb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring, traced by dynamo but run by its eager backend (an inductor build takes
    minutes on a CPU; benchmarks/lora_speed.py times the real thing)."""
    import torch._dynamo

    real = torch.compile
    calls: list[object] = []

    def eager_compile(model, **kwargs):
        calls.append(model)
        return real(model, backend="eager", **kwargs)

    params = LoraParams(**{**vars(SMALL), "steps": 2})
    ref, ref_out, _ = _train(pipe, emb, params)
    monkeypatch.setattr(torch, "compile", eager_compile)
    torch._dynamo.reset()
    try:
        state, out, _ = _train(pipe, emb, LoraParams(**{**vars(params), "compile_unet": True}))
    finally:
        torch._dynamo.reset()
    assert calls == [pipe.unet]
    diff = max(float((state[k] - ref[k]).abs().max()) for k in ref)
    assert diff < 1e-5, diff
    assert torch.allclose(out, ref_out, atol=1e-4)


def test_lora_speed_profile_names_where_a_step_goes(pipe, emb) -> None:
    from benchmarks.lora_speed import VARIANTS, profile

    schedule = Schedule.from_scheduler(pipe.scheduler, 50)
    table = profile(pipe, emb, schedule, SMALL, VARIANTS["default"], 1, 12)
    assert "Self CPU" in table
    assert "aten::convolution" in table or "aten::mkldnn_convolution" in table
    rows = [line for line in table.splitlines() if line.strip().startswith("aten::")]
    assert 1 <= len(rows) <= 12
    assert not any("lora_" in n for n, _ in pipe.unet.named_parameters())  # adapter removed
