"""Mapping between the user's pixels and the model's, and pasting the original back."""

from __future__ import annotations

import numpy as np

from backend.imaging import (
    feature_grid_points,
    feature_to_image,
    image_to_feature,
    keep_original_outside,
    mask_to_latent,
    working_size,
)


def test_working_size_is_512_wide_in_multiples_of_8() -> None:
    assert working_size(512, 512) == (512, 512)
    assert working_size(512, 288) == (512, 288)
    assert working_size(512, 913) == (512, 912)  # 913 → 912.0 → nearest multiple of 8
    assert working_size(4000, 3000) == (512, 384)
    assert working_size(3000, 200) == (512, 64)  # never below 64


def test_points_map_both_ways_and_edges_stay_on_the_grid() -> None:
    pts = np.array([[0.0, 0.0], [255.5, 100.25], [511.0, 287.0]])
    there = image_to_feature(pts, (512, 288), (144, 256))
    np.testing.assert_allclose(feature_to_image(there, (512, 288), (144, 256)), pts)
    # x = W - 1 would round to W_f; it is kept on the last column instead.
    grid = feature_grid_points(np.array([[127.0, 30.0]]), (128, 128), (64, 64))
    assert grid.tolist() == [[63.0, 15.0]]


def test_mask_resizes_with_nearest_neighbour() -> None:
    mask = np.zeros((16, 16), bool)
    mask[:, :8] = True
    small = mask_to_latent(mask, (2, 2))
    assert small.shape == (1, 1, 2, 2)
    assert small[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_original_pixels_outside_and_a_soft_seam_only_inside() -> None:
    rng = np.random.default_rng(0)
    original = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
    edited = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
    mask = np.zeros((80, 100), bool)
    mask[20:60, 0:50] = True  # touches the photo's left edge
    out = keep_original_outside(original, edited, mask)
    assert np.array_equal(out[~mask], original[~mask])
    assert np.array_equal(out[40, 25], edited[40, 25])  # deep inside: the edit
    assert not np.array_equal(out[40, 49], edited[40, 49])  # at the seam: blended
    assert np.array_equal(out[40, 0], edited[40, 0])  # the photo's edge is no seam
    assert np.array_equal(keep_original_outside(original, edited, ~np.ones_like(mask)), original)
