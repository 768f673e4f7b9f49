"""``dragstudio-cli bench`` and ``bench-metrics``: DragBench-style evaluation from the shell."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _log(quiet: bool) -> Callable[[str], None]:
    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def _metric_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dift-model",
        help="model for DIFT features: hub id, diffusers folder or .safetensors "
        "(default stabilityai/stable-diffusion-2-1, as the protocol)",
    )
    p.add_argument(
        "--lpips-weights",
        type=Path,
        help="file or folder with AlexNet (torchvision state dict) and/or LPIPS lin weights "
        "(lpips's weights/v0.1/alex.pth); .safetensors or plain-tensor .pth",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--categories", nargs="+", help="only these categories")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and the table")


def add_bench_commands(sub: Any) -> dict[str, Handler]:
    """Add the subcommands to ``dragstudio-cli``'s subparsers; return their handlers."""
    bench = sub.add_parser(
        "bench",
        help="run DragBench (or Drag100) and score it",
        description="Edit every case into RESULTS in DragBench's layout "
        "(<category>/<case>/dragged_image.png + trace.json), resumably, then score it: Mean "
        "Distance (DIFT), Image Fidelity (1 - LPIPS) and GoodDrag's DAI, per category and "
        "overall, in metrics.json and metrics.md.",
    )
    bench.add_argument("--data", type=Path, required=True, help="benchmark folder")
    bench.add_argument("--model", required=True, help="hub id, diffusers folder or .safetensors")
    bench.add_argument("--out", type=Path, required=True, help="results folder")
    bench.add_argument("--lora-steps", type=int, help="LoRA fine-tuning steps (80)")
    bench.add_argument("--lora-batch", type=int, help="LoRA batch size (4)")
    bench.add_argument("--drag-steps", type=int, help="latent optimisation iterations (80)")
    bench.add_argument("--ddim-steps", type=int, help="DDIM schedule length (50)")
    bench.add_argument("--working-width", type=int, help="width the model works at (512)")
    bench.add_argument(
        "--keep-pixels",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="paste the original pixels outside the mask (default: no, as the authors' protocol)",
    )
    bench.add_argument("--no-metrics", action="store_true", help="edit only; score later")
    from backend.method_cli import add_method_args
    from backend.speed_cli import add_speed_args

    add_method_args(bench)
    add_speed_args(bench)
    _metric_args(bench)
    from backend.server.cli_args import add_server_args

    add_server_args(bench)  # the edits run there; scoring stays here

    metrics = sub.add_parser(
        "bench-metrics",
        help="score any method's results in DragBench layout",
        description="Recompute Mean Distance, Image Fidelity and DAI for results laid out as "
        "<category>/<case>/dragged_image.png, whichever tool made them.",
    )
    metrics.add_argument("--data", type=Path, required=True, help="benchmark folder")
    metrics.add_argument("--results", type=Path, required=True, help="results folder")
    _metric_args(metrics)
    return {"bench": cmd_bench, "bench-metrics": cmd_bench_metrics}


def _score_and_report(
    args: argparse.Namespace, cases: Any, results: Path, meta: dict[str, Any]
) -> int:
    from backend.bench.report import markdown, summarize, write_reports
    from backend.bench.runner import load_scorers, score
    from backend.models import pick_device

    log = _log(args.quiet)
    device = pick_device(args.device)
    scorers = load_scorers(args.dift_model, args.lpips_weights, device)
    for reason in (scorers.dift_reason, scorers.lpips_reason):
        if reason:
            print(f"warning: {reason}", file=sys.stderr)
    records = score(cases, results, scorers, log)
    summary = summarize(records, scorers, meta)
    json_path, md_path = write_reports(results, summary)
    print(markdown(summary), end="")
    log(f"wrote {json_path} and {md_path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from backend.bench.formats import load_cases
    from backend.bench.runner import BenchConfig, bench_params, run_edits
    from backend.errors import InvalidRequest
    from backend.method_cli import method_settings
    from backend.request import DragParams, LoraParams

    if args.limit is not None and args.limit < 1:
        raise InvalidRequest("--limit must be at least 1")
    cases = load_cases(args.data, args.categories, args.limit)
    from backend.speed_cli import speed_settings

    method, base, base_lora, gooddrag = method_settings(args, DragParams(), LoraParams())
    speed, base, base_lora = speed_settings(args, base, base_lora, method)
    params = bench_params(
        base,
        keep_pixels=args.keep_pixels,
        drag_steps=args.drag_steps,
        inference_steps=args.ddim_steps,
        working_width=args.working_width,
    )
    params.validate()
    lora_over = {"steps": args.lora_steps, "batch_size": args.lora_batch}
    lora = replace(base_lora, **{k: v for k, v in lora_over.items() if v is not None})
    lora.validate()
    config = BenchConfig(args.model, params, lora, args.device, method, gooddrag, speed)
    log = _log(args.quiet)
    log(f"{len(cases)} cases from {args.data} ({cases[0].fmt}) → {args.out}")
    from backend.server.cli_args import remote_engine

    engine = remote_engine(args)
    try:
        counts = run_edits(cases, args.data, args.out, config, log, engine=engine)
    finally:
        if engine is not None:
            engine.close()
    done = f"edited {counts['edited']}, skipped {counts['skipped']} finished"
    log(f"{done}, {counts['failed']} failed")
    if args.no_metrics:
        return 0 if counts["failed"] == 0 else 1
    meta = {
        "data": str(args.data),
        "format": cases[0].fmt,
        "model": args.model,
        "device": args.device,
        **config.settings(),
    }
    rc = _score_and_report(args, cases, args.out, meta)
    return rc if counts["failed"] == 0 else 1


def cmd_bench_metrics(args: argparse.Namespace) -> int:
    from backend.bench.formats import load_cases
    from backend.errors import InvalidRequest

    if not args.results.is_dir():
        raise InvalidRequest(f"no results folder at {args.results}")
    cases = load_cases(args.data, args.categories, args.limit)
    meta = {"data": str(args.data), "format": cases[0].fmt, "results": str(args.results)}
    return _score_and_report(args, cases, args.results, meta)
