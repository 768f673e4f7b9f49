"""DragBench cases: ``original_image.png`` plus ``meta_data.pkl`` (prompt, points, mask).

The metadata is a pickle, and a pickle is a program: it is read with an unpickler that can build
exactly three things — numpy arrays, their dtypes and the array reconstructor — and nothing else.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend import limits
from backend.errors import InvalidRequest
from backend.request import PointPair

MAX_META_BYTES = 64 * 2**20


class _NdarrayMarker:
    """Stands for ``numpy.ndarray`` in a pickle: usable only as ``_reconstruct``'s subtype, so
    the pickle cannot call the class itself with a huge shape."""


_NDARRAY = _NdarrayMarker()
MAX_ARRAY_BYTES = 256 * 2**20
"""An array the pickle may create: DragBench masks are a few hundred kilobytes."""


def _safe_dtype(*args: Any) -> np.dtype[Any]:
    dtype: np.dtype[Any] = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object array in a DragBench pickle")
    return dtype


def _reconstructor() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """``_reconstruct`` with the declared size checked before anything is allocated."""
        if subtype is not _NDARRAY:
            raise pickle.UnpicklingError("a DragBench pickle may only build plain arrays")
        dims = (shape,) if isinstance(shape, int) else shape
        if not isinstance(dims, tuple) or not all(isinstance(d, int) and d >= 0 for d in dims):
            raise pickle.UnpicklingError("an array's shape must be whole numbers")
        itemsize = np.dtype(dtype).itemsize if not isinstance(dtype, np.dtype) else dtype.itemsize
        if math.prod(dims) * max(1, itemsize) > MAX_ARRAY_BYTES:
            raise pickle.UnpicklingError(f"an array of shape {dims} is too large")
        out = _reconstruct(np.ndarray, shape, dtype)
        if not isinstance(out, np.ndarray):
            raise pickle.UnpicklingError("not an array")
        return out

    return reconstruct


def _allowed() -> dict[tuple[str, str], Any]:
    reconstruct = _reconstructor()
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _safe_dtype,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a DragBench pickle"
            )
        return allowed[(module, name)]


def load_meta(path: Path) -> dict[str, Any]:
    """Read ``meta_data.pkl`` safely; raise :class:`InvalidRequest` if it is anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_META_BYTES:
        raise InvalidRequest(f"{path.name} is too large to be DragBench metadata")
    try:
        meta = _RestrictedUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise InvalidRequest(f"{path} is not valid DragBench metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise InvalidRequest(f"{path}: expected a dict, got {type(meta).__name__}")
    return meta


@dataclass(frozen=True, eq=False)
class BenchCase:
    name: str
    category: str
    image_path: Path
    prompt: str
    pairs: tuple[PointPair, ...]
    mask: np.ndarray  # H×W bool, True = editable


def _pairs(points: Any, where: str) -> tuple[PointPair, ...]:
    try:
        pts = [(float(p[0]), float(p[1])) for p in points]
    except (TypeError, ValueError, IndexError) as exc:
        raise InvalidRequest(f"{where}: points must be [x, y] pairs") from exc
    if len(pts) % 2:
        raise InvalidRequest(f"{where}: an odd number of points (handles and targets alternate)")
    return tuple(PointPair(pts[i], pts[i + 1]) for i in range(0, len(pts), 2))


def load_case(folder: Path) -> BenchCase:
    """Load one DragBench case folder."""
    folder = Path(folder)
    image_path = folder / "original_image.png"
    if not image_path.is_file():
        raise InvalidRequest(f"{folder} is not a DragBench case (no original_image.png)")
    meta = load_meta(folder / "meta_data.pkl")
    prompt = meta.get("prompt", "")
    if not isinstance(prompt, str):
        raise InvalidRequest(f"{folder}: the prompt is not text")
    mask = meta.get("mask")
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype.hasobject:
        raise InvalidRequest(f"{folder}: the mask is not a 2-D array of numbers")
    if mask.size > limits.MAX_PIXELS:
        raise InvalidRequest(f"{folder}: the mask is {mask.shape[1]}×{mask.shape[0]}, too large")
    return BenchCase(
        name=folder.name,
        category=folder.parent.name,
        image_path=image_path,
        prompt=prompt,
        pairs=_pairs(meta.get("points", []), str(folder)),
        mask=mask > 0,
    )
