"""What each named fast option of ``backend/speed_presets.py`` costs in tracked distance, and
what it saves in CPU time, against the paper's defaults, on DragBench-style cases.

Each case is edited once per option with its own freshly trained LoRA (no reuse between
options, so every row pays its full first-edit cost), on one engine, one option after another.
Reported per option: the mean over cases of the final handle-to-target distance the engine
tracked (image pixels), its mean paired change against the paper's defaults, and the ratio of
CPU seconds. A reduced protocol can be scaled (``--working-width``, ``--lora-steps``, ...): a
preset's LoRA resolution then scales with the working width (``lora-256`` means half the
working width, as 256 is half of the paper's 512). Run ``python benchmarks/presets.py --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.bench.dragbench import load_case
from backend.document import load_image
from backend.engine import Engine
from backend.request import DragParams, DragRequest, LoraParams
from backend.speed_presets import PAPER_SPEED, PRESETS
from backend.tiny import build_tiny_pipeline

PAPER_WIDTH = 512


def options(params: DragParams, lora: LoraParams) -> dict[str, tuple[DragParams, LoraParams]]:
    """The paper's (reduced) settings and each preset over them, LoRA resolution scaled."""
    out = {PAPER_SPEED: (params, lora)}
    scale = params.working_width / PAPER_WIDTH
    for name, preset in PRESETS.items():
        p, lo = preset.apply(params, lora)
        if "resolution" in preset.lora:
            lo = replace(lo, resolution=round(preset.lora["resolution"] * scale / 8) * 8)
        if "steps" in preset.lora:  # the same fraction of the (reduced) LoRA steps
            lo = replace(
                lo, steps=max(1, round(lora.steps * preset.lora["steps"] / LoraParams().steps))
            )
        out[name] = (p, lo)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="DragBench-style folder")
    ap.add_argument("--limit", type=int, help="only the first N cases")
    ap.add_argument("--working-width", type=int, default=256)
    ap.add_argument("--drag-steps", type=int, default=40)
    ap.add_argument("--lora-steps", type=int, default=8)
    ap.add_argument("--lora-batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", type=Path, required=True, help="one line per edit (resumable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = replace(
        DragParams(),
        working_width=args.working_width,
        drag_steps=args.drag_steps,
        keep_unmasked_pixels=False,
    )
    lora = replace(
        LoraParams(),
        steps=args.lora_steps,
        batch_size=args.lora_batch,
        resolution=args.working_width,
    )
    chosen = options(params, lora)
    for name, (p, lo) in chosen.items():
        print(
            f"# {name}: ddim {p.inference_steps}, lora steps {lo.steps} lr {lo.learning_rate} "
            f"res {lo.resolution} batch {lo.batch_size}",
            file=sys.stderr,
        )
    done = set()
    if args.jsonl.exists():
        done = {
            (r["case"], r["option"]) for r in map(json.loads, args.jsonl.read_text().splitlines())
        }
    cases = sorted(p.parent for p in args.data.glob("*/*/original_image.png"))[: args.limit]
    engine = Engine("cpu", lora_cache=None)
    engine.adopt_pipeline(build_tiny_pipeline(0), "random-tiny")
    with args.jsonl.open("a") as out:
        for folder in cases:
            case = load_case(folder)
            image = load_image(case.image_path)
            name = f"{folder.parent.name}/{folder.name}"
            for option, (p, lo) in chosen.items():
                if (name, option) in done:
                    continue
                request = DragRequest(
                    image=image,
                    pairs=case.pairs,
                    mask=case.mask,
                    prompt=case.prompt,
                    params=p,
                    lora=lo,
                    model="random-tiny",
                )
                engine.forget_lora()
                cpu, wall = time.process_time(), time.perf_counter()
                result = engine.edit(request)
                row = {
                    "case": name,
                    "option": option,
                    "cpu_s": time.process_time() - cpu,
                    "wall_s": time.perf_counter() - wall,
                    "distances": list(result.trace.final_distances),
                    "initial": [
                        float(np.hypot(h[0] - t[0], h[1] - t[1]))
                        for h, t in zip(result.trace.handles, result.trace.targets, strict=True)
                    ],
                    "stages": result.trace.stages,
                    "drag_iterations": result.trace.drag_iterations,
                }
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(
                    f"{name} {option}: {row['cpu_s']:.1f} s CPU, mean dist "
                    f"{np.mean(row['distances']):.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    print(report(args.jsonl))
    return 0


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        by.setdefault(r["option"], {})[r["case"]] = r
    base = by.get(PAPER_SPEED, {})
    lines = [
        "| option | cases | mean final distance px | Δ vs paper px (paired) | CPU s per edit "
        "| CPU × paper |",
        "|---|---|---|---|---|---|",
    ]
    for option, cases in by.items():
        common = [c for c in cases if c in base]
        dist = np.mean([np.mean(cases[c]["distances"]) for c in cases])
        delta = (
            np.mean(
                [np.mean(cases[c]["distances"]) - np.mean(base[c]["distances"]) for c in common]
            )
            if common
            else float("nan")
        )
        cpu = np.mean([cases[c]["cpu_s"] for c in cases])
        ratio = (
            (sum(cases[c]["cpu_s"] for c in common) / sum(base[c]["cpu_s"] for c in common))
            if common
            else float("nan")
        )
        lines.append(
            f"| {option} | {len(cases)} | {dist:.2f} | {delta:+.2f} | {cpu:.1f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
