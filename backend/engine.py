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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend import imaging
from backend.attention import ReferenceKV, reference_control
from backend.cancel import CancelToken
from backend.ddim import Schedule
from backend.drag import DragStepInfo, optimize_latent
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
from backend.lora import (
    cache_lora,
    cached_lora,
    has_adapter,
    load_adapter_state,
    lora_key,
    lora_to_bytes,
    remove_adapter,
    train_lora,
)
from backend.lora_cache import LoraCache
from backend.models import (
    ModelSource,
    default_dtype,
    encode_prompt,
    load_pipeline,
    pick_device,
    resolve_source,
)
from backend.request import DragRequest, LoraParams
from backend.result import EditResult, Iteration, LoraOutcome, Trace
from backend.sampling import guide, run_generation

EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class LoraInfo:
    """The adapter currently in the UNet, for saving into projects."""

    key: str
    params: LoraParams
    state: dict[str, torch.Tensor]


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
    ) -> None:
        self.device = pick_device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.lora_cache = lora_cache
        self.allow_download = allow_download
        # Configs + tokenizer for .safetensors checkpoints (diffusers folder or hub id; SD-1.5's).
        self.single_file_config = single_file_config
        self.reuse_reference = reuse_reference
        """Keep the reference rows' attention keys/values so re-drags denoise only the edit."""
        self.pipe: Any = None
        self.source: ModelSource | None = None
        self.model_spec: str | None = None
        self._lora: LoraInfo | None = None
        self._text_cache: dict[str, torch.Tensor] = {}
        self._latent_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self._inversion_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self._reference_cache: tuple[tuple[Any, ...], ReferenceKV] | None = None

    # -- model -------------------------------------------------------------------------------

    def load_model(self, spec: str) -> float:
        """Load ``spec`` unless it is already loaded; return the seconds it took.

        The old model is freed before the new one loads, so two never share the GPU; if the new
        one fails, the old one is loaded again and the error is raised.
        """
        if self.pipe is not None and spec == self.model_spec:
            return 0.0
        resolve_source(spec)  # refuse bad paths and unsafe files before dropping anything
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
            raise
        self.pipe, self.source, self.model_spec = pipe, source, spec
        return time.perf_counter() - start

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

    def _drop_model(self) -> None:
        import gc

        self.pipe = None
        self.source = None
        self.model_spec = None
        self._lora = None
        self._text_cache.clear()
        self._latent_cache = None
        self._inversion_cache = None
        self._reference_cache = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def release_memory(self) -> None:
        """Give cached device memory back, e.g. after an out-of-memory error."""
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- LoRA --------------------------------------------------------------------------------

    @property
    def current_lora(self) -> LoraInfo | None:
        return self._lora

    def export_lora(self, key: str) -> bytes | None:
        """The safetensors file of the LoRA in memory if it is ``key``'s, else None: how a
        trained LoRA leaves the engine (into a project)."""
        current = self._lora
        if current is None or current.key != key:
            return None
        return lora_to_bytes(current.state, current.params, key)

    def install_lora(self, key: str, params: LoraParams, state: dict[str, torch.Tensor]) -> None:
        """Put a previously trained adapter (e.g. from a project file) into the loaded UNet."""
        self._require_model()
        load_adapter_state(self.pipe.unet, params, state)
        self._lora = LoraInfo(key, params, state)

    def forget_lora(self) -> None:
        """Drop the adapter in memory so the next edit trains (or loads) a fresh one."""
        if self.pipe is not None:
            remove_adapter(self.pipe.unet)
        self._lora = None
        self._inversion_cache = None
        self._reference_cache = None

    def lora_key_for(self, request: DragRequest) -> str:
        self._require_model()
        assert self.source is not None
        return lora_key(request.identity_image, self.source.identity, request.prompt, request.lora)

    # -- editing -----------------------------------------------------------------------------

    def edit(
        self,
        request: DragRequest,
        on_event: EventSink | None = None,
        cancel: CancelToken | None = None,
    ) -> EditResult:
        """Run one drag edit. Raises :class:`Cancelled` or :class:`DragStudioError` on failure."""
        request.validate()
        emit = on_event or (lambda _e: None)
        token = cancel or CancelToken()
        stages: dict[str, float] = {}
        t_total = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

        with self._stage(Stage.LOAD, 1, emit, stages):
            token.check()
            self.load_model(request.model)
            token.check()
        pipe = self.pipe
        unet, _vae = pipe.unet, pipe.vae
        params = request.params
        schedule = Schedule.from_scheduler(pipe.scheduler, params.inference_steps)
        image_size = request.image_size
        work_w, work_h = imaging.working_size(*image_size, params.working_width)
        latent_hw = (work_h // 8, work_w // 8)
        feature_hw = (work_h // 2, work_w // 2)
        generation = request.generation
        if generation is not None:
            # Appendix C: the generation's own latents replace LoRA and inversion.
            if image_size != (generation.width, generation.height):
                raise InvalidRequest(
                    f"the image is {image_size[0]}×{image_size[1]} but it was generated at "
                    f"{generation.width}×{generation.height}"
                )
            schedule = Schedule.from_scheduler(pipe.scheduler, generation.steps)
            work_w, work_h = generation.width, generation.height
            latent_hw = (work_h // 8, work_w // 8)
            feature_hw = (work_h // 2, work_w // 2)
            guidance = generation.guidance_scale
            text = self._conditioning(generation.prompt, generation.negative_prompt, guidance)
        else:
            guidance = 1.0  # real photos: no classifier-free guidance (paper §4.1)
            text = self._text_embeddings(request.prompt)
        cfg = guidance > 1.0
        inv_steps = max(1, round(params.inversion_strength * len(schedule.timesteps)))
        start = schedule.start_index(inv_steps)
        t = schedule.timesteps[start]

        if generation is not None:
            with self._stage(Stage.LORA, 0, emit, stages, "skipped (generated image)"):
                pass
            lora_detail = LoraOutcome(0, False, "generated")
            with self._stage(Stage.INVERSION, 0, emit, stages, "skipped (generated image)"):
                start_latent = generation.trajectory[start : start + 1]
                zt = torch.from_numpy(start_latent).to(self.device)
            reference_key: tuple[Any, ...] = (
                self.model_spec,
                "generated",
                hashlib.sha256(start_latent.tobytes()).hexdigest(),
                generation.prompt,
                generation.negative_prompt,
                guidance,
                len(schedule.timesteps),
                start,
            )
        else:
            # 1. Identity-preserving LoRA.
            lora_detail = self._prepare_lora(request, text, schedule, emit, token, stages)
            # 2. DDIM inversion to z_t, reused when nothing it depends on changed.
            digest = _pixels_digest(request.image)
            reference_key = (
                self.model_spec,
                lora_detail.key or "no-lora",
                digest,
                (work_w, work_h),
                request.prompt,
                len(schedule.timesteps),
                inv_steps,
            )
            cached = self._inversion_cache
            if cached is not None and cached[0] == reference_key:
                with self._stage(Stage.INVERSION, 0, emit, stages, "reusing the inverted latent"):
                    zt = cached[1]
            else:
                with self._stage(Stage.INVERSION, inv_steps, emit, stages):
                    z0 = self._encode(request.image, digest, (work_w, work_h))
                    zt = self._invert(z0, text, schedule, inv_steps, emit, token)
                self._inversion_cache = (reference_key, zt)

        # 3. Latent optimisation.
        pairs = request.pairs
        handles_img = np.array([p.handle for p in pairs], dtype=np.float64)
        targets_img = np.array([p.target for p in pairs], dtype=np.float64)
        handles_f = imaging.feature_grid_points(handles_img, image_size, feature_hw)
        targets_f = imaging.feature_grid_points(targets_img, image_size, feature_hw)
        mask = request.editable_mask
        keep = None
        if mask is not None:
            keep = (1.0 - imaging.mask_to_latent(mask, latent_hw)).to(self.device)
        iterations: list[Iteration] = []

        def to_image(h: torch.Tensor) -> tuple[tuple[float, float], ...]:
            pts = imaging.feature_to_image(h.cpu().double().numpy(), image_size, feature_hw)
            return tuple((round(float(x), 2), round(float(y), 2)) for x, y in pts)

        w_uncond, w_cond = feature_weights(guidance) if cfg else (0.0, 1.0)

        def forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            batch = torch.cat([z, z]) if cfg else z
            out, feats = unet_with_features(
                unet, batch.to(unet.dtype), t, text, params.feature_block, feature_hw
            )
            if not cfg:
                return out, feats
            # CFG: guided prediction for the mask term; both feature maps side by side.
            f_uncond, f_cond = feats.chunk(2)
            return guide(out.float(), guidance), torch.cat(
                [w_uncond * f_uncond, w_cond * f_cond], dim=1
            )

        def on_drag_step(info: DragStepInfo) -> None:
            handles = to_image(info.handles)
            iterations.append(Iteration(info.step, handles, info.loss))
            preview = None
            if params.preview_every and info.step % params.preview_every == 0:
                preview = self._preview(info.model_output, info.latent, t, schedule)
            emit(
                StepProgress(
                    Stage.DRAG,
                    info.step,
                    params.drag_steps,
                    loss=info.loss,
                    handles=handles,
                    preview=preview,
                )
            )

        adapters = _adapters_disabled(unet) if generation is not None else contextlib.nullcontext()
        with adapters, self._stage(Stage.DRAG, params.drag_steps, emit, stages):
            scaler = torch.amp.GradScaler("cuda") if self._amp else None
            outcome = optimize_latent(
                zt,
                forward,
                lambda out, z: schedule.step(out, t, z),
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
                check_cancel=token.check,
                autocast=self._autocast,
                scaler=scaler,
            )

        # 4. Denoising with reference-latent-control.
        denoise_steps = len(schedule.timesteps) - start
        adapters = _adapters_disabled(unet) if generation is not None else contextlib.nullcontext()
        with adapters, self._stage(Stage.DENOISE, denoise_steps, emit, stages):
            edited = self._denoise(
                zt,
                outcome.latent,
                text,
                guidance,
                schedule,
                start,
                params.ref_control_blocks,
                (*reference_key, tuple(params.ref_control_blocks)),
                emit,
                token,
            )
            working = self._decode(edited)
            token.check()

        result = imaging.restore_resolution(working, image_size)
        if params.keep_unmasked_pixels and mask is not None:
            result = imaging.keep_original_outside(request.image, result, mask)
        stages["total"] = time.perf_counter() - t_total
        final = to_image(outcome.handles)
        trace = Trace(
            stages={k: round(v, 4) for k, v in stages.items()},
            lora=lora_detail,
            iterations=tuple(iterations),
            drag_iterations=outcome.iterations,
            reached=outcome.reached,
            final_handles=final,
            handles=tuple((float(x), float(y)) for x, y in handles_img),
            targets=tuple((float(x), float(y)) for x, y in targets_img),
            final_distances=tuple(
                round(float(np.hypot(*(np.array(f) - g))), 3)
                for f, g in zip(final, targets_img, strict=True)
            ),
            image_size=image_size,
            working_size=(work_w, work_h),
            feature_size=(feature_hw[1], feature_hw[0]),
            optimized_timestep=t,
            device=str(self.device),
            dtype=str(unet.dtype).replace("torch.", ""),
            model=request.model,
            prompt=request.prompt if generation is None else generation.prompt,
            generated=generation is not None,
            guidance_scale=guidance,
            ddim_steps=len(schedule.timesteps),
            params=params,
            lora_params=request.lora,
            memory=_peak_memory(self.device),
        )
        return EditResult(result, trace, working)

    # -- stages ------------------------------------------------------------------------------

    @property
    def _amp(self) -> bool:
        return self.device.type == "cuda" and self.dtype == torch.float16

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def _stage(
        self, stage: Stage, total: int, emit: EventSink, stages: dict[str, float], detail: str = ""
    ) -> Iterator[None]:
        emit(StageStarted(stage, total, detail))
        start = time.perf_counter()
        yield
        self._sync()
        stages[stage.value] = time.perf_counter() - start
        emit(StageFinished(stage, stages[stage.value]))

    def _require_model(self) -> None:
        if self.pipe is None:
            raise DragStudioError("no model is loaded")

    def _text_embeddings(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text_cache:
            emb = encode_prompt(self.pipe, prompt)
            if len(self._text_cache) > 8:
                self._text_cache.clear()
            self._text_cache[prompt] = emb.to(self.pipe.unet.dtype)
        return self._text_cache[prompt]

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
                if self._lora is not None or has_adapter(unet):
                    self.forget_lora()
            return LoraOutcome(0, False, "none")
        key = self.lora_key_for(request)
        if self._lora is not None and self._lora.key == key and has_adapter(unet):
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
        self._lora = None
        self._inversion_cache = None  # both depend on the adapter about to change
        self._reference_cache = None
        with self._stage(Stage.LORA, params.steps, emit, stages, "fine-tuning LoRA"):

            def on_step(step: int, loss: float) -> None:
                emit(StepProgress(Stage.LORA, step, params.steps, loss=loss))

            try:
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
                )
            except BaseException:
                # A half-trained adapter must never be mistaken for a finished one.
                remove_adapter(unet)
                raise
            self._lora = LoraInfo(key, params, state)
            if self.lora_cache is not None:
                cache_lora(self.lora_cache, key, state, params)
        return LoraOutcome(params.steps, False, "trained", key)

    @torch.no_grad()
    def _encode(self, image: np.ndarray, digest: str, size: tuple[int, int]) -> torch.Tensor:
        """VAE posterior mean of the working image, scaled; computed once per image and size."""
        key = (self.model_spec, size, digest)
        if self._latent_cache is not None and self._latent_cache[0] == key:
            return self._latent_cache[1]
        vae = self.pipe.vae
        x = imaging.to_model_input(image, size).to(self.device, vae.dtype)
        z: torch.Tensor = vae.encode(x).latent_dist.mean * float(vae.config.scaling_factor)
        self._latent_cache = (key, z)
        return z

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        images = vae.decode(
            (latents / float(vae.config.scaling_factor)).to(vae.dtype), return_dict=False
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

        The batch is ``[reference, edited]`` (with guidance ``[ref·uncond, ref·cond,
        edit·uncond, edit·cond]``) and the edited rows attend to their reference rows. When the
        same reference was denoised before, its recorded keys and values are replayed and only
        the edited rows run.
        """
        unet = self.pipe.unet
        cfg = guidance > 1.0
        kv: ReferenceKV | None = None
        replay = False
        if blocks and self.reuse_reference:
            cached = self._reference_cache
            replay = cached is not None and cached[0] == reference_key
            kv = cached[1] if replay and cached is not None else ReferenceKV()
            kv.replay = replay
        z = edited.float() if replay else torch.cat([reference.float(), edited.float()])
        emb = text if replay else text.repeat(2, 1, 1)
        timesteps = schedule.timesteps[start:]
        control = reference_control(unet, blocks, kv) if blocks else contextlib.nullcontext()
        with control:
            for i, t in enumerate(timesteps):
                token.check()
                if kv is not None:
                    kv.step = i
                batch = z.repeat_interleave(2, dim=0) if cfg else z
                with self._autocast():
                    out = unet(
                        batch.to(unet.dtype), t, encoder_hidden_states=emb, return_dict=False
                    )[0].float()
                if cfg:
                    # Rows come in (uncond, cond) pairs per latent: guide each pair.
                    pairs = out.view(-1, 2, *out.shape[1:])
                    out = pairs[:, 0] + guidance * (pairs[:, 1] - pairs[:, 0])
                z = schedule.step(out, t, z)
                emit(StepProgress(Stage.DENOISE, i + 1, len(timesteps)))
        if kv is not None and not replay:
            self._reference_cache = (reference_key, kv)  # only complete recordings are kept
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
    ) -> tuple[np.ndarray, Generation]:
        """Generate an image and keep its latent trajectory, so it can be dragged exactly."""
        generation.validate(with_trajectory=False)
        emit = on_event or (lambda _e: None)
        token = cancel or CancelToken()
        stages: dict[str, float] = {}
        with self._stage(Stage.LOAD, 1, emit, stages):
            self.load_model(model)
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


def _pixels_digest(image: np.ndarray) -> str:
    h = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def save_image(image: np.ndarray, path: Path) -> None:
    """Write an image atomically (temporary file in the same folder, then rename)."""
    from PIL import Image

    from backend.atomicio import atomic_file

    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise DragStudioError(f"cannot write {path.name}: use .png, .jpg or .webp")
    with atomic_file(path) as f:
        Image.fromarray(image).save(f, format=fmt)
