"""Peak memory per stage of one drag edit for each memory plan, on the random-weight full-size
SD-1.5-shaped model of benchmarks/speed.py (built from its config, nothing downloaded).

Measure one plan per process (peaks are per process):

    MALLOC_MMAP_THRESHOLD_=65536 nice -n 19 python benchmarks/memory.py --plan high --json high.json
    python benchmarks/memory.py --table high.json 8gb.json 6gb.json

On CUDA a stage's peak is ``torch.cuda.max_memory_allocated`` (reset when the stage starts). On
the CPU it is the process's peak resident memory during the stage (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident memory with the weights loaded, in bfloat16 so that
sizes mirror fp16 on a GPU; ``MALLOC_MMAP_THRESHOLD_`` makes glibc return freed tensors at once,
so a stage's peak is not hidden in memory an earlier stage freed but kept. Memory does not grow
with the number of steps (only the reference keys/values kept for re-drags do, and the benchmark
reports their size per step), so stages run one or two steps by default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend.engine import Engine
from backend.events import Event, StageFinished, StageStarted
from backend.memory import GIB, PLANS
from backend.request import DragParams, LoraParams

STAGES = ("lora", "inversion", "drag", "denoise")
PAPER_DENOISE_STEPS = 35  # 50 DDIM steps × inversion strength 0.7


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def _watchdog(floor_gb: float) -> None:
    """Stop this process before the shared machine runs out of memory."""

    def watch() -> None:
        while True:
            if _available_gb() < floor_gb:
                print(f"# aborting: less than {floor_gb} GB of RAM left", file=sys.stderr)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


class StagePeaks:
    """Event sink that records each stage's peak memory and seconds."""

    def __init__(self, device: torch.device, baseline_gb: float) -> None:
        self.device, self.baseline = device, baseline_gb
        self.rows: dict[str, dict[str, float]] = {}
        self._start = self._cpu_start = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted) and event.stage.value in STAGES:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            else:
                _reset_peak_rss()
            self._start = time.perf_counter()
            self._cpu_start = time.process_time()
        elif isinstance(event, StageFinished) and event.stage.value in STAGES:
            row = {
                "seconds": round(time.perf_counter() - self._start, 2),
                "cpu_seconds": round(time.process_time() - self._cpu_start, 2),
            }
            if self.device.type == "cuda":
                row["gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / GIB
            else:
                row["rss_peak_gb"] = _status_kb("VmHWM") / 2**20
                row["above_weights_gb"] = row["rss_peak_gb"] - self.baseline
            self.rows[event.stage.value] = row
            print(f"# {event.stage.value}: {row}", file=sys.stderr, flush=True)


def module_gb(module: Any) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / GIB


def run_plan(args: argparse.Namespace) -> dict[str, Any]:
    from speed import Option, build_pipeline, make_request

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    engine = Engine(args.device, dtype=dtype, memory=args.plan)
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype != torch.float16 else torch.float32)
    try:
        with torch.device(device):
            pipe = build_pipeline(args.size)
    finally:
        torch.set_default_dtype(previous)
    engine.adopt_pipeline(pipe, f"random-{args.size}")
    built = time.perf_counter() - t0
    weights = {
        "unet_gb": module_gb(pipe.unet),
        "vae_gb": module_gb(pipe.vae),
        "text_encoder_gb": module_gb(pipe.text_encoder),
    }
    params = replace(
        DragParams(),
        drag_steps=args.drag_steps,
        inference_steps=args.ddim_steps,
        working_width=args.working_width,
    )
    lora = replace(LoraParams(), steps=args.lora_steps, resolution=args.working_width)
    request = make_request(f"random-{args.size}", Option("memory"), params, lora)
    if device.type == "cpu":
        baseline = _status_kb("VmRSS") / 2**20
    else:
        baseline = torch.cuda.memory_allocated(device) / GIB
    peaks = StagePeaks(device, baseline)
    t1 = time.perf_counter()
    result = engine.edit(request, peaks)
    wall = time.perf_counter() - t1
    kv = engine.caches.reference[1] if engine.caches.reference else None
    kv_step = kv.nbytes() / GIB / len({step for _, step in kv.store}) if kv and kv.store else 0.0
    return {
        "plan": args.plan,
        "plan_detail": PLANS[args.plan].describe(),
        "device": str(device),
        "dtype": args.dtype,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "working_width": args.working_width,
        "steps": {
            "lora": args.lora_steps,
            "lora_batch": lora.batch_size,
            "drag": args.drag_steps,
            "ddim": args.ddim_steps,
        },
        "build_seconds": round(built, 1),
        "edit_seconds": round(wall, 1),
        "baseline_gb": baseline,
        "weights": weights,
        "lora_trainable_gb": sum(v.numel() * 4 for v in engine.current_lora.state.values()) / GIB
        if engine.current_lora
        else 0.0,
        "reference_kv_gb_per_step": kv_step,
        "stages": peaks.rows,
        "trace_stages": dict(result.trace.stages),
        "drag_iterations": result.trace.drag_iterations,
    }


def table(rows: list[dict[str, Any]]) -> str:
    cpu = rows[0]["device"] == "cpu"
    unit = "RSS above weights, GB" if cpu else "max_memory_allocated, GB"
    head = "| plan | " + " | ".join(f"{s} ({unit})" for s in STAGES) + " | stage seconds |"
    lines = [head, "|" + "---|" * (len(STAGES) + 2)]
    for r in rows:
        key = "above_weights_gb" if cpu else "gpu_peak_gb"
        cells = [f"{r['stages'][s][key]:.2f}" if s in r["stages"] else "–" for s in STAGES]
        secs = " / ".join(f"{r['stages'][s]['seconds']:.0f}" for s in STAGES if s in r["stages"])
        lines.append(f"| {r['plan']} | " + " | ".join(cells) + f" | {secs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", choices=tuple(PLANS), help="the memory plan to measure")
    p.add_argument("--size", default="full", help="full (SD-1.5's shape), mid or tiny")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, help="bf16 (CPU default), fp16 (CUDA default), fp32")
    p.add_argument("--lora-steps", type=int, default=1, help="LoRA steps (1; batch stays 4)")
    p.add_argument("--drag-steps", type=int, default=1, help="drag iterations (1)")
    p.add_argument("--ddim-steps", type=int, default=2, help="DDIM steps (2: 1 inverted)")
    p.add_argument(
        "--working-width",
        type=int,
        default=512,
        help="working width and LoRA crop size (512; smaller sizes let a slow CPU finish, and "
        "activations scale with the pixel count)",
    )
    p.add_argument("--ram-floor-gb", type=float, default=2.0, help="abort below this free RAM")
    p.add_argument("--json", type=Path, help="write the measurement here")
    p.add_argument("--table", type=Path, nargs="+", help="print a table of these JSON files")
    args = p.parse_args(argv)
    if args.table:
        print(table([json.loads(f.read_text()) for f in args.table]))
        return 0
    if args.plan is None:
        p.error("give --plan (or --table)")
    args.dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "bf16")
    if args.device == "cpu":
        _watchdog(args.ram_floor_gb)
    row = run_plan(args)
    text = json.dumps(row, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
