"""The knobs of an edit, each declared once: default, range, label and help.

Every field of :class:`DragParams` and :class:`LoraParams` carries a :class:`Knob` in its
dataclass metadata. Validation (:func:`validate_params`), the CLI flags of ``edit``
(:func:`add_param_flags`) and the GUI's spin boxes (:func:`param_specs`, :func:`panel_specs`) are
all generated from it, so a range, a label or a help text is changed in exactly one place and
the three always agree. Torch-free: the GUI thread and the project reader use it.

Adding a parameter: add one field with :func:`knob` below; give it ``flag=`` for a CLI flag and
list its key in :data:`PANEL_KEYS` to show it in the GUI panel.

For the GUI, one spin box per :class:`ParamSpec`::

    for spec in panel_specs():
        spin = QSpinBox() if spec.kind == "int" else QDoubleSpinBox()
        spin.setRange(spec.min, spec.max)  # exactly what validation accepts
        spin.setSingleStep(spec.step); spin.setToolTip(spec.help)
        value = spec.get(params, lora); params, lora = spec.set(params, lora, new_value)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Literal, TypeVar

from backend.errors import InvalidRequest

Kind = Literal["int", "float", "bool", "ints"]
Group = Literal["params", "lora"]

# Stable Diffusion UNets have 4 decoder blocks (SD 1.x/2.x; SDXL has 3): an index past them is
# refused here instead of failing minutes into an edit.
UNET_UP_BLOCKS = 4
MAX_SEED = 2**31 - 1
"""Seeds fit a 32-bit spin box; torch accepts them all."""


@dataclass(frozen=True)
class Knob:
    """What a parameter field declares about itself (stored in ``field.metadata["knob"]``)."""

    label: str
    help: str
    lo: float
    hi: float
    step: float = 1
    decimals: int = 0
    multiple_of: int = 1
    flag: str | None = None
    """CLI flag without the leading dashes; for a bool it sets the opposite of the default."""
    max_items: int = 0
    """For a tuple of ints: the most items it may hold."""


def knob(
    default: Any,
    label: str,
    help: str,
    lo: float = 0,
    hi: float = 1,
    *,
    step: float = 1,
    decimals: int = 0,
    multiple_of: int = 1,
    flag: str | None = None,
    max_items: int = 0,
) -> Any:
    """A dataclass field with its :class:`Knob`."""
    meta = {"knob": Knob(label, help, lo, hi, step, decimals, multiple_of, flag, max_items)}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class LoraParams:
    """Identity-preserving fine-tuning (paper §3.2, §4.1). ``steps=0`` skips it.

    ``seed`` drives everything random in an edit (adapter initialisation, crops, noise): the rest
    of DragDiffusion on a real image is deterministic.
    """

    steps: int = knob(
        80,
        "LoRA steps",
        "Fine-tuning steps that teach the model this photo first, so the edit keeps its "
        "identity; 0 skips it (faster, less faithful).",
        0,
        10_000,
        step=10,
        flag="lora-steps",
    )
    rank: int = knob(16, "LoRA rank", "Rank of the LoRA adapters.", 1, 512, flag="lora-rank")
    alpha: float = knob(
        16.0,
        "LoRA alpha",
        "Scale of the LoRA adapters (alpha / rank multiplies them).",
        1e-6,
        1e6,
        step=1,
        decimals=6,
        flag="lora-alpha",
    )
    learning_rate: float = knob(
        5e-4,
        "LoRA learning rate",
        "AdamW learning rate of the LoRA fine-tuning.",
        1e-8,
        1.0,
        step=1e-4,
        decimals=8,
        flag="lora-lr",
    )
    weight_decay: float = knob(
        1e-2,
        "LoRA weight decay",
        "AdamW weight decay of the LoRA fine-tuning.",
        0.0,
        1.0,
        step=1e-3,
        decimals=4,
        flag="lora-weight-decay",
    )
    batch_size: int = knob(
        4, "LoRA batch size", "Crops per LoRA training step.", 1, 64, flag="lora-batch-size"
    )
    resolution: int = knob(
        512,
        "LoRA resolution",
        "Side of the square crops the LoRA trains on, after resizing the short side to it.",
        64,
        2048,
        step=64,
        multiple_of=8,
        flag="lora-resolution",
    )
    seed: int = knob(
        0,
        "Seed",
        "Drives everything random in an edit: the same seed and settings give the same result.",
        0,
        MAX_SEED,
        flag="seed",
    )
    # Training speed options (docs/benchmarks.md, "Issue 14"): off by default because each
    # changes the trained weights slightly; backend.lora.SPEED_FIELDS lists them.
    fused_adamw: bool = knob(
        False,
        "Fused AdamW",
        "Update the LoRA with PyTorch's fused AdamW kernel: a faster optimiser step that "
        "rounds differently (weights differ by about 1e-7).",
        flag="lora-fused-adamw",
    )
    mixed_precision: bool = knob(
        False,
        "Mixed-precision LoRA",
        "Train the LoRA under autocast: float16 with a gradient scaler on CUDA and Apple "
        "GPUs, bfloat16 on the CPU; the adapter's weights stay float32. Faster on GPUs, "
        "changes the trained weights by a few percent.",
        flag="lora-mixed-precision",
    )
    compile_unet: bool = knob(
        False,
        "Compile the UNet for LoRA",
        "Train the LoRA through torch.compile: a long one-off compile (minutes on a CPU), "
        "then faster steps where a compiler is available; float rounding differs slightly.",
        flag="lora-compile",
    )

    def validate(self) -> None:
        """Raise :class:`InvalidRequest` naming the first field out of its declared range."""
        validate_params(self)


@dataclass(frozen=True)
class DragParams:
    """Latent optimisation and denoising (paper §3.3, §3.4, §4.1)."""

    inference_steps: int = knob(
        50, "DDIM steps", "Length of the DDIM schedule.", 2, 1000, flag="ddim-steps"
    )
    inversion_strength: float = knob(
        0.7,
        "Inversion strength",
        "How far into the noise schedule the photo is inverted before dragging: higher gives "
        "more freedom to move things, lower keeps more detail.",
        0.02,
        1.0,
        step=0.05,
        decimals=2,
        flag="inversion-strength",
    )
    drag_steps: int = knob(
        80,
        "Drag steps",
        "The most optimisation steps spent moving the handles towards their targets.",
        0,
        10_000,
        step=10,
        flag="drag-steps",
    )
    latent_lr: float = knob(
        0.01,
        "Latent learning rate",
        "Step size of each optimisation step on the latent: larger moves faster but can "
        "tear the picture.",
        1e-4,
        10.0,
        step=0.001,
        decimals=4,
        flag="latent-lr",
    )
    lam: float = knob(
        0.1,
        "λ (mask weight)",
        "How strongly everything outside the painted mask is held in place.",
        0.0,
        1000.0,
        step=0.05,
        decimals=3,
        flag="lam",
    )
    r1: int = knob(
        1,
        "r1 (motion radius)",
        "Radius, in feature-map pixels, of the patch around each handle that is pushed "
        "towards its target.",
        0,
        32,
        flag="r1",
    )
    r2: int = knob(
        3,
        "r2 (tracking radius)",
        "Radius of the window searched to find where each handle went after every step.",
        0,
        64,
        flag="r2",
    )
    stop_distance: float = knob(
        2.0,
        "Stop distance",
        "A handle this close to its target, in feature-map pixels, has arrived.",
        0.0,
        1e4,
        step=0.5,
        decimals=2,
        flag="stop-distance",
    )
    working_width: int = knob(
        512,
        "Working width",
        "Width the model works at; the height follows the photo.",
        64,
        2048,
        step=64,
        multiple_of=8,
        flag="working-width",
    )
    feature_block: int = knob(
        2,
        "Feature block",
        "Index into the UNet's decoder blocks whose output is the feature map F.",
        0,
        UNET_UP_BLOCKS - 1,
        flag="feature-block",
    )
    ref_control_blocks: tuple[int, ...] = knob(
        (2, 3),
        "Reference-control blocks",
        "Decoder blocks whose self-attention reads the reference latent's keys and values.",
        0,
        UNET_UP_BLOCKS - 1,
        max_items=UNET_UP_BLOCKS,
    )
    keep_unmasked_pixels: bool = knob(
        True,
        "Keep unmasked pixels",
        "Return the original pixels outside the mask instead of the model's round trip of them.",
        flag="no-keep-pixels",
    )
    preview_every: int = knob(
        0,
        "Preview interval",
        "Decode a preview of the predicted clean image every N iterations (0: never).",
        0,
        10_000,
    )

    def validate(self) -> None:
        """Raise :class:`InvalidRequest` naming the first field out of its declared range."""
        validate_params(self)
        if self.inversion_steps < 1:
            raise InvalidRequest(
                "inversion strength is too small: it must invert at least one DDIM step"
            )

    @property
    def inversion_steps(self) -> int:
        return round(self.inversion_strength * self.inference_steps)


ParamsT = TypeVar("ParamsT", DragParams, LoraParams)
GROUPS: dict[Group, type[Any]] = {"params": DragParams, "lora": LoraParams}

PANEL_KEYS: tuple[str, ...] = (
    "working_width", "ddim_steps",
    "lora_steps", "lora_lr", "lora_batch_size", "lora_rank",
    "inversion_strength", "drag_steps", "latent_lr", "lam", "r1", "r2", "seed",
)  # fmt: skip
"""The knobs the GUI's parameters panel shows, in its order."""


