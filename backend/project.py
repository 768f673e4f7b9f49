"""Project files (``.dragstudio``): one zip with everything a session made, read as hostile.

The format is described in ``docs/project-format.md``. Writing goes to a temporary file in the
target's folder, is flushed and synced, then renamed over the target, so a crash or a full disk
leaves the previous file whole. Reading never extracts anything: members come from a fixed
allow-list, sizes are bounded from the central directory *and* while decompressing, images are
decoded by Pillow after their dimensions are checked, and every manifest field is validated. Any
problem is a :class:`ProjectError` naming it. No torch here: the LoRA travels as the bytes of its
safetensors file, checked by parsing the header (plain JSON), so the GUI thread can read projects.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend import __version__, limits
from backend.atomicio import atomic_file
from backend.document import Document, HistoryEntry, Pair
from backend.errors import DragStudioError, InvalidRequest
from backend.generation import Generation
from backend.imagefile import PNG_ONLY, ImageRefused, open_image, png_bytes
from backend.methods import METHODS, PAPER, GoodDragParams
from backend.request import (
    DragParams,
    DragRequest,
    LoraParams,
    PointPair,
    params_from_dict,
    params_to_dict,
)
from backend.speed_presets import PAPER_SPEED, SPEEDS

FORMAT = "dragstudio-project"
FORMAT_VERSION = 2
SUFFIX = ".dragstudio"

MANIFEST = "manifest.json"
IMAGE = "image.png"
MASK = "mask.png"
LORA = "lora/adapter.safetensors"
LATENTS = "generation/latents.safetensors"
_RESULT = re.compile(r"^results/(\d{4})\.png$")

MAX_FILE_BYTES = 32 * 2**30
"""A 48 MP photo with a long history, stored uncompressed if it has to be (see ``save_project``)."""
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_PNG_BYTES = 1 * 2**30
"""A largest photo (150 MP) stored at PNG level 0 is 450 MB."""
MAX_LORA_BYTES = 1 * 2**30
MAX_LATENTS_BYTES = 256 * 2**20
"""A generation's kept trajectory: 1024×1024 at 50 steps is 13 MB, 2048×2048 at 100 steps
106 MB; anything larger is no trajectory DragStudio makes."""
MAX_TOTAL_BYTES = MAX_FILE_BYTES
"""Sum of uncompressed member sizes (as declared and as actually read)."""
MAX_HISTORY = limits.MAX_HISTORY
MAX_PAIRS = limits.MAX_PAIRS
MAX_SIDE = limits.MAX_SIDE
MAX_PIXELS = limits.MAX_PIXELS
"""Per image; all images together are bounded by :func:`project_pixels_problem`."""
MAX_TEXT = limits.MAX_TEXT
"""Prompts that went into an edit (the request's limit)."""
MAX_SESSION_TEXT = 32767
"""The prompt being typed: the GUI's text field holds at most this many characters."""


class ProjectError(DragStudioError):
    """The project cannot be read or written; the message says which part and why."""


# ---------------------------------------------------------------------------------------------
# The in-memory project


def sha256_pixels(image: np.ndarray) -> str:
    h = hashlib.sha256(f"{image.shape}|{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).data.cast("B"))  # no 2nd copy of a big photo
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class BundledLora:
    """A trained identity LoRA: its cache key, parameters, safetensors bytes and what it fits.

    ``data`` is the file :func:`backend.lora.save_lora` writes (the LoRA cache's entry format),
    so it can go straight into the cache or through ``safetensors`` into the engine.
    """

    key: str
    params: LoraParams
    data: bytes
    image_sha256: str
    prompt: str
    model: str

    def mismatch(self, request: DragRequest) -> str | None:
        """Why this LoRA cannot serve ``request`` (None when nothing visible differs)."""
        reasons = []
        if sha256_pixels(request.identity_image) != self.image_sha256:
            reasons.append("the image differs from the one it was trained on")
        if request.prompt != self.prompt:
            reasons.append("the prompt changed")
        if request.lora != self.params:
            reasons.append("the LoRA parameters changed")
        if request.model != self.model:
            reasons.append(f"the model changed (it was trained on {self.model})")
        return "; ".join(reasons) or None


@dataclass(frozen=True, eq=False)
class Project:
    """A saved session: the photo, its mask and points, settings, accepted results and LoRA."""

    original: np.ndarray
    mask: np.ndarray | None
    pairs: tuple[Pair, ...]
    prompt: str
    params: DragParams
    lora_params: LoraParams
    model: str
    history: tuple[HistoryEntry, ...] = ()
    lora: BundledLora | None = None
    vae: str | None = None
    """The VAE used instead of the model's own (None: its own; older files have none)."""
    generation: Generation | None = None
    """Set when ``original`` was generated here: its kept latents replace LoRA and inversion."""
    method: str = PAPER
    gooddrag: GoodDragParams = field(default_factory=GoodDragParams)
    speed: str = PAPER_SPEED
    format_version: int = FORMAT_VERSION
    app_version: str = __version__

    @property
    def image(self) -> np.ndarray:
        """The image to drag next: the last accepted result, or the photo."""
        return self.history[-1].after if self.history else self.original

    def to_request(self) -> DragRequest:
        """The edit the project describes (complete pairs; the LoRA learns the photo).

        A generated image drags from its kept latents until a result is accepted; after that
        the image is no longer the generation's, so it is dragged like a photo.
        """
        lora_image = self.original if self.history else None
        return DragRequest(
            image=self.image,
            pairs=tuple(PointPair(p.handle, p.target) for p in self.pairs if p.target),
            mask=self.mask,
            prompt=self.prompt,
            params=self.params,
            lora=self.lora_params,
            model=self.model,
            vae=self.vae,
            lora_image=lora_image,
            generation=None if self.history else self.generation,
            method=self.method,
            gooddrag=self.gooddrag,
            speed=self.speed,
        )

    @classmethod
    def from_document(cls, doc: Document, lora: BundledLora | None = None) -> Project:
        if doc.original is None or doc.image is None:
            raise ProjectError("there is no image to save")
        return cls(
            original=doc.original,
            mask=None if doc.mask is None else doc.mask.copy(),
            pairs=doc.pairs,
            prompt=doc.prompt,
            params=doc.params,
            lora_params=doc.lora,
            model=doc.model,
            vae=doc.vae,
            history=tuple(doc.history),
            lora=lora,
            generation=doc.generation,
            method=doc.method,
            gooddrag=doc.gooddrag,
            speed=doc.speed,
        )

    def apply(self, doc: Document, path: str | Path | None = None) -> None:
        """Make ``doc`` this project (the GUI validates by reading first, so this cannot fail)."""
        doc.restore(self.original, self.history, path, generation=self.generation)
        if self.mask is not None:
            doc.set_mask(self.mask)
        doc.set_pairs(self.pairs)
        doc.set_prompt(self.prompt)
        doc.set_params(self.params, self.lora_params)
        doc.set_method(self.method, self.gooddrag)
        doc.set_speed(self.speed)
        doc.set_model(self.model)
        doc.set_vae(self.vae)


# ---------------------------------------------------------------------------------------------
# Writing


def _pairs_json(pairs: tuple[Pair, ...]) -> list[dict[str, Any]]:
    return [
        {"handle": list(p.handle), "target": None if p.target is None else list(p.target)}
        for p in pairs
    ]


def _entry_json(n: int, e: HistoryEntry) -> dict[str, Any]:
    return {
        "result": f"results/{n:04d}.png",
        "pairs": _pairs_json(e.pairs),
        "prompt": e.prompt,
        "params": params_to_dict(e.params),
        "lora_params": params_to_dict(e.lora),
        "model": e.model,
        "seconds": float(e.seconds),
        "lora_reused": bool(e.lora_reused),
        "final_handles": [list(h) for h in e.final_handles],
        "method": e.method,
        "gooddrag": params_to_dict(e.gooddrag),
        "speed": e.speed,
    }


def manifest_of(project: Project) -> dict[str, Any]:
    h, w = project.original.shape[:2]
    lora = project.lora
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "app_version": __version__,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image": {"file": IMAGE, "width": int(w), "height": int(h)},
        "mask": MASK if project.mask is not None else None,
        "pairs": _pairs_json(project.pairs),
        "prompt": project.prompt,
        "params": params_to_dict(project.params),
        "lora_params": params_to_dict(project.lora_params),
        "model": project.model,
        "vae": project.vae,
        "method": project.method,
        "gooddrag": params_to_dict(project.gooddrag),
        "speed": project.speed,
        "history": [_entry_json(n, e) for n, e in enumerate(project.history, 1)],
        "lora": None
        if lora is None
        else {
            "file": LORA,
            "key": lora.key,
            "params": params_to_dict(lora.params),
            "image_sha256": lora.image_sha256,
            "prompt": lora.prompt,
            "model": lora.model,
        },
        "generation": None if project.generation is None else _generation_json(project.generation),
    }


def _generation_json(g: Generation) -> dict[str, Any]:
    return {"file": LATENTS, **g.settings()}


def latents_bytes(trajectory: np.ndarray) -> bytes:
    """The trajectory as a safetensors file: one little-endian float32 tensor "trajectory"
    (``safetensors.numpy``: torch-free, the same bytes earlier versions wrote by hand)."""
    from safetensors.numpy import save

    tensor = np.ascontiguousarray(trajectory, dtype="<f4")
    return save({"trajectory": tensor}, metadata={"format": "dragstudio-generation"})


def manifest_text(project: Project) -> str:
    """The manifest as JSON text that is always valid UTF-8.

    A Python string can hold a lone surrogate (e.g. pasted from a broken source); it has no
    UTF-8 form, so it is written as U+FFFD instead of making every save fail. Surrogate *pairs*
    become the character they encode.
    """
    text = json.dumps(manifest_of(project), indent=1, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _members(project: Project, compress_level: int) -> list[tuple[str, bytes, int]]:
    """``(name, data, compression)``: PNGs and tensors are stored, the manifest deflated."""
    stored, deflated = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
    out = [(MANIFEST, manifest_text(project).encode(), deflated)]
    out.append((IMAGE, png_bytes(project.original, compress_level), stored))
    if project.mask is not None:
        out.append((MASK, png_bytes(project.mask.astype(bool), compress_level), stored))
    for n, entry in enumerate(project.history, 1):
        out.append((f"results/{n:04d}.png", png_bytes(entry.after, compress_level), stored))
    if project.lora is not None:
        out.append((LORA, project.lora.data, stored))
    if project.generation is not None:
        out.append((LATENTS, latents_bytes(project.generation.trajectory), stored))
    return out


def project_pixels(width: int, height: int, results: int, mask: bool) -> int:
    """Decoded pixels a project asks for: photo, results, and the mask (counted as an image)."""
    return width * height * (1 + results + int(mask))


def project_pixels_problem(pixels: int, file_bytes: int) -> str | None:
    """Why a project of ``file_bytes`` may not decode to ``pixels``: the reader's and the
    writer's one rule (:mod:`backend.limits`)."""
    if pixels > limits.MAX_PROJECT_PIXELS:
        return (
            f"its images hold {pixels / 1e9:.1f} billion pixels together; a project may hold "
            f"{limits.MAX_PROJECT_PIXELS / 1e9:.0f} billion"
        )
    return limits.decode_problem(pixels, file_bytes)


def _check_before_writing(project: Project) -> None:
    try:
        Project.to_request(project).params.validate()
        project.lora_params.validate()
    except InvalidRequest as exc:
        raise ProjectError(f"cannot save: {exc}") from exc
    h, w = project.original.shape[:2]
    problem = limits.image_problem(w, h)
    if problem:
        raise ProjectError(f"cannot save: {problem}")
    if len(project.history) > MAX_HISTORY:
        raise ProjectError(f"cannot save more than {MAX_HISTORY} accepted results")
    pixels = project_pixels(w, h, len(project.history), project.mask is not None)
    if pixels > limits.MAX_PROJECT_PIXELS:
        raise ProjectError(f"cannot save: {project_pixels_problem(pixels, 0)}")
    if project.lora is not None:
        _check_safetensors(project.lora.data, project.lora.key)
    g = project.generation
    if g is not None:
        try:
            g.validate()
        except InvalidRequest as exc:
            raise ProjectError(f"cannot save the generation: {exc}") from exc
        if (g.width, g.height) != (w, h):
            raise ProjectError(
                f"cannot save: the image is {w}×{h}, the generation {g.width}×{g.height}"
            )
        if g.trajectory.nbytes > MAX_LATENTS_BYTES:
            raise ProjectError("cannot save: the generation's latents are too large")


def encode_project(project: Project, *, compress_level: int = 6) -> list[tuple[str, bytes, int]]:
    """The members ``save_project`` writes, already checked by the reader's own rules.

    Images that compress extremely well (blank areas) could make the file too small for the
    pixels it holds (the reader's decompression-bomb rule); then the PNGs are stored without
    compression, which always satisfies it. Finally the members are read back the way
    :func:`read_project` reads them, minus decoding pixels, so a file that saves also opens.
    """
    _check_before_writing(project)
    members = _members(project, compress_level)
    h, w = project.original.shape[:2]
    pixels = project_pixels(w, h, len(project.history), project.mask is not None)
    if project_pixels_problem(pixels, sum(len(d) for _, d, _ in members)) and compress_level:
        members = _members(project, 0)
    archive = _MemberArchive(members)
    try:
        _project(archive)
    except ProjectError as exc:
        raise ProjectError(f"cannot save: {exc}") from None
    return members


def save_project(project: Project, path: str | Path, *, compress_level: int = 6) -> None:
    """Write ``project`` to ``path`` atomically; on any failure the old file is untouched."""
    path = Path(path)
    members = encode_project(project, compress_level=compress_level)
    try:
        with atomic_file(path, sync_folder=True) as f, zipfile.ZipFile(f, "w") as zf:
            for name, data, compression in members:
                info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
                info.compress_type = compression
                zf.writestr(info, data)
    except OSError as exc:
        raise ProjectError(f"cannot save {path.name}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------------------------------
# Reading: validation helpers


def _fail(where: str, why: str) -> ProjectError:
    return ProjectError(f"{where}: {why}" if where else why)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list, got {type(value).__name__}")
    if len(value) > most:
        raise _fail(where, f"too many items ({len(value)}; {most} at most)")
    return value


def _text(value: Any, where: str, most: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"expected text, got {type(value).__name__}")
    if len(value) > most:
        raise _fail(where, f"too long ({len(value)} characters; {most} at most)")
    if not _is_unicode(value):
        raise _fail(where, "contains a lone surrogate (not valid Unicode text)")
    return value


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _fail(where, f"expected a whole number from {lo} to {hi}, got {value!r}")
    return value


def _float(value: Any, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, int):
        ok = abs(value) < 2**1000  # a 400-digit int would overflow float()
    if not ok or not math.isfinite(value):
        raise _fail(where, f"expected a finite number, got {str(value)[:40]}")
    return float(value)


def _point(value: Any, where: str, size: tuple[int, int] | None) -> tuple[float, float]:
    items = _list(value, where, 2)
    if len(items) != 2:
        raise _fail(where, "expected [x, y]")
    x, y = _float(items[0], where), _float(items[1], where)
    if size is not None and not (0 <= x <= size[0] - 1 and 0 <= y <= size[1] - 1):
        raise _fail(where, f"({x:g}, {y:g}) lies outside the {size[0]}×{size[1]} image")
    return (x, y)


def _pairs(value: Any, where: str, size: tuple[int, int]) -> tuple[Pair, ...]:
    out = []
    for n, item in enumerate(_list(value, where, MAX_PAIRS), 1):
        d = _obj(item, f"{where}[{n}]")
        handle = _point(d.get("handle"), f"{where}[{n}].handle", size)
        raw_target = d.get("target")
        target = None if raw_target is None else _point(raw_target, f"{where}[{n}].target", size)
        out.append(Pair(handle, target))
    return tuple(out)


def _params(cls: type, value: Any, where: str) -> Any:
    try:
        return params_from_dict(cls, _obj(value, where))
    except InvalidRequest as exc:
        raise _fail(where, str(exc)) from None
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. an unhashable list item
        raise _fail(where, f"invalid value ({exc})") from None


def _method(d: dict[str, Any], where: str) -> tuple[str, GoodDragParams]:
    """The drag method and GoodDrag's knobs (absent in older projects: the paper's)."""
    method = _text(d.get("method", PAPER), f"{where}method", 32)
    if method not in METHODS:
        raise _fail(f"{where}method", f"unknown method {method!r}")
    return method, _params(GoodDragParams, d.get("gooddrag", {}), f"{where}gooddrag")


def _speed(d: dict[str, Any], where: str) -> str:
    """The named fast option (absent in older projects: the paper's settings)."""
    speed = _text(d.get("speed", PAPER_SPEED), f"{where}speed", 32)
    if speed not in SPEEDS:
        raise _fail(f"{where}speed", f"unknown speed {speed!r}")
    return speed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_json(data: bytes, where: str) -> Any:
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
        # "\ud800" escapes decode to lone surrogates, which no later save could write back.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(where, "contains text that is not valid Unicode (a lone surrogate)") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(where, f"not valid JSON ({exc})") from None
    return value


def _safetensors_header(data: bytes, where: str, most: int) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header and its length, read before anything is allocated:
    the declared header size must fit the file and ``most`` bytes."""
    if len(data) < 8:
        raise _fail(where, "truncated")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, most):
        raise _fail(where, "the header is larger than the file")
    return _obj(_parse_json(data[8 : 8 + n], where), where), n


def _check_safetensors(data: bytes, key: str) -> dict[str, Any]:
    """Validate a LoRA's safetensors file by its header alone: sizes, offsets, our metadata
    (its tensors are checked against the model, with torch, when an edit first needs them)."""
    where = LORA
    header, n = _safetensors_header(data, where, 100 * 2**20)
    body = len(data) - 8 - n
    meta = _obj(header.get("__metadata__", {}), f"{where} metadata")
    if meta.get("format") != "dragstudio-lora":
        raise _fail(where, "not a DragStudio LoRA")
    if meta.get("key") != key:
        raise _fail(where, "its key does not match the manifest")
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        s = _obj(spec, f"{where} tensor {name[:60]}")
        offsets = _list(s.get("data_offsets"), f"{where} tensor {name[:60]}", 2)
        if len(offsets) != 2 or not all(isinstance(o, int) for o in offsets):
            raise _fail(where, f"tensor {name[:60]} has bad offsets")
        if not 0 <= offsets[0] <= offsets[1] <= body:
            raise _fail(where, f"tensor {name[:60]} lies outside the file")
    if len(header) <= 1:
        raise _fail(where, "holds no tensors")
    return header


# ---------------------------------------------------------------------------------------------
# Reading: the archive


def _v1_to_v2(manifest: dict[str, Any]) -> dict[str, Any]:
    """Version 2 adds generated images; a version-1 project never holds one."""
    return {**manifest, "generation": None}


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}
"""``MIGRATIONS[n]`` turns a version-``n`` manifest into version ``n + 1``; each format change
adds its step here (and a test reading a file of the old version)."""


def migrate(manifest: dict[str, Any]) -> dict[str, Any]:
    """Bring an older manifest up to :data:`FORMAT_VERSION`, one version at a time."""
    version = _int(manifest.get("format_version"), "format_version", 0, 10**6)
    if version > FORMAT_VERSION:
        raise ProjectError(
            f"this project was saved by a newer DragStudio (format {version}; this version "
            f"reads up to {FORMAT_VERSION}): please update DragStudio"
        )
    while version < FORMAT_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise ProjectError(f"project format {version} is no longer supported")
        manifest = _obj(step(manifest), "migrated manifest")
        version += 1
        manifest["format_version"] = version
    return manifest


def _limit(name: str) -> int:
    if name == MANIFEST:
        return MAX_MANIFEST_BYTES
    if name == LORA:
        return MAX_LORA_BYTES
    if name == LATENTS:
        return MAX_LATENTS_BYTES
    return MAX_PNG_BYTES


def _allowed(name: str) -> bool:
    return name in (MANIFEST, IMAGE, MASK, LORA, LATENTS) or _RESULT.match(name) is not None


class _Archive:
    """The zip's members by name, checked against the allow-list and the size limits."""

    decode = True
    """Whether images are decoded (the writer's check only reads their headers)."""

    def __init__(self, zf: zipfile.ZipFile, file_bytes: int) -> None:
        self.zf = zf
        self.file_bytes = file_bytes
        self.infos: dict[str, zipfile.ZipInfo] = {}
        total = 0
        infos = zf.infolist()
        if len(infos) > MAX_HISTORY + 5:
            raise ProjectError(f"the archive has too many members ({len(infos)})")
        for info in infos:
            name = info.filename
            if not _allowed(name):
                raise ProjectError(f"unexpected member {name[:80]!r} in the archive")
            if name in self.infos:
                raise ProjectError(f"the member {name} appears twice")
            if info.flag_bits & 0x1:
                raise ProjectError(f"{name} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ProjectError(f"{name} uses an unsupported compression")
            if info.file_size > _limit(name):
                raise ProjectError(f"{name} is too large ({info.file_size} bytes)")
            total += info.file_size
            self.infos[name] = info
        if total > MAX_TOTAL_BYTES:
            raise ProjectError("the archive's contents are too large")
        self.read_total = 0

    def has(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return list(self.infos)

    def read(self, name: str) -> bytes:
        """Read a member without trusting its declared size (decompress at most the limit)."""
        info = self.infos.get(name)
        if info is None:
            raise ProjectError(f"the archive has no {name}")
        limit = min(_limit(name), info.file_size)
        with self.zf.open(info) as f:
            data = f.read(limit + 1)
        if len(data) != info.file_size:
            raise ProjectError(f"{name} is not the size the archive declares")
        self.read_total += len(data)
        if self.read_total > MAX_TOTAL_BYTES:
            raise ProjectError("the archive's contents are too large")
        return data


class _MemberArchive:
    """Members about to be written, read back by the same code (images: headers only)."""

    decode = False

    def __init__(self, members: list[tuple[str, bytes, int]]) -> None:
        self.members = {name: data for name, data, _ in members}
        self.file_bytes = sum(len(d) for d in self.members.values())
        for name, data in self.members.items():
            if len(data) > _limit(name):
                raise ProjectError(f"cannot save: {name} would be too large ({len(data)} bytes)")

    def has(self, name: str) -> bool:
        return name in self.members

    def names(self) -> list[str]:
        return list(self.members)

    def read(self, name: str) -> bytes:
        return self.members[name]


Archive = _Archive | _MemberArchive


def _decode_png(
    data: bytes, where: str, size: tuple[int, int] | None, mask: bool, decode: bool = True
) -> np.ndarray:
    """A member PNG as pixels, after its header is checked (``decode=False``: a zero-cost
    stand-in of the right shape, for the writer's check)."""
    try:
        with open_image(data, formats=PNG_ONLY, photo=False) as im:
            w, h = im.size
            if size is not None and (w, h) != size:
                raise _fail(where, f"is {w}×{h}, the manifest says {size[0]}×{size[1]}")
            if mask:
                if im.mode not in ("1", "L"):
                    raise _fail(where, f"must be a black-and-white PNG, not {im.mode}")
                if not decode:
                    return np.broadcast_to(np.zeros((), bool), (h, w))
                im.load()
                return np.asarray(im.convert("L")) > 0
            if im.mode != "RGB":
                raise _fail(where, f"must be an 8-bit RGB PNG, not {im.mode}")
            if not decode:
                return np.broadcast_to(np.zeros((), np.uint8), (h, w, 3))
            im.load()
            return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    except ImageRefused as exc:
        raise _fail(where, str(exc)) from None


def _history(
    items: list[Any], archive: Archive, original: np.ndarray, size: tuple[int, int]
) -> tuple[HistoryEntry, ...]:
    entries: list[HistoryEntry] = []
    before = original
    for n, item in enumerate(items, 1):
        where = f"history[{n}]"
        d = _obj(item, where)
        name = _text(d.get("result"), f"{where}.result", 64)
        if name != f"results/{n:04d}.png":
            raise _fail(f"{where}.result", f"expected results/{n:04d}.png, got {name!r}")
        after = _decode_png(archive.read(name), name, size, False, archive.decode)
        method, gooddrag = _method(d, f"{where}.")
        handles = _list(d.get("final_handles", []), f"{where}.final_handles", MAX_PAIRS)
        entries.append(
            HistoryEntry(
                before=before,
                after=after,
                pairs=_pairs(d.get("pairs"), f"{where}.pairs", size),
                prompt=_text(d.get("prompt"), f"{where}.prompt"),
                params=_params(DragParams, d.get("params"), f"{where}.params"),
                lora=_params(LoraParams, d.get("lora_params"), f"{where}.lora_params"),
                model=_text(d.get("model"), f"{where}.model"),
                seconds=max(0.0, _float(d.get("seconds", 0.0), f"{where}.seconds")),
                lora_reused=bool(d.get("lora_reused", False) is True),
                final_handles=tuple(_point(h, f"{where}.final_handles", None) for h in handles),
                method=method,
                gooddrag=gooddrag,
                speed=_speed(d, f"{where}."),
            )
        )
        before = after
    return tuple(entries)


_KEY = re.compile(r"^[0-9a-f]{64}$")


def _lora(raw: Any, archive: Archive) -> BundledLora | None:
    if raw is None:
        return None
    d = _obj(raw, "lora")
    if d.get("file") != LORA:
        raise _fail("lora.file", f"expected {LORA!r}")
    key = _text(d.get("key"), "lora.key", 64)
    digest = _text(d.get("image_sha256"), "lora.image_sha256", 64)
    for where, value in (("lora.key", key), ("lora.image_sha256", digest)):
        if not _KEY.match(value):
            raise _fail(where, "expected 64 lower-case hex digits")
    data = archive.read(LORA)
    _check_safetensors(data, key)
    return BundledLora(
        key=key,
        params=_params(LoraParams, d.get("params"), "lora.params"),
        data=data,
        image_sha256=digest,
        prompt=_text(d.get("prompt"), "lora.prompt"),
        model=_text(d.get("model"), "lora.model"),
    )


def _latents(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The kept trajectory from its safetensors bytes: exactly one F32 tensor of ``shape``.

    The header is checked against ``shape`` (and the data's size against the header) before
    ``safetensors.numpy`` allocates anything.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    where = LATENTS
    header, n = _safetensors_header(data, where, 1 * 2**20)
    names = [k for k in header if k != "__metadata__"]
    if names != ["trajectory"]:
        raise _fail(where, f"expected one tensor named 'trajectory', found {names[:4]!r}")
    spec = _obj(header["trajectory"], f"{where} trajectory")
    if spec.get("dtype") != "F32":
        raise _fail(where, f"the trajectory must be F32, not {str(spec.get('dtype'))[:20]!r}")
    found = spec.get("shape")
    if found != list(shape):
        raise _fail(
            where, f"the trajectory has shape {str(found)[:60]}, the manifest implies {list(shape)}"
        )
    size = 4 * math.prod(shape)
    if spec.get("data_offsets") != [0, size] or len(data) - 8 - n != size:
        raise _fail(where, "the tensor's data does not match its header")
    try:
        out = load(data)["trajectory"]
    except SafetensorError as exc:
        raise _fail(where, f"not a valid safetensors file ({str(exc)[:120]})") from None
    out = out.astype(np.float32, copy=False).reshape(shape)
    if not np.isfinite(out).all():
        raise _fail(where, "the trajectory contains NaN or infinity")
    return out


def _generation(raw: Any, archive: Archive, size: tuple[int, int]) -> Generation | None:
    if raw is None:
        return None
    d = _obj(raw, "generation")
    if d.get("file") != LATENTS:
        raise _fail("generation.file", f"expected {LATENTS!r}")
    width = _int(d.get("width"), "generation.width", 64, 2048)
    height = _int(d.get("height"), "generation.height", 64, 2048)
    if (width, height) != size:
        raise _fail("generation", f"made {width}×{height}, but the image is {size[0]}×{size[1]}")
    steps = _int(d.get("steps"), "generation.steps", 2, 1000)
    shape = (steps + 1, 4, height // 8, width // 8)
    if 4 * math.prod(shape) > MAX_LATENTS_BYTES:
        raise _fail("generation", f"{steps} steps at {width}×{height} keep too many latents")
    trajectory = _latents(archive.read(LATENTS), shape)
    generation = Generation(
        prompt=_text(d.get("prompt"), "generation.prompt"),
        negative_prompt=_text(d.get("negative_prompt", ""), "generation.negative_prompt"),
        seed=_int(d.get("seed"), "generation.seed", 0, 2**63 - 1),
        width=width,
        height=height,
        guidance_scale=_float(d.get("guidance_scale"), "generation.guidance_scale"),
        steps=steps,
        trajectory=trajectory,
    )
    try:
        generation.validate()
    except InvalidRequest as exc:
        raise _fail("generation", str(exc)) from None
    return generation


def _project(archive: Archive) -> Project:
    manifest = _obj(_parse_json(archive.read(MANIFEST), MANIFEST), MANIFEST)
    if manifest.get("format") != FORMAT:
        raise ProjectError(f"{MANIFEST} does not describe a DragStudio project")
    manifest = migrate(manifest)
    image = _obj(manifest.get("image"), "image")
    if image.get("file") != IMAGE:
        raise _fail("image.file", f"expected {IMAGE!r}")
    size = (
        _int(image.get("width"), "image.width", limits.MIN_SIDE, MAX_SIDE),
        _int(image.get("height"), "image.height", limits.MIN_SIDE, MAX_SIDE),
    )
    problem = limits.image_problem(*size)
    if problem:
        raise _fail("image", problem)
    mask_name = manifest.get("mask")
    if mask_name is not None and mask_name != MASK:
        raise _fail("mask", f"expected {MASK!r} or null")
    items = _list(manifest.get("history", []), "history", MAX_HISTORY)
    # Before decoding anything: what all images together will cost, against the file's size.
    pixels = project_pixels(*size, len(items), mask_name is not None)
    problem = project_pixels_problem(pixels, archive.file_bytes)
    if problem:
        raise _fail("", f"the project is refused: {problem}")
    original = _decode_png(archive.read(IMAGE), IMAGE, size, False, archive.decode)
    mask = None
    if mask_name is not None:
        mask = _decode_png(archive.read(MASK), MASK, size, True, archive.decode)
    history = _history(items, archive, original, size)
    names = {f"results/{n:04d}.png" for n in range(1, len(history) + 1)}
    extra = [n for n in archive.names() if _RESULT.match(n) and n not in names]
    if extra:
        raise ProjectError(f"{extra[0]} is not listed in the history")
    lora = _lora(manifest.get("lora"), archive)
    if lora is None and archive.has(LORA):
        raise ProjectError(f"{LORA} is not listed in the manifest")
    if mask is None and archive.has(MASK):
        raise ProjectError(f"{MASK} is not listed in the manifest")
    generation = _generation(manifest.get("generation"), archive, size)
    method, gooddrag = _method(manifest, "")
    if generation is None and archive.has(LATENTS):
        raise ProjectError(f"{LATENTS} is not listed in the manifest")
    return Project(
        original=original,
        mask=mask,
        pairs=_pairs(manifest.get("pairs", []), "pairs", size),
        prompt=_text(manifest.get("prompt", ""), "prompt", MAX_SESSION_TEXT),
        params=_params(DragParams, manifest.get("params"), "params"),
        lora_params=_params(LoraParams, manifest.get("lora_params"), "lora_params"),
        model=_model(manifest.get("model")),
        vae=_text(manifest.get("vae") or "", "vae").strip() or None,
        history=history,
        lora=lora,
        generation=generation,
        method=method,
        gooddrag=gooddrag,
        speed=_speed(manifest, ""),
        format_version=FORMAT_VERSION,
        app_version=_text(manifest.get("app_version", ""), "app_version", 64),
    )


def _model(value: Any) -> str:
    model = _text(value, "model")
    if not model:
        raise _fail("model", "empty")
    return model


def read_project(path: str | Path) -> Project:
    """Read and validate a project; raises :class:`ProjectError` naming the problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ProjectError(f"cannot open {path.name}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise ProjectError(f"cannot open {path.name}: it is not a file")
    if size > MAX_FILE_BYTES:
        raise ProjectError(f"{path.name} is too large to be a DragStudio project")
    try:
        with zipfile.ZipFile(path) as zf:
            return _project(_Archive(zf, size))
    except ProjectError as exc:
        raise ProjectError(f"{path.name}: {exc}") from None
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        struct.error,
        SyntaxError,  # Pillow reports some broken PNG chunks this way
        NotImplementedError,
        Image.DecompressionBombError,
        MemoryError,
    ) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ProjectError(
            f"{path.name} is damaged or not a DragStudio project ({detail})"
        ) from None


# ---------------------------------------------------------------------------------------------
# Summary


def describe(project: Project, path: str | Path | None = None) -> str:
    """A few lines for ``dragstudio-cli project info`` and the GUI."""
    h, w = project.original.shape[:2]
    complete = sum(1 for p in project.pairs if p.target is not None)
    mask = project.mask
    coverage = "none" if mask is None else f"{100.0 * float(mask.mean()):.1f}% editable"
    lines = [
        f"project:   {Path(path).name if path else '(unsaved)'} "
        f"(format {project.format_version}, saved by DragStudio {project.app_version or '?'})",
        f"image:     {w}×{h}",
        f"points:    {complete} pair(s)"
        + (
            f", {len(project.pairs) - complete} without target"
            if complete < len(project.pairs)
            else ""
        ),
        f"mask:      {coverage}",
        f"prompt:    {project.prompt!r}",
        f"model:     {project.model}",
        f"VAE:       {project.vae or 'the model' + chr(39) + 's own'}",
        f"drag:      {project.params.drag_steps} steps, {project.params.inference_steps} DDIM "
        f"steps, inversion {project.params.inversion_strength:g}, "
        f"width {project.params.working_width}",
        f"LoRA:      {project.lora_params.steps} steps, rank {project.lora_params.rank}, "
        f"seed {project.lora_params.seed}",
        f"history:   {len(project.history)} accepted result(s)",
    ]
    g = project.generation
    if g is not None:
        lines.append(
            f"generated: {g.width}×{g.height}, {g.steps} steps, guidance {g.guidance_scale:g}, "
            f"seed {g.seed}, prompt {g.prompt!r}"
            + ("" if project.history else " (drags from its kept latents: no LoRA, no inversion)")
        )
    if project.lora is None and g is not None and not project.history:
        lines.append("trained:   no LoRA needed (a generated image)")
    elif project.lora is None:
        lines.append("trained:   no LoRA bundled (the next drag trains one)")
    else:
        lora = project.lora
        lines.append(
            f"trained:   LoRA {lora.key[:12]}… ({len(lora.data) / 2**20:.1f} MB, "
            f"rank {lora.params.rank}, {lora.params.steps} steps)"
        )
        why = lora.mismatch(project.to_request())
        if why:
            lines.append(f"           it will be retrained: {why}")
    return "\n".join(lines)


def project_from_generation(
    image: np.ndarray, generation: Generation, model: str, vae: str | None = None
) -> Project:
    """A new session on a generated image: no points or mask yet, its latents kept.

    The prompt is the generation's, so a LoRA trained after a result is accepted learns the
    image under the words that made it.
    """
    return Project(
        original=np.ascontiguousarray(image),
        mask=None,
        pairs=(),
        prompt=generation.prompt,
        params=DragParams(),
        lora_params=LoraParams(),
        model=model,
        vae=vae,
        generation=generation,
    )
