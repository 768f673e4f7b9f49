"""Traced (not run) peak tensor memory of each edit stage for each memory plan, full-size model.

The full SD-1.5-shaped model is built from its config under PyTorch's ``FakeTensorMode``: every
tensor has its real shape and dtype but no data, so each stage's operations (the engine's own
functions: ``attach_fresh_adapter``, ``unet_with_features``, ``reference_control``, the VAE) run
in seconds and a dispatch mode adds up the bytes of the tensor storages alive at each moment.
That is what ``torch.cuda.max_memory_allocated`` counts, less the caching allocator's rounding
and the cuBLAS/cuDNN workspaces. Attention runs through the flash SDPA kernel, as on a GPU.
Weights are bfloat16 (the sizes of fp16) and counted separately by where a plan keeps them.

    python benchmarks/memory_trace.py --json memory-trace.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend.memory import GIB, ORDER, PLANS, MemoryPlan, micro_batches

PAPER_DENOISE_STEPS = 35  # 50 DDIM steps × inversion strength 0.7


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode and still alive; their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.peak = 0
        self._seen: dict[int, Any] = {}

    def _free(self, key: int, n: int) -> None:
        self.now -= n
        self._seen.pop(key, None)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key in self._seen:
                    continue
                n = storage.nbytes()
                self.now += n
                self.peak = max(self.peak, self.now)
                self._seen[key] = weakref.finalize(storage, self._free, key, n)
        return out


@contextlib.contextmanager
def cuda_autocast_norms() -> Iterator[None]:
    """Run group and layer norms in float32, as CUDA autocast does (CPU autocast keeps them in
    bfloat16, which would undercount what a GPU saves for the backward pass)."""
    import torch.nn.functional as F

    group, layer = F.group_norm, F.layer_norm

    def f32(x: Any) -> Any:
        return x.float() if isinstance(x, torch.Tensor) else x

    def group_norm(x: Any, groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5):
        return group(f32(x), groups, f32(weight), f32(bias), eps)

    def layer_norm(x: Any, shape: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5):
        return layer(f32(x), shape, f32(weight), f32(bias), eps)

    F.group_norm, F.layer_norm = group_norm, layer_norm  # type: ignore[assignment]
    try:
        yield
    finally:
        F.group_norm, F.layer_norm = group, layer  # type: ignore[assignment]


CUDA_NORMS = True
"""False (``--cpu-norms``): keep CPU autocast's bfloat16 norms, to check the trace against a
CPU measurement (``benchmarks/memory.py``) of the same stages."""


def traced(fn: Callable[[], Any], autocast: bool = True) -> tuple[float, float]:
    """(peak GiB, GiB still alive afterwards) of tensors created while ``fn`` runs (with
    ``autocast``: UNet stages, which the engine runs under autocast; the VAE runs without)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    live = LiveBytes()
    norms = cuda_autocast_norms() if autocast and CUDA_NORMS else contextlib.nullcontext()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), norms, live:
        kept = fn()
    alive = live.now / GIB
    del kept
    return live.peak / GIB, alive