# ---------------------------------------------------------------------------------------------
# Specs: the metadata as plain values, for spin boxes and flags


@dataclass(frozen=True)
class ParamSpec:
    """One knob as a GUI or CLI needs it. ``min``/``max`` are exactly what validation accepts."""

    key: str
    """Unique across both groups; also the CLI's ``args`` attribute (``lora_steps``, ``r1``)."""
    group: Group
    name: str
    """The dataclass field."""
    kind: Kind
    label: str
    help: str
    min: float
    max: float
    step: float
    decimals: int
    multiple_of: int
    default: Any
    flag: str | None

    def get(self, params: DragParams, lora: LoraParams) -> Any:
        """This knob's value in ``params`` or ``lora``."""
        return getattr(params if self.group == "params" else lora, self.name)

    def set(
        self, params: DragParams, lora: LoraParams, value: Any
    ) -> tuple[DragParams, LoraParams]:
        """``(params, lora)`` with this knob set to ``value`` (rounded for whole numbers)."""
        if self.kind == "int":
            value = round(value)
        elif self.kind == "float":
            value = float(value)
        if self.group == "params":
            return replace(params, **{self.name: value}), lora
        return params, replace(lora, **{self.name: value})


def _kind(default: Any) -> Kind:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "ints"


def param_specs(cls: type[Any]) -> tuple[ParamSpec, ...]:
    """The specs of every field of ``cls`` (:class:`DragParams` or :class:`LoraParams`)."""
    group: Group = "lora" if cls is LoraParams else "params"
    out = []
    for f in fields(cls):
        k: Knob = f.metadata["knob"]
        default = f.default if f.default is not MISSING else None
        key = f.name if k.flag is None else k.flag.replace("-", "_")
        kind = _kind(default)
        out.append(
            ParamSpec(
                key,
                group,
                f.name,
                kind,
                k.label,
                k.help,
                k.lo,
                k.hi,
                k.step,
                k.decimals,
                k.multiple_of,
                default,
                k.flag,
            )
        )
    return tuple(out)


