"""GoodDrag's DDIM arithmetic: bit for bit what diffusers' ``DDIMScheduler.step`` and the
authors' ``inv_step`` compute, at every timestep; paper mode's ``Schedule`` untouched."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from backend.ddim import Schedule
from backend.ddim_float32 import Float32Schedule
from backend.tiny import SD15_SCHEDULER
from tests.gooddrag_reference import _inv_step


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_steps_equal_diffusers_bit_for_bit(prediction: str) -> None:
    scheduler = DDIMScheduler(**{**SD15_SCHEDULER, "prediction_type": prediction})
    scheduler.set_timesteps(50)
    ours = Float32Schedule.from_scheduler(scheduler, 50)
    paper = Schedule.from_scheduler(scheduler, 50)
    assert ours.timesteps == paper.timesteps == tuple(int(t) for t in scheduler.timesteps)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 1, 4, 16, 16, generator=g)
    paper_differs = 0
    for t in ours.timesteps:
        theirs = scheduler.step(out, t, x, return_dict=False)[0]
        assert torch.equal(ours.step(out, t, x), theirs), t
        paper_differs += not torch.equal(paper.step(out, t, x), theirs)
        if prediction == "epsilon":
            assert torch.equal(ours.inverse_step(out, t, x), _inv_step(scheduler, out, t, x)), t
    # Paper mode's float64 coefficients round differently (why GoodDrag has its own).
    assert paper_differs > 0


def test_step_is_differentiable_and_its_last_step_uses_the_final_alpha() -> None:
    scheduler = DDIMScheduler(**SD15_SCHEDULER)
    scheduler.set_timesteps(10)
    ours = Float32Schedule.from_scheduler(scheduler, 10)
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = ours.step(torch.randn(1, 4, 8, 8), 701, z)
    out.abs().sum().backward()
    assert out.dtype == torch.float32 and z.grad is not None and z.grad.abs().sum() > 0
    # The last step (to t < 0) uses final_alpha_cumprod, as diffusers does.
    last = ours.step(torch.zeros(1, 4, 8, 8), 1, torch.ones(1, 4, 8, 8))
    ref = scheduler.step(torch.zeros(1, 4, 8, 8), 1, torch.ones(1, 4, 8, 8), return_dict=False)
    assert torch.equal(last, ref[0])
