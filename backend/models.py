"""Load a Stable Diffusion pipeline from a hub id, a local diffusers folder or one checkpoint file.

Whatever the source, the result is a diffusers ``StableDiffusionPipeline`` with SD-1.5's DDIM
scheduler settings, on one device, in half precision on GPUs and float32 on CPUs.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import DragStudioError, ModelNotFound, VaeNotFound

SINGLE_FILE_SUFFIXES = (".safetensors",)
UNSAFE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Where a single-file SD-1.5 fine-tune takes its configs and tokenizer from, unless told otherwise.
DEFAULT_SINGLE_FILE_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# What diffusers fetches of a config repo for from_single_file: configs and tokenizer, no weights.
_CONFIG_PATTERNS = ["*.json", "**/*.json", "*.txt", "**/*.txt", "**/*.model"]


def free_memory(device: torch.device) -> None:
    """Give memory back: collect Python garbage, then return CUDA's cached blocks."""

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; or exactly what was asked for, if it exists."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise DragStudioError(f"unknown device {requested!r}: use auto, cpu, cuda or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DragStudioError("CUDA was requested but no CUDA GPU is available; use --device cpu")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise DragStudioError("Apple MPS was requested but is not available; use --device cpu")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """Half precision where autocast and a gradient scaler guard it (CUDA), float32 elsewhere:
    without autocast, float32 LoRA weights on a half-precision UNet mix dtypes (Apple MPS)."""
    return torch.float16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved from what the user typed."""

    kind: str  # "folder", "file" or "hub"
    location: str

    @property
    def identity(self) -> str:
        """A stable name for caches: the resolved path or the hub id."""
        return f"{self.kind}:{self.location}"


def resolve_source(spec: str) -> ModelSource:
    """Tell a local folder, a checkpoint file and a hub id apart, refusing unsafe files."""
    spec = spec.strip()
    if not spec:
        raise ModelNotFound("no model given: pass a hub id, a diffusers folder or a .safetensors")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFound(
                f"{path} is a folder but not a diffusers pipeline (no model_index.json in it)"
            )
        return ModelSource("folder", str(path.resolve()))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in SINGLE_FILE_SUFFIXES:
            return ModelSource("file", str(path.resolve()))
        if suffix in UNSAFE_SUFFIXES:
            raise ModelNotFound(
                f"{path.name} is a pickled checkpoint, which can run code when loaded; "
                "convert it to .safetensors or use a diffusers folder"
            )
        raise ModelNotFound(f"{path.name}: not a model file (expected .safetensors)")
    return _hub_source(spec, ModelNotFound, "model", "file or folder", "path")


def _hub_source(
    spec: str, error: type[Exception], what: str, no_path: str, local: str
) -> ModelSource:
    """``spec`` names nothing on disk: it is a hub id (``owner/name``), or ``error`` says why not.

    Shared by models and VAEs so both tell a mistyped path from a hub id the same way."""
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec.replace("/", "", 1)
    if looks_like_path or spec.lower().endswith(SINGLE_FILE_SUFFIXES + UNSAFE_SUFFIXES):
        raise error(f"{what} not found: no {no_path} at {spec}")
    if spec.count("/") != 1 or any(c.isspace() for c in spec):
        raise error(
            f"{what} not found: {spec!r} is neither a local {local} nor a hub id like 'owner/name'"
        )
    return ModelSource("hub", spec)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def resolve_single_file_config(
    checkpoint: str, config: str | None = None, *, allow_download: bool = True
) -> str:
    """Return the local diffusers folder whose configs and tokenizer go with ``checkpoint``.

    A single ``.safetensors`` holds weights only; layer sizes, scheduler and tokenizer come from a
    diffusers model of the same base (SD-1.5 by default). This is resolved here, cache first,
    because diffusers' ``from_single_file`` quietly goes online when ``local_files_only`` finds
    nothing cached, and fails with a network error instead of saying what to pass.
    """
    spec = (config or DEFAULT_SINGLE_FILE_CONFIG).strip()
    try:
        source = resolve_source(spec)
    except ModelNotFound as exc:
        raise ModelNotFound(f"model config: {exc}") from exc
    if source.kind == "folder":
        return source.location
    if source.kind != "hub":
        raise ModelNotFound(
            f"model config {spec!r} is a file; pass a diffusers folder or the base model's hub id"
        )
    from huggingface_hub import snapshot_download

    offline = not allow_download or _hub_offline()
    try:
        return str(
            snapshot_download(spec, allow_patterns=_CONFIG_PATTERNS, local_files_only=offline)
        )
    except Exception as exc:
        where = "not in the Hugging Face cache" + (
            " and downloads are off" if offline else " and could not be downloaded"
        )
        raise ModelNotFound(
            f"{Path(checkpoint).name} holds weights only; its configs and tokenizer come from "
            f"'{spec}', which is {where}. Pass --model-config with a local diffusers folder of "
            f"the same base model, or fetch the configs once with `hf download {spec} "
            "--include '*.json' '*.txt'`"
        ) from exc


def _pretrained_dtype_kwarg() -> str:
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def load_pipeline(
    spec: str,
    device: torch.device,
    dtype: torch.dtype | None = None,
    *,
    allow_download: bool = True,
    single_file_config: str | None = None,
) -> tuple[Any, ModelSource]:
    """Load ``spec`` onto ``device``; raise :class:`ModelNotFound` with a helpful message.

    Hub ids are looked up in the local Hugging Face cache first; a download is tried only when
    ``allow_download`` and the hub is not forced offline. A single checkpoint file takes its
    configs and tokenizer from ``single_file_config`` (a diffusers folder or hub id; SD-1.5's by
    default), see :func:`resolve_single_file_config`.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # progress is ours to report
    with contextlib.suppress(Exception):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    source = resolve_source(spec)
    dtype = dtype or default_dtype(device)
    common: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    # Newer diffusers call it `dtype` in from_pretrained; from_single_file still `torch_dtype`.
    pretrained = {**common, _pretrained_dtype_kwarg(): dtype}
    single = {**common, "torch_dtype": dtype}
    try:
        if source.kind == "folder":
            pipe = StableDiffusionPipeline.from_pretrained(
                source.location, local_files_only=True, **pretrained
            )
        elif source.kind == "file":
            config = resolve_single_file_config(
                source.location, single_file_config, allow_download=allow_download
            )
            pipe = StableDiffusionPipeline.from_single_file(
                source.location, config=config, local_files_only=True, **single
            )
        else:
            try:
                pipe = StableDiffusionPipeline.from_pretrained(
                    source.location, local_files_only=True, **pretrained
                )
            except Exception:
                if not allow_download or _hub_offline():
                    raise
                pipe = StableDiffusionPipeline.from_pretrained(source.location, **pretrained)
    except ModelNotFound:
        raise
    except Exception as exc:
        what = {
            "folder": f"the diffusers folder {source.location}",
            "file": f"the checkpoint {source.location}",
            "hub": f"'{source.location}' in the Hugging Face cache or on the hub",
        }[source.kind]
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = {
            "file": "Is it a Stable Diffusion 1.x checkpoint? Pass --model-config with the "
            "diffusers folder of its base model",
            "folder": "Is it a complete Stable Diffusion 1.x diffusers pipeline (model_index.json, "
            "unet/, vae/, text_encoder/, tokenizer/, scheduler/)?",
            "hub": f"Download it with `hf download {source.location}`, or pass a local "
            "diffusers folder or .safetensors file with --model",
        }[source.kind]
        raise ModelNotFound(f"could not load {what}: {reason[:300]}. {hint}") from exc

    # DragDiffusion works with DDIM whatever scheduler the checkpoint shipped with; keep the
    # checkpoint's betas and prediction type, force SD-1.5's DDIM conventions.
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, source


