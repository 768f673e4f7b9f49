"""Per-stage seconds and peak memory of one drag edit, for the paper's defaults and each speed
option, on random-weight SD-1.5-shaped models of three sizes, on CPU and/or GPU.

Random weights time the real code paths without downloading anything. Handles may still arrive
early on random weights, so the table gives the number of drag iterations beside their time.
Run ``python benchmarks/speed.py --help``; docs/benchmarks.md has the latest numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine import Engine
from backend.events import StageFinished, StageStarted
from backend.request import DragParams, DragRequest, LoraParams, PointPair
from backend.speed_presets import PRESETS
from backend.tiny import SD15_SCHEDULER, _tokenizer, build_tiny_pipeline


@dataclass(frozen=True)
class Option:
    """A named speed option: overrides of the paper's DragParams and LoraParams."""

    name: str
    drag: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    redrag: bool = False
    """Time a second drag of the same photo (new points): LoRA, inversion and the reference
    rows' attention are reused, as when a user drags again."""


# (a) is first; then the re-drag and each named fast option of backend/speed_presets.py.
OPTIONS: list[Option] = [
    Option("defaults (paper)"),
    Option("re-drag, same photo (defaults)", redrag=True),
    *(Option(f"fast: {p.name}", drag=p.drag, lora=p.lora) for p in PRESETS.values()),
]

UNET_BLOCKS = {
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SIZES: dict[str, dict[str, Any]] = {
    # SD-1.5's real configuration (UNet 860M, VAE 84M, CLIP ViT-L/14 text 123M parameters).
    "full": {
        "unet": {"block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768,
                 "attention_head_dim": 8, "norm_num_groups": 32},
        "vae": {"block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32},
        "clip": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "vocab_size": 49408, "hidden_act": "quick_gelu",
                 "projection_dim": 768},
    },
    # Half SD-1.5's widths, half the text encoder's depth.
    "mid": {
        "unet": {"block_out_channels": (160, 320, 640, 640), "cross_attention_dim": 512,
                 "attention_head_dim": 8, "norm_num_groups": 32},
        "vae": {"block_out_channels": (64, 128, 256, 256), "norm_num_groups": 32},
        "clip": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 6,
                 "num_attention_heads": 8, "vocab_size": 49408, "hidden_act": "quick_gelu",
                 "projection_dim": 512},
    },
}  # fmt: skip


def build_pipeline(size: str, seed: int = 0) -> Any:
    """A random-weight pipeline with SD-1.5's block layout; ``tiny`` is backend.tiny's."""
    if size == "tiny":
        return build_tiny_pipeline(seed)
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = SIZES[size]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        **UNET_BLOCKS, **cfg["unet"],
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        **cfg["vae"],
    )  # fmt: skip
    text = CLIPTextModel(
        CLIPTextConfig(max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                       pad_token_id=1, **cfg["clip"])
    )  # fmt: skip
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def test_image(width: int = 512, height: int = 512) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [128 + 100 * np.sin(x / 23) * np.cos(y / 31), 128 + 90 * np.cos(x / 17 + y / 29),
         128 + 80 * np.sin((x + y) / 41)], -1,
    )  # fmt: skip
    return np.clip(img, 0, 255).astype(np.uint8)


def make_request(name: str, option: Option, base: DragParams, lora: LoraParams) -> DragRequest:
    image = test_image()
    mask = np.zeros(image.shape[:2], bool)
    mask[128:384, 128:384] = True
    return DragRequest(
        image=image,
        pairs=(PointPair((200.0, 256.0), (280.0, 256.0)),),
        mask=mask,
        prompt="a photo",
        params=replace(base, **option.drag),
        lora=replace(lora, **option.lora),
        model=name,
    )


