"""Identity-preserving LoRA fine-tuning (paper §3.2) with peft, saved as safetensors.

The adapter sits on ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` of every UNet attention layer.
Training follows the authors: AdamW, constant learning rate, batches of random 512² crops of the
image after resizing its short side to 512, uniform timesteps, epsilon (or v) MSE.

Speed without changing the method: the VAE encodes each distinct crop once — a square image has
exactly one crop, so it is encoded once for the whole run instead of four times per step — and
each step draws fresh latents from the cached posterior, as re-encoding would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backend.ddim import Schedule
from backend.errors import DragStudioError
from backend.lora_cache import LoraCache
from backend.project import LORA, BundledLora
from backend.request import DragRequest, LoraParams, params_to_dict

ADAPTER = "dragstudio"
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
SPEED_FIELDS = ("fused_adamw", "mixed_precision", "compile_unet")
"""LoraParams fields that choose how training runs, not what it learns (all off by default)."""


def lora_config(params: LoraParams) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=params.rank,
        lora_alpha=params.alpha,  # type: ignore[arg-type]  # peft accepts floats at run time
        init_lora_weights="gaussian",
        target_modules=list(TARGET_MODULES),
    )


def has_adapter(unet: Any) -> bool:
    return ADAPTER in (getattr(unet, "peft_config", None) or {})


def attach_fresh_adapter(unet: Any, params: LoraParams) -> None:
    """Give the UNet a newly initialised adapter (seeded), replacing any earlier one."""
    remove_adapter(unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        unet.add_adapter(lora_config(params), adapter_name=ADAPTER)
    # Train and keep adapter weights in float32 even when the UNet runs in half precision.
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
    unet.set_adapter(ADAPTER)


def remove_adapter(unet: Any) -> None:
    if has_adapter(unet):
        unet.delete_adapters(ADAPTER)


def adapter_state(unet: Any) -> dict[str, torch.Tensor]:
    """The adapter's weights, on the CPU, detached (safe to keep or save)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def state_problem(
    state: dict[str, torch.Tensor], expected: dict[str, tuple[torch.Size, torch.dtype]]
) -> str | None:
    """Why ``state`` cannot be this model's adapter: keys, shapes, dtypes, finite values."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        names = (missing or extra)[:2]
        what = "lacks" if missing else "has unexpected"
        return f"it {what} weights for this model ({', '.join(n[:80] for n in names)}…)"
    for name, (shape, _dtype) in expected.items():
        t = state[name]
        if t.shape != shape:
            return f"{name[:80]} has shape {tuple(t.shape)}, the model needs {tuple(shape)}"
        if not t.dtype.is_floating_point:
            return f"{name[:80]} holds {t.dtype}, not floating-point weights"
        if not bool(torch.isfinite(t).all()):
            return f"{name[:80]} contains NaN or infinity"
    return None


def load_adapter_state(unet: Any, params: LoraParams, state: dict[str, torch.Tensor]) -> None:
    """Attach an adapter with ``params``'s shape and load ``state`` into it, strictly.

    Keys, shapes, dtypes and finiteness are checked first: a LoRA that parses but cannot be
    used raises :class:`DragStudioError` saying why, and leaves no adapter attached.
    """
    from peft.utils import set_peft_model_state_dict

    attach_fresh_adapter(unet, params)
    expected = {k: (v.shape, v.dtype) for k, v in adapter_state(unet).items()}
    problem = state_problem(state, expected)
    if problem:
        remove_adapter(unet)
        raise DragStudioError(f"the saved LoRA does not fit this model: {problem}")
    set_peft_model_state_dict(unet, state, adapter_name=ADAPTER)


def save_lora(path: Path, state: dict[str, torch.Tensor], params: LoraParams, key: str) -> None:
    """Write ``state`` as safetensors with its parameters in the metadata, atomically."""
    from backend.atomicio import write_atomic

    write_atomic(path, lora_to_bytes(state, params, key))


def lora_to_bytes(state: dict[str, torch.Tensor], params: LoraParams, key: str) -> bytes:
    """The bytes :func:`save_lora` would write (projects bundle LoRAs this way)."""
    from safetensors.torch import save

    metadata = {
        "format": "dragstudio-lora",
        "params": json.dumps(params_to_dict(params)),
        "key": key,
        "target_modules": json.dumps(list(TARGET_MODULES)),
    }
    return save(state, metadata=metadata)


def lora_from_bytes(
    data: bytes, name: str = "the LoRA"
) -> tuple[dict[str, torch.Tensor], LoraParams, str]:
    """Read what :func:`lora_to_bytes` made (safetensors: no code runs on load); errors name
    ``name`` (e.g. the project member), not the private temporary file."""
    import tempfile

    # safe_open wants a file; a private temporary one keeps memory use to one copy.
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(data)
        f.flush()
        return read_lora(Path(f.name), name)


def read_lora(
    path: Path, name: str | None = None
) -> tuple[dict[str, torch.Tensor], LoraParams, str]:
    """Read a LoRA written by :func:`save_lora` (safetensors: no code runs on load)."""
    from safetensors import safe_open

    from backend.request import params_from_dict

    label = name or path.name
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if metadata.get("format") != "dragstudio-lora":
            raise DragStudioError(f"{label} is not a DragStudio LoRA")
        params = params_from_dict(LoraParams, json.loads(metadata.get("params", "{}")))
        return state, params, metadata.get("key", "")
    except DragStudioError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DragStudioError(f"cannot read {label}: {detail}") from exc


def cached_lora(cache: LoraCache, key: str) -> tuple[dict[str, torch.Tensor], LoraParams] | None:
    """The adapter cached under ``key``, or None (a corrupt entry is deleted)."""
    path = cache.entry_path(key)
    if path is None:
        return None
    try:
        state, params, stored_key = read_lora(path)
        if stored_key != key:
            raise DragStudioError("key mismatch")
    except DragStudioError:
        cache.drop(key)
        return None
    cache.touch(key)
    return state, params


def cache_lora(
    cache: LoraCache, key: str, state: dict[str, torch.Tensor], params: LoraParams
) -> None:
    """Store an adapter in ``cache`` atomically (old entries beyond its limit are evicted)."""
    cache.put_bytes(key, lora_to_bytes(state, params, key))


def lora_key(image: np.ndarray, model_identity: str, prompt: str, params: LoraParams) -> str:
    """What a trained LoRA depends on: the image pixels, the model, the prompt, the parameters."""
    h = hashlib.sha256()
    h.update(f"{image.shape}|{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).data.cast("B"))  # no 2nd copy of a big photo
    h.update(b"\0" + model_identity.encode() + b"\0" + prompt.encode() + b"\0")
    h.update(json.dumps(key_params(params), sort_keys=True).encode())
    return h.hexdigest()


def key_params(params: LoraParams) -> dict[str, Any]:
    """The parameters a LoRA's key hashes: speed options count only when on (they change
    the weights slightly), so keys made before those options existed stay valid."""
    data = params_to_dict(params)
    for name in SPEED_FIELDS:
        if not data.get(name):
            data.pop(name, None)
    return data


def training_image(image: np.ndarray, resolution: int = 512) -> Image.Image:
    """The image resized so its short side is ``resolution`` (bilinear), as the authors do."""
    pil = Image.fromarray(image)
    w, h = pil.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    return pil.resize(size, Image.Resampling.BILINEAR) if size != (w, h) else pil


class CropEncoder:
    """Encodes square crops of one image with the VAE, each distinct crop only once."""

    def __init__(
        self,
        vae: Any,
        image: Image.Image,
        device: torch.device,
        dtype: torch.dtype,
        crop: int = 512,
    ):
        self.vae = vae
        self.crop = crop
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
        self.pixels = arr.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) on CPU
        self.device, self.dtype = device, dtype
        self.cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.encodes = 0

    @property
    def max_offset(self) -> tuple[int, int]:
        _, _, h, w = self.pixels.shape
        return w - self.crop, h - self.crop

    @torch.no_grad()
    def posterior(self, offsets: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return stacked ``(mean, std)`` of the VAE posterior for the crops at ``offsets``."""
        missing = [o for o in dict.fromkeys(offsets) if o not in self.cache]
        if missing:
            s = self.crop
            crops = torch.cat([self.pixels[:, :, y : y + s, x : x + s] for x, y in missing])
            dist = self.vae.encode(crops.to(self.device, self.dtype)).latent_dist
            self.encodes += len(missing)
            for i, o in enumerate(missing):
                self.cache[o] = (dist.mean[i : i + 1].float(), dist.std[i : i + 1].float())
        means, stds = zip(*(self.cache[o] for o in offsets), strict=True)
        return torch.cat(means), torch.cat(stds)


