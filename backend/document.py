"""The open document: image, point pairs, mask, prompt, parameters and model, without Qt.

The GUI, the project file and the CLI share this model. It knows nothing about undo: the GUI's
undo commands call its small mutating methods, and every mutation is reported to the observers
(plain callbacks) with what changed, so widgets redraw only what they must. Coordinates are
image pixels ``(x, y)`` as floats; the mask is ``H×W`` bool, True meaning editable.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageCms, ImageOps

from backend import limits
from backend.errors import InvalidRequest
from backend.imagefile import DECODE_ERRORS, ImageRefused, open_image, pil_to_array
from backend.methods import PAPER, GoodDragParams, check_method
from backend.request import DEFAULT_MODEL, DragParams, DragRequest, LoraParams, PointPair
from backend.speed_presets import PAPER_SPEED, check_speed

if TYPE_CHECKING:
    from backend.generation import Generation

MAX_SIDE = limits.MAX_SIDE
"""Largest width or height we open (:mod:`backend.limits`, shared with projects)."""

Point = tuple[float, float]


def clamp_point(point: Point, size: tuple[int, int]) -> Point:
    """``point`` moved to the nearest pixel centre inside an image of ``size`` = ``(w, h)``."""
    w, h = size
    x, y = point
    return (min(max(x, 0.0), max(w - 1.0, 0.0)), min(max(y, 0.0), max(h - 1.0, 0.0)))


Rect = tuple[int, int, int, int]
"""A pixel region ``(x0, y0, x1, y1)``, end-exclusive."""


# ---------------------------------------------------------------------------------------------
# Image loading


def _err(path: Path, why: str) -> InvalidRequest:
    return InvalidRequest(f"Cannot open “{path.name}”: {why}")


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite transparency over white: transparent areas of photos and scans are paper."""
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_bit_grey(im: Image.Image) -> np.ndarray:
    """16-bit and 32-bit greyscale to 8 bits, scaling by the range the mode implies."""
    a = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
    elif im.mode.startswith("I;16") or (a.size and a.max() > 255):
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    grey = np.clip(np.nan_to_num(a * scale), 0, 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """Use the embedded ICC profile where there is one; Pillow's naive formula otherwise."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return im.convert("RGB")


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow image as ``H×W×3`` uint8 RGB, converting each mode the way a viewer would."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_bit_grey(im)
    if mode == "CMYK":
        im = _cmyk_to_rgb(im)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        im = _flatten_alpha(im)
    elif mode != "RGB":
        im = im.convert("RGB")
    return pil_to_array(im)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``H×W×3`` uint8 RGB, upright (EXIF orientation applied).

    Raises :class:`InvalidRequest` with a message for the user when the file is missing,
    unreadable, corrupt, too large, or not an image.
    """
    path = Path(path)
    if not path.exists():
        raise _err(path, "the file does not exist.")
    if not path.is_file():
        raise _err(path, "it is not a file.")
    try:
        with open_image(path) as im:
            im.load()
            # In place: a copy of a 48 MP photo would cost 192 MB more. A broken EXIF block
            # should not cost the user the picture.
            with contextlib.suppress(OSError, ValueError, SyntaxError, KeyError, TypeError):
                ImageOps.exif_transpose(im, in_place=True)
            return to_rgb_array(im)
    except ImageRefused as exc:
        raise _err(path, f"{exc}.") from None
    except PermissionError:
        raise _err(path, "permission denied.") from None
    except MemoryError:
        raise _err(path, "there is not enough memory to open it.") from None
    except DECODE_ERRORS as exc:
        raise _err(path, f"the file is damaged or truncated ({exc}).") from None


# ---------------------------------------------------------------------------------------------
# Point pairs and mask edits


@dataclass(frozen=True)
class Pair:
    """A handle and, once the user has clicked it, its target. A pair without target dangles."""

    handle: Point
    target: Point | None = None

    @property
    def complete(self) -> bool:
        return self.target is not None

    def moved(self, role: str, point: Point) -> Pair:
        if role == "handle":
            return replace(self, handle=point)
        if role == "target":
            return replace(self, target=point)
        raise ValueError(f"unknown point role {role!r}")


@dataclass(frozen=True, eq=False)
class MaskEdit:
    """A change to one rectangle of the mask: what it held before and after.

    Undo stores these instead of whole masks, so a stroke on a 4000×3000 photo costs its
    bounding box only.
    """

    rect: Rect
    before: np.ndarray
    after: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.before.nbytes + self.after.nbytes)


