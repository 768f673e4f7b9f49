"""Memory plans: how the engine fits SD-1.5 and the paper's method into 8 GB and 6 GB GPUs.

A plan is a set of techniques, each of which can be switched on alone:

- ``checkpointing``: diffusers' gradient checkpointing in the UNet (per ResNet and transformer
  block, non-reentrant), active only where gradients flow (LoRA training and latent optimisation);
  the feature hook on ``up_blocks[i]`` and peft's adapter layers sit outside or inside the
  checkpointed units and work unchanged. Costs one extra forward pass per backward.
- ``offload``: the text encoder and the VAE live on the CPU and visit the GPU only while they run.
- ``vae_slicing`` / ``vae_tiling``: VAE encode/decode one image at a time / in overlapping tiles
  (diffusers tiles only inputs larger than the VAE's 512-pixel sample size, so 512² is unchanged).
- ``lora_micro_batch``: the LoRA batch (4) runs as micro-batches whose gradients add up to the
  batch's (same random draws, same loss, float rounding apart).
- ``keep_reference_kv``: keep the reference rows' attention keys/values on the device for
  re-drags (about 24 MB per denoising step at 512²); off, re-drags denoise both rows again.

Attention is PyTorch's scaled-dot-product attention in every plan (:func:`ensure_sdpa`). Half
precision weights with float32 LoRA parameters are the engine's default on CUDA in every plan
(LoRA training then runs under float16 autocast with a gradient scaler); on the CPU, bfloat16 is
available through the engine's ``dtype`` (the benchmark uses it to mirror fp16 sizes). With
float32 weights, ``LoraParams.mixed_precision`` trains under autocast alone
(:func:`backend.lora.training_precision`).

``tolerance_px`` and ``tolerance_pixels`` are what a plan may change compared with ``high`` on
the tiny model (tests/test_memory.py checks them): the largest change of a handle's final distance
to its target, in image pixels, and the largest mean absolute difference of the output, in 8-bit
levels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from backend.errors import DragStudioError
from backend.models import free_memory

GIB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    name: str
    summary: str
    checkpointing: bool = False
    offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    lora_micro_batch: int = 0
    """LoRA micro-batch size; 0 trains the whole batch at once."""
    keep_reference_kv: bool = True
    needs_gb: float = 0.0
    """Free device memory this plan is chosen for by ``auto`` (predicted peak plus a margin)."""
    tolerance_px: float = 0.0
    tolerance_pixels: float = 0.0

    def describe(self) -> dict[str, Any]:
        return asdict(self)


PLANS: dict[str, MemoryPlan] = {
    plan.name: plan
    for plan in (
        MemoryPlan(
            "high",
            "everything on the GPU, whole LoRA batch (the paper's setting)",
            needs_gb=12.0,
        ),
        MemoryPlan(
            "8gb",
            "gradient checkpointing, text encoder and VAE off the GPU when idle, VAE sliced/tiled",
            checkpointing=True,
            offload=True,
            vae_slicing=True,
            vae_tiling=True,
            needs_gb=7.0,
            tolerance_px=0.5,
            tolerance_pixels=0.5,
        ),
        MemoryPlan(
            "6gb",
            "the 8gb plan, LoRA in micro-batches of 1, no reference keys/values kept for re-drags",
            checkpointing=True,
            offload=True,
            vae_slicing=True,
            vae_tiling=True,
            lora_micro_batch=1,
            keep_reference_kv=False,
            needs_gb=0.0,
            tolerance_px=0.5,
            tolerance_pixels=0.5,
        ),
    )
}
ORDER: tuple[str, ...] = ("high", "8gb", "6gb")
CHOICES: tuple[str, ...] = ("auto", *ORDER)
"""The values of ``--memory`` and of the ``memory`` setting (backend/settings.py repeats them:
it must stay torch-free; a test keeps the two equal)."""


def free_device_bytes(device: torch.device) -> int | None:
    """Memory this process could use on a CUDA device: what ``torch.cuda.mem_get_info`` calls
    free plus what this process already holds (a loaded model is ours to rearrange); None on
    other devices."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free) + int(torch.cuda.memory_reserved(device))


