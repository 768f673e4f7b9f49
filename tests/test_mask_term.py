"""The mask term of Eq. 3 holds the unmasked part of ẑ_{t-1} in place when λ is large."""

from __future__ import annotations

import torch

from backend.ddim import Schedule
from backend.drag import optimize_latent
from backend.features import unet_with_features


def _run(pipe, lam: float, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    schedule = Schedule.from_scheduler(pipe.scheduler, 50)
    t = schedule.timesteps[schedule.start_index(35)]
    ids = pipe.tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))

    def forward(latent: torch.Tensor):
        return unet_with_features(pipe.unet, latent, t, text, 2, (32, 32))

    def step_prev(out: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return schedule.step(out, t, latent)

    outcome = optimize_latent(
        z,
        forward,
        step_prev,
        torch.tensor([[8.0, 16.0]]),
        torch.tensor([[24.0, 16.0]]),
        keep_mask=keep,
        steps=12,
        lr=0.01,
        lam=lam,
        r1=1,
        r2=3,
        stop=2.0,
    )
    with torch.no_grad():
        prev0 = step_prev(forward(z)[0], z)
        prev = step_prev(forward(outcome.latent)[0], outcome.latent)
    return prev - prev0, outcome.latent - z, outcome.iterations


def test_lambda_keeps_the_unmasked_region_while_the_masked_one_moves(engine) -> None:
    pipe = engine.pipe
    keep = torch.ones(1, 1, 16, 16)
    keep[..., 4:12, 2:14] = 0.0  # editable box around the handle's path
    free_prev, free_z, n_free = _run(pipe, 0.0, keep)
    held_prev, held_z, n_held = _run(pipe, 0.1, keep)  # the paper's λ is already large here
    assert n_free == n_held == 12
    outside = keep.expand_as(free_prev).bool()
    inside = ~outside
    # Without the term the whole latent drifts; with it, ẑ_{t-1} outside the mask stays put...
    assert held_prev[outside].abs().mean() < 0.1 * free_prev[outside].abs().mean()
    # ...while inside the mask the latent still changes as freely as before.
    assert held_z[inside].abs().mean() > 0.5 * free_z[inside].abs().mean()
    assert held_z[inside].abs().mean() > 10 * held_z[outside].abs().mean()