def all_specs() -> dict[str, ParamSpec]:
    """Every knob of both groups, by key."""
    return {s.key: s for cls in (DragParams, LoraParams) for s in param_specs(cls)}


def panel_specs() -> tuple[ParamSpec, ...]:
    """The knobs of the GUI's parameters panel (:data:`PANEL_KEYS`), in order."""
    specs = all_specs()
    return tuple(specs[k] for k in PANEL_KEYS)


# ---------------------------------------------------------------------------------------------
# Validation, generated


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _check_number(label: str, value: Any, k: Knob, *, integer: bool) -> None:
    """Type, finiteness and range; exact for ints of any size (no conversion to float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        what = "a whole number" if integer else "a number"
        raise InvalidRequest(f"{label} must be {what}, got {value!r}"[:300])
    if integer and not isinstance(value, int):
        raise InvalidRequest(f"{label} must be a whole number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{label} must be finite, got {value!r}")
    if not k.lo <= value <= k.hi:
        shown = repr(value) if len(repr(value)) <= 40 else f"a {len(str(value))}-digit number"
        raise InvalidRequest(f"{label} must be between {_fmt(k.lo)} and {_fmt(k.hi)}, got {shown}")
    if integer and value % k.multiple_of != 0:
        raise InvalidRequest(f"{label} must be a multiple of {k.multiple_of}, got {value!r}")


def validate_params(obj: Any) -> None:
    """Check every field of a parameter dataclass against its :class:`Knob`."""
    for f in fields(obj):
        k: Knob = f.metadata["knob"]
        value = getattr(obj, f.name)
        kind = _kind(f.default)
        if kind == "bool":
            if not isinstance(value, bool):
                raise InvalidRequest(f"{k.label} must be true or false, got {value!r}"[:300])
        elif kind == "ints":
            if not isinstance(value, tuple):
                raise InvalidRequest(f"{k.label} must be a list of whole numbers")
            if len(value) > k.max_items:
                raise InvalidRequest(f"{k.label}: {len(value)} items, {k.max_items} at most")
            for item in value:
                _check_number(k.label, item, k, integer=True)
            if len(set(value)) != len(value):
                raise InvalidRequest(f"{k.label} must not repeat a block, got {list(value)}")
        else:
            _check_number(k.label, value, k, integer=kind == "int")


# ---------------------------------------------------------------------------------------------
# Dictionaries (project files, LoRA metadata)


def params_to_dict(obj: Any) -> dict[str, Any]:
    """A parameter dataclass as JSON-friendly data (tuples become lists)."""
    return {
        f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v for f in fields(obj)
    }


def params_from_dict(cls: type[ParamsT], data: Any) -> ParamsT:
    """Build ``cls`` from ``data``, ignoring unknown keys; :class:`InvalidRequest` if invalid.

    Values are validated before any conversion, so a 400-digit integer is refused with a
    message instead of overflowing a float.
    """
    if not isinstance(data, dict):
        raise InvalidRequest(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            continue
        if isinstance(known[name].default, tuple):
            if not isinstance(value, list):
                raise InvalidRequest(f"{known[name].metadata['knob'].label}: expected a list")
            value = tuple(value)
        kwargs[name] = value
    obj = replace(cls(), **kwargs)
    obj.validate()
    floats: dict[str, Any] = {
        f.name: float(getattr(obj, f.name)) for f in fields(cls) if _kind(f.default) == "float"
    }
    return replace(obj, **floats)


# ---------------------------------------------------------------------------------------------
# CLI flags, generated


def _flag_help(spec: ParamSpec) -> str:
    text = spec.help.replace("%", "%%").rstrip(".")
    if spec.kind == "bool":  # the flag sets the opposite of the default
        return f"do not: {text[0].lower()}{text[1:]}" if spec.default else text
    return f"{text} (default {_fmt(spec.default)}; {_fmt(spec.min)} to {_fmt(spec.max)})"


def add_param_flags(
    parser: argparse.ArgumentParser | Any, groups: tuple[Group, ...] = ("lora", "params")
) -> None:
    """Add one optional flag per knob with a ``flag``; unset flags are None (keep the value)."""
    for group in groups:
        for spec in param_specs(GROUPS[group]):
            if spec.flag is None:
                continue
            if spec.kind == "bool":
                parser.add_argument(
                    f"--{spec.flag}", dest=spec.key, action="store_true", help=_flag_help(spec)
                )
                continue
            convert: Callable[[str], Any] = int if spec.kind == "int" else float
            metavar = "N" if spec.kind == "int" else "X"
            parser.add_argument(
                f"--{spec.flag}",
                dest=spec.key,
                type=convert,
                metavar=metavar,
                help=_flag_help(spec),
            )


def apply_param_flags(
    args: argparse.Namespace | Mapping[str, Any], params: DragParams, lora: LoraParams
) -> tuple[DragParams, LoraParams]:
    """``params`` and ``lora`` with the flags the user gave applied (not validated yet)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    changes: dict[Group, dict[str, Any]] = {"params": {}, "lora": {}}
    for spec in all_specs().values():
        if spec.flag is None:
            continue
        value = values.get(spec.key)
        if spec.kind == "bool":
            if value:
                changes[spec.group][spec.name] = not spec.default
        elif value is not None:
            changes[spec.group][spec.name] = value
    return replace(params, **changes["params"]), replace(lora, **changes["lora"])
