"""Motion supervision and point tracking (paper §3.3, Eqs. 3–5).

Coordinates here are feature-map pixels ``(x, y)``; the engine converts from and to image pixels.
Handles are integer positions (tracking returns grid points), targets may be anything.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _patch(center: torch.Tensor, radius: int, height: int, width: int) -> torch.Tensor:
    """Integer grid positions ``(n, 2)`` as ``(x, y)`` within ``radius`` of ``center``, clipped."""
    cx, cy = round(float(center[0])), round(float(center[1]))
    xs = torch.arange(max(cx - radius, 0), min(cx + radius, width - 1) + 1)
    ys = torch.arange(max(cy - radius, 0), min(cy + radius, height - 1) + 1)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def sample_bilinear(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Features ``(1, C, H, W)`` read at float positions ``(n, 2)`` → ``(n, C)``.

    Pixel centres sit at integer coordinates; outside the map the border value is used.
    """
    _, _, h, w = features.shape
    pts = points.to(features.device, features.dtype)
    gx = pts[:, 0] * (2.0 / max(w - 1, 1)) - 1.0
    gy = pts[:, 1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).view(1, 1, -1, 2)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0, :].transpose(0, 1)


def read_at(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Features ``(1, C, H, W)`` at integer positions ``(n, 2)`` → ``(n, C)``."""
    idx = points.long().to(features.device)
    return features[0, :, idx[:, 1], idx[:, 0]].transpose(0, 1)


def active_handles(handles: torch.Tensor, targets: torch.Tensor, stop: float) -> torch.Tensor:
    """Which handles have not yet arrived (distance ≥ ``stop``; one on its target has, even
    with ``stop`` 0, which would otherwise divide by zero and send NaN into grid_sample)."""
    dist = (targets - handles).norm(dim=1)
    active: torch.Tensor = (dist >= stop) & (dist > 0)
    return active


def motion_supervision_loss(
    features: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor, r1: int, stop: float
) -> torch.Tensor:
    """First term of Eq. 3: pull the patch around each handle one pixel towards its target.

    For each handle still on its way, the features read bilinearly at ``q + d`` are compared with
    the detached features at ``q`` for every grid position ``q`` of the ``(2·r1+1)²`` patch;
    the L1 distance is averaged over channels and summed over the patch, as the authors do.
    """
    _, _, h, w = features.shape
    loss = features.new_zeros(())
    for hi, gi in zip(handles, targets, strict=True):
        delta = gi - hi
        dist = float(delta.norm())
        if dist < stop or dist == 0.0:
            continue
        d = delta / dist
        q = _patch(hi, r1, h, w).to(features.device)
        fixed = read_at(features, q).detach()
        moved = sample_bilinear(features, q.to(features.dtype) + d.to(features.device))
        loss = loss + (moved - fixed).abs().mean(dim=1).sum()
    return loss


def track_points(
    features: torch.Tensor, reference: torch.Tensor, handles: torch.Tensor, r2: int
) -> torch.Tensor:
    """Eq. 5: move each handle to the grid position within ``r2`` whose feature is nearest (L1)
    to that handle's feature in the original latent at its initial position (``reference``,
    ``(n, C)``)."""
    _, _, h, w = features.shape
    new = handles.clone()
    with torch.no_grad():
        for i, (hi, ref) in enumerate(zip(handles, reference, strict=True)):
            window = _patch(hi, r2, h, w)
            dists = (read_at(features, window) - ref.to(features.device)).abs().sum(dim=1)
            new[i] = window[int(torch.argmin(dists))].to(new.dtype)
    return new


@dataclass
class DragStepInfo:
    step: int
    handles: torch.Tensor  # (n, 2) feature pixels, after tracking
    loss: float
    model_output: torch.Tensor  # detached, for previews
    latent: torch.Tensor  # the latent the model output was computed on (detached)


ForwardFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""latent → (model output, features (1, C, Hf, Wf) float32)."""


@dataclass
class DragOutcome:
    latent: torch.Tensor
    handles: torch.Tensor
    iterations: int
    reached: bool


def optimize_latent(
    latent: torch.Tensor,
    forward: ForwardFn,
    step_prev: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    handles: torch.Tensor,
    targets: torch.Tensor,
    *,
    keep_mask: torch.Tensor | None,
    steps: int,
    lr: float,
    lam: float,
    r1: int,
    r2: int,
    stop: float,
    on_step: Callable[[DragStepInfo], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
    autocast: Callable[[], AbstractContextManager[object]] | None = None,
    scaler: object | None = None,
) -> DragOutcome:
    """Optimise the inverted latent ``z_t`` by motion supervision and point tracking.

    ``forward`` runs the UNet on a latent; ``step_prev`` is one DDIM step ``(model output,
    latent) → z_{t-1}`` used by the mask term; ``keep_mask`` is ``1 - M`` at latent resolution
    (None when everything is editable). One UNet pass per iteration serves tracking (of the
    previous update) and the loss, as in the authors' implementation.
    """
    import contextlib

    ctx: Callable[[], AbstractContextManager[object]] = autocast or contextlib.nullcontext
    handles = handles.clone().float()
    targets = targets.float()
    with torch.no_grad(), ctx():
        out0, feats0 = forward(latent)
        prev0 = step_prev(out0, latent).float() if keep_mask is not None and lam > 0 else None
    reference = read_at(feats0, handles).detach()
    del feats0

    z = latent.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    done = 0
    reached = False
    for k in range(steps):
        if check_cancel:
            check_cancel()
        with ctx():
            out, feats = forward(z)
        if k > 0:
            handles = track_points(feats.detach(), reference, handles, r2)
        if not bool(active_handles(handles, targets, stop).any()):
            reached = True
            break
        loss = motion_supervision_loss(feats, handles, targets, r1, stop)
        if prev0 is not None and keep_mask is not None:
            prev = step_prev(out.float(), z)
            loss = loss + lam * ((prev - prev0) * keep_mask).abs().sum()
        latent_now = z.detach().clone() if on_step else None
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()  # type: ignore[attr-defined]
            scaler.step(optimizer)  # type: ignore[attr-defined]
            scaler.update()  # type: ignore[attr-defined]
        else:
            loss.backward()
            optimizer.step()
        done = k + 1
        if on_step:
            assert latent_now is not None
            info = DragStepInfo(
                done, handles.clone(), float(loss.detach()), out.detach(), latent_now
            )
            on_step(info)
    if not reached and done > 0:
        # Where the last update took the handles: one forward pass, reported, not optimised.
        with torch.no_grad(), ctx():
            _, feats = forward(z)
        handles = track_points(feats, reference, handles, r2)
        reached = not bool(active_handles(handles, targets, stop).any())
    return DragOutcome(z.detach(), handles, done, reached)
