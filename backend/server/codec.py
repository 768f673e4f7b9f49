"""Strict, validating conversion of requests, events and images to and from the wire.

Requests travel as JSON with their pixels replaced by the content hashes of uploaded blobs;
events as tagged JSON objects (a preview as a PNG payload). Decoding checks every field (type,
range, no unknown keys) and then the same ``validate`` the local engine runs, so a request the
server accepts is one the local engine would have accepted.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from backend.errors import InvalidRequest
from backend.events import Event, Stage, StageFinished, StageStarted, StepProgress
from backend.generation import Generation
from backend.imagefile import png_bytes
from backend.methods import GoodDragParams
from backend.request import (
    DragParams,
    DragRequest,
    LoraParams,
    PointPair,
    params_from_dict,
    params_to_dict,
)
from backend.server.protocol import (
    fail,
    require_bool,
    require_float,
    require_int,
    require_keys,
    require_list,
    require_obj,
    require_sha,
    require_str,
)

if TYPE_CHECKING:
    from backend.result import Trace

BlobLookup = Callable[[str, str], Any]
"""``lookup(kind, sha256)``: the decoded upload (array), or raises ProtocolError."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- images -----------------------------------------------------------------------------------


def decode_png(data: bytes, where: str, *, mask: bool = False, max_pixels: int) -> np.ndarray:
    """Pixels of a PNG from the network, checked with the project reader's own decoder."""
    from backend.project import ProjectError, _decode_png

    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            w, h = im.size
    except Exception:
        raise InvalidRequest(f"{where} is not a PNG image") from None
    if w * h > max_pixels:
        raise InvalidRequest(f"{where} has {w}×{h} pixels; this server accepts {max_pixels:,}")
    try:
        return _decode_png(data, where, None, mask)
    except ProjectError as exc:
        raise InvalidRequest(str(exc)) from None
    except Exception as exc:
        raise InvalidRequest(f"{where} is damaged ({type(exc).__name__})") from None


# -- requests ---------------------------------------------------------------------------------

_REQUEST_REQUIRED = {"image", "pairs", "prompt", "params", "lora", "model"}
_REQUEST_OPTIONAL = {"mask", "lora_image", "generation", "vae", "method", "gooddrag", "speed"}
_GENERATION_FIELDS = {"prompt", "negative_prompt", "seed", "width", "height", "guidance_scale",
                      "steps"}  # fmt: skip


def _strict_params(cls: type, value: Any, where: str) -> Any:
    obj = require_obj(value, where)
    require_keys(obj, where, set(), {f.name for f in fields(cls)})
    return params_from_dict(cls, obj)


def generation_to_json(g: Generation, trajectory: str | None = None) -> dict[str, Any]:
    out = g.settings()
    if trajectory is not None:
        out["trajectory"] = trajectory
    return out


def generation_from_json(
    value: Any, where: str, trajectory: np.ndarray | None = None
) -> Generation:
    obj = require_obj(value, where)
    optional = {"trajectory"} if trajectory is not None else set()
    require_keys(obj, where, _GENERATION_FIELDS, optional)
    g = Generation(
        prompt=require_str(obj["prompt"], f"{where}.prompt", 2000),
        negative_prompt=require_str(obj["negative_prompt"], f"{where}.negative_prompt", 2000),
        seed=require_int(obj["seed"], f"{where}.seed", 0, 2**63 - 1),
        width=require_int(obj["width"], f"{where}.width", 64, 2048),
        height=require_int(obj["height"], f"{where}.height", 64, 2048),
        guidance_scale=require_float(obj["guidance_scale"], f"{where}.guidance_scale"),
        steps=require_int(obj["steps"], f"{where}.steps", 2, 1000),
        **({"trajectory": trajectory} if trajectory is not None else {}),
    )
    g.validate(with_trajectory=trajectory is not None)
    return g