def training_precision(
    device: torch.device, weight_dtype: torch.dtype, mixed: bool
) -> tuple[torch.dtype | None, bool]:
    """How LoRA training runs: ``(autocast dtype or None, whether a gradient scaler is needed)``.

    Half-precision weights always train under autocast to their dtype (float16 on CUDA with a
    scaler), as the engine's CUDA default has done. ``mixed`` (``LoraParams.mixed_precision``)
    adds autocast to float32 weights: float16 with a scaler on CUDA and MPS, bfloat16 on the
    CPU (whose range needs no scaler). The adapter's own weights stay float32 either way.
    """
    if weight_dtype in (torch.float16, torch.bfloat16):
        if device.type == "cuda":
            return weight_dtype, weight_dtype == torch.float16
        if (device.type, weight_dtype) == ("cpu", torch.bfloat16):
            return torch.bfloat16, False
        return None, False
    if not mixed:
        return None, False
    if device.type in ("cuda", "mps"):
        return torch.float16, True
    return torch.bfloat16, False


def lora_optimizer(trainable: list[torch.Tensor], params: LoraParams) -> torch.optim.Optimizer:
    """AdamW over the adapter: multi-tensor (``foreach``, bit-identical to the per-tensor loop
    PyTorch picks on the CPU, and faster) or, as an option, the fused kernel."""
    if params.fused_adamw:
        return torch.optim.AdamW(
            trainable, lr=params.learning_rate, weight_decay=params.weight_decay, fused=True
        )
    return torch.optim.AdamW(
        trainable, lr=params.learning_rate, weight_decay=params.weight_decay, foreach=True
    )


