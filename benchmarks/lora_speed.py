"""Per-step CPU and wall seconds of LoRA training, A/B over training options and thread counts,
with how much each option changes the trained weights and the UNet's output.

Runs are interleaved (round 1: every variant, round 2: every variant, ...) so that a shared
machine's changing load hits all variants alike; the first step of each run is a warm-up and
is left out. CPU seconds are the process's (all threads); on a loaded machine they are the
fairer comparison. ``python benchmarks/lora_speed.py --help``; docs/benchmarks.md ("Issue 14")
has the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backend.lora as lora_module
from backend.ddim import Schedule
from backend.lora import remove_adapter, train_lora
from backend.request import LoraParams
from benchmarks.speed import build_pipeline, test_image


@contextlib.contextmanager
def loop_adamw() -> Iterator[None]:
    """The optimiser as it was before issue 14: PyTorch's CPU default, a per-tensor loop."""
    original = lora_module.lora_optimizer

    def per_tensor(trainable: list[torch.Tensor], params: LoraParams) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            trainable, lr=params.learning_rate, weight_decay=params.weight_decay, foreach=False
        )

    lora_module.lora_optimizer = per_tensor  # type: ignore[assignment]
    try:
        yield
    finally:
        lora_module.lora_optimizer = original  # type: ignore[assignment]


@contextlib.contextmanager
def channels_last(unet: Any) -> Iterator[None]:
    """The UNet's 4-D weights in channels-last order while it trains (convolutions then run
    channels-last and hand that layout on)."""
    unet.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        unet.to(memory_format=torch.contiguous_format)


@dataclass(frozen=True)
class Variant:
    name: str
    lora: dict[str, Any] = field(default_factory=dict)
    around: Callable[[Any], contextlib.AbstractContextManager[Any]] | None = None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("default"),
        Variant("loop-adamw", around=lambda unet: loop_adamw()),
        Variant("fused-adamw", {"fused_adamw": True}),
        Variant("channels-last", around=channels_last),
        Variant("mixed-precision", {"mixed_precision": True}),
        Variant("compile", {"compile_unet": True}),
    )
}


def run(
    pipe: Any,
    emb: torch.Tensor,
    schedule: Schedule,
    params: LoraParams,
    variant: Variant,
    threads: int,
) -> dict[str, Any]:
    """Train ``params.steps`` steps; per-step seconds after the first, and the weights."""
    torch.set_num_threads(threads)
    params = replace(params, **variant.lora)
    marks: list[tuple[float, float]] = [(time.perf_counter(), time.process_time())]

    def on_step(step: int, loss: float) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    around = variant.around(pipe.unet) if variant.around else contextlib.nullcontext()
    with around:
        state = train_lora(
            pipe.unet, pipe.vae, emb, test_image(), schedule, params,
            device=torch.device("cpu"), on_step=on_step,
        )  # fmt: skip
    output = unet_output(pipe, emb)
    remove_adapter(pipe.unet)
    timed = list(itertools.pairwise(marks[1:]))  # the steps after the warm-up step
    walls = [b[0] - a[0] for a, b in timed]
    cpus = [b[1] - a[1] for a, b in timed]
    return {
        "first_wall": marks[1][0] - marks[0][0],
        "wall": walls,
        "cpu": cpus,
        "state": state,
        "output": output,
        "load": os.getloadavg()[0],
    }


@torch.no_grad()
def unet_output(pipe: Any, emb: torch.Tensor) -> torch.Tensor:
    """The adapted UNet's prediction on one fixed noisy latent (what inversion and drag use)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn((1, 4, 64, 64), generator=gen)
    out: torch.Tensor = pipe.unet(x, torch.tensor([500]), encoder_hidden_states=emb).sample
    return out


def profile(
    pipe: Any,
    emb: torch.Tensor,
    schedule: Schedule,
    params: LoraParams,
    variant: Variant,
    threads: int,
    rows: int,
) -> str:
    """Where the steps' CPU time goes: ``torch.profiler``'s self CPU time per op (the warm-up
    step included; run with several steps so it is a small part)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        run(pipe, emb, schedule, params, variant, threads)
    table: str = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return table


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", help="tiny or mid (benchmarks/speed.py's models)")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--variants", default="default,loop-adamw,fused-adamw,channels-last",
                   help=f"comma-separated, of: {', '.join(VARIANTS)}")  # fmt: skip
    p.add_argument("--steps", type=int, default=4, help="steps per run, the first a warm-up")
    p.add_argument("--batch", type=int, default=4, help="LoRA batch (paper: 4)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="instead: profile the first variant at the first thread count and print "
                        "the ROWS ops with the most self CPU time")  # fmt: skip
    args = p.parse_args(argv)

    pipe = build_pipeline(args.size)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    ids = pipe.tokenizer("a photo", padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        emb = pipe.text_encoder(ids.input_ids)[0]
    schedule = Schedule.from_scheduler(pipe.scheduler, 50)
    params = LoraParams(steps=args.steps, batch_size=args.batch)
    variants = [VARIANTS[v] for v in args.variants.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if args.profile:
        print(profile(pipe, emb, schedule, params, variants[0], threads[0], args.profile))
        return 0
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for n in threads:
            for v in variants:
                res = run(pipe, emb, schedule, params, v, n)
                results.setdefault((v.name, n), []).append(res)
                ref = next(iter(results.values()))[0]
                d_state = max_diff(res["state"], ref["state"])
                d_out = float((res["output"] - ref["output"]).abs().max())
                print(f"# round {r + 1} {v.name} threads={n}: wall {res['wall']} cpu "
                      f"{res['cpu']} first {res['first_wall']:.1f} s load {res['load']:.1f} "
                      f"dLoRA {d_state:.2e} dOut {d_out:.2e}",
                      file=sys.stderr, flush=True)  # fmt: skip
    ref_name, ref_threads = variants[0].name, threads[0]
    ref = results[(ref_name, ref_threads)][0]
    print(f"{args.size} model, batch {args.batch}, {args.steps - 1} timed steps per run after "
          f"one warm-up, {args.rounds} interleaved rounds; reference: {ref_name} at "
          f"{ref_threads} thread(s)")  # fmt: skip
    print("| option | threads | CPU s/step | wall s/step | CPU × ref | wall × ref | first step s "
          "| max abs Δ LoRA | max abs Δ UNet out | load avg |")  # fmt: skip
    print("|" + "---|" * 10)
    ref_cpu = statistics.median(c for run_ in results[(ref_name, ref_threads)] for c in run_["cpu"])
    ref_wall = statistics.median(
        w for run_ in results[(ref_name, ref_threads)] for w in run_["wall"]
    )
    for (name, n), runs in results.items():
        cpu = statistics.median(c for x in runs for c in x["cpu"])
        wall = statistics.median(w for x in runs for w in x["wall"])
        first = statistics.median(x["first_wall"] for x in runs)
        d_state = max_diff(runs[0]["state"], ref["state"])
        d_out = float((runs[0]["output"] - ref["output"]).abs().max())
        loads = "–".join(f"{x['load']:.1f}" for x in runs)
        print(f"| {name} | {n} | {cpu:.2f} | {wall:.2f} | {cpu / ref_cpu:.2f} | "
              f"{wall / ref_wall:.2f} | {first:.1f} | {d_state:.2e} | {d_out:.2e} "
              f"| {loads} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
