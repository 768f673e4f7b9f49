"""Sampling a new image with deterministic DDIM, keeping every latent of its trajectory.

The engine half of :mod:`backend.generation` (which holds the torch-free :class:`Generation`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from backend.ddim import Schedule
from backend.generation import Generation


def guide(model_output: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Combine ``[uncond, cond]`` row halves with classifier-free guidance."""
    uncond, cond = model_output.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def run_generation(
    unet: Any,
    text: torch.Tensor,
    schedule: Schedule,
    generation: Generation,
    *,
    device: torch.device,
    autocast: Callable[[], Any],
    on_step: Callable[[int], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> np.ndarray:
    """Sample with deterministic DDIM from seeded noise; return the whole latent trajectory.

    ``text`` is ``[uncond; cond]`` with guidance, or just ``cond`` without.
    """
    with torch.no_grad():
        return _sample(unet, text, schedule, generation, device, autocast, on_step, check_cancel)


def _sample(
    unet: Any,
    text: torch.Tensor,
    schedule: Schedule,
    generation: Generation,
    device: torch.device,
    autocast: Callable[[], Any],
    on_step: Callable[[int], None] | None,
    check_cancel: Callable[[], None] | None,
) -> np.ndarray:
    gen = torch.Generator().manual_seed(generation.seed)
    shape = (1, 4, generation.height // 8, generation.width // 8)
    z = torch.randn(shape, generator=gen, dtype=torch.float32).to(device)
    trajectory = [z.cpu()]
    for i, t in enumerate(schedule.timesteps):
        if check_cancel:
            check_cancel()
        batch = torch.cat([z, z]) if generation.uses_guidance else z
        with autocast():
            out = unet(batch.to(unet.dtype), t, encoder_hidden_states=text, return_dict=False)[0]
        out = out.float()
        if generation.uses_guidance:
            out = guide(out, generation.guidance_scale)
        z = schedule.step(out, t, z)
        trajectory.append(z.cpu())
        if on_step:
            on_step(i + 1)
    return torch.cat(trajectory).numpy().astype(np.float32)
