"""Reference-latent-control (paper §3.4) through diffusers' attention-processor API.

While the batch ``[reference rows…, edited rows…]`` is denoised, the self-attention layers of the
chosen decoder blocks let every row's queries attend to the keys and values of its reference row,
so the edited image borrows the original's content and texture. Cross-attention is left alone.
The processors are installed with ``unet.set_attn_processor`` and restored in a ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F


class ReferenceKV:
    """Keys and values of the reference rows, per layer and denoising step.

    The reference rows' trajectory does not depend on the edit, so it can be recorded once —
    alone (``alone``: the batch holds only the reference rows), before any points exist, or
    from the first half of a ``[reference, edited]`` batch — and replayed (``replay``) while
    only the edited rows are denoised. Recording alone and replaying is the engine's route
    whenever it keeps the recording, so first edits, re-drags and prepared edits run the same
    arithmetic (a batch of one and a batch of two differ in float rounding).
    """

    def __init__(self, *, alone: bool = False) -> None:
        self.step = 0
        self.replay = False
        self.alone = alone
        self.store: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.store.values())


class ReferenceAttnProcessor:
    """Self-attention whose keys/values come from the first half of the batch.

    Row ``i`` of the second half uses the keys and values of row ``i`` of the first half; the
    first half attends to itself, so reference rows are computed exactly as without control.
    With a :class:`ReferenceKV` it records those keys and values, or (``replay``) takes them
    from it while the batch holds only the edited rows; while it records ``alone`` the batch
    holds only reference rows, which attend to themselves.
    """

    def __init__(self, name: str = "", kv: ReferenceKV | None = None) -> None:
        self.name = name
        self.kv = kv

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("reference-latent-control applies to self-attention only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        slot = (self.name, self.kv.step) if self.kv is not None else None
        if self.kv is not None and self.kv.replay:
            ref_key, ref_value = self.kv.store[slot]  # type: ignore[index]
            if ref_key.shape[0] != batch:
                raise RuntimeError("replayed reference does not match the edited rows")
            key, value = ref_key, ref_value
        elif self.kv is not None and self.kv.alone:
            key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
            self.kv.store[slot] = (key, value)  # type: ignore[index]
        else:
            if batch % 2:
                raise RuntimeError("reference-latent-control needs [reference, edited] batches")
            reference = hidden_states[: batch // 2]
            ref_key, ref_value = attn.to_k(reference), attn.to_v(reference)
            if self.kv is not None:
                self.kv.store[slot] = (ref_key, ref_value)  # type: ignore[index]
            key, value = ref_key.repeat(2, 1, 1), ref_value.repeat(2, 1, 1)
        heads = attn.heads
        head_dim = key.shape[-1] // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        query, key, value = split(query), split(key), split(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))

        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        result: torch.Tensor = out / attn.rescale_output_factor
        return result


def controlled_layer_names(unet: Any, blocks: Iterable[int]) -> list[str]:
    """Processor names of the self-attention (``attn1``) layers in ``up_blocks[blocks]``."""
    prefixes = tuple(f"up_blocks.{b}." for b in blocks)
    return [
        name
        for name in unet.attn_processors
        if name.startswith(prefixes) and name.endswith("attn1.processor")
    ]


@contextmanager
def reference_control(
    unet: Any, blocks: Iterable[int], kv: ReferenceKV | None = None
) -> Iterator[list[str]]:
    """Install :class:`ReferenceAttnProcessor` in the chosen blocks; restore on exit."""
    original = dict(unet.attn_processors)
    names = controlled_layer_names(unet, blocks)
    try:
        unet.set_attn_processor(
            {
                name: (ReferenceAttnProcessor(name, kv) if name in names else proc)
                for name, proc in original.items()
            }
        )
        yield names
    finally:
        unet.set_attn_processor(original)
