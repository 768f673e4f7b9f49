"""Images the model generated itself (paper appendix C): keep the latents, drag without LoRA.

A generated image needs neither identity-preserving fine-tuning nor inversion: the generation's
own latent at the inversion-strength timestep is the exact starting point, and denoising that
latent again with the same prompts and guidance reproduces the image. With classifier-free
guidance the unconditional and conditional rows travel together through every stage.

This module is the torch-free half (the project reader and the document build
:class:`Generation` on the GUI thread); the sampling itself is in :mod:`backend.sampling`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.errors import InvalidRequest


@dataclass(frozen=True, eq=False)
class Generation:
    """How an image was generated, and every latent of its DDIM trajectory."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    width: int = 512
    height: int = 512
    guidance_scale: float = 7.5
    steps: int = 50
    trajectory: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    """``(steps + 1, 4, height/8, width/8)`` float32: the initial noise, then each step's latent."""

    def validate(self, *, with_trajectory: bool = True) -> None:
        """Check the settings, and (``with_trajectory``) that the kept latents fit them."""

        def check(ok: bool, message: str) -> None:
            if not ok:
                raise InvalidRequest(message)

        check(isinstance(self.prompt, str) and len(self.prompt) <= 2000, "invalid prompt")
        check(isinstance(self.negative_prompt, str) and len(self.negative_prompt) <= 2000,
              "invalid negative prompt")  # fmt: skip
        for name, value, lo, hi in (("width", self.width, 64, 2048),
                                    ("height", self.height, 64, 2048)):  # fmt: skip
            ok = isinstance(value, int) and lo <= value <= hi and value % 8 == 0
            check(ok, f"{name} must be a multiple of 8 between {lo} and {hi}, got {value!r}")
        check(isinstance(self.steps, int) and 2 <= self.steps <= 1000, "steps: 2 to 1000")
        check(isinstance(self.guidance_scale, (int, float)) and 1.0 <= self.guidance_scale <= 50,
              "guidance scale must be between 1 and 50")  # fmt: skip
        check(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "invalid seed")
        if not with_trajectory:
            return
        expected = (self.steps + 1, 4, self.height // 8, self.width // 8)
        t = self.trajectory
        shape = getattr(t, "shape", None)
        ok = isinstance(t, np.ndarray) and t.dtype == np.float32 and shape == expected
        check(ok, f"the kept latents have shape {shape}, expected {expected}")
        check(bool(np.isfinite(t).all()), "the kept latents contain NaN or infinity")

    def settings(self) -> dict[str, Any]:
        """Everything but the trajectory, as plain JSON (a project's manifest and the server's
        wire both store it so)."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": int(self.seed),
            "width": int(self.width),
            "height": int(self.height),
            "guidance_scale": float(self.guidance_scale),
            "steps": int(self.steps),
        }

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0


def feature_weights(guidance_scale: float) -> tuple[float, float]:
    """Weights of the unconditional and conditional feature maps: ``(1 − c, c)``,
    ``c = g / (2g − 1)``, as in the authors' implementation."""
    c = guidance_scale / (2.0 * guidance_scale - 1.0)
    return 1.0 - c, c
