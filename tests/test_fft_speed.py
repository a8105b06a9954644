"""The fft back-end's speed-ups keep its results: the shift range bound and the sweep."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.signal import correlate

from comir.register import register
from comir.register.fft import _axis_shift_range, _min_pixels
from comir.transform import RigidTransform, image_center


def test_shift_range_keeps_every_shift_with_enough_overlap():
    """Naive overlap counts of random rotated-square masks: every shift reaching the
    accepted overlap lies inside the range, and the range is not the full one."""
    rng = np.random.default_rng(0)
    hf, wf, side = 20, 17, 30
    masks = []
    for angle in rng.uniform(0, 90, 5):
        sq = np.zeros((side, side), np.float32)
        sq[6:24, 8:23] = 1.0
        masks.append((ndi.rotate(sq, angle, reshape=False, order=0) > 0.5).astype(np.float32))
    mask = np.stack(masks)
    need = _min_pixels(mask, hf * wf, 0.4)
    y0, y1 = _axis_shift_range(mask.sum(axis=2), hf, wf, need)
    x0, x1 = _axis_shift_range(mask.sum(axis=1), wf, hf, need)
    ones = np.ones((hf, wf))
    for a in range(len(mask)):
        # n[s] = Σ_q fixed_mask(q) · mask(q − s), s = (sy, sx) from (1 − side) to (hf − 1)
        n = correlate(ones, mask[a], mode="full")
        sy, sx = np.nonzero(n >= need[a] - 0.5)
        sy, sx = sy - (side - 1), sx - (side - 1)
        assert sy.min() >= y0 and sy.max() <= y1 and sx.min() >= x0 and sx.max() <= x1
    assert (y1 - y0) < (hf + side - 2) * 0.8 and (x1 - x0) < (wf + side - 2) * 0.8


@pytest.mark.parametrize("angle", [-150.0, 35.0, 95.0])
def test_small_patches_recover_large_rotations(angle: float):
    """96 px patches (the demo's size, coarse level 32 px): rotations anywhere on the
    circle and ~10 px shifts are recovered to 0.3 px."""
    rng = np.random.default_rng(1)
    scene = ndi.gaussian_filter(rng.standard_normal((240, 240)), 3.0)
    true = RigidTransform.from_params(angle, (6.0, -9.0), image_center((96, 96)))
    fixed = scene[72:168, 72:168].astype(np.float32)
    ys, xs = np.mgrid[:96, :96]
    q = true.apply(np.stack([xs.ravel(), ys.ravel()], 1).astype(float)) + 72.0
    moving = ndi.map_coordinates(scene, [q[:, 1], q[:, 0]], order=3).reshape(96, 96)
    res = register(fixed, moving.astype(np.float32), method="fft")
    corners = np.array([[0, 0], [95, 0], [95, 95], [0, 95]], float)
    err = np.linalg.norm(res.transform.apply(corners) - true.apply(corners), axis=1).max()
    assert res.ok and err < 0.3, err
