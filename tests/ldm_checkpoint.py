"""Write a diffusers SD pipeline as ONE original-LDM (A1111-style) ``.safetensors`` checkpoint.

Test-only. SD-1.5 fine-tunes (Counterfeit-V2.5 and friends) ship as a single file in the layout
of the original CompVis code: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE)
and ``cond_stage_model.transformer.*`` (CLIP text encoder). No such file can be downloaded here,
so tests make one from the tiny random pipeline and check that ``from_single_file`` reads it back
to the same weights. The mapping is the inverse of diffusers' own conversion, written from the
LDM module layout rather than copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

# diffusers ResnetBlock2D names -> LDM ResBlock names (UNet).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# diffusers VAE Attention names -> LDM AttnBlock names (1×1 convolutions there).
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    """Rename the first dotted component(s) of ``rest`` (module.param) through ``table``."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_key_to_ldm(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """Map one diffusers UNet2DConditionModel key to its LDM ``UNetModel`` key.

    LDM numbers every layer of the UNet in one flat list: ``input_blocks`` holds conv_in, then per
    down block ``layers_per_block`` [ResBlock, SpatialTransformer?] pairs and a Downsample;
    ``output_blocks`` holds ``layers_per_block + 1`` layers per up block, the last of which also
    carries the Upsample (after the transformer, if there is one).
    """
    parts = key.split(".")
    stride = layers_per_block + 1
    head = _rename_head(key, _UNET_TOP)
    if head != key:
        return head
    if parts[0] == "down_blocks":
        block = int(parts[1])
        if parts[2] == "downsamplers":  # down_blocks.b.downsamplers.0.conv.*
            return f"input_blocks.{1 + block * stride + layers_per_block}.0.op." + parts[-1]
        layer = int(parts[3])
        index = 1 + block * stride + layer
        rest = ".".join(parts[4:])
        if parts[2] == "resnets":
            return f"input_blocks.{index}.0." + _rename_head(rest, _UNET_RESNET)
        return f"input_blocks.{index}.1." + rest  # attentions: same names inside
    if parts[0] == "mid_block":
        layer = int(parts[2])
        rest = ".".join(parts[3:])
        if parts[1] == "resnets":  # resnet, attention, resnet
            return f"middle_block.{2 * layer}." + _rename_head(rest, _UNET_RESNET)
        return "middle_block.1." + rest
    if parts[0] == "up_blocks":
        block = int(parts[1])
        if parts[2] == "upsamplers":
            slot = 2 if up_has_attention[block] else 1
            return f"output_blocks.{block * stride + layers_per_block}.{slot}.conv." + parts[-1]
        index = block * stride + int(parts[3])
        rest = ".".join(parts[4:])
        if parts[2] == "resnets":
            return f"output_blocks.{index}.0." + _rename_head(rest, _UNET_RESNET)
        return f"output_blocks.{index}.1." + rest
    raise KeyError(f"no LDM name for UNet key {key!r}")


def vae_key_to_ldm(key: str, num_blocks: int) -> str:
    """Map one diffusers AutoencoderKL key to its LDM ``AutoencoderKL`` key.

    The LDM decoder numbers its up blocks from the lowest resolution upwards in reverse
    (``up.{n-1}`` runs first), unlike diffusers' ``up_blocks.0``.
    """
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    coder, rest = parts[0], parts[1:]  # encoder / decoder
    if rest[0] in ("conv_in", "conv_out"):
        return key
    if rest[0] == "conv_norm_out":
        return f"{coder}.norm_out.{rest[-1]}"
    if rest[0] in ("down_blocks", "up_blocks"):
        block = int(rest[1])
        ldm_block = f"down.{block}" if rest[0] == "down_blocks" else f"up.{num_blocks - 1 - block}"
        if rest[2] in ("downsamplers", "upsamplers"):
            kind = "downsample" if rest[2] == "downsamplers" else "upsample"
            return f"{coder}.{ldm_block}.{kind}.conv.{rest[-1]}"
        inner = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
        return f"{coder}.{ldm_block}.block.{rest[3]}.{inner}"
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            inner = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.mid.block_{int(rest[2]) + 1}.{inner}"
        return f"{coder}.mid.attn_1." + _rename_head(".".join(rest[3:]), _VAE_ATTENTION)
    raise KeyError(f"no LDM name for VAE key {key!r}")


def pipeline_to_ldm_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """One LDM-layout state dict holding ``pipe``'s UNet, VAE and text encoder."""
    out: dict[str, torch.Tensor] = {}

    def put(key: str, value: torch.Tensor) -> None:
        if key in out:
            raise KeyError(f"two weights map to {key!r}")
        out[key] = value.detach().cpu().contiguous()

    unet_cfg = pipe.unet.config
    up_has_attention = ["CrossAttn" in name for name in unet_cfg.up_block_types]
    for key, value in pipe.unet.state_dict().items():
        put(UNET_PREFIX + unet_key_to_ldm(key, unet_cfg.layers_per_block, up_has_attention), value)

    num_vae_blocks = len(pipe.vae.config.down_block_types)
    for key, value in pipe.vae.state_dict().items():
        ldm_key = vae_key_to_ldm(key, num_vae_blocks)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1×1 convolutions
        put(VAE_PREFIX + ldm_key, value)

    text_state = pipe.text_encoder.state_dict()
    for key, value in text_state.items():
        put(CLIP_PREFIX + key.removeprefix("text_model."), value)
    # A1111 files carry CLIP's position_ids buffer; keep it so loaders see a realistic file.
    positions = text_state[
        next(k for k in text_state if k.endswith("embeddings.position_embedding.weight"))
    ].shape[0]
    put(CLIP_PREFIX + "embeddings.position_ids", torch.arange(positions)[None])
    return out


def save_ldm_checkpoint(pipe: Any, path: Path, dtype: torch.dtype | None = None) -> Path:
    """Save ``pipe`` as one LDM-layout ``.safetensors`` file (floats cast to ``dtype`` if given)."""
    from safetensors.torch import save_file

    state = pipeline_to_ldm_state_dict(pipe)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path
