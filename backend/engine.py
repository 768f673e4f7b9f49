"""The engine: one loaded pipeline, one edit at a time, cooperative cancellation.

``Engine.edit`` runs DragDiffusion on a :class:`~backend.request.DragRequest`: identity-preserving
LoRA (reused when the same image, model, prompt and parameters come again), DDIM inversion,
latent optimisation with motion supervision and point tracking, and denoising with
reference-latent-control. It reports typed events and returns the edited image and a trace.
"""

from __future__ import annotations

import contextlib
import hashlib
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend import imaging
from backend.attention import ReferenceKV, reference_control
from backend.caches import EngineCaches, LoraInfo
from backend.cancel import CancelToken
from backend.ddim import Schedule
from backend.ddim_float32 import Float32Schedule
from backend.drag import DragOutcome, DragStepInfo, optimize_latent
from backend.errors import DragStudioError, InvalidRequest
from backend.events import (
    Event,
    Stage,
    StageFinished,
    StageStarted,
    StepProgress,
)
from backend.features import unet_with_features
from backend.generation import Generation, feature_weights
from backend.gooddrag import AlddOutcome
from backend.lora import (
    cache_lora,
    cached_lora,
    has_adapter,
    install_bundled,
    load_adapter_state,
    lora_key,
    lora_to_bytes,
    remove_adapter,
    train_lora,
)
from backend.lora_cache import LoraCache
from backend.memory import (
    MemoryPlan,
    apply_plan,
    half_autocast,
    next_plan,
    resident,
    resolve_plan,
)
from backend.methods import GOODDRAG
from backend.models import (
    ModelSource,
    default_dtype,
    encode_prompt,
    free_memory,
    load_pipeline,
    load_vae,
    pick_device,
    resolve_source,
    resolve_vae_source,
)
from backend.preparation import RECORDING_REFERENCE
from backend.project import BundledLora, sha256_pixels
from backend.request import DragRequest, LoraParams
from backend.result import EditResult, Iteration, LoraOutcome, Trace
from backend.sampling import guide, run_generation

EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class _Run:
    """One edit in progress: the request, where events go, the cancel token, stage seconds."""

    request: DragRequest
    emit: EventSink
    token: CancelToken
    stages: dict[str, float] = field(default_factory=dict)
    t_total: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _Plan:
    """Step 2's answer: everything the later steps compute with."""

    request: DragRequest
    schedule: Schedule
    image_size: tuple[int, int]
    work_size: tuple[int, int]
    latent_hw: tuple[int, int]
    feature_hw: tuple[int, int]
    guidance: float
    text: torch.Tensor
    inv_steps: int
    start: int
    """Index into the schedule of the optimised latent."""
    t: int
    """The optimised latent's timestep."""

    @property
    def handles(self) -> np.ndarray:
        return np.array([p.handle for p in self.request.pairs], dtype=np.float64)

    @property
    def targets(self) -> np.ndarray:
        return np.array([p.target for p in self.request.pairs], dtype=np.float64)

    def to_image(self, h: torch.Tensor) -> tuple[tuple[float, float], ...]:
        """Feature-grid points ``(n, 2)`` → image pixels, rounded to 0.01 px."""
        pts = imaging.feature_to_image(h.cpu().double().numpy(), self.image_size, self.feature_hw)
        return tuple((round(float(x), 2), round(float(y), 2)) for x, y in pts)


@dataclass(frozen=True)
class _Start:
    """Step 3's answer: the latent to drag and what its reference depends on."""

    latent: torch.Tensor
    lora: LoraOutcome
    reference_key: tuple[Any, ...]


