"""Load a Stable Diffusion pipeline from a hub id, a local diffusers folder or one checkpoint file.

Whatever the source, the result is a diffusers ``StableDiffusionPipeline`` with SD-1.5's DDIM
scheduler settings, on one device, in half precision on GPUs and float32 on CPUs.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import DragStudioError, ModelNotFound

SINGLE_FILE_SUFFIXES = (".safetensors",)
UNSAFE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


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
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


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
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec.replace("/", "", 1)
    if looks_like_path or spec.lower().endswith(SINGLE_FILE_SUFFIXES + UNSAFE_SUFFIXES):
        raise ModelNotFound(f"model not found: no file or folder at {spec}")
    if spec.count("/") != 1 or any(c.isspace() for c in spec):
        raise ModelNotFound(
            f"model not found: {spec!r} is neither a local path nor a hub id like 'owner/name'"
        )
    return ModelSource("hub", spec)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


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
    ``allow_download`` and the hub is not forced offline.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    source = resolve_source(spec)
    dtype = dtype or default_dtype(device)
    common: dict[str, Any] = {
        "torch_dtype": dtype,
        "safety_checker": None,
        "requires_safety_checker": False,
    }
    try:
        if source.kind == "folder":
            pipe = StableDiffusionPipeline.from_pretrained(
                source.location, local_files_only=True, **common
            )
        elif source.kind == "file":
            kwargs: dict[str, Any] = dict(common)
            if single_file_config:
                kwargs["config"] = single_file_config
            pipe = StableDiffusionPipeline.from_single_file(
                source.location, local_files_only=not allow_download or _hub_offline(), **kwargs
            )
        else:
            try:
                pipe = StableDiffusionPipeline.from_pretrained(
                    source.location, local_files_only=True, **common
                )
            except Exception:
                if not allow_download or _hub_offline():
                    raise
                pipe = StableDiffusionPipeline.from_pretrained(source.location, **common)
    except ModelNotFound:
        raise
    except Exception as exc:
        what = {
            "folder": f"the diffusers folder {source.location}",
            "file": f"the checkpoint {source.location}",
            "hub": f"'{source.location}' in the Hugging Face cache or on the hub",
        }[source.kind]
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(
            f"could not load {what}: {reason[:300]}. Download it with `huggingface-cli download "
            f"{source.location if source.kind == 'hub' else 'OWNER/NAME'}`, or pass a local "
            "diffusers folder or .safetensors file with --model"
        ) from exc

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


def free_pipeline(pipe: Any) -> None:
    """Drop a pipeline and give its memory back to the device."""
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
