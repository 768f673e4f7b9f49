"""GoodDrag's DAI on constructed images with known answers, and in the benchmark report."""

from __future__ import annotations

import numpy as np
import pytest

from backend.bench import dai
from backend.bench.report import markdown, summarize
from backend.bench.runner import Scorers
from backend.request import PointPair


def _square(h: int, w: int, center: tuple[int, int], r: int, value: int = 255) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    x, y = center
    img[y - r : y + r + 1, x - r : x + r + 1] = value
    return img


def test_content_moved_exactly_to_the_target_scores_zero() -> None:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    shifted = np.roll(src, shift=(5, 7), axis=(0, 1))  # content moves by (+7, +5) in (x, y)
    pair = PointPair((30, 20), (37, 25))
    for g in (1, 5, 10):
        assert dai.dai(src, shifted, [pair], g) == 0.0
    assert dai.dai(src, src, [pair], 1) > 0  # not moved: the handle's look is not at the target


def test_known_values_and_the_authors_normalisation() -> None:
    # A white 3×3 square at the handle, black everywhere in the result: every channel of every
    # patch position differs by 1.0, so the per-pair SSD over (1+2γ)² positions is 3 (channels).
    src = _square(40, 40, (20, 20), 1)
    black = np.zeros_like(src)
    one = [PointPair((20, 20), (10, 10))]
    assert dai.dai(src, black, one, 1) == pytest.approx(3.0)
    # γ = 5: only 9 of the 121 positions differ.
    assert dai.dai(src, black, one, 5) == pytest.approx(3.0 * 9 / 121)
    # Two such pairs: compute_DAI.py divides by the number of pairs twice → (3 + 3) / 2 / 2.
    two = [PointPair((20, 20), (10, 10)), PointPair((20, 20), (30, 30))]
    assert dai.dai(src, black, two, 1) == pytest.approx(1.5)
    # Half grey: (0.5)² per channel and position.
    grey = _square(40, 40, (10, 10), 1, value=128)
    expected = 3 * (1 - 128 / 255) ** 2
    assert dai.dai(src, grey, one, 1) == pytest.approx(expected)


def test_patches_are_cut_at_the_borders_and_results_resized() -> None:
    src = np.zeros((30, 30, 3), np.uint8)
    src[0:2, 0:2] = 255  # the handle's patch at the corner has 2×2 positions inside
    edited = np.zeros((30, 30, 3), np.uint8)
    ssd, area = dai.pair_ssd(src, edited, PointPair((0, 0), (15, 15)), 1)
    assert (ssd, area) == (pytest.approx(12.0), 4)
    assert dai.dai(src, edited, [PointPair((0, 0), (15, 15))], 1) == pytest.approx(3.0)
    # A result at another size is brought to the source's first, as for the other metrics.
    flat = np.full((30, 30, 3), 100, np.uint8)
    big = np.full((45, 60, 3), 200, np.uint8)
    expected = 3 * (100 / 255) ** 2
    assert dai.dai(flat, big, [PointPair((29, 29), (3, 4))], 5) == pytest.approx(expected)


def test_no_pairs_is_no_number_and_the_report_says_why() -> None:
    img = np.zeros((20, 20, 3), np.uint8)
    assert dai.dai(img, img, [], 1) is None
    assert dai.dai_all(img, img, []) == {"1": None, "5": None, "10": None, "20": None}
    rec = {
        "case": "a/b",
        "category": "a",
        "pairs": 0,
        "status": "done",
        "dai": dai.dai_all(img, img, []),
    }
    summary = summarize([rec], Scorers(dift_reason="x", lpips_reason="y"), {})
    assert summary["metrics"]["dai"]["available"] is False
    assert "no point pairs" in summary["metrics"]["dai"]["reason"]
    assert "DAI: **unavailable** — the finished cases have no point pairs" in markdown(summary)


def test_report_averages_dai_over_cases() -> None:
    recs = [
        {"case": f"c/{i}", "category": "c", "pairs": 1, "status": "done",
         "dai": {"1": v, "5": v / 2, "10": None, "20": 0.0}}
        for i, v in enumerate((1.0, 3.0))
    ]  # fmt: skip
    summary = summarize(recs, Scorers(), {})
    assert summary["overall"]["dai"] == {"1": 2.0, "5": 1.0, "10": None, "20": 0.0}
    table = markdown(summary)
    assert "DAI γ=1 ↓" in table and "| 2.0000 | 1.0000 | n/a | 0.0000 |" in table
