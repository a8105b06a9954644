"""The transform family: kinds and their algebra, composites, generic warping, files of
every kind read back by SimpleITK, and the batched functional helpers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

from comir.errors import ComirError
from comir.transform import (
    AffineTransform,
    CompositeTransform,
    RigidTransform,
    SimilarityTransform,
    Transform,
    as_kind,
    from_elastix_params,
    from_sitk,
    load_transform,
    save_itk_tfm,
    save_transform,
    to_sitk,
)
from comir.transform import functional as F


class Wobble(Transform):
    """A smooth non-linear test map ``(x, y) -> (x + a sin(y / s), y)`` (exact inverse)."""

    kind = "wobble"

    def __init__(self, a: float = 1.5, s: float = 7.0) -> None:
        self.a, self.s = a, s

    def apply(self, points):
        p = np.array(points, dtype=float)
        p[..., 0] += self.a * np.sin(p[..., 1] / self.s)
        return p

    def apply_inverse(self, points):
        p = np.array(points, dtype=float)
        p[..., 0] -= self.a * np.sin(p[..., 1] / self.s)
        return p

    def to_dict(self):
        return {"type": self.kind, "a": self.a, "s": self.s}


def _affine(rng) -> AffineTransform:
    lin = np.eye(2) + rng.uniform(-0.2, 0.2, (2, 2))
    return AffineTransform(F.from_linear(lin, rng.uniform(-5, 5, 2)))


def _kinds(rng):
    return [
        RigidTransform.from_params(rng.uniform(-90, 90), tuple(rng.uniform(-9, 9, 2)), (20, 15)),
        SimilarityTransform.from_params(rng.uniform(-90, 90), 1.3, tuple(rng.uniform(-9, 9, 2))),
        _affine(rng),
    ]


def test_kinds_validate_their_matrices() -> None:
    scaled = F.similarity_matrices(0.3, 1.2)
    with pytest.raises(ValueError, match="rigid"):
        RigidTransform(scaled)
    with pytest.raises(ValueError, match="similarity"):
        SimilarityTransform(F.from_linear([[1.0, 0.2], [0.0, 1.0]], [0, 0]))
    with pytest.raises(ValueError, match="singular"):
        AffineTransform(F.from_linear([[1.0, 2.0], [0.5, 1.0]], [0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        AffineTransform(np.full((3, 3), np.nan))
    assert type(as_kind(scaled)) is SimilarityTransform
    assert type(as_kind(F.rigid_matrices(0.3))) is RigidTransform
    s = SimilarityTransform(scaled)
    assert s.scale == pytest.approx(1.2) and s.angle_rad == pytest.approx(0.3)


def test_composition_gives_the_more_general_kind_and_maps_in_order() -> None:
    rng = np.random.default_rng(0)
    rigid, sim, aff = _kinds(rng)
    pts = rng.uniform(-50, 50, (6, 2))
    for a, b, kind in [
        (rigid, rigid, RigidTransform),
        (rigid, sim, SimilarityTransform),
        (sim, rigid, SimilarityTransform),
        (aff, rigid, AffineTransform),
        (sim, aff, AffineTransform),
    ]:
        c = a @ b
        assert type(c) is kind
        np.testing.assert_allclose(c.apply(pts), a.apply(b.apply(pts)), atol=1e-9)
        np.testing.assert_allclose(c.inverse().apply(c.apply(pts)), pts, atol=1e-9)
        assert type(c.inverse()) is kind


def test_composite_collapses_matrices_and_chains_others() -> None:
    rng = np.random.default_rng(1)
    rigid, sim, aff = _kinds(rng)
    chain = CompositeTransform([rigid, sim, aff])
    assert len(chain.transforms) == 1 and type(chain.simplified()) is AffineTransform
    wob = Wobble()
    mixed = rigid @ wob @ sim  # sim first, then the wobble, then rigid
    assert isinstance(mixed, CompositeTransform) and len(mixed.transforms) == 3
    pts = rng.uniform(-30, 30, (9, 2))
    np.testing.assert_allclose(mixed.apply(pts), rigid.apply(wob.apply(sim.apply(pts))))
    np.testing.assert_allclose(mixed.apply_inverse(mixed.apply(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(mixed.inverse().apply(mixed.apply(pts)), pts, atol=1e-9)
    # nested composites flatten, adjacent matrices still merge
    nested = CompositeTransform([mixed, aff])
    assert len(nested.transforms) == 3


def test_composite_warp_interpolates_once(textured) -> None:
    img = textured((48, 56), seed=3).astype(np.float32)
    rigid = RigidTransform.from_params(9.0, (2.5, -1.5), (27.5, 23.5))
    chain = rigid @ Wobble()
    out = chain.warp(img, (48, 56))
    # naive reference: one bilinear sample at the composed inverse map of each pixel
    yy, xx = np.mgrid[0:48, 0:56].astype(float)
    src = Wobble().apply_inverse(rigid.inverse().apply(np.stack([xx, yy], -1)))
    ref = ndi.map_coordinates(img, [src[..., 1], src[..., 0]], order=1, cval=0.0)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # warping twice (interpolating twice) is measurably different: the test can tell
    twice = rigid.warp(Wobble().warp(img, (48, 56)), (48, 56))
    assert np.abs(twice - ref)[8:-8, 8:-8].max() > 1e-3


def test_generic_and_opencv_warp_agree(textured) -> None:
    img = textured((40, 44, 5), seed=2).astype(np.float32)
    t = SimilarityTransform.from_params(-14.0, 1.1, (1.2, 0.7), (21.5, 19.5))
    fast = t.warp(img, (42, 46), border="reflect")
    slow = Transform.warp(t, img, (42, 46), border="reflect")
    assert fast.shape == slow.shape == (42, 46, 5)
    np.testing.assert_allclose(fast, slow, atol=0.03)  # OpenCV quantises to 1/32 px
    u16 = (img[..., 0] * 60000).astype(np.uint16)
    assert t.warp(u16, (42, 46)).dtype == np.uint16
    assert Transform.warp(t, u16, (42, 46)).dtype == np.uint16


@pytest.mark.parametrize("index", [0, 1, 2])
def test_itk_files_of_every_kind_read_by_simpleitk(tmp_path, index: int) -> None:
    t = _kinds(np.random.default_rng(4))[index]
    center = (30.0, 12.5)
    save_itk_tfm(t, tmp_path / "t.tfm", center)
    itk = sitk.ReadTransform(str(tmp_path / "t.tfm"))
    fixed_pts = np.array([[0.0, 0.0], [63.0, 4.0], [10.0, 40.0], center])
    mapped = np.array([itk.TransformPoint(tuple(p)) for p in fixed_pts])
    np.testing.assert_allclose(mapped, t.inverse().apply(fixed_pts), atol=1e-9)
    back = from_sitk(itk)
    assert type(back) is type(t)
    np.testing.assert_allclose(back.matrix, t.matrix, atol=1e-9)
    live = to_sitk(t, center)
    np.testing.assert_allclose(
        [live.TransformPoint(tuple(p)) for p in fixed_pts], mapped, atol=1e-9
    )


def test_elastix_parameter_maps() -> None:
    c = (12.0, 7.0)
    euler = {"Transform": ["EulerTransform"], "TransformParameters": "0.3 2 -1",
             "CenterOfRotationPoint": "12 7"}  # fmt: skip
    sim = {"Transform": "SimilarityTransform", "TransformParameters": [1.2, 0.3, 2, -1],
           "CenterOfRotationPoint": c}  # fmt: skip
    aff = {"Transform": "AffineTransform", "TransformParameters": [1.1, 0.1, -0.2, 0.9, 2, -1],
           "CenterOfRotationPoint": c}  # fmt: skip
    p = np.array([[3.0, 4.0], [20.0, -5.0]])
    cc = np.array(c)
    # elastix maps fixed -> moving: p_m = A (p_f - c) + c + t; comir holds the inverse
    for params, lin in [
        (euler, F.rotation_matrices(0.3)),
        (sim, 1.2 * F.rotation_matrices(0.3)),
        (aff, np.array([[1.1, 0.1], [-0.2, 0.9]])),
    ]:
        t = from_elastix_params(params)
        moving = (p - cc) @ lin.T + cc + np.array([2.0, -1.0])
        np.testing.assert_allclose(t.apply(moving), p, atol=1e-9)
    with pytest.raises(ComirError, match="elastix"):
        from_elastix_params({"Transform": "BSplineTransform", "TransformParameters": "1"})


def test_json_files_of_every_kind(tmp_path) -> None:
    rng = np.random.default_rng(5)
    for t in [*_kinds(rng), CompositeTransform([_kinds(rng)[0]]).simplified()]:
        save_transform(t, tmp_path / "t.json", center=(3.0, 4.0), method="test")
        d = json.loads((tmp_path / "t.json").read_text())
        assert d["type"] == t.kind and d["method"] == "test"
        back = load_transform(tmp_path / "t.json")
        assert type(back) is type(t)
        np.testing.assert_allclose(back.matrix, t.matrix, atol=1e-12)
    # files written before there were kinds: a bare matrix is rigid
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"matrix": F.rigid_matrices(0.2, (1, 2)).tolist()}))
    assert type(load_transform(old)) is RigidTransform
    for bad, text in [
        ("missing.json", None),
        ("junk.json", "{oops"),
        ("kind.json", '{"type": "x"}'),
    ]:
        if text is not None:
            (tmp_path / bad).write_text(text)
        with pytest.raises(ComirError, match=bad):
            load_transform(tmp_path / bad)


def test_batched_helpers_match_per_item_construction() -> None:
    rng = np.random.default_rng(6)
    ang, tr, c = rng.uniform(-3, 3, 7), rng.uniform(-9, 9, (7, 2)), np.array([4.0, 5.0])
    mats = F.rigid_matrices(ang, tr, c)
    for k in range(7):
        one = RigidTransform.from_params(math.degrees(ang[k]), tuple(tr[k]), tuple(c)).matrix
        np.testing.assert_allclose(mats[k], one, atol=1e-12)
    np.testing.assert_allclose(F.matrix_angles(mats), np.angle(np.exp(1j * ang)), atol=1e-12)
    np.testing.assert_allclose(F.translation_about(mats, c), tr, atol=1e-12)
    moved = F.with_angles(mats, np.zeros(7), c)
    np.testing.assert_allclose(F.translation_about(moved, c), tr, atol=1e-12)
    pts = rng.uniform(-10, 10, (7, 4, 2))
    naive = np.array([[m[:2, :2] @ p + m[:2, 2] for p in ps] for m, ps in zip(mats, pts)])
    np.testing.assert_allclose(F.apply_matrices(mats, pts), naive, atol=1e-12)
    bad = mats.copy()
    bad[2] = np.nan
    inv = F.invert_matrices(bad)
    assert np.isnan(inv[2]).all() and np.isfinite(np.delete(inv, 2, 0)).all()


def test_corner_errors_match_the_public_formula_written_out() -> None:
    rng = np.random.default_rng(7)
    ref = np.broadcast_to(F.patch_corners(300, origin="multiregeval"), (5, 4, 2))
    truth = F.rigid_matrices(rng.uniform(-0.3, 0.3, 5), rng.uniform(-20, 20, (5, 2)), (149.5,) * 2)
    trans = F.apply_matrices(truth, ref)
    found = truth @ F.rigid_matrices(rng.uniform(-0.01, 0.01, 5), rng.uniform(-1, 1, (5, 2)))
    found[4] = np.nan  # a failed registration
    err = F.corner_errors(found, trans, ref)
    for k in range(4):  # Recover = M⁻¹(Trans); Error = mean |Recover - Ref|
        rec = np.array([np.linalg.solve(found[k], [*p, 1.0])[:2] for p in trans[k]])
        assert err[k] == pytest.approx(np.linalg.norm(rec - ref[k], axis=1).mean(), abs=1e-9)
    assert np.isnan(err[4])
    assert F.corner_errors(truth[0], trans[0], ref[0]) == pytest.approx(0.0, abs=1e-9)


def test_fits_recover_known_maps() -> None:
    rng = np.random.default_rng(8)
    src = rng.uniform(0, 100, (30, 2))
    rigid = F.rigid_matrices(0.4, (3.0, -2.0), (50, 50))
    np.testing.assert_allclose(F.fit_rigid(src, F.apply_matrices(rigid, src)), rigid, atol=1e-9)
    aff = F.from_linear([[1.1, 0.2], [-0.1, 0.8]], [4.0, 1.0])
    np.testing.assert_allclose(F.fit_affine(src, F.apply_matrices(aff, src)), aff, atol=1e-9)


def test_grid_sample_matrix_is_the_pixel_convention_of_torch() -> None:
    h, w = 5, 7
    img = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    shift = F.translation_matrix((1.0, 2.0))  # sample each output pixel one right, two down
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    grid = F.apply_matrices(F.grid_sample_matrix(h, w) @ shift, np.stack([xx, yy], -1))
    out = torch.nn.functional.grid_sample(
        img, torch.from_numpy(grid)[None], mode="bilinear", align_corners=False
    )[0, 0]
    np.testing.assert_allclose(out[:-2, :-1].numpy(), img[0, 0, 2:, 1:].numpy(), atol=1e-12)