def _peak_memory(device: torch.device) -> dict[str, float]:
    out: dict[str, float] = {}
    if device.type == "cuda":
        out["gpu_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["process_peak_rss_gb"] = rss / (2**30 if sys.platform == "darwin" else 2**20)
    return out


class Engine:
    """Owns the model. Not thread-safe: call it from one (engine) thread."""

    def __init__(
        self,
        device: str = "auto",
        *,
        dtype: torch.dtype | None = None,
        lora_cache: LoraCache | None = None,
        allow_download: bool = True,
        single_file_config: str | None = None,
        reuse_reference: bool = True,
        memory: str = "auto",
    ) -> None:
        self.device = pick_device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.memory_setting = memory
        self.plan: MemoryPlan = resolve_plan(memory, self.device)
        """How the model fits the device (backend/memory.py); ``auto`` picks by free memory."""
        self._fallback: dict[str, str] | None = None
        self.lora_cache = lora_cache
        self.allow_download = allow_download
        # Configs + tokenizer for .safetensors checkpoints (diffusers folder or hub id; SD-1.5's).
        self.single_file_config = single_file_config
        self.reuse_reference = reuse_reference
        """Keep the reference rows' attention keys/values so re-drags denoise only the edit."""
        self.pipe: Any = None
        self.source: ModelSource | None = None
        self.model_spec: str | None = None
        self.vae_spec: str | None = None
        """The VAE used instead of the model's own (None: its own)."""
        self.vae_source: ModelSource | None = None
        self._own_vae: Any = None
        self.caches = EngineCaches()
        """Text, latent, inversion, reference K/V and LoRA: see :mod:`backend.caches`."""

    # -- model -------------------------------------------------------------------------------

    def load_model(self, spec: str, vae: str | None = None) -> float:
        """Load ``spec`` (with ``vae`` instead of its own VAE, if given) unless it is already
        loaded; return the seconds it took.

        The old model is freed before the new one loads, so two never share the GPU; if the new
        one fails, the old one is loaded again and the error is raised. Another VAE for the
        loaded model swaps only the VAE; if that fails the model stays, with its own VAE.
        """
        vae = (vae.strip() or None) if vae is not None else None
        if self.pipe is not None and spec == self.model_spec:
            return self._use_vae(vae)
        resolve_source(spec)  # refuse bad paths and unsafe files before dropping anything
        if vae is not None:
            resolve_vae_source(vae)
        start = time.perf_counter()
        previous = self.model_spec
        self._drop_model()
        try:
            pipe, source = load_pipeline(
                spec,
                self.device,
                self.dtype,
                allow_download=self.allow_download,
                single_file_config=self.single_file_config,
            )
        except BaseException:
            if previous is not None:
                with contextlib.suppress(Exception):
                    self.pipe, self.source = load_pipeline(
                        previous,
                        self.device,
                        self.dtype,
                        allow_download=False,
                        single_file_config=self.single_file_config,
                    )
                    self.model_spec = previous
                    self._own_vae = self.pipe.vae
            raise
        self.pipe, self.source, self.model_spec = pipe, source, spec
        apply_plan(pipe, self.plan, self.device)
        self._own_vae = pipe.vae
        self._use_vae(vae)
        return time.perf_counter() - start

    def _use_vae(self, vae: str | None) -> float:
        """Put ``vae`` (None: the model's own) into the loaded pipeline; seconds it took."""
        if vae == self.vae_spec:
            return 0.0
        start = time.perf_counter()
        module, source = self._own_vae, None
        try:
            if vae is not None:
                module, source = load_vae(
                    vae, self.device, self.dtype, allow_download=self.allow_download
                )
        finally:
            # On failure ``source`` is still None: the model's own VAE goes back in.
            self.pipe.vae = module
            self.vae_source, self.vae_spec = source, (vae if source is not None else None)
            apply_plan(self.pipe, self.plan, self.device)  # the memory plan covers the new VAE
        return time.perf_counter() - start

    @property
    def model_identity(self) -> str:
        """The loaded model and VAE, for every cache key that depends on them: a model with
        its own VAE keeps the identity it had before VAEs could be chosen."""
        assert self.source is not None
        if self.vae_source is None:
            return self.source.identity
        return f"{self.source.identity}+vae={self.vae_source.identity}"

    def adopt_pipeline(self, pipe: Any, name: str) -> None:
        """Use an already built pipeline (benchmarks build random full-size models in memory)."""
        self._drop_model()
        pipe.to(self.device, self.dtype)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
            module.eval()
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.source = ModelSource("memory", name)
        self.model_spec = name
        self._own_vae = pipe.vae
        apply_plan(pipe, self.plan, self.device)

    def use_memory_setting(self, setting: str) -> None:
        """Follow the user's ``auto|high|8gb|6gb`` choice; unchanged, a fallback plan stays."""
        if setting != self.memory_setting:
            self.set_memory_plan(resolve_plan(setting, self.device))
            self.memory_setting = setting

    def set_memory_plan(self, plan: MemoryPlan) -> None:
        """Switch plans; the loaded model is reconfigured in place (results stay in tolerance)."""
        self.plan = plan
        if not plan.keep_reference_kv:
            self.caches.drop("reference")  # this plan keeps no recording on the device
        if self.pipe is not None:
            apply_plan(self.pipe, plan, self.device)

    def _drop_model(self) -> None:
        self.pipe = None
        self.source = None
        self.model_spec = None
        self.vae_spec = None
        self.vae_source = None
        self._own_vae = None
        self.caches.invalidate()
        free_memory(self.device)

    def release_memory(self) -> None:
        """Give cached device memory back, e.g. after an out-of-memory error."""
        free_memory(self.device)

    # -- LoRA --------------------------------------------------------------------------------

    @property
    def current_lora(self) -> LoraInfo | None:
        return self.caches.lora

    def export_lora(self, key: str) -> bytes | None:
        """The safetensors file of the LoRA in memory if it is ``key``'s, else None: how a
        trained LoRA leaves the engine (into a project)."""
        current = self.caches.lora
        if current is None or current.key != key:
            return None
        return lora_to_bytes(current.state, current.params, key)

    def install_lora(self, key: str, params: LoraParams, state: dict[str, torch.Tensor]) -> None:
        """Put a previously trained adapter (e.g. from a project file) into the loaded UNet."""
        self._require_model()
        load_adapter_state(self.pipe.unet, params, state)
        self.caches.lora = LoraInfo(key, params, state)

    def install_bundled(self, bundled: BundledLora | None, request: DragRequest) -> dict[str, Any]:
        """A document's LoRA into memory when it fits ``request`` and checks out fully; else
        what happened and why (see :func:`backend.lora.install_bundled`)."""
        return install_bundled(self, bundled, request)

    def forget_lora(self) -> None:
        """Drop the adapter in memory so the next edit trains (or loads) a fresh one."""
        if self.pipe is not None:
            remove_adapter(self.pipe.unet)
        self.caches.invalidate_adapter()

    def lora_key_for(self, request: DragRequest) -> str:
        self._require_model()
        assert self.source is not None
        return lora_key(request.identity_image, self.model_identity, request.prompt, request.lora)

    # -- editing -----------------------------------------------------------------------------

    def edit(
        self,
        request: DragRequest,
        on_event: EventSink | None = None,
        cancel: CancelToken | None = None,
    ) -> EditResult:
        """Run one drag edit. Raises :class:`Cancelled` or :class:`DragStudioError` on failure.

        Out of device memory, everything the failed attempt held is released and the edit runs
        once more with the next, leaner memory plan (said in an event and in the trace); a second
        out-of-memory error is raised. The request is never modified.
        """
        emit = on_event or (lambda _e: None)
        self._fallback = None
        try:
            return self._edit(request, emit, cancel)
        except torch.OutOfMemoryError:
            fallback = next_plan(self.plan)
            if fallback is None:
                self._release_after_oom()
                raise
        # Out of the except block: the traceback's frames (and their tensors) are gone now.
        failed = self.plan.name
        self._release_after_oom()
        self.set_memory_plan(fallback)
        note = (
            f"out of memory with the {failed} plan: trying once more with the {fallback.name} plan"
        )
        emit(StageStarted(Stage.LOAD, 0, note))
        self._fallback = {"from": failed, "to": fallback.name, "reason": "out of memory"}
        try:
            return self._edit(request, emit, cancel)
        finally:
            self._fallback = None

    def _release_after_oom(self) -> None:
        """Drop every cache that holds device memory; keep a finished LoRA (megabytes)."""
        lora = self.caches.lora
        if self.pipe is not None and lora is None:
            remove_adapter(self.pipe.unet)
        self.caches.invalidate()
        self.caches.lora = lora
        free_memory(self.device)

    def _edit(
        self, request: DragRequest, emit: EventSink, cancel: CancelToken | None
    ) -> EditResult:
        """The outline of a diffusers pipeline's ``__call__``: each numbered step is one helper."""
        request.validate()
        run = _Run(request, emit, cancel or CancelToken())
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

        # 1. The model.
        with self._stage(Stage.LOAD, 1, run.emit, run.stages):
            run.token.check()
            self.load_model(request.model, request.vae)
            run.token.check()
        # 2. Schedule, working size and text conditioning.
        plan = self._plan(request)
        # 3. The latent to drag: LoRA + DDIM inversion of a photo, or a generation's own latent.
        start = self._start_latent(run, plan)
        outcome: DragOutcome | AlddOutcome
        gooddrag: dict[str, Any] | None = None
        if request.method == GOODDRAG:
            # 4-5. GoodDrag: drag steps alternate with denoising steps, then controlled denoising.
            from backend.gooddrag_engine import run_gooddrag

            outcome, iterations, working, gooddrag = run_gooddrag(self, run, plan, start)
        else:
            # 4. Latent optimisation: motion supervision and point tracking.
            outcome, iterations = self._optimise(run, plan, start.latent)
            # 5. Denoising beside the reference with reference-latent-control, then decoding.
            working = self._denoise_and_decode(run, plan, start, outcome.latent)
        # 6. The result at the user's resolution, their pixels kept outside the mask.
        result = self._compose(request, working)
        # 7. The trace.
        run.stages["total"] = time.perf_counter() - run.t_total
        trace = self._trace(run, plan, start.lora, outcome, iterations, gooddrag)
        return EditResult(result, trace, working)

    def prepare(
        self,
        request: DragRequest,
        on_event: EventSink | None = None,
        cancel: CancelToken | None = None,
    ) -> dict[str, Any]:
        """Steps 1–3 of :meth:`edit` ahead of a Drag: load, then the LoRA and the inversion.

        Fills exactly the caches :meth:`edit` would fill, with the same arithmetic, so a later
        edit of the same photo, prompt, model and LoRA/inversion settings skips both stages and
        returns a bit-identical result. Points and mask are not needed. It never downloads a
        model: that waits for a Drag, where the user can be asked. Returns what was done.
        """
        request.validate(require_pairs=False)
        run = _Run(request, on_event or (lambda _e: None), cancel or CancelToken())
        if request.generation is not None:
            return {"prepared": False, "reason": "generated images need no preparation"}
        with self._stage(Stage.LOAD, 1, run.emit, run.stages):
            run.token.check()
            allow, self.allow_download = self.allow_download, False
            try:
                self.load_model(request.model, request.vae)
            finally:
                self.allow_download = allow
            run.token.check()
        plan = self._plan(request)
        start = self._start_latent(run, plan)
        reference = self._prepare_reference(run, plan, start)
        return {"prepared": True, "lora": start.lora, "reference": reference, "stages": run.stages}

    def _prepare_reference(self, run: _Run, plan: _Plan, start: _Start) -> bool:
        """Record the reference rows' keys/values as the Drag's denoising would (paper mode;
        GoodDrag's reference starts after its drag phase). Reported as a second part of the
        inversion stage, timed as ``reference``. Whether a recording is ready for the Drag."""
        blocks = run.request.params.ref_control_blocks
        if run.request.method == GOODDRAG or not self._keeps_reference(blocks):
            return False
        key = self._reference_kv_key(start, blocks)
        if not self._records_reference(blocks, key):
            return True
        steps = len(plan.schedule.timesteps) - plan.start
        with self._stage(
            Stage.INVERSION, steps, run.emit, run.stages, RECORDING_REFERENCE, timed="reference"
        ):
            kv = self._record_reference(
                start.latent,
                plan.text,
                plan.guidance,
                plan.schedule,
                plan.start,
                blocks,
                lambda i: run.emit(StepProgress(Stage.INVERSION, i, steps)),
                run.token,
            )
        self.caches.put("reference", key, kv)  # complete recordings only
        return True

    def _plan(self, request: DragRequest) -> _Plan:
        """Step 2: sizes, schedule, the optimised timestep and the text conditioning."""
        pipe, params = self.pipe, request.params
        # GoodDrag steps with diffusers' float32 coefficients, as its authors' code does
        # (backend/ddim_float32.py says why that matters); paper mode keeps its own.
        schedule_type = Float32Schedule if request.method == GOODDRAG else Schedule
        schedule = schedule_type.from_scheduler(pipe.scheduler, params.inference_steps)
        image_size = request.image_size
        work_w, work_h = imaging.working_size(*image_size, params.working_width)
        generation = request.generation
        if generation is not None:
            # Appendix C: the generation's own latents replace LoRA and inversion.
            if image_size != (generation.width, generation.height):
                raise InvalidRequest(
                    f"the image is {image_size[0]}×{image_size[1]} but it was generated at "
                    f"{generation.width}×{generation.height}"
                )
            schedule = schedule_type.from_scheduler(pipe.scheduler, generation.steps)
            work_w, work_h = generation.width, generation.height
            guidance = generation.guidance_scale
            text = self._conditioning(generation.prompt, generation.negative_prompt, guidance)
        else:
            guidance = 1.0  # real photos: no classifier-free guidance (paper §4.1)
            text = self._text_embeddings(request.prompt)
        inv_steps = max(1, round(params.inversion_strength * len(schedule.timesteps)))
        start = schedule.start_index(inv_steps)
        return _Plan(
            request=request,
            schedule=schedule,
            image_size=image_size,
            work_size=(work_w, work_h),
            latent_hw=(work_h // 8, work_w // 8),
            feature_hw=(work_h // 2, work_w // 2),
            guidance=guidance,
            text=text,
            inv_steps=inv_steps,
            start=start,
            t=schedule.timesteps[start],
        )

    def _start_latent(self, run: _Run, plan: _Plan) -> _Start:
        """Step 3: ``z_t`` and the key of everything the reference rows depend on."""
        request, schedule, emit, stages = run.request, plan.schedule, run.emit, run.stages
        generation = request.generation
        if generation is not None:
            with self._stage(Stage.LORA, 0, emit, stages, "skipped (generated image)"):
                pass
            lora_detail = LoraOutcome(0, False, "generated")
            with self._stage(Stage.INVERSION, 0, emit, stages, "skipped (generated image)"):
                start_latent = generation.trajectory[plan.start : plan.start + 1]
                zt = torch.from_numpy(start_latent).to(self.device)
            reference_key: tuple[Any, ...] = (
                self.model_identity,
                "generated",
                hashlib.sha256(start_latent.tobytes()).hexdigest(),
                generation.prompt,
                generation.negative_prompt,
                plan.guidance,
                len(schedule.timesteps),
                plan.start,
                type(schedule).__name__,
            )
            return _Start(zt, lora_detail, reference_key)
        # Identity-preserving LoRA.
        lora_detail = self._prepare_lora(request, plan.text, schedule, emit, run.token, stages)
        # DDIM inversion to z_t, reused when nothing it depends on changed.
        digest = sha256_pixels(request.image)
        reference_key = (
            self.model_identity,
            lora_detail.key or "no-lora",
            digest,
            plan.work_size,
            request.prompt,
            len(schedule.timesteps),
            plan.inv_steps,
            type(schedule).__name__,  # the inversion's arithmetic
        )
        zt = self.caches.get("inversion", reference_key)
        if zt is not None:
            with self._stage(Stage.INVERSION, 0, emit, stages, "reusing the inverted latent"):
                pass
        else:
            with self._stage(Stage.INVERSION, plan.inv_steps, emit, stages):
                z0 = self._encode(request.image, digest, plan.work_size)
                zt = self._invert(z0, plan.text, schedule, plan.inv_steps, emit, run.token)
            self.caches.put("inversion", reference_key, zt)
        return _Start(zt, lora_detail, reference_key)

    def _optimise(
        self, run: _Run, plan: _Plan, zt: torch.Tensor
    ) -> tuple[DragOutcome, list[Iteration]]:
        """Step 4: move the handles' features towards their targets by optimising ``z_t``."""
        request, params, t = run.request, run.request.params, plan.t
        unet = self.pipe.unet
        handles_f = imaging.feature_grid_points(plan.handles, plan.image_size, plan.feature_hw)
        targets_f = imaging.feature_grid_points(plan.targets, plan.image_size, plan.feature_hw)
        mask = request.editable_mask
        keep = None
        if mask is not None:
            keep = (1.0 - imaging.mask_to_latent(mask, plan.latent_hw)).to(self.device)
        iterations: list[Iteration] = []
        forward_at = self._forward_at(plan)

        def forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return forward_at(z, t)

        def on_drag_step(info: DragStepInfo) -> None:
            handles = plan.to_image(info.handles)
            iterations.append(Iteration(info.step, handles, info.loss))
            preview = None
            if params.preview_every and info.step % params.preview_every == 0:
                preview = self._preview(info.model_output, info.latent, t, plan.schedule)
            run.emit(
                StepProgress(
                    Stage.DRAG,
                    info.step,
                    params.drag_steps,
                    loss=info.loss,
                    handles=handles,
                    preview=preview,
                )
            )

        generated = request.generation is not None
        adapters = _adapters_disabled(unet) if generated else contextlib.nullcontext()
        with adapters, self._stage(Stage.DRAG, params.drag_steps, run.emit, run.stages):
            scaler = torch.amp.GradScaler("cuda") if self._amp else None
            outcome = optimize_latent(
                zt,
                forward,
                lambda out, z: plan.schedule.step(out, t, z),
                torch.from_numpy(handles_f).float().to(self.device),
                torch.from_numpy(targets_f).float().to(self.device),
                keep_mask=keep,
                steps=params.drag_steps,
                lr=params.latent_lr,
                lam=params.lam,
                r1=params.r1,
                r2=params.r2,
                stop=params.stop_distance,
                on_step=on_drag_step,
                check_cancel=run.token.check,
                autocast=self._autocast,
                scaler=scaler,
            )
        return outcome, iterations

    def _forward_at(
        self, plan: _Plan
    ) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
        """One UNet pass at a timestep: ``(latent, t) → (model output, features)``."""
        params, unet = plan.request.params, self.pipe.unet
        guidance, text = plan.guidance, plan.text
        cfg = guidance > 1.0
        w_uncond, w_cond = feature_weights(guidance) if cfg else (0.0, 1.0)

        def forward_at(z: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            batch = torch.cat([z, z]) if cfg else z
            out, feats = unet_with_features(
                unet, batch.to(unet.dtype), t, text, params.feature_block, plan.feature_hw
            )
            if not cfg:
                return out, feats
            # CFG: guided prediction for the mask term; both feature maps side by side.
            f_uncond, f_cond = feats.chunk(2)
            return guide(out.float(), guidance), torch.cat(
                [w_uncond * f_uncond, w_cond * f_cond], dim=1
            )

        return forward_at

    def _denoise_and_decode(
        self,
        run: _Run,
        plan: _Plan,
        start: _Start,
        edited: torch.Tensor,
        *,
        reference: torch.Tensor | None = None,
        begin: int | None = None,
    ) -> np.ndarray:
        """Step 5: denoise the optimised latent beside its reference and decode it (GoodDrag:
        from ``begin``, beside the original latent denoised to there, ``reference``)."""
        params, unet = run.request.params, self.pipe.unet
        begin = plan.start if begin is None else begin
        denoise_steps = len(plan.schedule.timesteps) - begin
        generated = run.request.generation is not None
        adapters = _adapters_disabled(unet) if generated else contextlib.nullcontext()
        key = self._reference_kv_key(start, params.ref_control_blocks)
        if begin != plan.start:  # another reference latent: another cache entry
            key = (*key, "from", begin)
        total, detail = denoise_steps, ""
        if self._records_reference(params.ref_control_blocks, key):
            total, detail = 2 * denoise_steps, "the reference rows, then the edit"
        with adapters, self._stage(Stage.DENOISE, total, run.emit, run.stages, detail):
            edited = self._denoise(
                start.latent if reference is None else reference,
                edited,
                plan.text,
                plan.guidance,
                plan.schedule,
                begin,
                params.ref_control_blocks,
                key,
                run.emit,
                run.token,
            )
            working = self._decode(edited)
            run.token.check()
        return working

    @staticmethod
    def _compose(request: DragRequest, working: np.ndarray) -> np.ndarray:
        """Step 6: back to the photo's size; its own pixels outside the mask (the default)."""
        result = imaging.restore_resolution(working, request.image_size)
        mask = request.editable_mask
        if request.params.keep_unmasked_pixels and mask is not None:
            # A resized result is ours to overwrite: no third full-size copy for big photos.
            owned = result is not working and result.flags.writeable
            result = imaging.keep_original_outside(request.image, result, mask, in_place=owned)
        return result

    def _trace(
        self,
        run: _Run,
        plan: _Plan,
        lora: LoraOutcome,
        outcome: DragOutcome | AlddOutcome,
        iterations: list[Iteration],
        gooddrag: dict[str, Any] | None = None,
    ) -> Trace:
        """Step 7: what happened, for the CLI's ``--trace``, the benchmark and the GUI."""
        request, generation = run.request, run.request.generation
        final = plan.to_image(outcome.handles)
        work_w, work_h = plan.work_size
        return Trace(
            stages={k: round(v, 4) for k, v in run.stages.items()},
            lora=lora,
            iterations=tuple(iterations),
            drag_iterations=outcome.iterations,
            reached=outcome.reached,
            final_handles=final,
            handles=tuple((float(x), float(y)) for x, y in plan.handles),
            targets=tuple((float(x), float(y)) for x, y in plan.targets),
            final_distances=tuple(
                round(float(np.hypot(*(np.array(f) - g))), 3)
                for f, g in zip(final, plan.targets, strict=True)
            ),
            image_size=plan.image_size,
            working_size=(work_w, work_h),
            feature_size=(plan.feature_hw[1], plan.feature_hw[0]),
            optimized_timestep=plan.t,
            device=str(self.device),
            dtype=str(self.pipe.unet.dtype).replace("torch.", ""),
            model=request.model,
            prompt=request.prompt if generation is None else generation.prompt,
            generated=generation is not None,
            guidance_scale=plan.guidance,
            ddim_steps=len(plan.schedule.timesteps),
            params=request.params,
            lora_params=request.lora,
            memory=_peak_memory(self.device),
            memory_plan=self.plan.name,
            memory_fallback=dict(self._fallback) if self._fallback else None,
            method=request.method,
            gooddrag=gooddrag,
            speed=request.speed,
        )

    # -- stages ------------------------------------------------------------------------------

    @property
    def _amp(self) -> bool:
        """Whether gradients need a scaler (float16 on CUDA)."""
        return self.device.type == "cuda" and self.dtype == torch.float16

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return half_autocast(self.device, self.dtype)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def _stage(
        self,
        stage: Stage,
        total: int,
        emit: EventSink,
        stages: dict[str, float],
        detail: str = "",
        *,
        timed: str | None = None,
    ) -> Iterator[None]:
        """Report ``stage`` around the body; its seconds go to ``stages[timed or stage]``."""
        emit(StageStarted(stage, total, detail))
        start = time.perf_counter()
        yield
        self._sync()
        name = timed or stage.value
        stages[name] = time.perf_counter() - start
        emit(StageFinished(stage, stages[name]))

    def _require_model(self) -> None:
        if self.pipe is None:
            raise DragStudioError("no model is loaded")

    def _text_embeddings(self, prompt: str) -> torch.Tensor:
        cached = self.caches.text_for(prompt)
        if cached is not None:
            return cached
        with resident(self.pipe.text_encoder, self.device, self.plan):
            emb = encode_prompt(self.pipe, prompt).to(self.device, self.pipe.unet.dtype)
        self.caches.put_text(prompt, emb)
        return emb

    def _prepare_lora(
        self,
        request: DragRequest,
        text: torch.Tensor,
        schedule: Schedule,
        emit: EventSink,
        token: CancelToken,
        stages: dict[str, float],
    ) -> LoraOutcome:
        unet = self.pipe.unet
        params = request.lora
        if params.steps == 0:
            with self._stage(Stage.LORA, 0, emit, stages, "skipped (0 steps)"):
                if self.caches.lora is not None or has_adapter(unet):
                    self.forget_lora()
            return LoraOutcome(0, False, "none")
        key = self.lora_key_for(request)
        current = self.caches.lora
        if current is not None and current.key == key and has_adapter(unet):
            with self._stage(Stage.LORA, 0, emit, stages, "reusing the LoRA in memory"):
                unet.enable_adapters()
            return LoraOutcome(params.steps, True, "memory", key)
        if self.lora_cache is not None:
            entry = cached_lora(self.lora_cache, key)
            if entry is not None:
                with self._stage(Stage.LORA, 0, emit, stages, "reusing the cached LoRA"):
                    state, cached_params = entry
                    try:
                        self.install_lora(key, cached_params, state)
                    except DragStudioError:
                        self.lora_cache.drop(key)
                        entry = None
                if entry is not None:
                    return LoraOutcome(params.steps, True, "disk", key)
        self.caches.invalidate_adapter()  # inversion and reference depend on the adapter
        with self._stage(Stage.LORA, params.steps, emit, stages, "fine-tuning LoRA"):

            def on_step(step: int, loss: float) -> None:
                emit(StepProgress(Stage.LORA, step, params.steps, loss=loss))

            try:
                with resident(self.pipe.vae, self.device, self.plan):
                    state = train_lora(
                        unet,
                        self.pipe.vae,
                        text,
                        request.identity_image,
                        schedule,
                        params,
                        device=self.device,
                        on_step=on_step,
                        check_cancel=token.check,
                        micro_batch=self.plan.lora_micro_batch,
                    )
            except BaseException:
                # A half-trained adapter must never be mistaken for a finished one.
                remove_adapter(unet)
                raise
            self.caches.lora = LoraInfo(key, params, state)
            warning = self._store_lora(key, state, params)
        return LoraOutcome(params.steps, False, "trained", key, cache_warning=warning)

    def _store_lora(self, key: str, state: dict[str, torch.Tensor], params: LoraParams) -> str:
        """Keep a trained LoRA in the cache; the cache is an optimisation, so a failure to
        write it (disk full, the folder is a file) is reported, never fatal to the edit."""
        if self.lora_cache is None:
            return ""
        try:
            cache_lora(self.lora_cache, key, state, params)
        except (OSError, ValueError, DragStudioError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return (
                f"the LoRA cache could not store the trained LoRA ({reason}); a later edit of "
                "this image will train it again"
            )
        return ""

    @torch.no_grad()
    def _encode(self, image: np.ndarray, digest: str, size: tuple[int, int]) -> torch.Tensor:
        """VAE posterior mean of the working image, scaled; computed once per image and size."""
        key = (self.model_identity, size, digest)
        cached: torch.Tensor | None = self.caches.get("latent", key)
        if cached is not None:
            return cached
        vae = self.pipe.vae
        x = imaging.to_model_input(image, size).to(self.device, vae.dtype)
        with resident(vae, self.device, self.plan):
            z: torch.Tensor = vae.encode(x).latent_dist.mean * float(vae.config.scaling_factor)
        self.caches.put("latent", key, z)
        return z

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        with resident(vae, self.device, self.plan):
            images = vae.decode(
                (latents / float(vae.config.scaling_factor)).to(self.device, vae.dtype),
                return_dict=False,
            )[0]
        return imaging.to_uint8(images)

    def _preview(
        self, model_output: torch.Tensor, z: torch.Tensor, t: int, schedule: Schedule
    ) -> np.ndarray:
        with torch.no_grad():
            _, x0 = schedule.split(model_output.float(), z.float(), t)
            return self._decode(x0)

    @torch.no_grad()
    def _invert(
        self,
        z0: torch.Tensor,
        text: torch.Tensor,
        schedule: Schedule,
        steps: int,
        emit: EventSink,
        token: CancelToken,
    ) -> torch.Tensor:
        unet = self.pipe.unet
        z = z0.float()
        for i, t in enumerate(reversed(schedule.timesteps[-steps:] if steps else ())):
            token.check()
            with self._autocast():
                out = unet(z.to(unet.dtype), t, encoder_hidden_states=text, return_dict=False)[0]
            z = schedule.inverse_step(out.float(), t, z)
            emit(StepProgress(Stage.INVERSION, i + 1, steps))
        return z

    def _keeps_reference(self, blocks: tuple[int, ...]) -> bool:
        """Whether the reference rows' keys/values are recorded and kept (the memory plan and
        ``reuse_reference`` allow it, and there is reference control to replay)."""
        return bool(blocks) and self.reuse_reference and self.plan.keep_reference_kv

    def _records_reference(self, blocks: tuple[int, ...], key: tuple[Any, ...]) -> bool:
        """Whether denoising under ``key`` must record the reference rows first."""
        return self._keeps_reference(blocks) and self.caches.get("reference", key) is None

    @staticmethod
    def _reference_kv_key(start: _Start, blocks: tuple[int, ...]) -> tuple[Any, ...]:
        """What the reference rows' keys/values depend on: the latent's inputs and the blocks."""
        return (*start.reference_key, tuple(blocks))

    @torch.no_grad()
    def _denoise_rows(
        self,
        z: torch.Tensor,
        text: torch.Tensor,
        guidance: float,
        schedule: Schedule,
        start: int,
        kv: ReferenceKV | None,
        on_step: Callable[[int], None],
        token: CancelToken,
    ) -> torch.Tensor:
        """DDIM from ``start`` to the end for the rows ``z`` (text already one per row; with
        guidance an (uncond, cond) pair per row); ``kv.step`` follows the loop."""
        unet = self.pipe.unet
        cfg = guidance > 1.0
        for i, t in enumerate(schedule.timesteps[start:]):
            token.check()
            if kv is not None:
                kv.step = i
            batch = z.repeat_interleave(2, dim=0) if cfg else z
            with self._autocast():
                out = unet(batch.to(unet.dtype), t, encoder_hidden_states=text, return_dict=False)[
                    0
                ]
            out = out.float()
            if cfg:
                # Rows come in (uncond, cond) pairs per latent: guide each pair.
                pairs = out.view(-1, 2, *out.shape[1:])
                out = pairs[:, 0] + guidance * (pairs[:, 1] - pairs[:, 0])
            z = schedule.step(out, t, z)
            on_step(i + 1)
        return z

    def _record_reference(
        self,
        reference: torch.Tensor,
        text: torch.Tensor,
        guidance: float,
        schedule: Schedule,
        start: int,
        blocks: tuple[int, ...],
        on_step: Callable[[int], None],
        token: CancelToken,
    ) -> ReferenceKV:
        """Denoise the reference rows alone under control, recording their keys and values at
        every step of the controlled layers. Points and mask play no part: background
        preparation runs it, and so does the first edit that finds no recording."""
        kv = ReferenceKV(alone=True)
        with reference_control(self.pipe.unet, blocks, kv):
            self._denoise_rows(
                reference.float(), text, guidance, schedule, start, kv, on_step, token
            )
        kv.alone = False
        return kv

    @torch.no_grad()
    def _denoise(
        self,
        reference: torch.Tensor,
        edited: torch.Tensor,
        text: torch.Tensor,
        guidance: float,
        schedule: Schedule,
        start: int,
        blocks: tuple[int, ...],
        reference_key: tuple[Any, ...],
        emit: EventSink,
        token: CancelToken,
    ) -> torch.Tensor:
        """Denoise the edited latent beside its reference; return the edited clean latent.

        Where the recording is kept (see :meth:`_keeps_reference`), the reference rows'
        keys and values come from the recording under ``reference_key`` — made now, alone,
        if there is none (progress then counts both passes) — and only the edited rows run.
        Otherwise the batch is ``[reference, edited]`` (with guidance ``[ref·uncond, ref·cond,
        edit·uncond, edit·cond]``) and the edited rows attend to their reference rows.
        """
        unet = self.pipe.unet
        steps = len(schedule.timesteps) - start
        if self._keeps_reference(blocks):
            kv: ReferenceKV | None = self.caches.get("reference", reference_key)
            done = 0
            if kv is None:
                kv = self._record_reference(
                    reference,
                    text,
                    guidance,
                    schedule,
                    start,
                    blocks,
                    lambda i: emit(StepProgress(Stage.DENOISE, i, 2 * steps)),
                    token,
                )
                self.caches.put("reference", reference_key, kv)  # complete recordings only
                done = steps
            kv.replay = True
            with reference_control(unet, blocks, kv):
                z = self._denoise_rows(
                    edited.float(),
                    text,
                    guidance,
                    schedule,
                    start,
                    kv,
                    lambda i: emit(StepProgress(Stage.DENOISE, done + i, done + steps)),
                    token,
                )
            return z[-1:]
        z = torch.cat([reference.float(), edited.float()])
        control = reference_control(unet, blocks) if blocks else contextlib.nullcontext()
        with control:
            z = self._denoise_rows(
                z,
                text.repeat(2, 1, 1),
                guidance,
                schedule,
                start,
                None,
                lambda i: emit(StepProgress(Stage.DENOISE, i, steps)),
                token,
            )
        return z[-1:]

    def _conditioning(self, prompt: str, negative: str, guidance: float) -> torch.Tensor:
        """``[uncond; cond]`` embeddings with guidance, ``cond`` alone without."""
        cond = self._text_embeddings(prompt)
        if guidance <= 1.0:
            return cond
        return torch.cat([self._text_embeddings(negative), cond])

    def generate(
        self,
        generation: Generation,
        model: str,
        on_event: EventSink | None = None,
        cancel: CancelToken | None = None,
        vae: str | None = None,
    ) -> tuple[np.ndarray, Generation]:
        """Generate an image and keep its latent trajectory, so it can be dragged exactly."""
        generation.validate(with_trajectory=False)
        emit = on_event or (lambda _e: None)
        token = cancel or CancelToken()
        stages: dict[str, float] = {}
        with self._stage(Stage.LOAD, 1, emit, stages):
            self.load_model(model, vae)
        unet = self.pipe.unet
        schedule = Schedule.from_scheduler(self.pipe.scheduler, generation.steps)
        text = self._conditioning(
            generation.prompt, generation.negative_prompt, generation.guidance_scale
        )
        with (
            _adapters_disabled(unet),
            self._stage(Stage.GENERATE, generation.steps, emit, stages),
        ):
            trajectory = run_generation(
                unet,
                text,
                schedule,
                generation,
                device=self.device,
                autocast=self._autocast,
                on_step=lambda i: emit(StepProgress(Stage.GENERATE, i, generation.steps)),
                check_cancel=token.check,
            )
            image = self._decode(torch.from_numpy(trajectory[-1:]).to(self.device))
        done = replace(generation, trajectory=trajectory)
        done.validate()
        return image, done


@contextlib.contextmanager
def _adapters_disabled(unet: Any) -> Iterator[None]:
    """Run without the identity LoRA (generated images need none); keep it for later drags."""
    if not has_adapter(unet):
        yield
        return
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def save_image(image: np.ndarray, path: Path) -> None:
    """Write an image atomically (temporary file in the same folder, then rename)."""
    from PIL import Image

    from backend.atomicio import atomic_file
    from backend.export import FORMATS

    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DragStudioError(f"cannot write {path.name}: use .png, .jpg or .webp")
    with atomic_file(path) as f:
        Image.fromarray(image).save(f, format=fmt)
