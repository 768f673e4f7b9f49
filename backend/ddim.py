"""Deterministic DDIM arithmetic shared by inversion, the mask term and denoising.

Written out rather than borrowed from ``DDIMScheduler.step`` so that inversion (which walks the
schedule backwards and evaluates the noise at the *next* timestep, as the authors do) and the
differentiable one-step denoise of the mask term use exactly the same formulas, for both epsilon
and v-prediction models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    """The DDIM timesteps of one run and the cumulative alphas they index."""

    alphas_cumprod: torch.Tensor  # float64 on CPU, indexed by training timestep
    final_alpha_cumprod: float
    timesteps: tuple[int, ...]  # descending, e.g. (981, 961, ..., 1)
    step_ratio: int
    prediction_type: str

    @classmethod
    def from_scheduler(cls, scheduler: object, num_inference_steps: int) -> Schedule:
        config = scheduler.config  # type: ignore[attr-defined]
        ac = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)  # type: ignore[attr-defined]
        train_steps = int(config.num_train_timesteps)
        if num_inference_steps > train_steps:
            raise ValueError("more DDIM steps than training timesteps")
        ratio = train_steps // num_inference_steps
        offset = int(getattr(config, "steps_offset", 0) or 0)
        steps = [i * ratio + offset for i in range(num_inference_steps)]
        final = 1.0 if getattr(config, "set_alpha_to_one", False) else float(ac[0])
        prediction = str(getattr(config, "prediction_type", "epsilon"))
        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction type {prediction!r}")
        return cls(ac, final, tuple(reversed(steps)), ratio, prediction)

    def alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def start_index(self, inversion_steps: int) -> int:
        """Index into :attr:`timesteps` of the latent that ``inversion_steps`` inversions reach."""
        return len(self.timesteps) - inversion_steps

    def split(
        self, model_output: torch.Tensor, sample: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(eps, x0)`` from a model output evaluated at timestep ``t`` on ``sample``."""
        a = self.alpha(t)
        sa, s1a = a**0.5, (1.0 - a) ** 0.5
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (sample - s1a * eps) / sa
        else:
            x0 = sa * sample - s1a * model_output
            eps = sa * model_output + s1a * sample
        return eps, x0

    def step(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step from ``t`` to ``t - step_ratio`` (eta = 0)."""
        eps, x0 = self.split(model_output, sample, t)
        a_prev = self.alpha(t - self.step_ratio)
        out: torch.Tensor = a_prev**0.5 * x0 + (1.0 - a_prev) ** 0.5 * eps
        return out

    def inverse_step(
        self, model_output: torch.Tensor, t: int, sample: torch.Tensor
    ) -> torch.Tensor:
        """One DDIM inversion step to timestep ``t`` from ``t - step_ratio``.

        The model output is evaluated at ``t`` on the current (less noisy) sample, the standard
        approximation of DDIM inversion.
        """
        prev = t - self.step_ratio
        a_prev, a_t = self.alpha(prev), self.alpha(t)
        if self.prediction_type == "epsilon":
            eps = model_output
        else:
            # v at timestep t on this sample: recover eps with t's alpha.
            eps = a_t**0.5 * model_output + (1.0 - a_t) ** 0.5 * sample
        x0 = (sample - (1.0 - a_prev) ** 0.5 * eps) / a_prev**0.5
        out: torch.Tensor = a_t**0.5 * x0 + (1.0 - a_t) ** 0.5 * eps
        return out

    def add_noise(
        self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        a = self.alphas_cumprod.to(x0.device)[timesteps.to(x0.device)].to(x0.dtype)
        a = a.view(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        a = self.alphas_cumprod.to(x0.device)[timesteps.to(x0.device)].to(x0.dtype)
        a = a.view(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * noise - (1 - a).sqrt() * x0