def stages(pipe: Any, plan: MemoryPlan, width: int) -> dict[str, dict[str, float]]:
    from backend.attention import ReferenceKV, reference_control
    from backend.features import unet_with_features
    from backend.lora import attach_fresh_adapter, remove_adapter
    from backend.request import DragParams, LoraParams

    unet, vae = pipe.unet, pipe.vae
    # apply_plan's switches, without moving modules (residency is accounted for in predict()).
    (
        unet.enable_gradient_checkpointing
        if plan.checkpointing
        else unet.disable_gradient_checkpointing
    )()
    (vae.enable_slicing if plan.vae_slicing else vae.disable_slicing)()
    (vae.enable_tiling if plan.vae_tiling else vae.disable_tiling)()
    lat = width // 8
    params, lora = DragParams(), LoraParams()
    text = torch.randn(1, 77, unet.config.cross_attention_dim)
    out: dict[str, dict[str, float]] = {}

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    # LoRA: one AdamW step on a batch of 4 (micro-batched by the plan).
    # peft moves its new layers with Module.to, which cannot swap fake parameters; they are on
    # the CPU already, so the move is skipped while the adapter is attached.
    to = torch.nn.Module.to
    torch.nn.Module.to = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        attach_fresh_adapter(unet, lora)
    finally:
        torch.nn.Module.to = to  # type: ignore[method-assign]
    trainable = [p for n, p in unet.named_parameters() if "lora_" in n]
    lora_gb = sum(p.numel() * p.element_size() for p in trainable) / GIB

    def lora_step() -> None:
        for p in trainable:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(trainable, lr=lora.learning_rate)
        unet.train()
        noisy = torch.randn(lora.batch_size, 4, lat, lat, dtype=torch.float32)
        target = torch.randn_like(noisy)
        emb = text.expand(lora.batch_size, -1, -1)
        t = torch.randint(0, 1000, (lora.batch_size,))
        for lo, hi in micro_batches(lora.batch_size, plan.lora_micro_batch):
            with autocast():
                pred = unet(noisy[lo:hi].to(unet.dtype), t[lo:hi], emb[lo:hi]).sample
            loss = torch.nn.functional.mse_loss(pred.float(), target[lo:hi])
            loss.backward()
            del pred, loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        unet.eval()
        for p in trainable:
            p.requires_grad_(False)
        # The optimizer's states die with it here, as they do after train_lora.

    peak, _ = traced(lora_step)
    out["lora"] = {"peak_gb": peak, "lora_params_gb": lora_gb}

    def encode() -> torch.Tensor:
        with torch.no_grad():
            x = torch.randn(1, 3, width, width, dtype=vae.dtype)
            return vae.encode(x).latent_dist.mean

    out["vae_encode"] = {"peak_gb": traced(encode, autocast=False)[0]}

    def inversion() -> None:
        with torch.no_grad(), autocast():
            unet(torch.randn(1, 4, lat, lat), 500, text).sample.float()

    out["inversion"] = {"peak_gb": traced(inversion)[0]}

    def drag() -> None:
        z = torch.randn(1, 4, lat, lat, dtype=torch.float32).requires_grad_(True)
        adam = torch.optim.Adam([z], lr=0.01)
        feature_hw = (width // 2, width // 2)
        with autocast():
            model_out, feats = unet_with_features(
                unet, z.to(unet.dtype), 500, text, params.feature_block, feature_hw
            )
        patch = feats[..., 100:103, 100:103]
        loss = (patch - patch.detach().roll(1, -1)).abs().mean() + model_out.float().abs().sum()
        loss.backward()
        adam.step()

    out["drag"] = {"peak_gb": traced(drag)[0]}

    kv = ReferenceKV()

    def denoise_step() -> ReferenceKV:
        with torch.no_grad(), reference_control(unet, params.ref_control_blocks, kv), autocast():
            unet(torch.randn(2, 4, lat, lat), 500, text.repeat(2, 1, 1)).sample.float()
        return kv

    peak, _ = traced(denoise_step)
    out["denoise"] = {"peak_gb": peak, "reference_kv_gb_per_step": kv.nbytes() / GIB}

    def decode() -> torch.Tensor:
        with torch.no_grad():
            return vae.decode(torch.randn(1, 4, lat, lat, dtype=vae.dtype)).sample

    out["vae_decode"] = {"peak_gb": traced(decode, autocast=False)[0]}
    remove_adapter(unet)
    return out


def predict(row: dict[str, Any], plan: MemoryPlan, weights: dict[str, float]) -> dict[str, float]:
    """GPU peak per stage: weights resident in that stage + traced tensors (+ kept caches)."""
    unet, vae, text = weights["unet_gb"], weights["vae_gb"], weights["text_encoder_gb"]
    resident = unet + (0.0 if plan.offload else vae + text)
    visiting_vae = vae if plan.offload else 0.0
    lora = row["lora"]["lora_params_gb"]
    kv = row["denoise"]["reference_kv_gb_per_step"] * PAPER_DENOISE_STEPS
    kept_kv = kv if plan.keep_reference_kv else 0.0
    # During the LoRA stage the VAE visits (crop encoding) and the adapter trains.
    return {
        "lora": resident + visiting_vae + max(row["lora"]["peak_gb"], row["vae_encode"]["peak_gb"]),
        "inversion": resident
        + visiting_vae
        + lora
        + max(row["inversion"]["peak_gb"], row["vae_encode"]["peak_gb"]),
        "drag": resident + lora + row["drag"]["peak_gb"],
        "denoise": resident
        + visiting_vae
        + lora
        + max(row["denoise"]["peak_gb"] + kept_kv, kept_kv + row["vae_decode"]["peak_gb"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="full", help="full (SD-1.5's shape), mid or tiny")
    p.add_argument("--working-width", type=int, default=512, help="square working size (512)")
    p.add_argument("--plans", default=",".join(ORDER), help="comma-separated plans")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument(
        "--cpu-norms",
        action="store_true",
        help="norms in bfloat16 as CPU autocast runs them (to compare with a CPU measurement)",
    )
    args = p.parse_args(argv)
    global CUDA_NORMS
    CUDA_NORMS = not args.cpu_norms
    from speed import build_pipeline
    from torch._subclasses.fake_tensor import FakeTensorMode

    t0 = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    rows: dict[str, Any] = {}
    with FakeTensorMode():
        pipe = build_pipeline(args.size)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False).eval()
        weights = {
            f"{name}_gb": sum(q.numel() * q.element_size() for q in m.parameters()) / GIB
            for name, m in (
                ("unet", pipe.unet),
                ("vae", pipe.vae),
                ("text_encoder", pipe.text_encoder),
            )
        }
        for name in args.plans.split(","):
            plan = PLANS[name]
            row = stages(pipe, plan, args.working_width)
            rows[name] = {"traced": row, "predicted_gpu_gb": predict(row, plan, weights)}
            print(f"# {name}: {json.dumps(rows[name])}", file=sys.stderr, flush=True)
    result = {
        "size": args.size,
        "working_width": args.working_width,
        "norms": "cpu (bfloat16)" if args.cpu_norms else "cuda (float32)",
        "weights": weights,
        "plans": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
