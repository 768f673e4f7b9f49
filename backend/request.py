"""What an edit depends on, in one immutable request, with the paper's defaults.

The CLI builds a :class:`DragRequest` from flags, the GUI from its document and the project file
stores one; nothing reaches the engine any other way. Points and the mask are in the pixel
coordinates of the image as the user opened it. The parameters, with their ranges, labels and
help, are declared in :mod:`backend.params`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from backend.errors import InvalidRequest
from backend.limits import MAX_DRAG_PAIRS
from backend.methods import PAPER, GoodDragParams, check_method
from backend.params import DragParams, LoraParams, params_from_dict, params_to_dict
from backend.speed_presets import PAPER_SPEED, check_speed

__all__ = [
    "DEFAULT_MODEL",
    "DragParams",
    "DragRequest",
    "LoraParams",
    "PointPair",
    "params_from_dict",
    "params_to_dict",
]

if TYPE_CHECKING:
    from backend.generation import Generation

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidRequest(message)


@dataclass(frozen=True)
class PointPair:
    """A handle (where content is grabbed) and its target, in image pixels ``(x, y)``."""

    handle: tuple[float, float]
    target: tuple[float, float]

    @property
    def length(self) -> float:
        return math.dist(self.handle, self.target)


@dataclass(frozen=True, eq=False)
class DragRequest:
    """One edit: everything the result depends on.

    ``image`` is an ``H×W×3`` uint8 array; ``mask`` an ``H×W`` bool array (True = editable) or
    None for "everything may change". An all-False mask also means "no constraint", as in the
    authors' tool, so that a user who forgot to paint still gets an edit.
    """

    image: np.ndarray
    pairs: tuple[PointPair, ...]
    mask: np.ndarray | None = None
    prompt: str = ""
    params: DragParams = field(default_factory=DragParams)
    lora: LoraParams = field(default_factory=LoraParams)
    model: str = DEFAULT_MODEL
    vae: str | None = None
    """A diffusers VAE folder or hub id used instead of the model's own VAE (None: its own)."""
    generation: Generation | None = None
    """Set when the image was generated here: the drag then starts from its kept latents."""
    lora_image: np.ndarray | None = None
    """The image the identity LoRA is trained on, when it is not ``image`` itself: dragging an
    accepted result again keeps the LoRA of the photo it came from."""
    method: str = PAPER
    """``paper`` (DragDiffusion) or ``gooddrag`` (see :mod:`backend.methods`)."""
    gooddrag: GoodDragParams = field(default_factory=GoodDragParams)
    """GoodDrag's own knobs; read only when ``method`` is ``gooddrag``."""
    speed: str = PAPER_SPEED
    """The named fast option chosen (:mod:`backend.speed_presets`), ``paper`` for none. A
    label: its overrides are already in ``params``/``lora`` (the front end applied them when it
    was chosen); the trace records it."""

    def validate(self, *, require_pairs: bool = True) -> None:
        """Raise :class:`InvalidRequest` with a one-line reason if this cannot be edited.

        ``require_pairs=False`` checks what background preparation needs (no points yet)."""
        image = self.image
        _check(isinstance(image, np.ndarray), "the image must be a numpy array")
        _check(
            image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8,
            f"the image must be H×W×3 uint8 RGB, got shape {image.shape} {image.dtype}",
        )
        h, w = image.shape[:2]
        _check(h >= 16 and w >= 16, f"the image is too small ({w}×{h}); it needs 16×16 at least")
        _check(h <= 16384 and w <= 16384, f"the image is too large ({w}×{h})")
        _check(
            len(self.pairs) >= 1 or not require_pairs,
            "no point pairs: place at least one handle and its target",
        )
        _check(
            len(self.pairs) <= MAX_DRAG_PAIRS,
            f"too many point pairs ({len(self.pairs)}); {MAX_DRAG_PAIRS} at most",
        )
        for n, pair in enumerate(self.pairs, 1):
            for role, (x, y) in (("handle", pair.handle), ("target", pair.target)):
                _check(
                    all(isinstance(v, (int, float)) and math.isfinite(v) for v in (x, y)),
                    f"pair {n}: the {role} has an invalid coordinate {(x, y)!r}",
                )
                _check(
                    0 <= x <= w - 1 and 0 <= y <= h - 1,
                    f"pair {n}: the {role} ({x:g}, {y:g}) lies outside the {w}×{h} image",
                )
        if self.mask is not None:
            m = self.mask
            _check(isinstance(m, np.ndarray) and m.ndim == 2, "the mask must be a 2-D array")
            _check(
                m.shape == (h, w),
                f"the mask is {m.shape[1]}×{m.shape[0]} but the image is {w}×{h}",
            )
        _check(isinstance(self.prompt, str), "the prompt must be text")
        _check(len(self.prompt) <= 2000, "the prompt is too long (2000 characters at most)")
        _check(isinstance(self.model, str) and self.model != "", "no model given")
        _check(
            self.vae is None or (isinstance(self.vae, str) and self.vae.strip() != ""),
            "the VAE must be a folder or hub id (or none for the model's own)",
        )
        if self.lora_image is not None:
            li = self.lora_image
            _check(
                isinstance(li, np.ndarray) and li.ndim == 3 and li.shape[2] == 3,
                "the LoRA image must be H×W×3 uint8 RGB",
            )
            _check(li.dtype == np.uint8, "the LoRA image must be H×W×3 uint8 RGB")
        self.params.validate()
        self.lora.validate()
        check_method(self.method)
        check_speed(self.speed)
        if self.method != PAPER:
            self.gooddrag.validate()
            _check(self.params.r1 >= 1, "GoodDrag needs r1 ≥ 1 (its loss is scaled by (2·r1)²)")
        if self.generation is not None:
            self.generation.validate()

    @property
    def image_size(self) -> tuple[int, int]:
        """``(width, height)`` of the user's image."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    @property
    def identity_image(self) -> np.ndarray:
        """The image the LoRA learns: ``lora_image`` if given, else ``image``."""
        return self.image if self.lora_image is None else self.lora_image

    @property
    def editable_mask(self) -> np.ndarray | None:
        """The mask as bool, or None when it constrains nothing (absent or empty)."""
        if self.mask is None:
            return None
        m = self.mask.astype(bool)
        return m if m.any() else None
