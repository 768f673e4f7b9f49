"""UNet decoder features: one UNet pass gives both the noise prediction and the feature map F.

DragDiffusion supervises motion on the output of decoder block ``up_blocks[2]`` (640 channels at
64×64 for SD-1.5 at 512²), resized bilinearly to half the image resolution. A forward hook reads
that output during the ordinary UNet call, so the noise prediction needed by the mask term comes
from the same pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F


@contextmanager
def capture_block_output(unet: Any, block: int) -> Iterator[list[torch.Tensor]]:
    """Collect the output of ``unet.up_blocks[block]`` for every forward pass in the block."""
    if not 0 <= block < len(unet.up_blocks):
        raise ValueError(f"the UNet has {len(unet.up_blocks)} decoder blocks, not {block + 1}")
    captured: list[torch.Tensor] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = unet.up_blocks[block].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def unet_with_features(
    unet: Any,
    latents: torch.Tensor,
    t: int,
    text_embeddings: torch.Tensor,
    block: int,
    feature_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the UNet once; return ``(model_output, features)`` with features at ``feature_size``.

    ``feature_size`` is ``(height, width)``. Features are returned in float32 whatever the
    UNet's precision, so losses and tracking are computed in full precision.
    """
    with capture_block_output(unet, block) as captured:
        out = unet(latents, t, encoder_hidden_states=text_embeddings, return_dict=False)[0]
    feats = F.interpolate(captured[-1].float(), size=feature_size, mode="bilinear")
    return out, feats
