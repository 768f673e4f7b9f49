"""Reference-latent-control: the edited rows attend to the reference rows' keys and values."""

from __future__ import annotations

import pytest
import torch

from backend.attention import ReferenceAttnProcessor, controlled_layer_names, reference_control


@pytest.fixture
def attn():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=16, heads=2, dim_head=8).eval()


def _manual(attn, queries_from: torch.Tensor, kv_from: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention written out: softmax(QKᵀ/√d)V, then the output projection."""
    q, k, v = attn.to_q(queries_from), attn.to_k(kv_from), attn.to_v(kv_from)
    b, n, _ = q.shape
    heads, d = attn.heads, q.shape[-1] // attn.heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, -1, heads, d).transpose(1, 2)

    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d**0.5, dim=-1)
    out = (w @ split(v)).transpose(1, 2).reshape(b, n, heads * d)
    return attn.to_out[0](out)


def test_identical_rows_in_give_identical_rows_out(attn) -> None:
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        out = ReferenceAttnProcessor()(attn, torch.cat([x, x]))
        plain = attn(x)
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[:1], plain, rtol=1e-5, atol=1e-6)


def test_edited_row_reads_the_reference_keys_and_values(attn) -> None:
    ref, edited = torch.randn(1, 12, 16), torch.randn(1, 12, 16)
    with torch.no_grad():
        out = ReferenceAttnProcessor()(attn, torch.cat([ref, edited]))
        expected_edit = _manual(attn, edited, ref)
        plain_edit = attn(edited)
        plain_ref = attn(ref)
    torch.testing.assert_close(out[1:], expected_edit, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:1], plain_ref, rtol=1e-5, atol=1e-6)  # reference untouched
    assert not torch.allclose(out[1:], plain_edit, atol=1e-3)  # control changed the edited row


def test_grouped_batches_keep_each_reference(attn) -> None:
    """[ref_a, ref_b, edit_a, edit_b]: edit_a reads ref_a, edit_b reads ref_b (CFG halves)."""
    ra, rb, ea, eb = (torch.randn(1, 6, 16) for _ in range(4))
    with torch.no_grad():
        out = ReferenceAttnProcessor()(attn, torch.cat([ra, rb, ea, eb]))
        torch.testing.assert_close(out[2:3], _manual(attn, ea, ra), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[3:4], _manual(attn, eb, rb), rtol=1e-5, atol=1e-6)


def test_controls_the_last_two_decoder_blocks_self_attention_only() -> None:
    from backend.tiny import build_tiny_pipeline

    unet = build_tiny_pipeline().unet
    names = controlled_layer_names(unet, (2, 3))
    # SD-1.5 has 16 transformer blocks; up_blocks[2] and [3] hold the 10th–15th (6 of them).
    assert len([n for n in unet.attn_processors if n.endswith("attn1.processor")]) == 16
    assert len(names) == 6
    assert all(n.startswith(("up_blocks.2.", "up_blocks.3.")) and "attn1" in n for n in names)

    before = dict(unet.attn_processors)
    with reference_control(unet, (2, 3)):
        during = unet.attn_processors
        assert all(isinstance(during[n], ReferenceAttnProcessor) for n in names)
        assert all(during[n] is before[n] for n in before if n not in names)
    after = unet.attn_processors
    assert all(after[n] is before[n] for n in before)


def test_processors_are_restored_when_denoising_fails() -> None:
    from backend.tiny import build_tiny_pipeline

    unet = build_tiny_pipeline().unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError), reference_control(unet, (2, 3)):
        raise RuntimeError("boom")
    assert all(unet.attn_processors[n] is before[n] for n in before)
