"""The hand-written DDIM arithmetic agrees with diffusers' scheduler and inverts cleanly."""

from __future__ import annotations

import pytest
import torch

from backend.ddim import Schedule
from backend.tiny import SD15_SCHEDULER


@pytest.fixture
def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD15_SCHEDULER)


def test_timesteps_match_diffusers(scheduler) -> None:
    schedule = Schedule.from_scheduler(scheduler, 50)
    scheduler.set_timesteps(50)
    assert list(schedule.timesteps) == scheduler.timesteps.tolist()
    assert schedule.timesteps[0] == 981 and schedule.timesteps[-1] == 1
    # Inversion strength 0.7 = 35 steps lands on timestep 681 (method-facts.md).
    assert schedule.timesteps[schedule.start_index(35)] == 681


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_step_matches_diffusers(prediction: str) -> None:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**{**SD15_SCHEDULER, "prediction_type": prediction})
    sched.set_timesteps(50)
    schedule = Schedule.from_scheduler(sched, 50)
    gen = torch.Generator().manual_seed(0)
    for t in (981, 681, 21, 1):
        sample = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
        out = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
        expected = sched.step(out, t, sample, eta=0.0).prev_sample
        torch.testing.assert_close(schedule.step(out, t, sample), expected, rtol=1e-5, atol=1e-6)


def test_inverse_step_undoes_step_for_the_same_noise(scheduler) -> None:
    schedule = Schedule.from_scheduler(scheduler, 50)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
    up = schedule.inverse_step(eps, 681, z)  # 661 -> 681
    down = schedule.step(eps, 681, up)  # 681 -> 661
    torch.testing.assert_close(down, z)
