"""Between the user's pixels and the model's: working size, tensors, masks, compositing.

Points and masks live in the coordinates of the image as opened; the engine works at 512 wide
(multiples of 8) and maps everything exactly, then brings the result back to the user's size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from backend import limits
from backend.errors import InvalidRequest
from backend.imagefile import pil_to_array, strip_rows


def working_size(width: int, height: int, working_width: int = 512) -> tuple[int, int]:
    """``(W, H)`` to edit at: ``working_width`` wide, height scaled and rounded to 8, ≥ 64.

    Both sides are bounded: an image taller than it is wide is edited with its long side at
    most ``max(MAX_WORKING_SIDE, working_width)`` (so a 17×9999 strip does not become
    512×301,144), and sides more unequal than ``MAX_ASPECT`` are refused with a message.
    Ordinary photos (up to 4:1 at the default width) are unchanged.
    """
    problem = limits.aspect_problem(width, height)
    if problem:
        raise InvalidRequest(f"cannot edit this image: {problem}")
    longest = max(limits.MAX_WORKING_SIDE, working_width)
    h = max(64, round(working_width * height / width / 8.0) * 8)
    if h <= longest:
        return working_width, h
    w = max(64, round(longest * width / height / 8.0) * 8)
    return w, longest


def to_model_input(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``H×W×3`` → float ``(1, 3, h, w)`` in [-1, 1] at ``size`` = ``(w, h)``."""
    pil = Image.fromarray(image)
    if pil.size != size:
        pil = pil.resize(size, Image.Resampling.LANCZOS)
    arr = np.asarray(pil, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Decoded ``(1, 3, h, w)`` in [-1, 1] → uint8 ``h×w×3``."""
    arr = ((images[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return arr.permute(1, 2, 0).cpu().numpy()


def image_to_feature(
    points: np.ndarray, image_size: tuple[int, int], feature_size: tuple[int, int]
) -> np.ndarray:
    """Image pixels ``(x, y)`` → feature pixels: ``x·W_f/W``, ``y·H_f/H``."""
    (w, h), (fh, fw) = image_size, feature_size
    return points * np.array([fw / w, fh / h], dtype=np.float64)


def feature_grid_points(
    points: np.ndarray, image_size: tuple[int, int], feature_size: tuple[int, int]
) -> np.ndarray:
    """Image pixels → the nearest feature-map grid points, inside the map.

    Rounding alone would send the last image column (``x = W - 1``) one past the last feature
    column, since ``(W - 1)·W_f/W`` can round up to ``W_f``.
    """
    fh, fw = feature_size
    grid = np.round(image_to_feature(points, image_size, feature_size))
    return np.clip(grid, 0, [fw - 1, fh - 1])


def feature_to_image(
    points: np.ndarray, image_size: tuple[int, int], feature_size: tuple[int, int]
) -> np.ndarray:
    (w, h), (fh, fw) = image_size, feature_size
    return points * np.array([w / fw, h / fh], dtype=np.float64)


def mask_to_latent(mask: np.ndarray, latent_size: tuple[int, int]) -> torch.Tensor:
    """Editable mask ``H×W`` → ``(1, 1, h, w)`` float at latent size, nearest-neighbour.

    Sampled as bytes, not floats: a 48 MP mask would otherwise cost 192 MB for a 4 kB result
    (nearest-neighbour picks the same 0/1 values either way).
    """
    m = torch.from_numpy(np.asarray(mask, dtype=bool).view(np.uint8))[None, None]
    return F.interpolate(m, size=latent_size, mode="nearest").float()


def restore_resolution(edited: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the working-resolution result to the user's ``(w, h)``.

    A resized result is a fresh, writable array the caller owns; same-size input comes back as
    is (the caller must copy it before writing).
    """
    if (edited.shape[1], edited.shape[0]) == size:
        return edited
    resized = Image.fromarray(edited).resize(size, Image.Resampling.LANCZOS)
    return pil_to_array(resized)


def _mask_box(m: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)``: the mask's bounding box grown by ``margin``, inside the image."""
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    h, w = m.shape
    y0, y1 = max(0, int(rows[0]) - margin), min(h, int(rows[-1]) + 1 + margin)
    x0, x1 = max(0, int(cols[0]) - margin), min(w, int(cols[-1]) + 1 + margin)
    return y0, y1, x0, x1


def keep_original_outside(
    original: np.ndarray,
    edited: np.ndarray,
    mask: np.ndarray,
    feather: float = 2.0,
    *,
    in_place: bool = False,
) -> np.ndarray:
    """Original pixels wherever the mask says "keep"; a soft seam just inside the mask.

    Outside the editable region the result is the user's pixels exactly; the blend ramps up over
    a few pixels inside it so the seam does not show. Only the mask's bounding box (plus a
    margin for the filters) is blended, in strips of ``imagefile.STRIP_PIXELS``, so a 48 MP
    photo needs the output, a byte per pixel of the box for the ramp and a few small float
    strips — not several float copies of the photo. ``in_place=True`` writes the result into
    ``edited`` (a writable array the caller owns) instead of into a copy of ``original``.
    """
    m = np.asarray(mask, dtype=bool)
    r = max(1, round(feather)) if feather > 0 else 0
    margin = r + int(np.ceil(3 * feather))
    found = _mask_box(m, margin)
    if found is None:
        if in_place:
            edited[...] = original
            return edited
        return original.copy()
    y0, y1, x0, x1 = found
    out = edited if in_place else original.copy()
    if in_place:  # the original outside the box
        out[:y0] = original[:y0]
        out[y1:] = original[y1:]
        out[y0:y1, :x0] = original[y0:y1, :x0]
        out[y0:y1, x1:] = original[y0:y1, x1:]
    box = m[y0:y1, x0:x1]
    ramp = box.astype(np.uint8)
    ramp *= 255
    soft = Image.fromarray(ramp)
    del ramp
    if feather > 0:
        # Erode-then-blur keeps the ramp inside the editable region; at the photo's own edges
        # the filters see the mask continue, so no seam appears there.
        soft = soft.filter(ImageFilter.MinFilter(2 * r + 1)).filter(
            ImageFilter.GaussianBlur(feather)
        )
    width = x1 - x0
    step = strip_rows(y1 - y0, width).step
    for a in range(0, y1 - y0, step):
        b = min(y1 - y0, a + step)
        alpha = np.asarray(soft.crop((0, a, width, b)), dtype=np.float32)[..., None] / 255.0
        alpha[~box[a:b]] = 0.0
        src = original[y0 + a : y0 + b, x0:x1].astype(np.float32)
        region = alpha * edited[y0 + a : y0 + b, x0:x1].astype(np.float32) + (1 - alpha) * src
        out[y0 + a : y0 + b, x0:x1] = np.clip(np.round(region), 0, 255).astype(np.uint8)
    return out
