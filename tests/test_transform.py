"""Tests of comir.transform: algebra, warping, JSON and ITK round trips, conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from comir.errors import ComirError
from comir.transform import (
    RigidTransform,
    corner_error,
    from_sitk,
    image_center,
    load_transform,
    patch_corners,
    save_itk_tfm,
    save_transform,
)


def _random_transform(rng: np.random.Generator) -> RigidTransform:
    return RigidTransform.from_params(
        rng.uniform(-180, 180), tuple(rng.uniform(-20, 20, 2)), tuple(rng.uniform(0, 50, 2))
    )


def _smooth_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.standard_normal(shape), (4, 4, 0)[: len(shape)])
    return (img / img.std()).astype(np.float32)


def test_from_params_rotates_about_center_then_translates() -> None:
    t = RigidTransform.from_params(90.0, (2.0, -1.0), (10.0, 5.0))
    # the centre only moves by the translation
    np.testing.assert_allclose(t.apply(np.array([10.0, 5.0])), [12.0, 4.0], atol=1e-12)
    # +90° turns +x (right) into +y (down): clockwise on screen
    np.testing.assert_allclose(t.apply(np.array([11.0, 5.0])), [12.0, 5.0], atol=1e-12)
    assert t.angle_deg == pytest.approx(90.0)
    np.testing.assert_allclose(t.translation_about((10.0, 5.0)), [2.0, -1.0], atol=1e-12)


def test_compose_inverse_apply() -> None:
    rng = np.random.default_rng(1)
    a, b = _random_transform(rng), _random_transform(rng)
    pts = rng.uniform(-100, 100, (7, 2))
    np.testing.assert_allclose((a @ b).apply(pts), a.apply(b.apply(pts)), atol=1e-9)
    np.testing.assert_allclose(a.inverse().apply(a.apply(pts)), pts, atol=1e-9)
    np.testing.assert_allclose((a @ a.inverse()).matrix, np.eye(3), atol=1e-12)
    assert (a @ b).angle_deg == pytest.approx(
        (a.angle_deg + b.angle_deg + 180) % 360 - 180, abs=1e-9
    )


@pytest.mark.parametrize("channels", [0, 3, 5])
def test_warp_matches_naive_map_coordinates(channels: int) -> None:
    shape = (40, 52) if channels == 0 else (40, 52, channels)
    img = _smooth_image(shape, seed=channels)
    t = RigidTransform.from_params(23.0, (3.3, -2.2), image_center(shape))
    out = t.warp(img, (44, 48), order=1)
    assert out.shape == (44, 48) + shape[2:]
    # naive reference: fixed pixel p samples the moving image at M^-1 p
    ys, xs = np.mgrid[0:44, 0:48]
    src = t.inverse().apply(np.stack([xs, ys], -1).reshape(-1, 2).astype(float))
    planes = img[..., None] if channels == 0 else img
    ref = np.stack(
        [
            ndi.map_coordinates(planes[..., k], [src[:, 1], src[:, 0]], order=1, cval=0.0)
            for k in range(planes.shape[2])
        ],
        -1,
    ).reshape(44, 48, -1)
    inside = (
        (src[:, 0] >= 0)
        & (src[:, 0] <= shape[1] - 1)
        & (src[:, 1] >= 0)
        & (src[:, 1] <= shape[0] - 1)
    ).reshape(44, 48)
    got = out[..., None] if channels == 0 else out
    assert inside.sum() > 1000
    # OpenCV's bilinear weights are quantised to 1/32 pixel
    np.testing.assert_allclose(got[inside], ref[inside], atol=0.03)
    far = (
        (src[:, 0] < -1) | (src[:, 0] > shape[1]) | (src[:, 1] < -1) | (src[:, 1] > shape[0])
    ).reshape(44, 48)
    assert far.sum() > 50
    assert (got[far] == 0).all()  # constant fill beyond the border band


def test_warp_integer_shift_is_exact_and_keeps_dtype() -> None:
    img = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    out = RigidTransform.from_params(0.0, (2.0, 1.0)).warp(img, (20, 30), order=0)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[1:, 2:], img[:-1, :-2])
    assert (out[0] == 0).all() and (out[:, :2] == 0).all()


def test_json_round_trip(tmp_path) -> None:
    t = RigidTransform.from_params(-33.0, (4.5, -7.25), (12.0, 9.0))
    path = tmp_path / "t.json"
    save_transform(t, path, center=(12.0, 9.0), method="fft")
    back = load_transform(path)
    np.testing.assert_allclose(back.matrix, t.matrix, atol=1e-12)
    d = t.to_dict(center=(12.0, 9.0))
    del d["matrix"]  # the parameter form must give the same transform
    np.testing.assert_allclose(RigidTransform.from_dict(d).matrix, t.matrix, atol=1e-12)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ComirError, match="bad.json"):
        load_transform(tmp_path / "bad.json")


def test_tfm_export_read_by_simpleitk(tmp_path) -> None:
    t = RigidTransform.from_params(17.0, (6.0, -3.0), (31.5, 20.0))
    path = tmp_path / "t.tfm"
    save_itk_tfm(t, path, center=(31.5, 20.0))
    itk = sitk.ReadTransform(str(path))
    fixed_pts = np.array([[0.0, 0.0], [63.0, 0.0], [10.0, 40.0], [31.5, 20.0]])
    mapped = np.array([itk.TransformPoint(tuple(p)) for p in fixed_pts])
    # ITK maps fixed -> moving: the inverse of the comir matrix
    np.testing.assert_allclose(mapped, t.inverse().apply(fixed_pts), atol=1e-9)
    # and from_sitk turns it back into moving -> fixed
    np.testing.assert_allclose(from_sitk(itk).matrix, t.matrix, atol=1e-9)


@pytest.mark.parametrize("kind", ["euler", "similarity", "affine", "composite"])
def test_from_sitk_is_inverse_of_itk_mapping(kind: str) -> None:
    euler = sitk.Euler2DTransform((12.0, 8.0), math.radians(-25.0), (3.0, -4.0))
    if kind == "euler":
        tx = euler
    elif kind == "similarity":
        tx = sitk.Similarity2DTransform(1.0, math.radians(-25.0), (3.0, -4.0), (12.0, 8.0))
    elif kind == "affine":
        tx = sitk.AffineTransform(euler.GetMatrix(), euler.GetTranslation(), euler.GetCenter())
    else:
        tx = sitk.CompositeTransform([euler])
    t = from_sitk(tx)
    moving_pts = np.array([[0.0, 0.0], [5.0, 9.0], [-3.0, 20.0]])
    fixed_of = t.apply(moving_pts)
    back = np.array([tx.TransformPoint(tuple(p)) for p in fixed_of])
    np.testing.assert_allclose(back, moving_pts, atol=1e-9)
    assert t.angle_deg == pytest.approx(25.0)


def test_patch_corners_order_and_corner_error() -> None:
    c = patch_corners(300)
    # upper-left, lower-left, lower-right, upper-right at the outer pixel edges
    np.testing.assert_array_equal(c, [[-0.5, -0.5], [-0.5, 299.5], [299.5, 299.5], [299.5, -0.5]])
    np.testing.assert_array_equal(patch_corners(4, 2)[2], [3.5, 1.5])
    shift = RigidTransform.from_params(0.0, (3.0, 4.0))
    assert corner_error(shift, c, c) == pytest.approx(5.0)
    rot = RigidTransform.from_params(180.0, (0.0, 0.0), image_center((300, 300)))
    # a half turn about the centre maps each corner to the opposite one
    np.testing.assert_allclose(rot.apply(c), c[[2, 3, 0, 1]], atol=1e-9)
    assert corner_error(rot, c, c) == pytest.approx(300 * math.sqrt(2))
