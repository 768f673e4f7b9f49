"""``dragstudio-cli generate``: make an image with the model and keep its latents for dragging."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.errors import InvalidRequest

Handler = Callable[[argparse.Namespace], int]


def add_generate_command(sub: argparse._SubParsersAction[Any]) -> dict[str, Handler]:
    gen = sub.add_parser(
        "generate",
        help="generate an image from a prompt, keeping its latents so it drags exactly",
        description="Generate an image with DDIM and classifier-free guidance. Saved as a "
        "project, it keeps every latent of its trajectory: `edit --project` then drags it "
        "without LoRA or inversion (paper appendix C).",
    )
    gen.add_argument("--model", required=True, help="hub id, diffusers folder or .safetensors")
    gen.add_argument("--model-config", help="config folder or hub id for a .safetensors model")
    gen.add_argument(
        "--vae",
        metavar="DIR_OR_ID",
        help="diffusers VAE folder or hub id (e.g. stabilityai/sd-vae-ft-mse) to use instead of "
        "the model's own VAE (not with --server)",
    )
    gen.add_argument("--prompt", required=True, help="what to generate")
    gen.add_argument("--negative", default="", help="what to avoid (negative prompt)")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    gen.add_argument("--width", type=int, default=512, help="multiple of 8 (512)")
    gen.add_argument("--height", type=int, default=512, help="multiple of 8 (512)")
    gen.add_argument("--guidance", type=float, default=7.5, help="guidance scale (7.5)")
    gen.add_argument("--steps", type=int, default=50, help="DDIM steps (50)")
    gen.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    gen.add_argument("--out", type=Path, required=True, help="where to write the image")
    gen.add_argument(
        "--save-project",
        type=Path,
        metavar="P.dragstudio",
        help="save a project with the image and its latents, ready to drag",
    )
    gen.add_argument("--quiet", action="store_true", help="print nothing but errors")
    from backend.server.cli_args import add_server_args

    add_server_args(gen)
    return {"generate": cmd_generate}


def cmd_generate(args: argparse.Namespace) -> int:
    from backend.engine import Engine, save_image
    from backend.generation import Generation

    spec = Generation(
        prompt=args.prompt,
        negative_prompt=args.negative,
        seed=args.seed,
        width=args.width,
        height=args.height,
        guidance_scale=args.guidance,
        steps=args.steps,
    )
    spec.validate(with_trajectory=False)
    for path in (args.out, args.save_project):
        if path is not None and not path.parent.exists():
            raise InvalidRequest(f"the folder {path.parent} does not exist")
    from backend.server.cli_args import remote_engine

    vae = (args.vae or "").strip() or None
    remote = remote_engine(args)
    if remote is not None and vae is not None:
        remote.close()
        raise InvalidRequest("--vae works with the local engine only, not with --server")
    try:
        if remote is not None:
            image, generation = remote.generate(spec, args.model)
        else:
            engine = Engine(args.device, single_file_config=args.model_config)
            image, generation = engine.generate(spec, args.model, vae=vae)
    finally:
        if remote is not None:
            remote.close()
    save_image(image, args.out)
    if args.save_project is not None:
        from backend.project import project_from_generation, save_project

        save_project(project_from_generation(image, generation, args.model, vae), args.save_project)
    if not args.quiet:
        where = f" and {args.save_project}" if args.save_project else ""
        print(f"wrote {args.out}{where}", file=sys.stderr)
    return 0
