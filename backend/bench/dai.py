"""GoodDrag's Dragging Accuracy Index (DAI), as its evaluation script computes it.

For each pair, the patch of radius γ around the handle in the source image is compared with the
patch around the target in the edited image: the sum of squared differences over the patch and
the three channels, pixels in [0, 1]. GoodDrag's ``evaluation/compute_DAI.py`` divides the sum
over pairs by the number of pairs, by the patch area ``(1 + 2γ)²`` and then by the number of pairs
once more; we do the same, so numbers compare with its tables (for one pair this is the paper's
formula; for N pairs it is the paper's value divided by N). A dataset's DAI is the mean over
cases, at γ ∈ {1, 5, 10, 20}. Lower is better: the content that was at the handle is now at the
target.

Points are rounded to pixels. Where a patch would leave either image (the authors' slicing fails
there), both patches are cut to the offsets inside both images and the area is that of the cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backend.bench.metrics import to_source_size
from backend.request import PointPair

GAMMAS: tuple[int, ...] = (1, 5, 10, 20)


def pair_ssd(
    source: np.ndarray, edited: np.ndarray, pair: PointPair, gamma: int
) -> tuple[float, int]:
    """Sum of squared differences of the two patches (in [0, 1] units) and the patch area."""
    h, w = source.shape[:2]
    hx, hy = (min(max(round(v), 0), hi - 1) for v, hi in zip(pair.handle, (w, h), strict=True))
    tx, ty = (min(max(round(v), 0), hi - 1) for v, hi in zip(pair.target, (w, h), strict=True))
    dy = range(max(-gamma, -hy, -ty), min(gamma, h - 1 - hy, h - 1 - ty) + 1)
    dx = range(max(-gamma, -hx, -tx), min(gamma, w - 1 - hx, w - 1 - tx) + 1)
    a = source[hy + dy.start : hy + dy.stop, hx + dx.start : hx + dx.stop].astype(np.float64)
    b = edited[ty + dy.start : ty + dy.stop, tx + dx.start : tx + dx.stop].astype(np.float64)
    return float(np.square(a / 255.0 - b / 255.0).sum()), len(dy) * len(dx)


def dai(
    source: np.ndarray, edited: np.ndarray, pairs: Sequence[PointPair], gamma: int
) -> float | None:
    """One case's DAI at ``gamma`` (None when it has no pairs: nothing to measure)."""
    if not pairs:
        return None
    edited = to_source_size(source, edited)
    total = 0.0
    for pair in pairs:
        ssd, area = pair_ssd(source, edited, pair, gamma)
        total += ssd / area
    n = len(pairs)
    return total / n / n


def dai_all(
    source: np.ndarray, edited: np.ndarray, pairs: Sequence[PointPair]
) -> dict[str, float | None]:
    """DAI at each of GoodDrag's γ values, keyed by γ as text (JSON keys)."""
    return {str(g): dai(source, edited, pairs, g) for g in GAMMAS}
