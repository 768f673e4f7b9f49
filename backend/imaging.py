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
    """Editable mask ``H×W`` → ``(1, 1, h, w)`` float at latent size, nearest-neighbour."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(m, size=latent_size, mode="nearest")


def restore_resolution(edited: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the working-resolution result to the user's ``(w, h)``."""
    if (edited.shape[1], edited.shape[0]) == size:
        return edited
    return np.asarray(Image.fromarray(edited).resize(size, Image.Resampling.LANCZOS))


def keep_original_outside(
    original: np.ndarray, edited: np.ndarray, mask: np.ndarray, feather: float = 2.0
) -> np.ndarray:
    """Original pixels wherever the mask says "keep"; a soft seam just inside the mask.

    Outside the editable region the result is the user's pixels exactly; the blend ramps up over
    a few pixels inside it so the seam does not show. Only the mask's bounding box (plus a
    margin for the filters) is blended, which keeps this quick on large photos.
    """
    m = mask.astype(bool)
    out = original.copy()
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return out
    r = max(1, round(feather)) if feather > 0 else 0
    margin = r + int(np.ceil(3 * feather))
    h, w = m.shape
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
    box = m[y0:y1, x0:x1]
    soft = Image.fromarray((box * 255).astype(np.uint8))
    if feather > 0:
        # Erode-then-blur keeps the ramp inside the editable region; at the photo's own edges
        # the filters see the mask continue, so no seam appears there.
        soft = soft.filter(ImageFilter.MinFilter(2 * r + 1)).filter(
            ImageFilter.GaussianBlur(feather)
        )
    alpha = np.asarray(soft, dtype=np.float32)[..., None] / 255.0
    alpha[~box] = 0.0
    src = original[y0:y1, x0:x1].astype(np.float32)
    region = alpha * edited[y0:y1, x0:x1].astype(np.float32) + (1 - alpha) * src
    out[y0:y1, x0:x1] = np.clip(np.round(region), 0, 255).astype(np.uint8)
    return out
