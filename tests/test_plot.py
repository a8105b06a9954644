"""Display scaling of comir.plot (the figures' pixels), against plain NumPy formulas."""

from __future__ import annotations

import numpy as np

from comir import plot


def test_display_maps_percentiles_to_unit_range_and_clips(textured) -> None:
    img = textured((40, 50), 1) * 4000 + 100
    lo, hi = np.percentile(img, [0.5, 99.5])
    want = np.clip((img - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(plot._display(img), want, atol=1e-6)
    four = np.stack([img, 2 * img, 3 * img, np.zeros_like(img)], -1)
    shown = plot._display(four)  # first three channels, one common scaling
    lo3, hi3 = np.percentile(four[..., :3], [0.5, 99.5])
    assert shown.shape == (40, 50, 3)
    np.testing.assert_allclose(shown, np.clip((four[..., :3] - lo3) / (hi3 - lo3), 0, 1), atol=1e-6)
    two = np.stack([img, img + 10], -1)  # two channels: their mean, grey
    np.testing.assert_allclose(plot._display(two), plot._display(img + 5), atol=1e-6)
    np.testing.assert_array_equal(plot._display(np.full((6, 6, 1), 3.0)), 0.0)


def test_overlay_is_grey_where_content_agrees_at_another_contrast(textured) -> None:
    fixed = textured((32, 32), 2)
    over = plot.colour_overlay(fixed, 3.0 * fixed + 5.0)
    np.testing.assert_allclose(over[..., 0], over[..., 1], atol=1e-5)
    np.testing.assert_array_equal(over[..., 0], over[..., 2])
    z = (fixed - fixed.mean()) / fixed.std()
    np.testing.assert_allclose(over[..., 1], np.clip(0.5 + z / 5.0, 0, 1), atol=1e-5)


def test_overlay_scales_a_warped_copy_by_its_original(textured) -> None:
    original = textured((32, 32), 3) * 7.0
    warped = np.zeros_like(original)
    warped[4:, 4:] = original[:-4, :-4]  # shifted, with an empty border
    over = plot.colour_overlay(original, warped, moving_like=original)
    z = (warped - original.mean()) / original.std()
    np.testing.assert_allclose(over[..., 0], np.clip(0.5 + z / 5.0, 0, 1), atol=1e-5)
