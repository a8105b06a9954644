"""Displacement fields: interpolation, inversion, regularity, composition, files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates

from comir.errors import ComirError, ComirWarning
from comir.transform import (
    AffineTransform,
    CompositeTransform,
    DisplacementField,
    RigidTransform,
    from_sitk_displacement,
    load_transform,
    ngff_dict,
    save_ngff,
    save_sitk_displacement,
)


def smooth_field(shape, amplitude: float, seed: int = 0, sigma: float = 5.0) -> np.ndarray:
    """``(H, W, 2)`` smooth random displacement with maximum magnitude ``amplitude``."""
    rng = np.random.default_rng(seed)
    d = np.stack([gaussian_filter(rng.normal(size=shape), sigma) for _ in range(2)], -1)
    return d * (amplitude / np.abs(d).max())


def pixel_grid(h: int, w: int) -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    return np.stack([xx, yy], -1)


def test_apply_is_bilinear_with_constant_extrapolation():
    d = smooth_field((7, 9), 3.0)
    f = DisplacementField(d, origin=(-2.0, 1.0), spacing=(4.0, 2.5))
    pts = np.random.default_rng(1).uniform(-15, 50, size=(200, 2))  # many outside the grid
    # independent: scipy's order-1 spline, clamped ("nearest") outside, in grid indices
    idx = [(pts[:, 1] - 1.0) / 2.5, (pts[:, 0] + 2.0) / 4.0]
    want = np.stack(
        [
            map_coordinates(d[..., c].astype(np.float32), idx, order=1, mode="nearest")
            for c in (0, 1)
        ],
        -1,
    )
    np.testing.assert_allclose(f.apply(pts), pts + want, atol=1e-5)
    # exact at the nodes
    node = np.array([[-2.0 + 4 * 3, 1.0 + 2.5 * 5]])
    np.testing.assert_allclose(f.apply(node)[0], node[0] + d[5, 3], atol=1e-6)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_iterated_direction_inverts_the_exact_one(direction):
    f = DisplacementField(smooth_field((40, 50), 4.0), spacing=(1.0, 1.0), direction=direction)
    pts = np.random.default_rng(2).uniform(0, 40, size=(500, 2))
    back = f.apply_inverse(f.apply(pts))
    assert np.abs(back - pts).max() < 1e-5  # INVERT_TOL = 1e-6 px per step
    fwd = f.apply(f.apply_inverse(pts))
    assert np.abs(fwd - pts).max() < 1e-5


def test_inversion_failure_is_nan_with_one_warning():
    # dx = 3 sin(x / 2) on nodes 0.25 px apart: slope up to 1.5, folded where cos < -2/3;
    # q <- y - 3 sin(q / 2) oscillates instead of converging for these y
    x = np.arange(0, 60, 0.25)
    d = np.stack([3 * np.sin(x / 2), np.zeros_like(x)], -1)[None].repeat(3, 0)
    f = DisplacementField(d, spacing=(0.25, 1.0))
    assert 0.1 < f.folded_fraction() < 0.5
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = f.apply_inverse(np.array([[10.0, 1.0], [23.0, 2.0], [36.0, 0.5]]))
    assert np.isnan(out).all()
    assert sum(issubclass(r.category, ComirWarning) for r in rec) == 1


def test_jacobian_of_an_affine_displacement_is_its_determinant():
    a = np.array([[1.2, 0.3], [-0.1, 0.9]])
    grid = pixel_grid(12, 15) * (2.0, 3.0)  # spacing (2, 3)
    d = grid @ (a - np.eye(2)).T
    f = DisplacementField(d, spacing=(2.0, 3.0))
    np.testing.assert_allclose(f.jacobian_determinant(), np.linalg.det(a), rtol=1e-5)
    assert f.folded_fraction() == 0.0
    # a reflection on the left third of the grid folds exactly those columns
    flip = d.copy()
    flip[:, :5, 0] = -2.4 * grid[:, :5, 0]  # ∂(x + dx)/∂x = -1.4 there
    det = DisplacementField(flip, spacing=(2.0, 3.0)).jacobian_determinant()
    assert (det[:, :4] <= 0).all() and (det[:, 6:] > 0).all()


def test_composition_with_matrices_interpolates_once(textured):
    h, w = 48, 56
    moving = textured((h, w), seed=3).astype(np.float32)
    v = smooth_field((h, w), 3.0, seed=4)
    local = DisplacementField.from_inverse(v)
    glob = RigidTransform.from_params(7.0, (2.0, -1.5), ((w - 1) / 2, (h - 1) / 2))
    t = glob @ local  # local first, then the global matrix
    assert isinstance(t, CompositeTransform)
    got = t.warp(moving, (h, w))
    # naive: A⁻¹ by numpy, then the field by scipy (one interpolation of the image)
    p = pixel_grid(h, w)
    q = p @ np.linalg.inv(glob.matrix)[:2, :2].T + np.linalg.inv(glob.matrix)[:2, 2]
    vq = [map_coordinates(v[..., c].astype(np.float32), [q[..., 1], q[..., 0]], order=1,
                          mode="nearest") for c in (0, 1)]  # fmt: skip
    src = q + np.stack(vq, -1)
    want = map_coordinates(moving, [src[..., 1], src[..., 0]], order=1, mode="constant")
    np.testing.assert_allclose(got, want, atol=1e-5)
    # two interpolations (field, then matrix) blur: clearly different from one
    twice = glob.warp(local.warp(moving, (h, w)), (h, w))
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(twice - want)[inner].mean() > 20 * np.abs(got - want)[inner].mean() + 1e-3
    # points: apply and apply_inverse of the chain agree with the parts
    pts = np.array([[10.0, 12.0], [30.5, 20.25]])
    np.testing.assert_allclose(t.apply(pts), glob.apply(local.apply(pts)), atol=1e-9)
    np.testing.assert_allclose(t.apply_inverse(t.apply(pts)), pts, atol=1e-5)


def test_json_round_trip_is_exact(tmp_path):
    f = DisplacementField.from_inverse(smooth_field((9, 11), 2.5), (-1.0, 2.0), (3.0, 2.0))
    t = AffineTransform(np.array([[1.1, 0.1, 3.0], [0.0, 0.9, -2.0], [0, 0, 1]])) @ f
    t.save(tmp_path / "t.json")
    d = json.loads((tmp_path / "t.json").read_text())
    assert [p["type"] for p in d["transforms"]] == ["displacement", "affine"]
    assert d["transforms"][0]["encoding"] == "base64"
    back = load_transform(tmp_path / "t.json")
    g = back.transforms[0]
    assert g.direction == "inverse" and g.spacing == (3.0, 2.0) and g.origin == (-1.0, 2.0)
    np.testing.assert_array_equal(g.displacement, f.displacement)
    pts = np.random.default_rng(5).uniform(0, 30, (20, 2))
    np.testing.assert_array_equal(back.apply_inverse(pts), t.apply_inverse(pts))


@pytest.mark.parametrize(
    "content, word",
    [
        ({"format": "comir-transform/9", "type": "rigid", "matrix": np.eye(3).tolist()}, "format"),
        ({"format": "comir-transform/1", "type": "bspline"}, "unknown transform type"),
        (
            {
                "format": "comir-transform/1",
                "type": "displacement",
                "shape": [2, 2, 2],
                "origin": [0, 0],
                "spacing": [1, 1],
                "data": "AAAAAA==",
            },
            "holds 1 values",
        ),  # fmt: skip
        ([1, 2, 3], "JSON object"),
        ("#Insight Transform File V1.0", "ITK/elastix file"),
    ],
)
def test_bad_transform_files_are_one_line_errors(tmp_path, content, word):
    path = tmp_path / ("t.tfm" if isinstance(content, str) else "t.json")
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ComirError, match=word) as exc:
        load_transform(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_sitk_resample_of_written_field_matches_warp(tmp_path, textured):
    import SimpleITK as sitk

    h, w = 40, 52
    moving = textured((h, w), seed=6).astype(np.float32)
    t = RigidTransform.from_params(-6.0, (1.5, 2.0), (25.5, 19.5)) @ DisplacementField(
        smooth_field((h, w), 3.0, seed=7)
    )  # forward field: the file holds its iterated inverse
    path = save_sitk_displacement(t, tmp_path / "field.nii.gz", (h, w))
    tx = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    img = sitk.GetImageFromArray(moving)
    theirs = sitk.GetArrayFromImage(sitk.Resample(img, img, tx, sitk.sitkLinear, 0.0))
    ours = t.warp(moving, (h, w))
    src = t.apply_inverse(pixel_grid(h, w))
    inside = ((src >= 0) & (src <= (w - 1, h - 1))).all(-1)  # ITK and scipy differ at edges
    assert inside.mean() > 0.7
    assert np.abs(theirs - ours)[inside].max() < 1e-5
    # read back: exact fixed → moving map at the pixels
    back = from_sitk_displacement(path)
    assert back.direction == "inverse"
    np.testing.assert_allclose(back.apply_inverse(pixel_grid(h, w)), src, atol=1e-4)


def test_ngff_affine_maps_points_like_comir(tmp_path):
    a = AffineTransform(np.array([[1.1, 0.2, 4.0], [-0.1, 0.95, -3.0], [0, 0, 1]]))
    r = RigidTransform.from_params(10.0, (1.0, 2.0), (5.0, 5.0))
    pts = np.array([[3.0, 7.0], [10.0, -2.0], [0.0, 0.0]])
    d = json.loads(save_ngff(a, tmp_path / "transform_ngff.json").read_text())
    (tr,) = d["coordinateTransformations"]
    assert (tr["type"], tr["input"], tr["output"]) == ("affine", "moving", "fixed")
    assert [ax["name"] for ax in d["coordinateSystems"][0]["axes"]] == ["y", "x"]
    m = np.asarray(tr["affine"])  # (y, x) order: [y', x'] = m @ [y, x, 1]
    yx = np.c_[pts[:, ::-1], np.ones(3)] @ m.T
    np.testing.assert_allclose(yx[:, ::-1], a.apply(pts), atol=1e-12)
    # a translation and a chain
    shift = ngff_dict(AffineTransform(np.array([[1.0, 0, 3.0], [0, 1, -2.0], [0, 0, 1]])))
    assert shift["coordinateTransformations"][0]["translation"] == [-2.0, 3.0]
    f = DisplacementField(np.zeros((4, 4, 2)))
    seq = ngff_dict(CompositeTransform([r, f, a]), field_path="x.nii.gz")
    assert seq["coordinateTransformations"][0]["type"] == "displacements"
    chain = CompositeTransform([r, RigidTransform.from_params(0.0, (0.5, 0.0)).inverse(), a])
    assert len(chain.transforms) == 1  # matrices multiply out
    chain.transforms = [r, a]  # an unmerged chain, as a sequence
    (s,) = ngff_dict(chain)["coordinateTransformations"]
    assert s["type"] == "sequence" and [p["type"] for p in s["transformations"]] == ["affine"] * 2
    y = pts
    for p in s["transformations"]:
        mm = np.asarray(p["affine"])
        y = (np.c_[y[:, ::-1], np.ones(3)] @ mm.T)[:, ::-1]
    np.testing.assert_allclose(y, a.apply(r.apply(pts)), atol=1e-12)


def test_ngff_of_a_field_points_to_its_image(tmp_path):
    f = DisplacementField.from_inverse(smooth_field((20, 24), 2.0, seed=8))
    d = json.loads(save_ngff(f, tmp_path / "transform_ngff.json", (20, 24)).read_text())
    (tr,) = d["coordinateTransformations"]
    assert (tr["type"], tr["input"], tr["output"]) == ("displacements", "fixed", "moving")
    back = from_sitk_displacement(tmp_path / tr["path"])
    np.testing.assert_allclose(back.displacement, f.displacement, atol=1e-6)


def test_grid_mismatch_is_an_error():
    from comir.transform.field import check_grids

    f = DisplacementField.from_inverse(np.zeros((32, 32, 2)))
    check_grids(f, (32, 32), (50, 50), "t.json")
    coarse = DisplacementField.from_inverse(np.zeros((5, 5, 2)), spacing=(8.0, 8.0))
    check_grids(coarse, (32, 33), (50, 50), "t.json")  # nodes 0..32 span 0..31
    with pytest.raises(ComirError, match=r"t\.json: .* fixed image is 64x64"):
        check_grids(f, (64, 64), (32, 32), "t.json")


def test_sitk_field_with_origin_and_spacing_maps_points_like_itk():
    import SimpleITK as sitk

    v = smooth_field((9, 12), 2.0, seed=9, sigma=2.0)
    img = sitk.GetImageFromArray(v, isVector=True)
    img.SetOrigin((-3.0, 2.5))
    img.SetSpacing((4.0, 3.0))
    f = from_sitk_displacement(img)
    assert f.origin == (-3.0, 2.5) and f.spacing == (4.0, 3.0)
    tx = sitk.DisplacementFieldTransform(sitk.Image(img))
    pts = np.random.default_rng(10).uniform((-3, 2.5), (-3 + 44, 2.5 + 24), (50, 2))
    itk = np.array([tx.TransformPoint(tuple(p)) for p in pts])  # fixed -> moving
    np.testing.assert_allclose(f.apply_inverse(pts), itk, atol=1e-5)
