"""A small, complete project (history, mask, dangling point, LoRA) for project-file tests."""

from __future__ import annotations

import numpy as np

from backend.document import HistoryEntry, Pair
from backend.project import BundledLora, Project, sha256_pixels
from backend.request import DragParams, LoraParams

KEY = "ab" * 32


def lora_bytes(params: LoraParams, key: str = KEY, seed: int = 0) -> bytes:
    import torch

    from backend.lora import lora_to_bytes

    g = torch.Generator().manual_seed(seed)
    state = {
        "down_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 8, generator=g),
        "down_blocks.0.attn.to_q.lora_B.weight": torch.randn(8, 4, generator=g).half(),
    }
    return lora_to_bytes(state, params, key)


def sample_project(with_lora: bool = True, size: tuple[int, int] = (40, 32)) -> Project:
    w, h = size
    rng = np.random.default_rng(7)
    photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    r1 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    r2 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.random((h, w)) > 0.5
    params = DragParams(working_width=128, inference_steps=10, drag_steps=3, lam=0.25)
    lora = LoraParams(steps=1, batch_size=1, rank=4, seed=9)
    e1 = HistoryEntry(photo, r1, (Pair((1.5, 2.25), (3.0, 4.0)),), "a cat ñ", params, lora,
                      "tiny", 1.25, False, ((2.5, 3.5),))  # fmt: skip
    two = (Pair((5.0, 6.0), (7.0, 8.0)), Pair((9.0, 10.0), (11.0, 12.0)))
    e2 = HistoryEntry(r1, r2, two, "a cat ñ", params, lora, "tiny", 0.5, True,
                      ((6.0, 7.0), (10.0, 11.0)))  # fmt: skip
    bundled = None
    if with_lora:
        bundled = BundledLora(KEY, lora, lora_bytes(lora), sha256_pixels(photo), "a cat ñ", "tiny")
    return Project(
        original=photo,
        mask=mask,
        pairs=(Pair((0.0, 0.0), (w - 1.0, h - 1.0)), Pair((12.5, 13.5), None)),
        prompt="a cat ñ",
        params=params,
        lora_params=lora,
        model="tiny",
        history=(e1, e2),
        lora=bundled,
    )


def assert_same_project(a: Project, b: Project) -> None:
    """Every field, pixels and LoRA bytes exactly."""
    assert np.array_equal(a.original, b.original) and a.original.dtype == b.original.dtype
    assert (a.mask is None) == (b.mask is None)
    if a.mask is not None:
        assert np.array_equal(a.mask, b.mask)
    assert a.pairs == b.pairs
    assert (a.prompt, a.params, a.lora_params, a.model) == (b.prompt, b.params, b.lora_params,
                                                            b.model)  # fmt: skip
    assert len(a.history) == len(b.history)
    for x, y in zip(a.history, b.history, strict=True):
        assert np.array_equal(x.before, y.before) and np.array_equal(x.after, y.after)
        assert (x.pairs, x.prompt, x.params, x.lora, x.model) == (
            y.pairs, y.prompt, y.params, y.lora, y.model)  # fmt: skip
        assert (x.seconds, x.lora_reused, x.final_handles) == (
            y.seconds, y.lora_reused, y.final_handles)  # fmt: skip
    assert (a.lora is None) == (b.lora is None)
    if a.lora is not None and b.lora is not None:
        assert a.lora.data == b.lora.data
        for name in ("key", "params", "image_sha256", "prompt", "model"):
            assert getattr(a.lora, name) == getattr(b.lora, name)
