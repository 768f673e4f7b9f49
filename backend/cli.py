"""``dragstudio-cli``: the engine without a window.

Bad input ends with a one-line reason on stderr and a non-zero exit code, never a traceback
(``--debug`` shows one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend import __version__
from backend.errors import Cancelled, DragStudioError, InvalidRequest, ModelNotFound
from backend.params import add_param_flags

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _pair(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected HX,HY,TX,TY, got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"coordinates must be numbers, got {text!r}") from None
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"coordinates must be finite, got {text!r}")
    return values  # type: ignore[return-value]


_PAIR_VALUE = re.compile(r"^-[0-9.]")


def _attach_pair_values(argv: Sequence[str]) -> list[str]:
    """``--pair -1,5,10,10`` → ``--pair=-1,5,10,10``: argparse would take a value starting
    with ``-`` for an option and report a missing argument."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        if args[i] == "--pair" and i + 1 < len(args) and _PAIR_VALUE.match(args[i + 1]):
            out.append(f"--pair={args[i + 1]}")
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dragstudio-cli",
        description="DragDiffusion point-based image editing, headless.",
    )
    parser.add_argument("--version", action="version", version=f"DragStudio {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = sub.add_parser(
        "make-tiny-model",
        help="write a tiny random-weight SD-1.5-shaped pipeline (for tests and smoke runs)",
        description="Write a tiny Stable-Diffusion-1.5-shaped pipeline with random weights in "
        "diffusers format. It loads offline and makes random-looking edits.",
    )
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (0)")
    tiny.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),
        default="epsilon",
        help="what the UNet predicts (epsilon, like SD-1.5)",
    )

    edit = sub.add_parser(
        "edit",
        help="drag-edit one image",
        description="Drag-edit one image: handle points move to their targets inside the mask.",
    )
    edit.add_argument(
        "--model",
        help="hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), diffusers folder or "
        ".safetensors checkpoint (optional with --project, which names one)",
    )
    edit.add_argument(
        "--model-config",
        metavar="DIR_OR_ID",
        help="for a .safetensors --model: diffusers folder or hub id of its base model, whose "
        "configs and tokenizer it uses (default: stable-diffusion-v1-5/stable-diffusion-v1-5)",
    )
    edit.add_argument(
        "--vae",
        metavar="DIR_OR_ID",
        help="diffusers VAE folder or hub id (e.g. stabilityai/sd-vae-ft-mse) to use instead of "
        "the model's own VAE (default; with --project, an empty value goes back to it)",
    )
    src = edit.add_mutually_exclusive_group(required=True)
    src.add_argument("--case", type=Path, help="a DragBench case folder")
    src.add_argument("--image", type=Path, help="the image to edit")
    src.add_argument(
        "--project",
        type=Path,
        help="continue a .dragstudio project (its bundled LoRA is reused when it fits)",
    )
    edit.add_argument(
        "--pair",
        type=_pair,
        action="append",
        metavar="HX,HY,TX,TY",
        help="handle and target in image pixels (repeat for more pairs; with --case, replaces "
        "the case's points)",
    )
    edit.add_argument("--mask", type=Path, help="PNG of the image's size: non-black = editable")
    edit.add_argument("--prompt", help="text describing the image (default: empty, or the case's)")
    add_param_flags(edit)  # --lora-steps, --drag-steps, --r1, ... from backend.params
    edit.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    edit.add_argument(
        "--memory",
        choices=("auto", "high", "8gb", "6gb"),
        default="auto",
        help="memory plan: auto (default: chosen from the GPU's free memory; high on the CPU), "
        "high (everything on the GPU), 8gb or 6gb (gradient checkpointing, text encoder and VAE "
        "off the GPU when idle; 6gb also trains the LoRA in micro-batches). See docs/engine.md",
    )
    edit.add_argument("--lora-cache", type=Path, help="LoRA cache folder (default: user cache)")
    edit.add_argument("--no-lora-cache", action="store_true", help="do not read or write it")
    edit.add_argument("--out", type=Path, required=True, help="where to write the edited image")
    edit.add_argument("--trace", type=Path, help="write a JSON trace of the run here")
    edit.add_argument(
        "--save-project",
        type=Path,
        metavar="OUT.dragstudio",
        help="save the session (photo, result, points, parameters, trained LoRA) as a project",
    )
    edit.add_argument(
        "--allow-download",
        action="store_true",
        help="with --project: let the model the project names be fetched from the Hugging Face "
        "hub (a project file never triggers a download by itself)",
    )
    edit.add_argument("--quiet", action="store_true", help="print nothing but errors")
    from backend.server.cli_args import add_server_args

    add_server_args(edit)
    from backend.method_cli import add_method_args
    from backend.speed_cli import add_speed_args

    add_method_args(edit)
    add_speed_args(edit)
    from backend.bench.cli import add_bench_commands  # bench, bench-metrics

    COMMANDS.update(add_bench_commands(sub))
    from backend.project_cli import add_project_command  # project info

    COMMANDS.update(add_project_command(sub))
    from backend.generate_cli import add_generate_command  # generate

    COMMANDS.update(add_generate_command(sub))
    return parser