def request_to_json(request: DragRequest, blobs: dict[str, str]) -> dict[str, Any]:
    """``request`` with its arrays replaced by the hashes in ``blobs`` (keys: image, mask,
    lora_image, trajectory), as :func:`upload_parts` named them."""
    out: dict[str, Any] = {
        "image": blobs["image"],
        "pairs": [[*map(float, p.handle), *map(float, p.target)] for p in request.pairs],
        "prompt": request.prompt,
        "params": params_to_dict(request.params),
        "lora": params_to_dict(request.lora),
        "model": request.model,
    }
    if request.vae is not None:
        out["vae"] = request.vae
    if request.mask is not None:
        out["mask"] = blobs["mask"]
    if request.lora_image is not None:
        out["lora_image"] = blobs["lora_image"]
    if request.generation is not None:
        out["generation"] = generation_to_json(request.generation, blobs["trajectory"])
    if request.method != "paper":
        out["method"] = request.method
        out["gooddrag"] = params_to_dict(request.gooddrag)
    if request.speed != "paper":  # a label (its overrides are in params and lora)
        out["speed"] = request.speed
    return out


def upload_parts(request: DragRequest) -> dict[str, tuple[str, bytes]]:
    """The blobs a request needs, as ``{role: (kind, bytes)}`` (encoding is CPU work: call it
    off the GUI thread)."""
    from backend.project import latents_bytes

    parts: dict[str, tuple[str, bytes]] = {"image": ("image", png_bytes(request.image))}
    if request.mask is not None:
        parts["mask"] = ("mask", png_bytes(request.mask.astype(bool)))
    if request.lora_image is not None:
        parts["lora_image"] = ("image", png_bytes(request.lora_image))
    if request.generation is not None:
        parts["trajectory"] = ("latents", latents_bytes(request.generation.trajectory))
    return parts


def request_from_json(value: Any, lookup: BlobLookup, *, require_pairs: bool = True) -> DragRequest:
    """A validated request; raises ProtocolError (malformed) or InvalidRequest (out of range).

    ``require_pairs=False`` for a preparation, which needs no points."""
    obj = require_obj(value, "request")
    require_keys(obj, "request", _REQUEST_REQUIRED, _REQUEST_OPTIONAL)
    image = lookup("image", require_sha(obj["image"], "request.image"))
    mask = None
    if obj.get("mask") is not None:
        mask = lookup("mask", require_sha(obj["mask"], "request.mask"))
    lora_image = None
    if obj.get("lora_image") is not None:
        lora_image = lookup("image", require_sha(obj["lora_image"], "request.lora_image"))
    pairs = []
    for n, item in enumerate(require_list(obj["pairs"], "request.pairs", 64)):
        where = f"request.pairs[{n}]"
        coords = require_list(item, where, 4)
        if len(coords) != 4:
            raise fail(where, "expected [hx, hy, tx, ty]")
        hx, hy, tx, ty = (require_float(c, where) for c in coords)
        pairs.append(PointPair((hx, hy), (tx, ty)))
    generation = None
    if obj.get("generation") is not None:
        g = require_obj(obj["generation"], "request.generation")
        trajectory = lookup("latents", require_sha(g.get("trajectory"), "generation.trajectory"))
        generation = generation_from_json(g, "request.generation", trajectory)
    request = DragRequest(
        image=image,
        pairs=tuple(pairs),
        mask=mask,
        prompt=require_str(obj["prompt"], "request.prompt", 2000),
        params=_strict_params(DragParams, obj["params"], "request.params"),
        lora=_strict_params(LoraParams, obj["lora"], "request.lora"),
        model=require_str(obj["model"], "request.model", 1000),
        vae=None if obj.get("vae") is None else require_str(obj["vae"], "request.vae", 1000),
        generation=generation,
        lora_image=lora_image,
        method=require_str(obj.get("method", "paper"), "request.method", 32),
        gooddrag=_strict_params(GoodDragParams, obj.get("gooddrag", {}), "request.gooddrag"),
        speed=require_str(obj.get("speed", "paper"), "request.speed", 32),
    )
    request.validate(require_pairs=require_pairs)
    return request


# -- events -----------------------------------------------------------------------------------


