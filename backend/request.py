"""What an edit depends on, in one immutable request, with the paper's defaults.

The CLI builds a :class:`DragRequest` from flags, the GUI from its document and the project file
stores one; nothing reaches the engine any other way. Points and the mask are in the pixel
coordinates of the image as the user opened it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.errors import InvalidRequest

if TYPE_CHECKING:
    from backend.generation import Generation

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidRequest(message)


def _check_range(name: str, value: float, lo: float, hi: float, *, integer: bool = False) -> None:
    if integer:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            f"{name} must be a whole number, got {value!r}",
        )
    else:
        _check(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            f"{name} must be a number, got {value!r}",
        )
        _check(math.isfinite(value), f"{name} must be finite, got {value!r}")
    _check(lo <= value <= hi, f"{name} must be between {lo} and {hi}, got {value!r}")


@dataclass(frozen=True)
class LoraParams:
    """Identity-preserving fine-tuning (paper §3.2, §4.1). ``steps=0`` skips it.

    ``seed`` drives everything random in an edit (adapter initialisation, crops, noise): the rest
    of DragDiffusion on a real image is deterministic.
    """

    steps: int = 80
    rank: int = 16
    alpha: float = 16.0
    learning_rate: float = 5e-4
    weight_decay: float = 1e-2
    batch_size: int = 4
    resolution: int = 512
    """Side of the square crops it trains on, after resizing the short side to this."""
    seed: int = 0

    def validate(self) -> None:
        _check_range("LoRA steps", self.steps, 0, 10_000, integer=True)
        _check_range("LoRA rank", self.rank, 1, 512, integer=True)
        _check_range("LoRA alpha", self.alpha, 1e-6, 1e6)
        _check_range("LoRA learning rate", self.learning_rate, 1e-8, 1.0)
        _check_range("LoRA weight decay", self.weight_decay, 0.0, 1.0)
        _check_range("LoRA batch size", self.batch_size, 1, 64, integer=True)
        _check_range("LoRA resolution", self.resolution, 64, 2048, integer=True)
        _check(self.resolution % 8 == 0, "LoRA resolution must be a multiple of 8")
        _check_range("LoRA seed", self.seed, 0, 2**63 - 1, integer=True)


@dataclass(frozen=True)
class DragParams:
    """Latent optimisation and denoising (paper §3.3, §3.4, §4.1)."""

    inference_steps: int = 50
    inversion_strength: float = 0.7
    drag_steps: int = 80
    latent_lr: float = 0.01
    lam: float = 0.1
    r1: int = 1
    r2: int = 3
    stop_distance: float = 2.0
    """A handle this close to its target (in feature pixels) has arrived."""
    working_width: int = 512
    feature_block: int = 2
    """Index into ``unet.up_blocks`` whose output is the feature map F."""
    ref_control_blocks: tuple[int, ...] = (2, 3)
    """Decoder blocks whose self-attention reads the reference latent's keys and values."""
    keep_unmasked_pixels: bool = True
    """Paste the user's original pixels outside the mask instead of their VAE round trip."""
    preview_every: int = 0
    """Decode a preview of the predicted clean image every N iterations (0: never)."""

    def validate(self) -> None:
        _check_range("DDIM steps", self.inference_steps, 2, 1000, integer=True)
        _check_range("inversion strength", self.inversion_strength, 0.0, 1.0)
        _check(
            round(self.inversion_strength * self.inference_steps) >= 1,
            "inversion strength is too small: it must invert at least one DDIM step",
        )
        _check_range("drag steps", self.drag_steps, 0, 10_000, integer=True)
        _check_range("latent learning rate", self.latent_lr, 1e-8, 10.0)
        _check_range("lambda (mask term weight)", self.lam, 0.0, 1e6)
        _check_range("r1 (motion supervision radius)", self.r1, 0, 32, integer=True)
        _check_range("r2 (tracking radius)", self.r2, 0, 64, integer=True)
        _check_range("stop distance", self.stop_distance, 0.0, 1e4)
        _check_range("working width", self.working_width, 64, 2048, integer=True)
        _check(self.working_width % 8 == 0, "working width must be a multiple of 8")
        _check_range("feature block", self.feature_block, 0, 16, integer=True)
        for block in self.ref_control_blocks:
            _check_range("reference-control block", block, 0, 16, integer=True)
        _check_range("preview interval", self.preview_every, 0, 10_000, integer=True)

    @property
    def inversion_steps(self) -> int:
        return round(self.inversion_strength * self.inference_steps)


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
    generation: Generation | None = None
    """Set when the image was generated here: the drag then starts from its kept latents."""
    lora_image: np.ndarray | None = None
    """The image the identity LoRA is trained on, when it is not ``image`` itself: dragging an
    accepted result again keeps the LoRA of the photo it came from."""

    def validate(self) -> None:
        """Raise :class:`InvalidRequest` with a one-line reason if this cannot be edited."""
        image = self.image
        _check(isinstance(image, np.ndarray), "the image must be a numpy array")
        _check(
            image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8,
            f"the image must be H×W×3 uint8 RGB, got shape {image.shape} {image.dtype}",
        )
        h, w = image.shape[:2]
        _check(h >= 16 and w >= 16, f"the image is too small ({w}×{h}); it needs 16×16 at least")
        _check(h <= 16384 and w <= 16384, f"the image is too large ({w}×{h})")
        _check(len(self.pairs) >= 1, "no point pairs: place at least one handle and its target")
        _check(len(self.pairs) <= 64, f"too many point pairs ({len(self.pairs)}); 64 at most")
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
        if self.lora_image is not None:
            li = self.lora_image
            _check(
                isinstance(li, np.ndarray) and li.ndim == 3 and li.shape[2] == 3,
                "the LoRA image must be H×W×3 uint8 RGB",
            )
            _check(li.dtype == np.uint8, "the LoRA image must be H×W×3 uint8 RGB")
        self.params.validate()
        self.lora.validate()
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


def params_to_dict(obj: Any) -> dict[str, Any]:
    """A parameter dataclass as JSON-friendly data (tuples become lists)."""
    data = asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def params_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build ``cls`` from ``data``, ignoring unknown keys and rejecting wrong types clearly."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        if name not in known:
            continue
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            if not isinstance(value, list):
                raise InvalidRequest(f"{name}: expected a list")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise InvalidRequest(f"{name}: expected true or false")
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs[name] = value
    obj = replace(defaults, **kwargs)
    obj.validate()
    return obj
