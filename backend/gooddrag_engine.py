"""GoodDrag inside :meth:`Engine.edit`: its steps 4-5 (drag, then denoise and decode).

The engine has by then done what both methods share (model, plan, LoRA, inversion); this runs
GoodDrag's drag phase (:func:`backend.gooddrag.alternate`) as the DRAG stage, on the engine's
UNet pass with features, and the engine's reference-controlled denoising from the first timestep
without drag as the DENOISE stage. Progress, live handles, previews and cancel work as in paper
mode.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from backend import imaging
from backend.events import Stage, StepProgress
from backend.gooddrag import AlddOutcome, AlddSetup, GoodDragStep, alternate
from backend.request import params_to_dict
from backend.result import Iteration

if TYPE_CHECKING:
    from backend.engine import Engine, _Plan, _Run, _Start


def run_gooddrag(
    engine: Engine, run: _Run, plan: _Plan, start: _Start
) -> tuple[AlddOutcome, list[Iteration], np.ndarray, dict[str, Any]]:
    """Drag and denoise; return the drag outcome, its iterations, the decoded image at
    working size and the trace's ``gooddrag`` entry."""
    from backend.engine import _adapters_disabled

    request = run.request
    params, gd = request.params, request.gooddrag
    unet = engine.pipe.unet
    schedule = plan.schedule
    timesteps = schedule.timesteps[plan.start :]
    total = gd.max_drag_steps
    iterations: list[Iteration] = []

    def on_step(info: GoodDragStep) -> None:
        handles = plan.to_image(info.handles)
        iterations.append(Iteration(info.step, handles, info.loss, info.timestep))
        preview = None
        if params.preview_every and info.step % params.preview_every == 0:
            preview = engine._preview(info.model_output, info.latent, info.timestep, schedule)
        run.emit(
            StepProgress(
                Stage.DRAG, info.step, total, loss=info.loss, handles=handles, preview=preview
            )
        )

    mask = request.editable_mask
    keep = None
    if mask is not None:
        keep = (1.0 - imaging.mask_to_latent(mask, plan.latent_hw)).to(engine.device)
    handles_f = imaging.feature_grid_points(plan.handles, plan.image_size, plan.feature_hw)
    targets_f = imaging.feature_grid_points(plan.targets, plan.image_size, plan.feature_hw)
    setup = AlddSetup(
        forward=engine._forward_at(plan),
        step=lambda out, t, z: schedule.step(out, t, z),
        lr=params.latent_lr,
        lam=params.lam,
        r1=params.r1,
        r2=params.r2,
        stop=params.stop_distance,
        keep_mask=keep,
        check_cancel=run.token.check,
        autocast=engine._autocast,
        make_scaler=lambda: torch.amp.GradScaler("cuda") if engine._amp else None,
        on_step=on_step,
    )
    generated = request.generation is not None
    adapters = _adapters_disabled(unet) if generated else contextlib.nullcontext()
    detail = f"alternating with the first {min(gd.drag_end_step, len(timesteps))} denoising steps"
    with adapters, engine._stage(Stage.DRAG, total, run.emit, run.stages, detail):
        outcome = alternate(
            start.latent,
            timesteps,
            torch.from_numpy(handles_f).float().to(engine.device),
            torch.from_numpy(targets_f).float().to(engine.device),
            gd,
            setup,
        )
    working = engine._denoise_and_decode(
        run,
        plan,
        start,
        outcome.latent,
        reference=outcome.reference,
        begin=plan.start + outcome.end,
    )
    entry = {
        "params": params_to_dict(gd),
        "blocks": outcome.blocks,
        "controlled_from_index": outcome.end,
        "controlled_from_timestep": timesteps[outcome.end]
        if outcome.end < len(timesteps)
        else None,
        "early_stopped": outcome.early_stopped,
    }
    return outcome, iterations, working, entry
