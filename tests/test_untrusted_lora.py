"""A project's LoRA and the LoRA cache (issue 13, items 5, 9, 10).

The cache is an optimisation: failing to write it never costs the edit. A project's bundled
LoRA never enters the shared cache, and one that parses but cannot be used (NaN, lying
shape, wrong keys, bad metadata) is named and retrained instead of aborting or being used.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.engine import Engine
from backend.lora import install_bundled, lora_from_bytes, lora_to_bytes
from backend.lora_cache import LoraCache
from backend.project import LORA, BundledLora, sha256_pixels
from backend.request import DragParams, DragRequest, LoraParams, PointPair
from dragstudio.runner import EngineHost

FAST = DragParams(working_width=128, inference_steps=10, drag_steps=2)
FAST_LORA = LoraParams(steps=1, batch_size=1, resolution=128)


def _request(photo: np.ndarray, model: Path) -> DragRequest:
    h, w = photo.shape[:2]
    return DragRequest(image=photo, pairs=(PointPair((w * 0.3, h * 0.5), (w * 0.6, h * 0.5)),),
                       prompt="a photo", params=FAST, lora=FAST_LORA, model=str(model))  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path) -> tuple[Engine, str, dict[str, torch.Tensor]]:
    """A real adapter for the request, trained once for the module."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (64, 64, 3), np.uint8)
    eng = Engine("cpu")
    eng.edit(_request(photo, tiny_model_dir))
    info = eng.current_lora
    assert info is not None
    return eng, info.key, {k: v.clone() for k, v in info.state.items()}


def _photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)


def _bundle(key: str, data: bytes) -> BundledLora:
    return BundledLora(key, FAST_LORA, data, sha256_pixels(_photo()), "a photo", "tiny")


def _lie_about_shape(data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    shape = header[name]["shape"]
    header[name]["shape"] = [shape[0] * 2, *shape[1:]]  # offsets no longer match
    raw = json.dumps(header).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def _variants(key: str, state: dict[str, torch.Tensor]) -> dict[str, tuple[bytes, str]]:
    nan = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    renamed = {k.replace("to_q", "to_z"): v for k, v in state.items()}
    ints = {k: v.to(torch.int32) for k, v in state.items()}
    good = lora_to_bytes(state, FAST_LORA, key)
    bad_meta = good.replace(b'"params":"{', b'"params":"[', 1)
    return {
        "nan": (lora_to_bytes(nan, FAST_LORA, key), "NaN"),
        "wrong keys": (lora_to_bytes(renamed, FAST_LORA, key), "weights"),
        "integer dtype": (lora_to_bytes(ints, FAST_LORA, key), "floating"),
        "lying shape": (_lie_about_shape(good), LORA),
        "bad metadata": (bad_meta, LORA),
        "other params": (lora_to_bytes(state, replace(FAST_LORA, rank=8), key), "parameters"),
    }


@pytest.mark.parametrize(
    "case", ["nan", "wrong keys", "integer dtype", "lying shape", "bad metadata", "other params"]
)
def test_an_unusable_bundled_lora_is_named_and_retrained(case, trained, tiny_model_dir) -> None:
    eng, key, state = trained
    data, words = _variants(key, state)[case]
    eng.forget_lora()
    report = install_bundled(eng, _bundle(key, data), _request(_photo(), tiny_model_dir))
    assert report["used"] is False and LORA in report["why"] and words in report["why"]
    assert eng.current_lora is None  # nothing half-installed
    result = eng.edit(_request(_photo(), tiny_model_dir))
    assert result.trace.lora.source == "trained"
    assert np.isfinite(result.image.astype(float)).all() and result.image.std() > 0


def test_a_good_bundled_lora_is_used_from_memory(trained, tiny_model_dir) -> None:
    eng, key, state = trained
    eng.forget_lora()
    data = lora_to_bytes(state, FAST_LORA, key)
    report = install_bundled(eng, _bundle(key, data), _request(_photo(), tiny_model_dir))
    assert report == {"bundled": True, "used": True}
    assert eng.edit(_request(_photo(), tiny_model_dir)).trace.lora.source == "memory"


def test_a_cache_that_cannot_be_written_warns_and_the_edit_finishes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder")
    eng = Engine("cpu", lora_cache=LoraCache(blocker))
    result = eng.edit(_request(_photo(), tiny_model_dir))
    lora = result.trace.lora
    assert lora.source == "trained" and "could not store" in lora.cache_warning
    assert result.image.shape == (64, 64, 3)


def test_disk_full_while_caching_still_finishes(tiny_model_dir, tmp_path, monkeypatch) -> None:
    cache = LoraCache(tmp_path / "lora")

    def full(*_a, **_k) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "put_bytes", full)
    result = Engine("cpu", lora_cache=cache).edit(_request(_photo(), tiny_model_dir))
    assert "No space left" in result.trace.lora.cache_warning


def test_a_documents_lora_never_serves_another_document(trained, tiny_model_dir, tmp_path):
    """Item 9: the project's LoRA (here: poisoned) goes to the engine's memory for its own
    document only; nothing lands in the shared cache, and an edit without that document
    trains (or finds what this machine trained) instead of reusing it."""
    _eng, key, state = trained
    cache = LoraCache(tmp_path / "lora")
    poisoned = {k: v * 0 + 0.5 for k, v in state.items()}  # finite, usable, wrong
    bundle = _bundle(key, lora_to_bytes(poisoned, FAST_LORA, key))
    host = EngineHost(lambda: Engine("cpu", lora_cache=cache))
    request = _request(_photo(), tiny_model_dir)

    async def run(with_bundle: bool):
        host.document_lora = (lambda: bundle) if with_bundle else None
        return await host.run_edit(request)

    try:
        first = asyncio.run(run(True))
        assert first.ok and host.bundled_report == {"bundled": True, "used": True}
        assert first.value.trace.lora.source == "memory"
        assert cache.read_bytes(key) is None  # the shared cache never saw it
        second = asyncio.run(run(False))  # another document, same pixels and settings
        assert second.ok and second.value.trace.lora.source == "trained"
        stored, _, _ = lora_from_bytes(cache.read_bytes(key) or b"")
        assert all(torch.equal(stored[k], state[k]) for k in state)  # this machine's own
    finally:
        host.wait_closed()
