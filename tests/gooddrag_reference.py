"""Test-only reference: GoodDrag's drag phase re-written from the authors' ``pipeline.py`` and
``utils/drag_utils.py`` (commit 6948dfe) in their own shape (``(row, col)`` points in lists,
explicit slicing, stacked bilinear corner patches, diffusers' ``DDIMScheduler.step``, their
``inv_step`` on the float32 ``alphas_cumprod``, the plain step after each dragged timestep batched
with the original as theirs is), independent of ``backend``. No LoRA, fp32, guidance 1, the
authors' compare mode (always on in their ``gooddrag_step``). It returns the handles after every
drag step, for trajectory comparison. Comments name the authors' lines each part follows.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F


class _Features:
    """Run the UNet and keep the output of ``up_blocks[block]`` (their ``feature_idx`` 3)."""

    def __init__(self, unet: Any, block: int, size: tuple[int, int]) -> None:
        self.unet, self.block, self.size = unet, block, size

    def __call__(self, z: torch.Tensor, t: Any, text: torch.Tensor):
        kept: list[torch.Tensor] = []
        hook = self.unet.up_blocks[self.block].register_forward_hook(
            lambda _m, _a, out: kept.append(out[0] if isinstance(out, tuple) else out)
        )
        try:
            eps = self.unet(z, t, encoder_hidden_states=text).sample
        finally:
            hook.remove()
        return eps, F.interpolate(kept[-1], self.size, mode="bilinear")


def _inv_step(scheduler: Any, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    prev = min(t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps, 999)
    a_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    a_next = scheduler.alphas_cumprod[t]
    x0 = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
    return a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps


def _interp_patch(feat: torch.Tensor, y: torch.Tensor, x: torch.Tensor, r: int) -> torch.Tensor:
    """``interpolate_feature_patch``: the four corner patches stacked, weighted and summed."""
    x0, y0 = torch.floor(x).long(), torch.floor(y).long()
    x1, y1 = x0 + 1, y0 + 1
    weights = torch.tensor([(x1 - x) * (y1 - y), (x1 - x) * (y - y0),
                            (x - x0) * (y1 - y), (x - x0) * (y - y0)])  # fmt: skip
    patches = torch.stack(
        [
            feat[:, :, y0 - r : y0 + r + 1, x0 - r : x0 + r + 1],
            feat[:, :, y1 - r : y1 + r + 1, x0 - r : x0 + r + 1],
            feat[:, :, y0 - r : y0 + r + 1, x1 - r : x1 + r + 1],
            feat[:, :, y1 - r : y1 + r + 1, x1 - r : x1 + r + 1],
        ]
    )
    return torch.sum(weights.to(feat.device).view(-1, 1, 1, 1, 1) * patches, dim=0)


def _track(f0: torch.Tensor, f1: torch.Tensor, points: list, init: list, r2: int) -> list:
    """``point_tracking`` (L1): the original feature at the *initial* handle, searched for in
    the ``(2·r2+1)²`` window around the current handle; the first minimum wins."""
    with torch.no_grad():
        for i in range(len(points)):
            p0, p = init[i], points[i]
            ref = f0[:, :, int(p0[0]), int(p0[1])][..., None, None]
            window = f1[
                :, :, int(p[0]) - r2 : int(p[0]) + r2 + 1, int(p[1]) - r2 : int(p[1]) + r2 + 1
            ]
            dist = (ref - window).abs().sum(dim=1)[0]
            row, col = divmod(int(dist.argmin()), dist.shape[-1])
            points[i] = torch.tensor([p[0] - r2 + row, p[1] - r2 + col])
    return points


def _reached(points: list, targets: list) -> bool:
    return all(float((p - q).norm()) < 2.0 for p, q in zip(points, targets, strict=True))


def reference_drag(
    pipe: Any,
    image: torch.Tensor,
    points_xy: list[tuple[float, float]],
    mask: torch.Tensor,
    *,
    steps: int,
    strength: float,
    drag_end_step: int,
    track_per_step: int,
    max_drag_per_track: int,
    r1: int,
    r2: int,
    beta: float,
    lam: float,
    lr: float,
    max_no_change: int,
    prompt: str = "",
    losses: list[float] | None = None,
) -> list[list[tuple[float, float]]]:
    """``image`` is ``(1, 3, H, W)`` in [-1, 1] at working size, ``points_xy`` handle, target,
    handle, ... in its pixels, ``mask`` ``(H, W)`` 0/1. Returns ``(x, y)`` feature-pixel handles
    after each drag step."""
    from diffusers import DDIMScheduler

    unet, vae = pipe.unet, pipe.vae
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    h, w = image.shape[2:]
    sup_h, sup_w = int(0.5 * h), int(0.5 * w)
    feats = _Features(unet, 2, (sup_h, sup_w))
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        text = pipe.text_encoder(ids.input_ids)[0]
        latents = vae.encode(image).latent_dist.mean * vae.config.scaling_factor
        n_actual = round(strength * steps)
        for i, t in enumerate(reversed(scheduler.timesteps)):
            if i >= n_actual:
                continue
            latents = _inv_step(
                scheduler, unet(latents, t, encoder_hidden_states=text).sample, t, latents
            )
    handles, targets = [], []
    # get_handle_target_points: [y / full_h * sup_h, x / full_w * sup_w], rounded.
    for n, (x, y) in enumerate(points_xy):
        p = torch.round(torch.tensor([y / h * sup_h, x / w * sup_w]))
        (handles if n % 2 == 0 else targets).append(p)
    init_handles = copy.deepcopy(handles)
    # prepare_mask, then good_drag: interp_mask = F.interpolate(mask, latent size, 'nearest').
    m = F.interpolate(mask[None, None].float(), (sup_h, sup_w), mode="nearest")
    interp_mask = F.interpolate(m, latents.shape[2:], mode="nearest")
    valid = scheduler.timesteps[steps - n_actual :]

    # get_original_features: the original latent denoised alone for i <= t2, keeping
    # original_step_output[t] (the latent after t) and features[t] (F0 at t).
    originals, prevs = {}, {}
    with torch.no_grad():
        cur = latents.clone()
        for i, t in enumerate(valid):
            if i <= drag_end_step:
                eps, f0 = feats(cur, t, text)
                cur = scheduler.step(eps, t, cur, return_dict=False)[0]
                prevs[int(t)], originals[int(t)] = cur, f0

    history: list[list[tuple[float, float]]] = []
    no_change, do_drag = 0, True
    code = latents.clone()
    original_init = latents.clone()  # good_drag: original_init = init_code.detach().clone()
    drag_loss_threshold = 0.0 * (2 * r1) ** 2
    for i, t in enumerate(valid):
        # good_drag: `if i < self.t2 and self.do_drag and (self.no_change_track_num !=
        # self.max_no_change_track_num)`; later timesteps only denoise (not traced here).
        if not (i < drag_end_step and do_drag and no_change != max_no_change):
            break
        # gooddrag_step: drag_latents = init_code.clone().detach(); a fresh Adam per timestep.
        z = code.clone().detach().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        first, track_num, cur_drag = True, 0, 0
        f0 = originals[int(t)]
        while track_num < track_per_step:
            opt.zero_grad()
            eps, f1 = feats(z, t, text)
            # x_prev_updated = self.model.scheduler.step(unet_output, t, drag_latents, ...)[0]
            x_prev = scheduler.step(eps, t, z, return_dict=False)[0]
            if first:  # compare_mode: point_tracking(features[t], F1, ...) on the new timestep
                first = False
                handles = _track(f0, f1, handles, init_handles, r2)
            if _reached(handles, targets) or no_change == max_no_change:
                do_drag = False
                break
            drag_loss = 0.0
            for k in range(len(handles)):
                p, q = handles[k], targets[k]
                dist = (q - p).norm()
                if dist < 2.0:
                    continue
                d = (q - p) / dist * min(beta, float(dist))
                p0 = init_handles[k]
                f0_patch = f0[:, :, int(p0[0]) - r1 : int(p0[0]) + r1 + 1,
                              int(p0[1]) - r1 : int(p0[1]) + r1 + 1].detach()  # fmt: skip
                f1_patch = _interp_patch(f1, p[0] + d[0], p[1] + d[1], r1)
                drag_loss = drag_loss + (2 * r1) ** 2 * F.l1_loss(f0_patch, f1_patch)
            # cal_motion_supervision_loss: drag_loss + self.lam * ((x_prev_updated -
            # original_prev) * (1.0 - interp_mask)).abs().sum(), original_prev being
            # original_step_output[t]: the original's latent after t, denoised alone.
            loss = drag_loss + lam * ((x_prev - prevs[int(t)]) * (1.0 - interp_mask)).abs().sum()
            loss.backward()
            opt.step()
            cur_drag += 1
            # need_track: tracking on F1, the features of the pass before this update.
            if cur_drag == max_drag_per_track or drag_loss <= drag_loss_threshold:
                track_num += 1
                before = copy.deepcopy(handles)
                handles = _track(f0, f1, handles, init_handles, r2)
                same = all(torch.equal(a, b) for a, b in zip(handles, before, strict=True))
                no_change = no_change + 1 if same else 0
                cur_drag = 0
            history.append([(float(p[1]), float(p[0])) for p in handles])
            if losses is not None:
                losses.append(float(loss.detach()))
        code = z.detach()
        # good_drag, after gooddrag_step: one plain DDIM step of the edit, in one batch with
        # the original (no attention control yet):
        #   noise_pred_all = self.model.unet(torch.cat([original_init, init_code]), t, ...)
        #   init_code = self.model.scheduler.step(noise_pred_all[1], t, init_code, ...)[0]
        #   original_init = self.model.scheduler.step(noise_pred_all[0], t, original_init, ...)[0]
        with torch.no_grad():
            both = unet(
                torch.cat([original_init, code]), t, encoder_hidden_states=torch.cat([text, text])
            ).sample
            code = scheduler.step(both[1:], t, code, return_dict=False)[0]
            original_init = scheduler.step(both[:1], t, original_init, return_dict=False)[0]
    return history
