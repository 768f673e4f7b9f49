"""Tiny Stable-Diffusion-shaped pipelines with random weights, for tests and smoke runs.

No machine here can download SD-1.5, so tests run the real code paths on a model with SD-1.5's
*structure* — four down and four up blocks of SD-1.5's types, two layers per block, sixteen
transformer blocks, the same ``up_blocks`` indices, an 8× VAE and SD-1.5's DDIM scheduler — but
tiny channel widths. A feature block or attention layer chosen for SD-1.5 means the same thing
here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# SD-1.5's scheduler, exactly (method-facts.md).
SD15_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def _tokenizer() -> Any:
    """A CLIP tokenizer over a byte-level vocabulary, built in memory (no download)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_vae() -> Any:
    """An ``AutoencoderKL`` of SD's shape (8× down, 4 latent channels), tiny and random."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=8,
        sample_size=512,
    )


def build_tiny_pipeline(seed: int = 0, *, prediction_type: str = "epsilon") -> Any:
    """Return a ``StableDiffusionPipeline`` with random weights and SD-1.5's block layout."""
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    vae = tiny_vae()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = DDIMScheduler(**{**SD15_SCHEDULER, "prediction_type": prediction_type})
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_model(directory: Path, seed: int = 0, *, prediction_type: str = "epsilon") -> Path:
    """Write a tiny pipeline in diffusers format (safetensors) that loads offline."""
    directory = Path(directory)
    pipe = build_tiny_pipeline(seed, prediction_type=prediction_type)
    directory.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def save_tiny_vae(directory: Path, seed: int = 1) -> Path:
    """Write a tiny random VAE as a diffusers folder: a stand-in for e.g. an ft-MSE VAE."""
    import torch

    torch.manual_seed(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tiny_vae().save_pretrained(directory, safe_serialization=True)
    return directory