@torch.no_grad()
def encode_prompt(pipe: Any, prompt: str) -> torch.Tensor:
    """CLIP text embeddings ``(1, 77, D)`` of ``prompt``, padded and truncated like SD does."""
    tok = pipe.tokenizer
    ids = tok(
        prompt,
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.text_encoder.device)
    embeddings: torch.Tensor = pipe.text_encoder(ids)[0]
    return embeddings


def resolve_vae_source(spec: str) -> ModelSource:
    """A VAE is a diffusers ``AutoencoderKL`` folder (with config.json) or a hub id; pickles
    and single files are refused, as for models."""
    spec = spec.strip()
    if not spec:
        raise VaeNotFound("no VAE given: pass a diffusers VAE folder or a hub id")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VaeNotFound(f"VAE {path}: a folder but not a diffusers VAE (no config.json)")
        return ModelSource("folder", str(path.resolve()))
    if path.is_file():
        why = (
            "a pickled checkpoint, which can run code when loaded"
            if path.suffix.lower() in UNSAFE_SUFFIXES
            else "a single file"
        )
        raise VaeNotFound(f"VAE {path.name} is {why}; use a diffusers VAE folder or a hub id")
    return _hub_source(spec, VaeNotFound, "VAE", "folder", "folder")


def load_vae(
    spec: str, device: torch.device, dtype: torch.dtype, *, allow_download: bool = True
) -> tuple[Any, ModelSource]:
    """Load an ``AutoencoderKL`` to replace a pipeline's own VAE: local files (or the hub
    cache) first, a download only when allowed; frozen and in eval mode like the pipeline's."""
    from diffusers import AutoencoderKL

    source = resolve_vae_source(spec)
    kwargs: dict[str, Any] = {_pretrained_dtype_kwarg(): dtype}
    try:
        try:
            vae = AutoencoderKL.from_pretrained(source.location, local_files_only=True, **kwargs)
        except Exception:
            if source.kind != "hub" or not allow_download or _hub_offline():
                raise
            vae = AutoencoderKL.from_pretrained(source.location, **kwargs)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "" if source.kind == "folder" else " in the Hugging Face cache or on the hub"
        raise VaeNotFound(
            f"could not load the VAE {source.location}{where}: {reason[:300]}"
        ) from exc
    vae.to(device, dtype)
    vae.requires_grad_(False)
    vae.eval()
    return vae, source
