"""Motion supervision and point tracking do what the paper says, on constructed features."""

from __future__ import annotations

import torch

from backend.drag import (
    _patch,
    active_handles,
    motion_supervision_loss,
    read_at,
    sample_bilinear,
    track_points,
)


def test_bilinear_sampling_matches_integer_reads_and_interpolates() -> None:
    feats = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    pts = torch.tensor([[0.0, 0.0], [6.0, 4.0], [3.0, 2.0]])
    torch.testing.assert_close(sample_bilinear(feats, pts), read_at(feats, pts))
    half = sample_bilinear(feats, torch.tensor([[2.5, 1.0]]))
    torch.testing.assert_close(half, (read_at(feats, torch.tensor([[2, 1]])) + 0.5))


def test_patch_is_clipped_to_the_map() -> None:
    assert _patch(torch.tensor([5.0, 5.0]), 1, 10, 10).shape == (9, 2)
    corner = _patch(torch.tensor([0.0, 0.0]), 3, 10, 10)
    assert corner.shape == (16, 2) and corner.min() == 0


def test_tracking_recovers_a_known_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    f0 = torch.randn(1, 16, 40, 40, generator=gen)
    shift = (2, -3)  # content moves right by 2 and up by 3 feature pixels
    f1 = torch.roll(f0, shifts=(shift[1], shift[0]), dims=(2, 3))
    handles = torch.tensor([[20.0, 20.0], [10.0, 30.0]])
    reference = read_at(f0, handles)
    tracked = track_points(f1, reference, handles, r2=3)
    expected = handles + torch.tensor([float(shift[0]), float(shift[1])])
    torch.testing.assert_close(tracked, expected)


def test_tracking_stays_within_its_window() -> None:
    gen = torch.Generator().manual_seed(1)
    f0 = torch.randn(1, 8, 30, 30, generator=gen)
    f1 = torch.roll(f0, shifts=(0, 6), dims=(2, 3))  # farther than r2
    handles = torch.tensor([[12.0, 12.0]])
    tracked = track_points(f1, read_at(f0, handles), handles, r2=3)
    assert (tracked - handles).abs().max() <= 3


def _blob(center: tuple[float, float], size: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cx, cy = center
    g = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 3.0**2))
    # Two channels so the L1 mean over channels is exercised.
    return torch.stack([g, 0.5 * g]).unsqueeze(0)


def _centroid(f: torch.Tensor) -> torch.Tensor:
    w = f[0, 0].clamp(min=0)
    y, x = torch.meshgrid(torch.arange(w.shape[0]), torch.arange(w.shape[1]), indexing="ij")
    return torch.stack([(w * x).sum() / w.sum(), (w * y).sum() / w.sum()])


def test_motion_supervision_gradient_moves_content_towards_the_target() -> None:
    feats = _blob((12.0, 16.0)).requires_grad_(True)
    handles = torch.tensor([[12.0, 16.0]])
    targets = torch.tensor([[24.0, 16.0]])  # to the right
    before = _centroid(feats.detach())
    opt = torch.optim.SGD([feats], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        motion_supervision_loss(feats, handles, targets, r1=1, stop=2.0).backward()
        opt.step()
    after = _centroid(feats.detach())
    assert after[0] - before[0] > 0.05  # moved along d = +x
    assert abs(after[1] - before[1]) < 0.3 * (after[0] - before[0])  # and not sideways


def test_arrived_handles_stop_contributing() -> None:
    feats = _blob((12.0, 16.0)).requires_grad_(True)
    handles = torch.tensor([[12.0, 16.0]])
    near = torch.tensor([[13.0, 16.0]])  # 1 px away < stop distance 2
    loss = motion_supervision_loss(feats, handles, near, r1=1, stop=2.0)
    assert float(loss) == 0.0
    assert not bool(active_handles(handles, near, 2.0).any())
    far = torch.tensor([[20.0, 16.0]])
    assert float(motion_supervision_loss(feats, handles, far, r1=1, stop=2.0)) > 0
