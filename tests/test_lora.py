"""Identity-preserving LoRA: it learns its image, saves as safetensors and reloads bit-exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.ddim import Schedule
from backend.lora import (
    CropEncoder,
    adapter_state,
    cache_lora,
    cached_lora,
    has_adapter,
    load_adapter_state,
    lora_key,
    read_lora,
    remove_adapter,
    save_lora,
    train_lora,
    training_image,
)
from backend.lora_cache import LoraCache
from backend.request import LoraParams


def _embed(pipe, prompt: str = "a photo") -> torch.Tensor:
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(ids.input_ids)[0]


def _image(size: int = 512) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / 37), 128 + 100 * np.cos(y / 23), 120 + 0 * x], -1)
    return img.astype(np.uint8)


def _denoising_loss(pipe, image: np.ndarray, emb: torch.Tensor, schedule: Schedule) -> float:
    enc = CropEncoder(pipe.vae, training_image(image), torch.device("cpu"), torch.float32)
    mean, _ = enc.posterior([(0, 0)])
    x0 = mean * pipe.vae.config.scaling_factor
    gen = torch.Generator().manual_seed(123)
    losses = []
    with torch.no_grad():
        for t in (50, 250, 450, 650, 850):
            noise = torch.randn(x0.shape, generator=gen)
            tt = torch.tensor([t])
            pred = pipe.unet(
                schedule.add_noise(x0, noise, tt), tt, encoder_hidden_states=emb
            ).sample
            losses.append(float(torch.nn.functional.mse_loss(pred, noise)))
    return float(np.mean(losses))


def test_trained_lora_lowers_the_denoising_loss_and_reloads_exactly(pipe, tmp_path: Path) -> None:
    image, emb = _image(), _embed(pipe)
    schedule = Schedule.from_scheduler(pipe.scheduler, 50)
    params = LoraParams(steps=12, batch_size=1, learning_rate=2e-3)
    before = _denoising_loss(pipe, image, emb, schedule)
    steps: list[int] = []
    state = train_lora(
        pipe.unet,
        pipe.vae,
        emb,
        image,
        schedule,
        params,
        device=torch.device("cpu"),
        on_step=lambda s, _loss: steps.append(s),
    )
    after = _denoising_loss(pipe, image, emb, schedule)
    assert steps == list(range(1, 13))
    assert after < 0.97 * before, (before, after)
    # Only the four attention projections carry LoRA weights, rank 16.
    assert state and all(
        k.split(".lora_")[0].endswith(("to_q", "to_k", "to_v", "to_out.0")) for k in state
    )
    assert {v.shape[0] for k, v in state.items() if "lora_A" in k} == {16}

    path = tmp_path / "adapter.safetensors"
    save_lora(path, state, params, "k" * 64)
    loaded, loaded_params, key = read_lora(path)
    assert key == "k" * 64 and loaded_params == params
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = pipe.unet(x, 300, encoder_hidden_states=emb).sample
    remove_adapter(pipe.unet)
    with torch.no_grad():
        without = pipe.unet(x, 300, encoder_hidden_states=emb).sample
    assert not torch.equal(reference, without)
    load_adapter_state(pipe.unet, loaded_params, loaded)
    with torch.no_grad():
        again = pipe.unet(x, 300, encoder_hidden_states=emb).sample
    assert torch.equal(again, reference)
    assert all(torch.equal(adapter_state(pipe.unet)[k], state[k]) for k in state)
    remove_adapter(pipe.unet)


def test_square_images_are_encoded_once(pipe) -> None:
    enc = CropEncoder(pipe.vae, training_image(_image(512)), torch.device("cpu"), torch.float32)
    for _ in range(5):
        enc.posterior([(0, 0)] * 4)
    assert enc.encodes == 1
    wide = np.zeros((300, 600, 3), np.uint8)
    img = training_image(wide)
    assert img.size == (1024, 512)  # short side to 512, aspect kept


def test_a_mismatched_lora_is_refused(pipe) -> None:
    from backend.errors import DragStudioError

    with pytest.raises(DragStudioError):
        load_adapter_state(pipe.unet, LoraParams(rank=4), {"nonsense.lora_A.weight": torch.ones(1)})
    assert not has_adapter(pipe.unet)


def test_key_depends_on_pixels_model_prompt_and_params() -> None:
    img = _image(64)
    base = lora_key(img, "m", "p", LoraParams())
    other = img.copy()
    other[0, 0, 0] ^= 1
    assert lora_key(img, "m", "p", LoraParams()) == base
    assert (
        len(
            {
                base,
                lora_key(other, "m", "p", LoraParams()),
                lora_key(img, "m2", "p", LoraParams()),
                lora_key(img, "m", "q", LoraParams()),
                lora_key(img, "m", "p", LoraParams(steps=79)),
            }
        )
        == 5
    )


def test_cache_hit_miss_eviction_and_corruption(tmp_path: Path) -> None:
    cache = LoraCache(tmp_path / "cache", limit_bytes=10_000)
    state = {"a.lora_A.weight": torch.randn(16, 32), "a.lora_B.weight": torch.zeros(32, 16)}
    k1, k2, k3 = ("1" * 64), ("2" * 64), ("3" * 64)
    assert cached_lora(cache, k1) is None
    cache_lora(cache, k1, state, LoraParams())
    hit = cached_lora(cache, k1)
    assert hit is not None and torch.equal(hit[0]["a.lora_A.weight"], state["a.lora_A.weight"])
    cache_lora(cache, k2, state, LoraParams())
    cache_lora(cache, k3, state, LoraParams())  # over 10 kB: the least recently used goes
    assert cache.size_bytes() <= 10_000
    assert cached_lora(cache, k3) is not None
    assert cached_lora(cache, k1) is None
    # A corrupt entry is dropped, never raised.
    (tmp_path / "cache" / f"{k3}.safetensors").write_bytes(b"garbage")
    assert cached_lora(cache, k3) is None
    assert not (tmp_path / "cache" / f"{k3}.safetensors").exists()
    assert not list((tmp_path / "cache").glob(".tmp-*"))
