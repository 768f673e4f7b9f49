"""DIFT features (Tang et al. 2023) for DragBench's Mean Distance, written from the protocol.

An image is encoded with the VAE (a posterior sample per copy, scaled), noised to timestep 261
with fresh noise for each of 8 copies, run through the UNet with the case's prompt, and the
output of ``unet.up_blocks[1]`` is averaged over the copies. The UNet stops right after that
block: the rest of the decoder would only be thrown away.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

DEFAULT_DIFT_MODEL = "stabilityai/stable-diffusion-2-1"
TIMESTEP = 261
UP_FT_INDEX = 1
ENSEMBLE = 8


class _Stop(Exception):
    pass


class DiftFeaturizer:
    """Features of one loaded SD pipeline; the noise generator advances over calls (fresh noise
    for every copy of every image) but is seeded, so a run is reproducible."""

    def __init__(
        self,
        pipe: Any,
        *,
        timestep: int = TIMESTEP,
        up_ft_index: int = UP_FT_INDEX,
        ensemble: int = ENSEMBLE,
        seed: int = 0,
        batch: int = 8,
    ) -> None:
        self.pipe = pipe
        self.timestep = timestep
        self.up_ft_index = up_ft_index
        self.ensemble = ensemble
        self.batch = max(1, batch)
        self.device = pipe.unet.device
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self._text: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, spec: str, device: torch.device, **kwargs: Any) -> DiftFeaturizer:
        """Load ``spec`` (hub id, diffusers folder or .safetensors) in float32, as DIFT does."""
        from backend.models import load_pipeline

        pipe, _ = load_pipeline(spec, device, torch.float32)
        return cls(pipe, **kwargs)

    @torch.no_grad()
    def _embed(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text:
            from backend.models import encode_prompt

            self._text[prompt] = encode_prompt(self.pipe, prompt).float()
        return self._text[prompt]

    def _randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    @torch.no_grad()
    def _block_output(self, latents: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> Any:
        unet = self.pipe.unet
        box: dict[str, torch.Tensor] = {}

        def hook(_m: Any, _i: Any, out: Any) -> None:
            box["ft"] = out[0] if isinstance(out, tuple) else out
            raise _Stop

        handle = unet.up_blocks[self.up_ft_index].register_forward_hook(hook)
        try:
            unet(latents, t, encoder_hidden_states=emb)
        except _Stop:
            pass
        finally:
            handle.remove()
        return box["ft"]

    @torch.no_grad()
    def __call__(self, image: np.ndarray, prompt: str) -> torch.Tensor:
        """``H×W×3`` uint8 → ``(1, C, h, w)`` float32 features (not yet upsampled)."""
        vae, unet = self.pipe.vae, self.pipe.unet
        x = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 127.5 - 1.0
        x = x.to(self.device, vae.dtype)
        emb = self._embed(prompt).to(unet.dtype)
        t = torch.tensor(self.timestep, dtype=torch.long, device=self.device)
        scale = float(vae.config.scaling_factor)
        # The encoder is deterministic: encode once, then draw each copy's posterior sample and
        # noise (all up front, so the batch size does not change which draws a copy gets).
        dist = vae.encode(x).latent_dist
        shape = (self.ensemble, *dist.mean.shape[1:])
        eps, noise = self._randn(shape), self._randn(shape)
        latents = (dist.mean + dist.std * eps.to(dist.mean.dtype)) * scale
        noisy = self.pipe.scheduler.add_noise(latents, noise.to(latents.dtype), t.expand(shape[0]))
        total: torch.Tensor | None = None
        for i in range(0, self.ensemble, self.batch):
            chunk = noisy[i : i + self.batch].to(unet.dtype)
            ft = self._block_output(chunk, t, emb.expand(chunk.shape[0], -1, -1)).float()
            part = ft.sum(0, keepdim=True)
            total = part if total is None else total + part
        assert total is not None
        return total / self.ensemble
