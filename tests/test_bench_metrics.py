"""The metric code on cases with known answers: LPIPS of identical images is 0, a known shift is
found as that distance, weights load from torchvision's and lpips's layouts and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.bench import metrics
from backend.bench.lpips import LPIPS, WeightsUnavailable, load_lpips, random_lpips
from backend.request import PointPair


@pytest.fixture(scope="module")
def lpips_net() -> LPIPS:
    return random_lpips(seed=1)


def _noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_lpips_identical_is_zero_and_different_is_positive(lpips_net: LPIPS) -> None:
    a = _noise_image(96, 128)
    b = _noise_image(96, 128, seed=1)
    assert metrics.lpips_distance(lpips_net, a, a) == pytest.approx(0.0, abs=1e-7)
    assert metrics.image_fidelity(lpips_net, a, a) == pytest.approx(1.0, abs=1e-7)
    d_ab = metrics.lpips_distance(lpips_net, a, b)
    assert d_ab > 1e-3
    assert metrics.lpips_distance(lpips_net, b, a) == pytest.approx(d_ab, rel=1e-5)


def test_lpips_brings_edited_image_to_source_size(lpips_net: LPIPS) -> None:
    from PIL import Image

    a = np.asarray(Image.fromarray(_noise_image(24, 32)).resize((128, 96), Image.BILINEAR))
    small = np.asarray(Image.fromarray(a).resize((64, 48), Image.BILINEAR))
    near = metrics.lpips_distance(lpips_net, a, small)
    far = metrics.lpips_distance(lpips_net, a, _noise_image(48, 64, seed=3))
    assert 0 < near < far


def _torchvision_like_state(model: LPIPS) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("features")}
    state["classifier.1.weight"] = torch.zeros(4096, 9216)  # torchvision extras are ignored
    return state


def test_lpips_loads_torchvision_and_lpips_layouts(tmp_path: Path, lpips_net: LPIPS) -> None:
    from safetensors.torch import save_file

    trunk = _torchvision_like_state(lpips_net)
    lins = {k: v.clone() for k, v in lpips_net.state_dict().items() if k.startswith("lin")}
    torch.save(trunk, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(lins, tmp_path / "alex.pth")
    loaded = load_lpips(tmp_path)
    a, b = _noise_image(64, 64), _noise_image(64, 64, seed=2)
    assert metrics.lpips_distance(loaded, a, b) == pytest.approx(
        metrics.lpips_distance(lpips_net, a, b), rel=1e-6
    )
    # One safetensors file in the lpips module's own key layout (net.sliceN.i.*).
    slices = {1: range(0, 2), 2: range(2, 5), 3: range(5, 8), 4: range(8, 10), 5: range(10, 12)}
    module_state = dict(lins)
    for s, idx in slices.items():
        for i in idx:
            for p in ("weight", "bias"):
                if f"features.{i}.{p}" in trunk:
                    module_state[f"net.slice{s}.{i}.{p}"] = trunk[f"features.{i}.{p}"]
    save_file(module_state, str(tmp_path / "one.safetensors"))
    single = load_lpips(tmp_path / "one.safetensors")
    assert metrics.lpips_distance(single, a, b) == pytest.approx(
        metrics.lpips_distance(lpips_net, a, b), rel=1e-6
    )


def test_lpips_without_weights_says_what_is_missing(tmp_path: Path, lpips_net: LPIPS) -> None:
    lins = {k: v for k, v in lpips_net.state_dict().items() if k.startswith("lin")}
    torch.save(lins, tmp_path / "alex.pth")
    with pytest.raises(WeightsUnavailable, match="AlexNet trunk"):
        load_lpips(tmp_path / "alex.pth")
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_lpips(tmp_path / "nowhere")


def test_lpips_refuses_pickled_code(tmp_path: Path) -> None:
    import pickle

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"features.0.weight": Boom()}))
    with pytest.raises(WeightsUnavailable, match="plain tensors"):
        load_lpips(tmp_path / "evil.pth")


def _patch_featurizer(image: np.ndarray, _prompt: str) -> torch.Tensor:
    """Features that identify a pixel by its 7×7 neighbourhood: the exact shift is recoverable."""
    grey = torch.from_numpy(image).float().mean(2)[None, None] / 255.0
    patches = F.unfold(F.pad(grey, (3, 3, 3, 3), mode="reflect"), 7)
    patches = patches - patches.mean(1, keepdim=True)
    return patches.reshape(1, 49, *image.shape[:2])


def test_shift_by_known_offset_gives_that_distance() -> None:
    source = _noise_image(64, 80, seed=4)
    dx, dy = 7, -5
    edited = np.roll(source, shift=(dy, dx), axis=(0, 1))
    handles = [(20.0, 30.0), (50.0, 40.0), (33.0, 25.0)]
    # Targets where the content really went: distance 0.
    moved = tuple(PointPair(h, (h[0] + dx, h[1] + dy)) for h in handles)
    res = metrics.drag_distances(_patch_featurizer, source, edited, moved, "")
    assert res.final_handles == [(int(x + dx), int(y + dy)) for x, y in handles]
    assert res.distances == [0.0, 0.0, 0.0]
    # Targets left where the handles were: each distance is the offset's length.
    still = tuple(PointPair(h, h) for h in handles)
    res = metrics.drag_distances(_patch_featurizer, source, edited, still, "")
    assert res.distances == pytest.approx([float(np.hypot(dx, dy))] * 3)


def test_chunked_cosine_equals_full_upsampled_cosine(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    ft_s = torch.randn(1, 300, 9, 11, generator=gen)
    ft_e = torch.randn(1, 300, 9, 11, generator=gen)
    size = (45, 53)
    handles = [(0.0, 0.0), (52.0, 44.0), (17.4, 30.6)]
    monkeypatch.setattr(metrics, "CHANNEL_CHUNK", 64)
    got = metrics.track_handles(ft_s, ft_e, handles, size)
    up_s = F.interpolate(ft_s, size=size, mode="bilinear", align_corners=False)
    up_e = F.interpolate(ft_e, size=size, mode="bilinear", align_corners=False)
    want = []
    for x, y in handles:
        vec = up_s[:, :, round(y), round(x)][:, :, None, None]
        cos = torch.nn.CosineSimilarity(dim=1)(vec, up_e)[0]
        r, c = np.unravel_index(int(cos.argmax()), cos.shape)
        want.append((int(c), int(r)))
    assert got == want


def test_unmasked_kept_measures_pixels_outside_the_mask() -> None:
    src = _noise_image(32, 32)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    inside_only = src.copy()
    inside_only[mask] = 0
    assert metrics.unmasked_kept(src, inside_only, mask) == 1.0
    everywhere = (255 - src).astype(np.uint8)
    assert metrics.unmasked_kept(src, everywhere, mask) < 0.1
    assert metrics.unmasked_kept(src, src, np.zeros((32, 32), bool)) is None


def test_dift_on_tiny_model(tiny_model_dir: Path) -> None:
    from backend.bench.dift import DiftFeaturizer

    dift = DiftFeaturizer.load(str(tiny_model_dir), torch.device("cpu"), ensemble=3, batch=2)
    image = _noise_image(100, 72)  # not a multiple of 8, as some DragBench images
    a = dift(image, "a photo")
    channels = dift.pipe.unet.up_blocks[1].resnets[-1].out_channels
    assert a.shape[:2] == (1, channels) and a.shape[2] >= 100 // 16  # 1/16: up_blocks[1]
    assert torch.isfinite(a).all()
    b = dift(image, "a photo")
    assert not torch.equal(a, b)  # fresh noise each call
    again = DiftFeaturizer.load(str(tiny_model_dir), torch.device("cpu"), ensemble=3, batch=3)
    assert torch.allclose(again(image, "a photo"), a, atol=1e-4)  # seeded: reproducible
