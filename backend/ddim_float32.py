"""DDIM steps with float32 coefficients, in the order diffusers' ``DDIMScheduler.step`` and
GoodDrag's ``inv_step`` compute them: GoodDrag mode's arithmetic.

:class:`~backend.ddim.Schedule` (paper mode) takes each coefficient from float64 (``(1 − ᾱ)`` and
the square roots exact, then rounded once to float32); diffusers and the GoodDrag authors take
them from the float32 ``alphas_cumprod`` tensor (``1 − ᾱ`` rounded in float32 where ᾱ < ½, then
a float32 square root). Both are the same formula; they differ by about one float32 ulp per
coefficient. GoodDrag's loss terms are L1s whose gradient signs rounding decides on differences
near zero, and Adam turns any change of a gradient into a step of about its learning rate, so
that ulp is enough to move the tracked handles by several feature pixels after a few timesteps
(measured on the tiny model with λ = 0.1: up to 4 px from step 21 of 33; docs/engine.md). With
this arithmetic the handle trajectory equals the authors' at every step
(``tests/test_gooddrag.py``). Paper mode keeps :class:`Schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.ddim import Schedule


@dataclass(frozen=True)
class Float32Schedule(Schedule):
    """:class:`Schedule` whose deterministic steps use diffusers' float32 coefficients."""

    def _alpha32(self, t: int) -> torch.Tensor:
        # The float64 copy holds the scheduler's float32 values exactly: this is diffusers'
        # ``alphas_cumprod[t]`` (``final_alpha_cumprod`` below 0), a 0-d float32 CPU tensor.
        if t >= 0:
            return self.alphas_cumprod[t].float()
        return torch.tensor(self.final_alpha_cumprod, dtype=torch.float32)

    def step(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step from ``t`` to ``t - step_ratio`` (eta = 0), term by term
        as ``DDIMScheduler.step`` computes it (its ``std_dev_t`` is 0)."""
        a = self._alpha32(t)
        a_prev = self._alpha32(t - self.step_ratio)
        b = 1 - a
        if self.prediction_type == "epsilon":
            x0 = (sample - b ** (0.5) * model_output) / a ** (0.5)
            eps = model_output
        else:
            x0 = (a**0.5) * sample - (b**0.5) * model_output
            eps = (a**0.5) * model_output + (b**0.5) * sample
        direction = (1 - a_prev) ** (0.5) * eps
        out: torch.Tensor = a_prev ** (0.5) * x0 + direction
        return out

    def inverse_step(
        self, model_output: torch.Tensor, t: int, sample: torch.Tensor
    ) -> torch.Tensor:
        """One DDIM inversion step to ``t``, term by term as GoodDrag's (and DragDiffusion's)
        ``inv_step``: ``x0 = (x − √(1−ᾱ_prev)·ε)/√ᾱ_prev``, ``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε``."""
        a_prev = self._alpha32(t - self.step_ratio)
        a_t = self._alpha32(t)
        if self.prediction_type == "epsilon":
            eps = model_output
        else:
            eps = a_t**0.5 * model_output + (1 - a_t) ** 0.5 * sample
        x0 = (sample - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
        out: torch.Tensor = a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps
        return out
