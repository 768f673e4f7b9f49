"""DragBench's metrics, as its protocol defines them.

- Image Fidelity = 1 − LPIPS(AlexNet) between source and edited image, both in [-1, 1], the edited
  image first brought to the source's size, both resized bilinearly to 224×224.
- Mean Distance: DIFT features of both images upsampled bilinearly to image size; each handle's
  final position is where the edited image's feature is most cosine-similar to the source feature
  at the handle; the distance is from there to the target, in pixels, averaged over all pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backend.bench.lpips import LPIPS, to_lpips_input
from backend.request import PointPair

CHANNEL_CHUNK = 128
KEPT_TOLERANCE = 2  # 8-bit levels: JPEG or PNG round trips of the same pixels stay within this


def to_source_size(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """The edited image at the source's size (bilinear), as the protocol compares them."""
    h, w = source.shape[:2]
    if edited.shape[:2] == (h, w):
        return edited
    return np.asarray(Image.fromarray(edited).resize((w, h), Image.Resampling.BILINEAR))


def _signed(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0


def lpips_distance(model: LPIPS, source: np.ndarray, edited: np.ndarray) -> float:
    """LPIPS between two uint8 images, per the protocol's resizing."""
    device = model.shift.device
    a = to_lpips_input(_signed(source)).to(device)
    b = to_lpips_input(_signed(to_source_size(source, edited))).to(device)
    return float(model(a, b)[0])


def image_fidelity(model: LPIPS, source: np.ndarray, edited: np.ndarray) -> float:
    return 1.0 - lpips_distance(model, source, edited)


def _pixel(point: tuple[float, float], size: tuple[int, int]) -> tuple[int, int]:
    """``(x, y)`` → integer ``(row, col)`` inside an image of ``(h, w)``."""
    h, w = size
    x, y = point
    return min(max(round(y), 0), h - 1), min(max(round(x), 0), w - 1)


def _upsample(ft: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(ft, size=size, mode="bilinear", align_corners=False)


def track_handles(
    ft_source: torch.Tensor,
    ft_edited: torch.Tensor,
    handles: list[tuple[float, float]],
    size: tuple[int, int],
) -> list[tuple[int, int]]:
    """Final ``(x, y)`` of each handle: argmax of cosine similarity over the edited image.

    Both ``(1, C, h, w)`` maps are upsampled to ``size`` = ``(H, W)`` in channel chunks and the
    dot products and norms summed, which is exactly the cosine of the full upsampled maps without
    holding C×H×W floats at once.
    """
    if not handles:
        return []
    pix = [_pixel(p, size) for p in handles]
    rows = torch.tensor([r for r, _ in pix])
    cols = torch.tensor([c for _, c in pix])
    n, channels = len(pix), ft_source.shape[1]
    dots = torch.zeros(n, *size, device=ft_edited.device)
    norm2 = torch.zeros(*size, device=ft_edited.device)
    src_norm2 = torch.zeros(n, device=ft_edited.device)
    for c0 in range(0, channels, CHANNEL_CHUNK):
        src = _upsample(ft_source[:, c0 : c0 + CHANNEL_CHUNK], size)[0]
        vec = src[:, rows, cols].T.to(ft_edited.device)  # n × c
        del src
        edit = _upsample(ft_edited[:, c0 : c0 + CHANNEL_CHUNK], size)[0]  # c × H × W
        dots += torch.einsum("nc,chw->nhw", vec, edit)
        norm2 += edit.pow(2).sum(0)
        src_norm2 += vec.pow(2).sum(1)
    # torch.nn.CosineSimilarity's form: x·y / max(|x|·|y|, eps).
    denom = (src_norm2.sqrt()[:, None, None] * norm2.sqrt()[None]).clamp_min(1e-8)
    cos = (dots / denom).reshape(n, -1)
    best = cos.argmax(dim=1).cpu()
    w = size[1]
    return [(int(i % w), int(i // w)) for i in best.tolist()]


def pair_distances(
    final: list[tuple[int, int]], pairs: tuple[PointPair, ...], size: tuple[int, int]
) -> list[float]:
    """Euclidean pixel distance from each final handle to its (rounded) target."""
    out = []
    for (fx, fy), pair in zip(final, pairs, strict=True):
        ty, tx = _pixel(pair.target, size)
        out.append(float(np.hypot(fx - tx, fy - ty)))
    return out


Featurizer = Callable[[np.ndarray, str], torch.Tensor]


@dataclass(frozen=True)
class DistanceResult:
    final_handles: list[tuple[int, int]]
    distances: list[float]


def drag_distances(
    featurize: Featurizer,
    source: np.ndarray,
    edited: np.ndarray,
    pairs: tuple[PointPair, ...],
    prompt: str,
) -> DistanceResult:
    """Where each handle ended up in ``edited`` and how far that is from its target."""
    size = source.shape[:2]
    ft_s = featurize(source, prompt)
    ft_e = featurize(to_source_size(source, edited), prompt)
    final = track_handles(ft_s, ft_e, [p.handle for p in pairs], size)
    return DistanceResult(final, pair_distances(final, pairs, size))


def unmasked_kept(source: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> float | None:
    """Fraction of pixels outside the editable mask that the edit left (nearly) untouched.

    None when the edited image has another size (a resize changes every pixel) or the mask is
    empty (then everything is editable and there is nothing to keep).
    """
    if edited.shape != source.shape or not mask.any() or mask.all():
        return None
    diff = np.abs(source.astype(np.int16) - edited.astype(np.int16)).max(axis=2)
    outside = ~mask.astype(bool)
    return float((diff[outside] <= KEPT_TOLERANCE).mean())