class CpuClock:
    """CPU seconds of this process per stage, from the engine's own stage events (they arrive
    on the engine's thread, synchronously): on a machine other work loads, CPU time is what
    stays comparable; wall seconds are in the trace."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._t0 = time.process_time()

    def __call__(self, event: Any) -> None:
        if isinstance(event, StageStarted):
            self._started[event.stage.value] = time.process_time()
        elif isinstance(event, StageFinished) and event.stage.value in self._started:
            seconds = time.process_time() - self._started.pop(event.stage.value)
            self.stages[event.stage.value] = self.stages.get(event.stage.value, 0.0) + seconds

    def total(self) -> float:
        return time.process_time() - self._t0


def measure(
    engine: Engine,
    name: str,
    option: Option,
    base: DragParams,
    lora: LoraParams,
    *,
    pressed: bool = True,
) -> dict:
    """Time a full first edit (or a re-drag); then, unless ``pressed`` is off, the same edit
    from Drag pressed after background preparation (``Engine.prepare``) has finished."""
    request = make_request(name, option, base, lora)
    if option.redrag:
        if engine.current_lora is None or engine.current_lora.key != engine.lora_key_for(request):
            engine.edit(request)  # the first drag, untimed
        request = replace(request, pairs=(PointPair((256.0, 200.0), (256.0, 300.0)),))
    else:
        engine.forget_lora()  # every run trains its own LoRA: the cache would hide its cost
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()
    clock = CpuClock()
    result = engine.edit(request, clock)
    mem = result.trace.memory
    row = {
        "stages": result.trace.stages,
        "cpu_stages": clock.stages,
        "cpu_total": clock.total(),
        "lora_steps": request.lora.steps,
        "gpu_peak_gb": mem.get("gpu_peak_gb"),
        "process_peak_rss_gb": mem.get("process_peak_rss_gb"),
        "drag_iterations": result.trace.drag_iterations,
    }
    if pressed and not option.redrag:
        # The state background preparation leaves: the LoRA just trained (reinstalled, not
        # retrained: same weights), a fresh inversion and the reference rows' keys/values.
        trained = engine.current_lora
        engine.forget_lora()
        if trained is not None:
            engine.install_lora(trained.key, trained.params, trained.state)
        prep = CpuClock()
        engine.prepare(request, prep)
        row["prepare_cpu_stages"], row["prepare_cpu_total"] = prep.stages, prep.total()
        clock = CpuClock()
        again = engine.edit(request, clock)
        row["pressed_stages"] = again.trace.stages
        row["pressed_cpu_stages"], row["pressed_cpu_total"] = clock.stages, clock.total()
        row["pressed_iterations"] = again.trace.drag_iterations
        row["pressed_identical"] = bool(np.array_equal(again.image, result.image))
    return row


def at_paper_lora_steps(row: dict[str, Any], steps: int = 80) -> dict[str, float] | None:
    """The first edit's CPU seconds and the from-Drag-pressed ratio with the LoRA stage scaled
    from the steps run to ``steps`` (its cost is per step: one batch's forward and backward)."""
    run = row.get("lora_steps") or 0
    if "pressed_cpu_total" not in row or run <= 0:
        return None
    lora = row["cpu_stages"].get("lora", 0.0)
    full = row["cpu_total"] - lora + lora / run * steps
    return {"lora_steps": steps, "first_edit_cpu_s": full,
            "pressed_cpu_s": row["pressed_cpu_total"],
            "pressed_ratio": row["pressed_cpu_total"] / full}  # fmt: skip


def cpu_table(rows: list[dict[str, Any]]) -> str:
    """CPU seconds per stage of each first edit, its preparation and the edit from Drag pressed."""
    head = (
        "| size | device | option | LoRA (steps) | inversion | drag (its) | denoise | total "
        "| prepare | from Drag pressed: drag + denoise = total | pressed × total |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        c = r.get("cpu_stages")
        if c is None:
            continue
        pc = r.get("pressed_cpu_stages")
        pressed = "–"
        ratio = "–"
        if pc is not None:
            pressed = (f"{pc.get('drag', 0.0):.2f} ({r['pressed_iterations']}) + "
                       f"{pc.get('denoise', 0.0):.2f} = {r['pressed_cpu_total']:.2f}")  # fmt: skip
            ratio = f"{r['pressed_cpu_total'] / r['cpu_total']:.3f}"
        cells = [
            r["size"], r["device"], r["option"],
            f"{c.get('lora', 0.0):.2f} ({r.get('lora_steps', '?')})",
            f"{c.get('inversion', 0.0):.2f}",
            f"{c.get('drag', 0.0):.2f} ({r['drag_iterations']})",
            f"{c.get('denoise', 0.0):.2f}", f"{r['cpu_total']:.2f}",
            f"{r['prepare_cpu_total']:.2f}" if "prepare_cpu_total" in r else "–",
            pressed, ratio,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    scaled = [(r, at_paper_lora_steps(r)) for r in rows]
    for r, s in scaled:
        if s is not None and r.get("lora_steps") != s["lora_steps"]:
            lines.append(
                f"\n{r['size']} {r['device']} {r['option']}: with the LoRA stage scaled from "
                f"{r['lora_steps']} to {s['lora_steps']} steps, the first edit is "
                f"{s['first_edit_cpu_s']:.1f} CPU s and from Drag pressed is "
                f"{s['pressed_cpu_s']:.1f} CPU s = {s['pressed_ratio']:.3f}× of it"
            )
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| size | device | option | LoRA s | inversion s | drag s (its) | denoise s | total s "
            "| × (a) | from Drag pressed s | pressed × total | peak GB | mem × (a) |")  # fmt: skip
    lines = [head, "|" + "---|" * 13]
    base: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["size"], r["device"])
        base.setdefault(key, r)
        s = r["stages"]
        peak = r["gpu_peak_gb"] if r["device"].startswith("cuda") else r["process_peak_rss_gb"]
        b = base[key]
        b_peak = b["gpu_peak_gb"] if r["device"].startswith("cuda") else b["process_peak_rss_gb"]
        kind = "" if r["device"].startswith("cuda") else " RSS"
        cells = [
            r["size"], r["device"], r["option"],
            f"{s.get('lora', 0.0):.2f}",
            f"{s.get('inversion', 0.0):.2f}",
            f"{s.get('drag', 0.0):.2f} ({r['drag_iterations']})",
            *(f"{s.get(k, 0.0):.2f}" for k in ("denoise", "total")),
            f"{s['total'] / b['stages']['total']:.2f}",
            *pressed_cells(r),
            f"{peak:.2f}{kind}" if peak is not None else "n/a",
            f"{peak / b_peak:.2f}" if peak and b_peak else "n/a",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pressed_cells(row: dict[str, Any]) -> list[str]:
    p = row.get("pressed_stages")
    if p is None:
        return ["–", "–"]
    same = "" if row.get("pressed_identical") else " (differs!)"
    return [f"{p['total']:.2f}{same}", f"{p['total'] / row['stages']['total']:.3f}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,mid,full", help="comma-separated: tiny, mid, full")
    p.add_argument("--devices", default="auto", help="comma-separated: cpu, cuda (auto: both "
                   "where there is a GPU, else cpu)")  # fmt: skip
    p.add_argument("--lora-steps", type=int, help="LoRA steps (paper: 80)")
    p.add_argument("--lora-batch", type=int, help="LoRA batch (paper: 4)")
    p.add_argument("--drag-steps", type=int, help="drag iterations (paper: 80)")
    p.add_argument("--ddim-steps", type=int, help="DDIM steps (paper: 50)")
    p.add_argument("--working-width", type=int, help="working width (paper: 512)")
    p.add_argument("--warmup", action="store_true", help="run each model once untimed first")
    p.add_argument("--options", help="comma-separated option numbers to run (0 = defaults; "
                   "default: all)")  # fmt: skip
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--memory", default="auto", help="memory plan: auto, high, 8gb or 6gb")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)

    over = {"drag_steps": args.drag_steps, "inference_steps": args.ddim_steps,
            "working_width": args.working_width}  # fmt: skip
    base = replace(DragParams(), **{k: v for k, v in over.items() if v is not None})
    lora_over = {"steps": args.lora_steps, "batch_size": args.lora_batch}
    lora = replace(LoraParams(), **{k: v for k, v in lora_over.items() if v is not None})
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = OPTIONS
    if args.options:
        chosen = [OPTIONS[int(i)] for i in args.options.split(",")]
    devices = args.devices.split(",")
    if devices == ["auto"]:
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    print(f"# params: {base}\n# lora: {lora}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for device in devices:
        for size in args.sizes.split(","):
            engine = Engine(device, memory=args.memory)
            t0 = time.perf_counter()
            with torch.device(engine.device):  # initialise big random models on the GPU
                pipe = build_pipeline(size)
            engine.adopt_pipeline(pipe, f"random-{size}")
            print(f"# built {size} on {device} in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)  # fmt: skip
            if args.warmup:
                measure(engine, f"random-{size}", OPTIONS[0], base, lora, pressed=False)
            for option in chosen:
                row = measure(engine, f"random-{size}", option, base, lora)
                row.update(size=size, device=str(engine.device), option=option.name)
                rows.append(row)
                print(f"# {size} {device} {option.name}: {row['stages']}", file=sys.stderr)
            del engine, pipe
    print(table(rows))
    print("\nCPU seconds of this process (all threads):\n")
    print(cpu_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