class Change(StrEnum):
    IMAGE = "image"
    """A new image (and with it a fresh mask and no points)."""
    POINTS = "points"
    MASK = "mask"
    PROMPT = "prompt"
    PARAMS = "params"
    MODEL = "model"
    HISTORY = "history"
    """An accepted result was added to the history, or taken back."""


@dataclass(frozen=True)
class Notice:
    """What observers are told: the kind of change and, for the mask, the touched region."""

    change: Change
    rect: Rect | None = None


Observer = Callable[[Notice], None]


def _disc_segment(
    shape: tuple[int, int], p0: Point, p1: Point, radius: float
) -> tuple[Rect, np.ndarray] | None:
    """Pixels whose centres lie within ``radius`` of segment p0–p1: rect and bool footprint."""
    h, w = shape
    r = max(float(radius), 0.5)
    x0 = max(math.floor(min(p0[0], p1[0]) - r), 0)
    y0 = max(math.floor(min(p0[1], p1[1]) - r), 0)
    x1 = min(math.ceil(max(p0[0], p1[0]) + r) + 1, w)
    y1 = min(math.ceil(max(p0[1], p1[1]) + r) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    # Coordinates name pixel centres: pixel (i, j) is the point (i, j), as in DragBench.
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length2 = dx * dx + dy * dy
    px: np.ndarray | float
    py: np.ndarray | float
    if length2 > 0:
        t = ((xs - p0[0]) * dx + (ys - p0[1]) * dy) / length2
        t = np.clip(t, 0.0, 1.0)
        px, py = p0[0] + t * dx, p0[1] + t * dy
    else:
        px, py = p0[0], p0[1]
    footprint = (xs - px) ** 2 + (ys - py) ** 2 <= r * r
    return (x0, y0, x1, y1), footprint


def _union(a: Rect | None, b: Rect) -> Rect:
    if a is None:
        return b
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


class MaskStroke:
    """One brush or eraser stroke, applied live and closed into a single :class:`MaskEdit`.

    Each segment remembers the pixels it overwrote; :meth:`finish` replays those in reverse to
    recover the stroke's "before" over its bounding box, without ever copying the whole mask.
    """

    def __init__(self, document: Document, value: bool, radius: float) -> None:
        self._doc = document
        self.value = bool(value)
        self.radius = float(radius)
        self._last: Point | None = None
        self._saved: list[tuple[Rect, np.ndarray]] = []
        self._rect: Rect | None = None

    def add(self, point: Point) -> None:
        """Extend the stroke to ``point`` (the first call stamps one dab)."""
        start = self._last if self._last is not None else point
        self._last = point
        mask = self._doc.mask
        if mask is None:
            return
        found = _disc_segment(mask.shape, start, point, self.radius)
        if found is None:
            return
        rect, footprint = found
        x0, y0, x1, y1 = rect
        region = mask[y0:y1, x0:x1]
        if not np.any(region[footprint] != self.value):
            return
        self._saved.append((rect, region.copy()))
        region[footprint] = self.value
        self._rect = _union(self._rect, rect)
        self._doc._notify(Notice(Change.MASK, rect))

    def finish(self) -> MaskEdit | None:
        """The stroke as one edit, or None if it changed nothing."""
        mask = self._doc.mask
        if self._rect is None or mask is None:
            return None
        x0, y0, x1, y1 = self._rect
        after = mask[y0:y1, x0:x1].copy()
        before = after.copy()
        for (sx0, sy0, sx1, sy1), saved in reversed(self._saved):
            before[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = saved
        self._saved.clear()
        if np.array_equal(before, after):
            return None
        return MaskEdit(self._rect, before, after)


# ---------------------------------------------------------------------------------------------
# Accepted results


@dataclass(frozen=True, eq=False)
class HistoryEntry:
    """One accepted drag: the image before and after, and what produced it.

    The entry holds enough to take the acceptance back (``before`` and the points it cleared)
    and to tell the user later what was done (points, parameters, time).
    """

    before: np.ndarray
    after: np.ndarray
    pairs: tuple[Pair, ...]
    prompt: str
    params: DragParams
    lora: LoraParams
    model: str
    seconds: float
    lora_reused: bool = False
    final_handles: tuple[Point, ...] = ()
    method: str = PAPER
    gooddrag: GoodDragParams = field(default_factory=GoodDragParams)
    speed: str = PAPER_SPEED


# ---------------------------------------------------------------------------------------------
# The document


class Document:
    """Everything the user is editing. Mutate it through its methods so observers hear of it."""

    def __init__(self) -> None:
        self.image: np.ndarray | None = None
        self.path: Path | None = None
        self.mask: np.ndarray | None = None
        self._pairs: list[Pair] = []
        self.prompt: str = ""
        self.params: DragParams = DragParams()
        self.lora: LoraParams = LoraParams()
        self.model: str = DEFAULT_MODEL
        self.vae: str | None = None
        """A VAE used instead of the model's own (None: its own)."""
        self.method: str = PAPER
        self.gooddrag: GoodDragParams = GoodDragParams()
        self.speed: str = PAPER_SPEED
        """The named fast option chosen (backend/speed_presets.py); ``paper`` for none."""
        self.original: np.ndarray | None = None
        """The photo as opened: accepted results replace ``image`` but not this, so dragging
        them again can keep the LoRA trained on the photo."""
        self.history: list[HistoryEntry] = []
        self.generation: Generation | None = None
        """How ``original`` was generated, when it was: drags on it then start from its kept
        latents (no LoRA, no inversion). Cleared by opening any other image."""
        self._observers: list[Observer] = []

    # -- observers ---------------------------------------------------------------------------

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(notice)`` after every change; returns a function that unsubscribes."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def _notify(self, notice: Notice) -> None:
        for observer in list(self._observers):
            observer(notice)

    # -- image -------------------------------------------------------------------------------

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, or ``(0, 0)`` with no image."""
        if self.image is None:
            return (0, 0)
        return int(self.image.shape[1]), int(self.image.shape[0])

    def set_image(
        self,
        image: np.ndarray,
        path: str | Path | None = None,
        *,
        generation: Generation | None = None,
    ) -> None:
        """Start over on ``image``: no points, an empty mask. Prompt and parameters stay.

        ``generation`` says how ``image`` was generated; any other image drops the old one.
        """
        if not (
            isinstance(image, np.ndarray)
            and image.ndim == 3
            and image.shape[2] == 3
            and image.dtype == np.uint8
        ):
            raise InvalidRequest("the image must be an H×W×3 uint8 RGB array")
        if generation is not None and (generation.width, generation.height) != (
            image.shape[1],
            image.shape[0],
        ):
            raise InvalidRequest("the image is not the size it was generated at")
        self.image = np.ascontiguousarray(image)
        self.original = self.image
        self.generation = generation
        self.history = []
        self.path = Path(path) if path is not None else None
        self.mask = np.zeros(image.shape[:2], dtype=bool)
        self._pairs = []
        self._notify(Notice(Change.IMAGE))
        self._notify(Notice(Change.HISTORY))

    # -- accepted results --------------------------------------------------------------------

    def accept_result(self, entry: HistoryEntry) -> None:
        """Make ``entry.after`` the image to drag further; its points are spent, the mask stays."""
        if self.image is None or entry.after.shape != self.image.shape:
            raise InvalidRequest("the result does not fit the open image")
        self.history.append(entry)
        self._swap_image(entry.after, [])

    def restore(
        self,
        original: np.ndarray,
        history: Sequence[HistoryEntry],
        path: str | Path | None = None,
        *,
        generation: Generation | None = None,
    ) -> None:
        """Reopen a saved session: the photo, then its accepted results in order."""
        self.set_image(original, path, generation=generation)
        if history:
            if any(e.after.shape != original.shape for e in history):
                raise InvalidRequest("a saved result does not fit the photo")
            self.history = list(history)
            self._swap_image(history[-1].after, [])

    def undo_accept(self) -> HistoryEntry:
        """Take the last accepted result back: the image and points it replaced return."""
        entry = self.history.pop()
        self._swap_image(entry.before, entry.pairs)
        return entry

    def _swap_image(self, image: np.ndarray, pairs: Iterable[Pair]) -> None:
        self.image = image
        self._pairs = list(pairs)
        # IMAGE alone tells observers the mask was reset; MASK corrects that, it was kept.
        self._notify(Notice(Change.IMAGE))
        self._notify(Notice(Change.MASK))
        self._notify(Notice(Change.POINTS))
        self._notify(Notice(Change.HISTORY))

    def open(self, path: str | Path) -> None:
        """Load ``path`` and make it the document's image; on failure nothing changes."""
        image = load_image(path)
        self.set_image(image, path)

    # -- points ------------------------------------------------------------------------------

    @property
    def pairs(self) -> tuple[Pair, ...]:
        return tuple(self._pairs)

    @property
    def complete_pairs(self) -> tuple[Pair, ...]:
        return tuple(p for p in self._pairs if p.complete)

    @property
    def dangling(self) -> int | None:
        """Index of the pair still waiting for its target, if any."""
        for i, p in enumerate(self._pairs):
            if not p.complete:
                return i
        return None

    def _clamp(self, point: Point) -> Point:
        x, y = float(point[0]), float(point[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidRequest(f"invalid point {point!r}")
        return clamp_point((x, y), self.size)

    def insert_pair(self, index: int, pair: Pair) -> None:
        target = self._clamp(pair.target) if pair.target is not None else None
        self._pairs.insert(index, Pair(self._clamp(pair.handle), target))
        self._notify(Notice(Change.POINTS))

    def add_pair(self, pair: Pair) -> int:
        """Append ``pair`` (points clamped into the image) and return its index."""
        self.insert_pair(len(self._pairs), pair)
        return len(self._pairs) - 1

    def remove_pair(self, index: int) -> Pair:
        pair = self._pairs.pop(index)
        self._notify(Notice(Change.POINTS))
        return pair

    def replace_pair(self, index: int, pair: Pair) -> Pair:
        """Put ``pair`` at ``index`` and return the one it replaced."""
        old = self._pairs[index]
        target = self._clamp(pair.target) if pair.target is not None else None
        self._pairs[index] = Pair(self._clamp(pair.handle), target)
        self._notify(Notice(Change.POINTS))
        return old

    def move_point(self, index: int, role: str, point: Point) -> None:
        self.replace_pair(index, self._pairs[index].moved(role, point))

    def set_pairs(self, pairs: Iterable[Pair]) -> None:
        self._pairs = [
            Pair(self._clamp(p.handle), self._clamp(p.target) if p.target else None) for p in pairs
        ]
        self._notify(Notice(Change.POINTS))

    # -- mask --------------------------------------------------------------------------------

    def _require_mask(self) -> np.ndarray:
        if self.mask is None:
            raise InvalidRequest("no image is open")
        return self.mask

    def begin_stroke(self, value: bool, radius: float) -> MaskStroke:
        """A stroke that paints (True) or erases (False) with a round brush of ``radius``."""
        self._require_mask()
        return MaskStroke(self, value, radius)

    def apply_mask_edit(self, edit: MaskEdit, *, undo: bool = False) -> None:
        mask = self._require_mask()
        x0, y0, x1, y1 = edit.rect
        mask[y0:y1, x0:x1] = edit.before if undo else edit.after
        self._notify(Notice(Change.MASK, edit.rect))

    def set_mask(self, mask: np.ndarray) -> None:
        current = self._require_mask()
        if mask.shape != current.shape:
            raise InvalidRequest(
                f"the mask is {mask.shape[1]}×{mask.shape[0]} but the image is "
                f"{current.shape[1]}×{current.shape[0]}"
            )
        current[...] = mask.astype(bool, copy=False)
        self._notify(Notice(Change.MASK))

    def fill_edit(self, value: bool) -> MaskEdit | None:
        """The edit that sets the whole mask to ``value``, spanning only the pixels it changes."""
        mask = self._require_mask()
        changed = mask != bool(value)
        rows = np.flatnonzero(changed.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(changed.any(axis=0))
        x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        before = mask[y0:y1, x0:x1].copy()
        return MaskEdit((x0, y0, x1, y1), before, np.full_like(before, bool(value)))

    def fill_mask(self, value: bool) -> None:
        self._require_mask()[...] = bool(value)
        self._notify(Notice(Change.MASK))

    def invert_mask(self) -> None:
        mask = self._require_mask()
        np.logical_not(mask, out=mask)
        self._notify(Notice(Change.MASK))

    # -- prompt, parameters, model -------------------------------------------------------------

    def set_prompt(self, prompt: str) -> None:
        if prompt != self.prompt:
            self.prompt = prompt
            self._notify(Notice(Change.PROMPT))

    def set_params(self, params: DragParams | None = None, lora: LoraParams | None = None) -> None:
        if params is not None:
            self.params = params
        if lora is not None:
            self.lora = lora
        self._notify(Notice(Change.PARAMS))

    def set_method(self, method: str, gooddrag: GoodDragParams | None = None) -> None:
        """Choose the drag method (``paper`` or ``gooddrag``); a parameters change."""
        self.method = check_method(method)
        if gooddrag is not None:
            self.gooddrag = gooddrag
        self._notify(Notice(Change.PARAMS))

    def set_speed(self, speed: str) -> None:
        """Record the named fast option chosen (its knobs are set through ``set_params``)."""
        self.speed = check_speed(speed)
        self._notify(Notice(Change.PARAMS))

    def set_model(self, model: str) -> None:
        if model != self.model:
            self.model = model
            self._notify(Notice(Change.MODEL))

    def set_vae(self, vae: str | None) -> None:
        """Use ``vae`` (a diffusers VAE folder or hub id; None or empty: the model's own)."""
        vae = (vae or "").strip() or None
        if vae != self.vae:
            self.vae = vae
            self._notify(Notice(Change.MODEL))

    # -- the engine's view ---------------------------------------------------------------------

    def to_request(self, *, keep_photo_lora: bool = True) -> DragRequest:
        """The edit this document describes: complete pairs only, mask as bool.

        On an accepted result, ``keep_photo_lora`` trains (and so reuses) the LoRA on the photo
        as opened rather than on the result. A generated image carries its generation until a
        result is accepted (the accepted image has no kept latents). Raises
        :class:`InvalidRequest` when there is no image; ``validate()`` says what else is missing.
        """
        if self.image is None or self.mask is None:
            raise InvalidRequest("no image is open")
        pairs = tuple(PointPair(p.handle, p.target) for p in self._pairs if p.target is not None)
        lora_image = None
        if keep_photo_lora and self.original is not None and self.original is not self.image:
            lora_image = self.original.copy()
        return DragRequest(
            image=self.image.copy(),
            pairs=pairs,
            mask=self.mask.astype(bool, copy=True),
            prompt=self.prompt,
            params=self.params,
            lora=self.lora,
            model=self.model,
            vae=self.vae,
            lora_image=lora_image,
            generation=self.generation if not self.history else None,
            method=self.method,
            gooddrag=self.gooddrag,
            speed=self.speed,
        )

    def load_request(self, request: DragRequest, path: str | Path | None = None) -> None:
        """Make the document describe ``request`` (a project being opened)."""
        self.set_image(request.image, path, generation=request.generation)
        if request.mask is not None:
            self.set_mask(request.mask)
        self.set_pairs(Pair(p.handle, p.target) for p in request.pairs)
        self.set_prompt(request.prompt)
        self.set_params(request.params, request.lora)
        self.set_method(request.method, request.gooddrag)
        self.set_speed(request.speed)
        self.set_model(request.model)
        self.set_vae(request.vae)


def pairs_from_points(points: Sequence[Point]) -> list[Pair]:
    """DragBench lists points as handle, target, handle, target, …; an odd last one dangles."""
    flat = [(float(x), float(y)) for x, y in points]
    return [
        Pair(flat[i], flat[i + 1] if i + 1 < len(flat) else None) for i in range(0, len(flat), 2)
    ]