def choose_plan(free_bytes: int | None) -> MemoryPlan:
    """The most generous plan whose needs fit ``free_bytes``; ``high`` when unknown (CPU, MPS)."""
    if free_bytes is None:
        return PLANS["high"]
    for name in ORDER:
        if free_bytes >= PLANS[name].needs_gb * GIB:
            return PLANS[name]
    return PLANS[ORDER[-1]]


def resolve_plan(setting: str, device: torch.device) -> MemoryPlan:
    """Turn ``auto|high|8gb|6gb`` into a plan for ``device``."""
    key = (setting or "auto").strip().lower()
    if key == "auto":
        return choose_plan(free_device_bytes(device))
    if key not in PLANS:
        raise DragStudioError(f"unknown memory plan {setting!r}: use {', '.join(CHOICES)}")
    return PLANS[key]


def next_plan(plan: MemoryPlan) -> MemoryPlan | None:
    """The plan to fall back to after running out of memory, or None after the last one."""
    i = ORDER.index(plan.name) if plan.name in ORDER else len(ORDER) - 1
    return PLANS[ORDER[i + 1]] if i + 1 < len(ORDER) else None


# -- applying a plan ------------------------------------------------------------------------------


def ensure_sdpa(module: Any) -> int:
    """Give every attention layer that is not already SDPA-based PyTorch's SDPA processor.

    Returns how many were replaced (diffusers already defaults to SDPA on PyTorch 2, so this is
    usually 0; processors installed by other code, e.g. reference control, are left alone).
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = getattr(module, "attn_processors", None)
    if not processors:
        return 0
    slow = [n for n, p in processors.items() if type(p) is AttnProcessor]
    if slow:
        module.set_attn_processor(
            {n: (AttnProcessor2_0() if n in slow else p) for n, p in processors.items()}
        )
    return len(slow)


def apply_plan(pipe: Any, plan: MemoryPlan, device: torch.device) -> None:
    """Configure a loaded pipeline for ``plan`` (idempotent; switching plans undoes the last)."""
    unet, vae = pipe.unet, pipe.vae
    if plan.checkpointing:
        unet.enable_gradient_checkpointing()
    elif getattr(unet, "is_gradient_checkpointing", False):
        unet.disable_gradient_checkpointing()
    (vae.enable_slicing if plan.vae_slicing else vae.disable_slicing)()
    (vae.enable_tiling if plan.vae_tiling else vae.disable_tiling)()
    ensure_sdpa(unet)
    ensure_sdpa(vae)
    home = torch.device("cpu") if plan.offload else device
    pipe.text_encoder.to(home)
    vae.to(home)
    free_memory(device)


@contextlib.contextmanager
def resident(module: Any, device: torch.device, plan: MemoryPlan) -> Iterator[None]:
    """Bring an offloaded module to ``device`` while the block runs, then send it back."""
    if not plan.offload or device.type == "cpu":
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")
        free_memory(device)


def half_autocast(
    device: torch.device, dtype: torch.dtype
) -> contextlib.AbstractContextManager[Any]:
    """Autocast for half-precision weights with float32 LoRA parameters (CUDA fp16, CPU bf16)."""
    if (device.type, dtype) in (("cuda", torch.float16), ("cuda", torch.bfloat16)):
        return torch.autocast("cuda", dtype=dtype)
    if (device.type, dtype) == ("cpu", torch.bfloat16):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def micro_batches(batch: int, micro: int) -> list[tuple[int, int]]:
    """``(start, stop)`` slices covering ``batch`` rows ``micro`` at a time (0: all at once)."""
    size = batch if micro <= 0 else min(micro, batch)
    return [(i, min(i + size, batch)) for i in range(0, batch, size)]
