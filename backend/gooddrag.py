"""GoodDrag's drag phase: alternating drag and denoising (AlDD) with information-preserving
motion supervision (Zhang et al., 2024), on the engine's own UNet pass, DDIM and tracking.

Read from the authors' ``pipeline.py`` and ``utils/drag_utils.py`` (not copied) and followed
where the paper is silent:

- The original latent ``z_t`` is denoised plainly alongside; at each drag timestep ``t_i`` its
  features ``F0_i`` and its next latent are what the edit is compared with.
- At each of the first ``drag_end_step`` timesteps: a fresh Adam on the latent; rounds of
  ``drags_per_track`` steps, each round ended by point tracking, ``tracks_per_step`` rounds at
  most; then one plain (uncontrolled) DDIM step. The handles are first re-tracked on the new
  timestep's features before any step.
- Motion supervision compares the patch read bilinearly at ``p + d`` (``d`` towards the target,
  ``min(step_size, distance)`` long) with ``F0_i``'s patch at the handle's *initial* position,
  ``(2·r1)² · mean |·|`` per handle; the mask term is ``λ Σ |(ẑ_{t-1} − z⁰_{t-1}) ⊙ (1 − M)|``.
- Tracking is nearest neighbour (L1) of ``F0_i`` at the initial handle within ``r2``, on the
  features of the latent *before* the round's last update (those of the same UNet pass).
- Stop when all handles are within ``stop_distance``, or when ``max_track_no_change`` trackings
  in a row moved nothing; from the first timestep without drag on, denoising is
  reference-controlled (the engine's ``_denoise``) against the original latent.

Deliberate differences, each a no-op away from the borders of the feature map: patches are
clamped to the map (the authors' slicing would fail there), and an empty mask means "no
constraint", as everywhere in DragStudio (the authors' code would then hold the whole image).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from backend.drag import active_handles, read_at, sample_bilinear, track_points
from backend.methods import GoodDragParams

ForwardAt = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
"""(latent, timestep) → (model output, features (1, C, Hf, Wf) float32)."""
StepFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]
"""(model output, timestep, latent) → the latent one deterministic DDIM step later."""


def patch_offsets(r: int, device: torch.device | None = None) -> torch.Tensor:
    """The ``(2r+1)²`` offsets ``(dx, dy)`` of a square patch, row by row."""
    span = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    gy, gx = torch.meshgrid(span, span, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def _clamp(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return torch.stack(
        [points[..., 0].clamp(0, width - 1), points[..., 1].clamp(0, height - 1)], dim=-1
    )


def original_patches(features: torch.Tensor, handles: torch.Tensor, r1: int) -> torch.Tensor:
    """``(n, P, C)`` features around each (integer) handle: the supervision targets."""
    _, _, h, w = features.shape
    offsets = patch_offsets(r1, features.device)
    out = []
    for handle in handles:
        pos = _clamp(handle.to(features.device) + offsets, h, w)
        out.append(read_at(features, pos))
    return torch.stack(out).detach()


def supervision_loss(
    features: torch.Tensor,
    handles: torch.Tensor,
    targets: torch.Tensor,
    originals: torch.Tensor,
    *,
    r1: int,
    step_size: float,
    stop: float,
) -> torch.Tensor:
    """Information-preserving motion supervision: for each handle still on its way, the patch
    read bilinearly at ``handle + d`` is pulled towards ``originals`` (the original latent's
    patch at the handle's initial position), ``(2·r1)² · mean |·|`` as the authors scale it."""
    _, _, h, w = features.shape
    offsets = patch_offsets(r1, features.device)
    loss = features.new_zeros(())
    for handle, target, original in zip(handles, targets, originals, strict=True):
        delta = target - handle
        dist = float(delta.norm())
        if dist < stop:
            continue
        d = (delta / dist * min(step_size, dist)).to(features.device)
        pos = _clamp(handle.to(features.device) + d + offsets, h, w)
        moved = sample_bilinear(features, pos)
        loss = loss + (2 * r1) ** 2 * (moved - original).abs().mean()
    return loss


@dataclass
class GoodDragStep:
    """One motion-supervision step, for progress, live tracking and previews."""

    step: int
    """Drag steps done so far in the whole edit, 1-based."""
    index: int
    """Position of the timestep in the denoising schedule after inversion (0 = the inverted)."""
    timestep: int
    handles: torch.Tensor
    loss: float
    model_output: torch.Tensor
    latent: torch.Tensor
    """The latent the model output was computed on (detached)."""


@dataclass
class AlddOutcome:
    latent: torch.Tensor
    """The edited latent at ``timesteps[end]``: where reference-controlled denoising starts."""
    reference: torch.Tensor
    """The original latent, plainly denoised to the same timestep."""
    end: int
    """Index of the first timestep without drag (``len(timesteps)`` if every one had some)."""
    handles: torch.Tensor
    iterations: int
    reached: bool
    early_stopped: bool
    blocks: list[dict[str, Any]] = field(default_factory=list)
    """Per dragged timestep: its index, timestep, drag steps and trackings, in order."""


@dataclass(frozen=True)
class AlddSetup:
    """What the drag phase needs from the engine, as plain callables."""

    forward: ForwardAt
    step: StepFn
    lr: float
    lam: float
    r1: int
    r2: int
    stop: float
    keep_mask: torch.Tensor | None = None
    """``1 − M`` at latent resolution, or None when everything is editable."""
    check_cancel: Callable[[], None] = lambda: None
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    make_scaler: Callable[[], Any] = lambda: None
    on_step: Callable[[GoodDragStep], None] | None = None


def alternate(
    latent: torch.Tensor,
    timesteps: Sequence[int],
    handles: torch.Tensor,
    targets: torch.Tensor,
    gd: GoodDragParams,
    setup: AlddSetup,
) -> AlddOutcome:
    """Run GoodDrag's drag phase from the inverted latent at ``timesteps[0]``.

    ``handles``/``targets`` are feature-map grid points ``(x, y)``. Returns the edited and the
    original latent at the first timestep without drag; the engine denoises the rest.
    """
    init = handles.clone().float()
    handles = init.clone()
    targets = targets.float()
    z = latent.detach().float()
    original = latent.detach().float()
    state = {"no_change": 0, "steps": 0}
    reached = early = False
    blocks: list[dict[str, Any]] = []
    end = len(timesteps)
    for i, t in enumerate(timesteps):
        stalled = state["no_change"] >= gd.max_track_no_change
        if i >= gd.drag_end_step or reached or early or stalled:
            early = early or stalled
            end = i
            break
        setup.check_cancel()
        with torch.no_grad(), setup.autocast():
            out0, feats0 = setup.forward(original, t)
            original_next = setup.step(out0.float(), t, original).float()
        originals = original_patches(feats0, init, setup.r1)
        reference = read_at(feats0, init).detach()
        del feats0, out0
        prev0 = original_next if setup.keep_mask is not None and setup.lam > 0 else None
        z, handles, info = _drag_at(
            z, i, t, handles, targets, originals, reference, prev0, gd, setup, state
        )
        reached, early = info["reached"], info["early_stopped"]
        blocks.append(info)
        with torch.no_grad(), setup.autocast():
            out, _ = setup.forward(z, t)
            z = setup.step(out.float(), t, z).float()
        original = original_next
    if not reached:
        reached = not bool(active_handles(handles, targets, setup.stop).any())
    return AlddOutcome(z, original, end, handles, state["steps"], reached, early, blocks)


def _drag_at(
    latent: torch.Tensor,
    index: int,
    t: int,
    handles: torch.Tensor,
    targets: torch.Tensor,
    originals: torch.Tensor,
    reference: torch.Tensor,
    prev0: torch.Tensor | None,
    gd: GoodDragParams,
    setup: AlddSetup,
    state: dict[str, int],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The drag steps at one timestep (the authors' ``gooddrag_step``)."""
    z = latent.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=setup.lr)
    scaler = setup.make_scaler()
    threshold = gd.loss_threshold * (2 * setup.r1) ** 2
    tracks = since_track = done = 0
    reached = early = False
    first = True
    while tracks < gd.tracks_per_step:
        setup.check_cancel()
        with setup.autocast():
            out, feats = setup.forward(z, t)
        if first:
            first = False
            handles = track_points(feats.detach(), reference, handles, setup.r2)
        if not bool(active_handles(handles, targets, setup.stop).any()):
            reached = True
            break
        if state["no_change"] >= gd.max_track_no_change:
            early = True
            break
        drag_loss = supervision_loss(
            feats,
            handles,
            targets,
            originals,
            r1=setup.r1,
            step_size=gd.step_size,
            stop=setup.stop,
        )
        loss = drag_loss
        keep = setup.keep_mask
        if prev0 is not None and keep is not None:
            prev = setup.step(out.float(), t, z)
            loss = loss + setup.lam * ((prev - prev0) * keep).abs().sum()
        latent_now = z.detach().clone() if setup.on_step else None
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        since_track += 1
        done += 1
        state["steps"] += 1
        if since_track == gd.drags_per_track or float(drag_loss.detach()) <= threshold:
            tracks += 1
            since_track = 0
            moved = track_points(feats.detach(), reference, handles, setup.r2)
            state["no_change"] = state["no_change"] + 1 if torch.equal(moved, handles) else 0
            handles = moved
        if setup.on_step is not None:
            assert latent_now is not None
            setup.on_step(
                GoodDragStep(
                    state["steps"],
                    index,
                    t,
                    handles.clone(),
                    float(loss.detach()),
                    out.detach(),
                    latent_now,
                )
            )
    info = {
        "index": index,
        "timestep": t,
        "drag_steps": done,
        "tracks": tracks,
        "reached": reached,
        "early_stopped": early,
    }
    return z.detach(), handles, info