def event_to_json(event: Event) -> tuple[dict[str, Any], bytes | None]:
    """A progress event and its preview PNG (if any). A job's end travels as its ``done`` or
    ``failed`` message."""
    if isinstance(event, StageStarted):
        return {"kind": "stage_started", "stage": event.stage.value, "total": event.total,
                "detail": event.detail}, None  # fmt: skip
    if isinstance(event, StageFinished):
        return {"kind": "stage_finished", "stage": event.stage.value,
                "seconds": float(event.seconds), "detail": event.detail}, None  # fmt: skip
    if isinstance(event, StepProgress):
        loss = event.loss if event.loss is not None and math.isfinite(event.loss) else None
        out: dict[str, Any] = {
            "kind": "step",
            "stage": event.stage.value,
            "step": int(event.step),
            "total": int(event.total),
            "loss": None if loss is None else float(loss),
            "handles": None
            if event.handles is None
            else [[float(x), float(y)] for x, y in event.handles],
        }
        preview = None if event.preview is None else png_bytes(event.preview)
        out["preview"] = preview is not None
        return out, preview
    raise TypeError(f"{type(event).__name__} does not travel as an event")


def _stage(value: Any, where: str) -> Stage:
    try:
        return Stage(require_str(value, where, 20))
    except ValueError:
        raise fail(where, f"unknown stage {str(value)[:20]!r}") from None


def event_from_json(value: Any, preview: bytes | None, *, max_pixels: int) -> Event:
    obj = require_obj(value, "event")
    kind = obj.get("kind")
    if kind == "stage_started":
        require_keys(obj, "event", {"kind", "stage", "total", "detail"}, set())
        return StageStarted(
            _stage(obj["stage"], "event.stage"),
            require_int(obj["total"], "event.total", 0, 10**7),
            require_str(obj["detail"], "event.detail", 500),
        )
    if kind == "stage_finished":
        require_keys(obj, "event", {"kind", "stage", "seconds", "detail"}, set())
        return StageFinished(
            _stage(obj["stage"], "event.stage"),
            require_float(obj["seconds"], "event.seconds"),
            require_str(obj["detail"], "event.detail", 500),
        )
    if kind == "step":
        require_keys(obj, "event", {"kind", "stage", "step", "total", "loss", "handles",
                                    "preview"}, set())  # fmt: skip
        loss = None if obj["loss"] is None else require_float(obj["loss"], "event.loss")
        handles = None
        if obj["handles"] is not None:
            pts = []
            for item in require_list(obj["handles"], "event.handles", 1000):
                xy = require_list(item, "event.handles[]", 2)
                if len(xy) != 2:
                    raise fail("event.handles[]", "expected [x, y]")
                pts.append((require_float(xy[0], "event.handles"),
                            require_float(xy[1], "event.handles")))  # fmt: skip
            handles = tuple(pts)
        image = None
        if require_bool(obj["preview"], "event.preview"):
            if preview is None:
                raise fail("event.preview", "announced but missing")
            image = decode_png(preview, "the preview", max_pixels=max_pixels)
        return StepProgress(
            _stage(obj["stage"], "event.stage"),
            require_int(obj["step"], "event.step", 0, 10**7),
            require_int(obj["total"], "event.total", 0, 10**7),
            loss=loss,
            handles=handles,
            preview=image,
        )
    raise fail("event.kind", f"unknown kind {str(kind)[:30]!r}")


# -- traces -----------------------------------------------------------------------------------


def plain(value: Any, depth: int = 0) -> Any:
    """The trace as plain JSON (numpy scalars become numbers, non-finite floats None)."""
    if depth > 20:
        raise ValueError("trace nested too deeply")
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "item"):  # a 0-d tensor
        return plain(value.item(), depth + 1)
    return str(value)