def _close(engine: Any) -> None:
    """Hang up a remote engine (a local one has nothing to close)."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()


class _Printer:
    """Stage lines and a sparse step count on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, event: Any) -> None:
        from backend.events import StageFinished, StageStarted, StepProgress

        if self.quiet:
            return
        if isinstance(event, StageStarted):
            note = f" ({event.detail})" if event.detail else ""
            print(f"{event.stage.value}: started{note}", file=sys.stderr, flush=True)
        elif isinstance(event, StepProgress):
            every = max(1, event.total // 8) if event.total else 10
            if event.step % every == 0 or event.step == event.total:
                extra = f" loss {event.loss:.4g}" if event.loss is not None else ""
                if event.handles:
                    pts = " ".join(f"({x:.0f},{y:.0f})" for x, y in event.handles)
                    extra += f" handles {pts}"
                line = f"  {event.stage.value} {event.step}/{event.total}{extra}"
                print(line, file=sys.stderr, flush=True)
        elif isinstance(event, StageFinished):
            print(f"{event.stage.value}: {event.seconds:.2f} s", file=sys.stderr, flush=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from backend.tiny import save_tiny_model

    path = save_tiny_model(args.directory, args.seed, prediction_type=args.prediction_type)
    print(f"wrote a tiny random-weight pipeline to {path}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from backend.engine import save_image
    from backend.server.cli_args import remote_engine

    project = None
    if args.project is not None:
        from backend.project import read_project

        project = read_project(args.project)
    elif args.model is None:
        raise InvalidRequest("give --model (or --project, which names one)")
    from backend.edit_request import build_request

    request = build_request(args, project)
    from backend.method_cli import apply_method_args

    request = apply_method_args(args, request)
    from backend.speed_cli import apply_speed_args

    request = apply_speed_args(args, request)
    out: Path = args.out
    if not out.parent.exists():
        raise InvalidRequest(f"the folder {out.parent} does not exist")
    from backend.export import FORMATS

    if out.suffix.lower() not in FORMATS:
        raise InvalidRequest(f"cannot write {out.name}: use .png, .jpg or .webp")
    if args.save_project is not None and not args.save_project.parent.is_dir():
        raise InvalidRequest(f"the folder {args.save_project.parent} does not exist")
    # A model named by the command line may be fetched; one named only by a file may not.
    allow_download = args.allow_download or project is None or args.model is not None
    engine = remote_engine(args)
    if engine is None:
        from backend.engine import Engine
        from backend.lora_cache import LoraCache

        cache = None if args.no_lora_cache else LoraCache(args.lora_cache)
        engine = Engine(
            args.device,
            lora_cache=cache,
            single_file_config=args.model_config,
            allow_download=allow_download,
            memory=args.memory,
        )
    try:
        bundled = None
        if project is not None and args.server is not None:
            fits = project.lora is not None and project.lora.mismatch(request) is None
            engine.offer_lora(project.lora.data if fits and project.lora else None)
        elif project is not None:
            from backend.project_cli import install_bundled_lora

            bundled = install_bundled_lora(engine, project, request)
            if bundled.get("why") and not args.quiet:
                print(f"retraining the project's LoRA: {bundled['why']}", file=sys.stderr)
        result = engine.edit(request, _Printer(args.quiet))
        trace = result.trace.to_dict()
        if result.trace.lora.cache_warning:
            print(f"dragstudio-cli: warning: {result.trace.lora.cache_warning}", file=sys.stderr)
        if bundled is not None:
            trace["project_lora"] = bundled
        save_image(result.image, out)
        if args.save_project is not None:
            from backend.project_cli import save
            from backend.session import project_after_edit

            after = project_after_edit(
                request, result.image, result.trace, project, engine.export_lora
            )
            save(args.save_project, after, args.quiet)
    except ModelNotFound as exc:
        if allow_download:
            raise
        raise ModelNotFound(
            f"{exc} (the project names the model {request.model!r}: downloads are off unless "
            "you pass --allow-download)"
        ) from exc
    finally:
        _close(engine)
    if args.trace is not None:
        args.trace.write_text(json.dumps(trace, indent=1) + "\n")
    if not args.quiet:
        dist = ", ".join(f"{d:.1f}" for d in result.trace.final_distances)
        print(
            f"wrote {out} ({result.image.shape[1]}×{result.image.shape[0]}) in "
            f"{result.trace.seconds:.1f} s; handles end {dist} px from their targets",
            file=sys.stderr,
        )
    return 0


COMMANDS = {"make-tiny-model": cmd_make_tiny_model, "edit": cmd_edit}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_attach_pair_values(sys.argv[1:] if argv is None else argv))
    _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("dragstudio-cli: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Cancelled:
        print("dragstudio-cli: cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DragStudioError as exc:
        if args.debug:
            raise
        print(f"dragstudio-cli: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InvalidRequest) else EXIT_FAILED
    except Exception as exc:
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"dragstudio-cli: error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