def train_lora(
    unet: Any,
    vae: Any,
    text_embeddings: torch.Tensor,
    image: np.ndarray,
    schedule: Schedule,
    params: LoraParams,
    *,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
    micro_batch: int = 0,
) -> dict[str, torch.Tensor]:
    """Fine-tune a fresh adapter on ``image``; return its weights (CPU). Leaves it attached.

    ``micro_batch`` > 0 runs each batch in slices of that many rows and adds their gradients
    (each slice's loss weighted by its share of the batch): the same step, in less memory.
    """
    from backend.memory import micro_batches

    attach_fresh_adapter(unet, params)
    trainable = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = lora_optimizer(trainable, params)
    gen = torch.Generator().manual_seed(params.seed)
    encoder = CropEncoder(
        vae, training_image(image, params.resolution), device, vae.dtype, params.resolution
    )
    max_x, max_y = encoder.max_offset
    scaling = float(vae.config.scaling_factor)
    train_steps = int(schedule.alphas_cumprod.shape[0])
    amp_dtype, needs_scaler = training_precision(device, unet.dtype, params.mixed_precision)
    scaler = torch.amp.GradScaler(device.type) if needs_scaler else None
    model = compiled(unet) if params.compile_unet else unet
    slices = micro_batches(params.batch_size, micro_batch)
    embeddings = text_embeddings.expand(params.batch_size, -1, -1)
    unet.train()
    try:
        for step in range(params.steps):
            if check_cancel:
                check_cancel()
            offsets = [
                (
                    int(torch.randint(0, max_x + 1, (1,), generator=gen)),
                    int(torch.randint(0, max_y + 1, (1,), generator=gen)),
                )
                for _ in range(params.batch_size)
            ]
            mean, std = encoder.posterior(offsets)
            sample = mean + std * torch.randn(mean.shape, generator=gen).to(device)
            x0 = sample * scaling
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, train_steps, (params.batch_size,), generator=gen)
            noisy = schedule.add_noise(x0, noise, t)
            target = schedule.training_target(x0, noise, t)
            optimizer.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=device)
            for lo, hi in slices:
                with autocast(device, amp_dtype):
                    pred = model(
                        noisy[lo:hi].to(unet.dtype),
                        t[lo:hi].to(device),
                        encoder_hidden_states=embeddings[lo:hi],
                        return_dict=False,
                    )[0]
                part = F.mse_loss(pred.float(), target[lo:hi].float())
                if len(slices) > 1:
                    part = part * ((hi - lo) / params.batch_size)
                if scaler is not None:
                    scaler.scale(part).backward()
                else:
                    part.backward()
                loss = loss + part.detach()
                del pred, part
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if on_step:
                on_step(step + 1, float(loss.detach()))
    finally:
        unet.eval()
        for p in trainable:
            p.requires_grad_(False)
    return adapter_state(unet)


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compiled(unet: Any) -> Any:
    """``torch.compile`` of the UNet for training (its code cache is kept by PyTorch, so a
    later training run on the same model reuses the compiled graphs)."""
    try:
        return torch.compile(unet)
    except Exception as exc:  # e.g. an unsupported Python or platform
        raise DragStudioError(f"torch.compile is not available here: {exc}") from exc


def install_bundled(
    engine: Any, bundled: BundledLora | None, request: DragRequest
) -> dict[str, Any]:
    """Install a document's LoRA into the engine's memory (never the shared cache) if usable.

    It is used only when its key is the one the engine computes for ``request`` and it passes
    a full check against the loaded model (keys, shapes, dtypes, finite values, its metadata's
    parameters); otherwise the result says which member and why, and the edit retrains.
    """
    if bundled is None:
        return {"bundled": False}
    if request.lora.steps == 0:
        return {"bundled": True, "used": False, "why": "LoRA steps are 0"}
    engine.load_model(request.model, request.vae)
    key = engine.lora_key_for(request)
    if key != bundled.key:
        why = (
            bundled.mismatch(request)
            or "the model's or VAE's weights differ from the ones it was made on"
        )
        return {"bundled": True, "used": False, "why": why}
    try:
        state, params, stored_key = lora_from_bytes(bundled.data, LORA)
        if stored_key != key:
            raise DragStudioError("its metadata names another key")
        if params != request.lora:
            raise DragStudioError("its metadata's parameters differ from the project's")
        engine.install_lora(key, params, state)
    except DragStudioError as exc:
        text = str(exc)
        why = text if text.startswith(LORA) else f"{LORA} is unusable: {text}"
        return {"bundled": True, "used": False, "why": why}
    return {"bundled": True, "used": True}