def trace_from_json(value: Any) -> Trace:
    """The engine's typed :class:`~backend.result.Trace`, rebuilt field by field."""
    from backend.result import Iteration, LoraOutcome, Trace

    obj = require_obj(value, "trace")
    if len(json.dumps(obj)) > 16 * 2**20:
        raise fail("trace", "too large")
    names = {f.name for f in fields(Trace)}
    # Trace.to_dict nests the memory plan and fallback under "memory".
    optional = {"memory", "method", "gooddrag", "speed"}
    require_keys(obj, "trace", names - optional - {"memory_plan", "memory_fallback"}, optional)
    memory = dict(require_obj(obj.get("memory", {}), "trace.memory"))
    plan = require_str(memory.pop("plan", "high"), "trace.memory.plan", 20)
    fallback = None
    if "fallback" in memory:
        raw = require_obj(memory.pop("fallback"), "trace.memory.fallback")
        fallback = {require_str(k, "trace.memory.fallback", 20): require_str(
            v, "trace.memory.fallback", 500) for k, v in raw.items()}  # fmt: skip

    def points(v: Any, where: str) -> tuple[tuple[float, float], ...]:
        out = []
        for item in require_list(v, where, 10_000):
            xy = require_list(item, where, 2)
            if len(xy) != 2:
                raise fail(where, "expected [x, y]")
            out.append((require_float(xy[0], where), require_float(xy[1], where)))
        return tuple(out)

    def pair(v: Any, where: str) -> tuple[int, int]:
        items = require_list(v, where, 2)
        if len(items) != 2:
            raise fail(where, "expected two numbers")
        return require_int(items[0], where, 0, 2**31), require_int(items[1], where, 0, 2**31)

    def seconds(v: Any, where: str) -> dict[str, float]:
        return {require_str(k, where, 40): require_float(x, where)
                for k, x in require_obj(v, where).items()}  # fmt: skip

    lora = require_obj(obj["lora"], "trace.lora")
    require_keys(lora, "trace.lora", {"steps", "cached", "source"}, {"key"})
    source = require_str(lora["source"], "trace.lora.source", 20)
    if source not in ("none", "memory", "disk", "trained", "generated"):
        raise fail("trace.lora.source", f"unknown source {source!r}")
    iterations = []
    for item in require_list(obj["iterations"], "trace.iterations", 100_000):
        it = require_obj(item, "trace.iterations[]")
        require_keys(it, "trace.iterations[]", {"step", "handles", "loss"}, {"timestep"})
        loss = it["loss"]
        timestep = it.get("timestep")
        iterations.append(Iteration(
            require_int(it["step"], "iteration.step", 0, 10**7),
            points(it["handles"], "iteration.handles"),
            float("nan") if loss is None else require_float(loss, "iteration.loss"),
            None if timestep is None else require_int(timestep, "iteration.timestep", 0, 10**6),
        ))  # fmt: skip
    return Trace(
        stages=seconds(obj["stages"], "trace.stages"),
        lora=LoraOutcome(
            require_int(lora["steps"], "trace.lora.steps", 0, 10**7),
            require_bool(lora["cached"], "trace.lora.cached"),
            source,  # type: ignore[arg-type]
            None if lora.get("key") is None else require_sha(lora["key"], "trace.lora.key"),
        ),
        iterations=tuple(iterations),
        drag_iterations=require_int(obj["drag_iterations"], "trace.drag_iterations", 0, 10**7),
        reached=require_bool(obj["reached"], "trace.reached"),
        final_handles=points(obj["final_handles"], "trace.final_handles"),
        handles=points(obj["handles"], "trace.handles"),
        targets=points(obj["targets"], "trace.targets"),
        final_distances=tuple(
            require_float(d, "trace.final_distances")
            for d in require_list(obj["final_distances"], "trace.final_distances", 10_000)
        ),
        image_size=pair(obj["image_size"], "trace.image_size"),
        working_size=pair(obj["working_size"], "trace.working_size"),
        feature_size=pair(obj["feature_size"], "trace.feature_size"),
        optimized_timestep=require_int(obj["optimized_timestep"], "trace.timestep", 0, 10**6),
        device=require_str(obj["device"], "trace.device", 100),
        dtype=require_str(obj["dtype"], "trace.dtype", 100),
        model=require_str(obj["model"], "trace.model", 1000),
        prompt=require_str(obj["prompt"], "trace.prompt", 2000),
        generated=require_bool(obj["generated"], "trace.generated"),
        guidance_scale=require_float(obj["guidance_scale"], "trace.guidance_scale"),
        ddim_steps=require_int(obj["ddim_steps"], "trace.ddim_steps", 0, 10**6),
        params=_strict_params(DragParams, obj["params"], "trace.params"),
        lora_params=_strict_params(LoraParams, obj["lora_params"], "trace.lora_params"),
        memory=seconds(memory, "trace.memory"),
        memory_plan=plan,
        memory_fallback=fallback,
        method=require_str(obj.get("method", "paper"), "trace.method", 32),
        gooddrag=None
        if obj.get("gooddrag") is None
        else require_obj(obj["gooddrag"], "trace.gooddrag"),
        speed=require_str(obj.get("speed", "paper"), "trace.speed", 32),
    )
