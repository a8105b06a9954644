"""Affine refinement (comir.register.affine) and ``register(..., transform="affine")``."""

from __future__ import annotations

import numpy as np
import pytest

from comir.cli import main
from comir.errors import ComirError
from comir.io import write_image
from comir.register import refine_affine, refine_deformable, register
from comir.transform import (
    AffineTransform,
    CompositeTransform,
    DisplacementField,
    RigidTransform,
    image_center,
    load_transform,
)
from comir.transform import functional as F

N = 96


def _true_affine(n: int = N) -> AffineTransform:
    """Scale 1.1 (x), shear 0.08, rotation 7°, shift (3, −2) px about the centre."""
    lin = np.array([[1.1, 0.08], [0.0, 1.0]]) @ F.rotation_matrices(np.radians(7.0))
    return AffineTransform(F.about_center(lin, (3.0, -2.0), image_center((n, n))))


def _pair(textured, modality: bool = False):
    """(fixed, moving, true moving → fixed); ``modality``: fixed has another intensity map."""
    moving = textured((N, N, 3), seed=1).astype(np.float32)
    true = _true_affine()
    fixed = true.warp(moving, (N, N), order=3)
    if modality:  # monotone but non-linear, per-channel gains: MSE's assumptions fail
        fixed = np.sqrt(fixed.clip(0, None)) * np.array([0.5, 2.0, 1.0], np.float32) + 0.3
    return fixed, moving, true


def _corner_error(matrix: np.ndarray, true: AffineTransform) -> float:
    corners = F.patch_corners(N, N)
    return float(F.corner_errors(matrix, true.apply(corners), corners))


def _rigid_init(true: AffineTransform) -> RigidTransform:
    corners = F.patch_corners(N, N)
    return RigidTransform(F.fit_rigid(corners, true.apply(corners)))


@pytest.mark.parametrize(("similarity", "modality"), [("mse", False), ("ncc", True)])
def test_refine_affine_recovers_known_affine(textured, similarity, modality):
    fixed, moving, true = _pair(textured, modality)
    init = _rigid_init(true)
    assert _corner_error(init.matrix, true) > 2.0  # the rigid model cannot explain it
    res, score = refine_affine(fixed, moving, init, similarity=similarity)
    assert isinstance(res, AffineTransform)
    assert _corner_error(res.matrix, true) < 0.3
    if similarity == "ncc":
        assert score > 0.95


def test_refine_affine_is_deterministic(textured):
    fixed, moving, true = _pair(textured)
    init = _rigid_init(true)
    kw = dict(similarity="ncc", levels=(2, 1), iterations=(20, 10))
    a, sa = refine_affine(fixed, moving, init, **kw)
    b, sb = refine_affine(fixed, moving, init, **kw)
    assert np.array_equal(a.matrix, b.matrix) and sa == sb
    c, _ = refine_deformable(fixed, moving, a, **kw)
    d, _ = refine_deformable(fixed, moving, a, **kw)
    assert np.array_equal(c.transforms[-1].displacement, d.transforms[-1].displacement)


def test_identity_pair_stays_put(textured):
    img = textured((64, 64, 2), seed=3).astype(np.float32)
    res, mse = refine_affine(
        img, img, AffineTransform.identity(), levels=(2, 1), iterations=(20, 20)
    )
    assert np.abs(res.matrix - np.eye(3)).max() < 1e-3 and mse < 1e-4


def test_register_fft_affine(textured):
    fixed, moving, true = _pair(textured)
    rigid = register(fixed, moving, method="fft")
    aff = register(fixed, moving, method="fft", transform="affine")
    assert rigid.ok and aff.ok and aff.method == "fft"
    assert isinstance(rigid.transform, RigidTransform)
    assert isinstance(aff.transform, AffineTransform)
    assert _corner_error(rigid.transform.matrix, true) > 2.0
    assert _corner_error(aff.transform.matrix, true) < 0.3
    assert aff.details["rigid_matrix"] == rigid.transform.matrix.tolist()
    assert aff.details["rigid_score"] == rigid.score
    assert aff.score > rigid.score - 1e-6 and aff.details["affine_score"] == aff.score


def test_bad_options_raise(textured):
    img = textured((32, 32)).astype(np.float32)
    with pytest.raises(ComirError, match="transform"):
        register(img, img, transform="bspline")
    with pytest.raises(ComirError, match="similarity"):
        refine_affine(img, img, AffineTransform.identity(), similarity="mi")
    with pytest.raises(ComirError, match="iterations"):
        refine_affine(img, img, AffineTransform.identity(), levels=(2, 1), iterations=(5,))
    with pytest.raises(ComirError, match="device"):
        refine_affine(img, img, AffineTransform.identity(), device="gpu0")
    with pytest.raises(ComirError, match="channels"):
        refine_affine(img, np.stack([img, img], -1), AffineTransform.identity())


def test_cli_register_transform_affine(textured, tmp_path, capsys):
    fixed, moving, true = _pair(textured)
    for name, img in (("f.png", fixed), ("m.png", moving)):
        write_image(tmp_path / name, (img.clip(0, 1) * 255).round().astype(np.uint8))
    args = ["register", str(tmp_path / "f.png"), str(tmp_path / "m.png"), "--transform", "affine"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    got = load_transform(tmp_path / "out" / "transform.json")
    assert isinstance(got, AffineTransform) and _corner_error(got.matrix, true) < 0.5
    assert main([*args, "--option", "transform=rigid", "--out", str(tmp_path / "x")]) == 2


# ------------------------------------------------------------------------------ deformable
def _deformed_pair(textured, modality: bool = False):
    """Moving, fixed = moving under a mild affine then a smooth ~3 px pull-back field."""
    moving = textured((N, N, 3), seed=1).astype(np.float32)
    lin = np.array([[1.05, 0.03], [0.0, 1.0]]) @ F.rotation_matrices(np.radians(4.0))
    affine = AffineTransform(F.about_center(lin, (2.0, -1.0), image_center((N, N))))
    ys, xs = np.mgrid[0:N, 0:N].astype(float)
    w = np.stack(
        [3 * np.sin(2 * np.pi * ys / N), 3 * np.cos(2 * np.pi * xs / N) * np.sin(np.pi * ys / N)],
        -1,
    )
    true = CompositeTransform([affine, DisplacementField.from_inverse(w.astype(np.float32))])
    fixed = true.warp(moving, (N, N), order=3)
    if modality:
        fixed = np.sqrt(fixed.clip(0, None)) * np.array([0.5, 2.0, 1.0], np.float32) + 0.3
    return fixed, moving, true


def _tre(transform, true) -> float:
    """Mean distance of the moving positions of a 6×6 grid of fixed points."""
    g = np.stack(np.meshgrid(np.linspace(12, N - 13, 6), np.linspace(12, N - 13, 6)), -1)
    g = g.reshape(-1, 2)
    return float(np.linalg.norm(transform.apply_inverse(g) - true.apply_inverse(g), axis=1).mean())


@pytest.mark.parametrize(("similarity", "modality"), [("mse", False), ("ncc", True)])
def test_refine_deformable_recovers_smooth_field(textured, similarity, modality):
    fixed, moving, true = _deformed_pair(textured, modality)
    affine, _ = refine_affine(fixed, moving, true.transforms[0], similarity=similarity)
    res, _ = refine_deformable(fixed, moving, affine, similarity=similarity)
    assert isinstance(res, CompositeTransform) and res.transforms[0] == affine
    field = res.transforms[-1]
    assert field.direction == "inverse" and field.grid_shape == (N, N)
    assert _tre(affine, true) > 1.0  # the affine model cannot explain the field
    assert _tre(res, true) < _tre(affine, true) / 3
    assert field.folded_fraction() == 0.0


def test_smoothness_penalty_flattens_the_field(textured):
    fixed, moving, true = _deformed_pair(textured)
    kw = dict(levels=(2, 1), iterations=(30, 20))
    loose, _ = refine_deformable(fixed, moving, true.transforms[0], smoothness=0.0, **kw)
    stiff, _ = refine_deformable(fixed, moving, true.transforms[0], smoothness=1e4, **kw)
    spread = [np.ptp(t.transforms[-1].displacement) for t in (loose, stiff)]
    assert spread[1] < 0.2 * spread[0]


def test_register_deformable(textured):
    fixed, moving, true = _deformed_pair(textured)
    res = register(fixed, moving, method="fft", transform="deformable")
    assert res.ok and isinstance(res.transform, CompositeTransform)
    affine = AffineTransform(np.asarray(res.details["affine_matrix"]))
    assert _tre(res.transform, true) < _tre(affine, true) / 3
    assert res.details["folded_fraction"] == 0.0
    assert res.score >= res.details["affine_score"]


def _write_pair(tmp_path, fixed, moving):
    paths = []
    for name, img in (("f.tif", fixed), ("m.tif", moving)):
        paths.append(str(write_image(tmp_path / name, (img.clip(0, 1) * 65535).astype(np.uint16))))
    return paths


def test_cli_register_deformable_files_agree_with_simpleitk(textured, tmp_path, capsys):
    """transform.json, the ITK field image and the registered image all hold one map:
    SimpleITK's own DisplacementFieldTransform + Resample reproduces comir's warp."""
    import SimpleITK as sitk
    import tifffile

    fixed, moving, true = _deformed_pair(textured)
    f, m = _write_pair(tmp_path, fixed, moving)
    out = tmp_path / "out"
    assert main(["register", f, m, "--transform", "deformable", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "folded 0.00 %" in printed and "transform_field.nii.gz" in printed
    assert not (out / "transform.tfm").exists()  # ITK .tfm files hold no fields
    got = load_transform(out / "transform.json")
    assert isinstance(got, CompositeTransform) and _tre(got, true) < 0.5
    tx = sitk.DisplacementFieldTransform(
        sitk.ReadImage(str(out / "transform_field.nii.gz"), sitk.sitkVectorFloat64)
    )
    ref = sitk.Image(N, N, sitk.sitkFloat32)
    green = sitk.VectorIndexSelectionCast(sitk.ReadImage(m), 1, sitk.sitkFloat32)
    itk = sitk.GetArrayFromImage(sitk.Resample(green, ref, tx, sitk.sitkLinear, 0.0))
    ours = tifffile.imread(out / "m_registered.tif")[..., 1].astype(np.float32)
    inside = got.warp(np.ones((N, N), np.float32), (N, N), order=0) > 0
    assert np.abs(itk - ours)[inside].max() <= 1.0  # uint16 rounding of ours
    # ITK fixed-point → moving-point, as warp-points' inverse: the same points
    q = np.array([[20.0, 30.0], [50.5, 61.25], [70.0, 15.0]])
    itk_pts = np.array([tx.TransformPoint(tuple(p)) for p in q])
    np.testing.assert_allclose(got.apply_inverse(q), itk_pts, atol=1e-4)
    ngff = __import__("json").loads((out / "transform_ngff.json").read_text())
    assert ngff["coordinateTransformations"][0]["path"] == "transform_field.nii.gz"
    assert (out / "deformation.png").stat().st_size > 10_000


def test_refine_options_reach_the_deformable_step(textured):
    fixed, moving, _ = _deformed_pair(textured)
    res = register(fixed, moving, transform="deformable",
                   refine={"smoothness": 1e4, "levels": (2, 1), "iterations": (20, 10)})  # fmt: skip
    assert np.ptp(res.transform.transforms[-1].displacement) < 0.5
    with pytest.raises(ComirError, match="grid_spacing"):
        register(fixed, moving, transform="deformable", refine={"grid": 3})
    with pytest.raises(ComirError, match="deformable"):
        register(fixed, moving, transform="affine", refine={"smoothness": 1.0})
    assert main(["register", "a", "b", "--out", "x", "--refine", "smoothness=2"]) == 2


def test_mi_deformable_is_simpleitk_bspline_on_raw_images(textured):
    """method="mi" refines by Mattes MI (affine, then a B-spline), not by NCC: on a pair of
    different intensity maps it still reduces the error of the rigid result."""
    from comir.register.bspline import refine_bspline_mi

    fixed, moving, true = _deformed_pair(textured, modality=True)
    rigid = register(fixed, moving, method="mi")
    res = register(fixed, moving, method="mi", transform="deformable")
    assert res.ok and res.method == "mi" and isinstance(res.transform, CompositeTransform)
    assert _tre(res.transform, true) < 0.7 * _tre(rigid.transform, true)
    assert res.details["folded_fraction"] == 0.0
    # the B-spline part equals a direct call on the same grey images (deterministic)
    aff = AffineTransform(np.asarray(res.details["affine_matrix"]))
    from comir.register.base import to_gray

    again, _ = refine_bspline_mi(to_gray(fixed).astype(np.float32),
                                 to_gray(moving).astype(np.float32), aff)  # fmt: skip
    np.testing.assert_array_equal(
        again.transforms[-1].displacement, res.transform.transforms[-1].displacement
    )


def test_refine_deformable_is_deterministic_on_cpu(textured):
    fixed, moving, true = _deformed_pair(textured)
    kw = dict(levels=(2, 1), iterations=(15, 10), similarity="ncc")
    a, _ = refine_deformable(fixed, moving, true.transforms[0], **kw)
    b, _ = refine_deformable(fixed, moving, true.transforms[0], **kw)
    np.testing.assert_array_equal(a.transforms[-1].displacement, b.transforms[-1].displacement)


@pytest.mark.slow
@pytest.mark.skipif(
    not __import__("comir.register", fromlist=["x"]).elastix_available(), reason="no itk-elastix"
)
def test_elastix_chain_gives_the_same_composite_form(textured):
    """elastix's rigid → affine → B-spline chain (run here with itk-elastix installed):
    the composite reproduces elastix's own fixed → moving map and lowers the rigid error."""
    fixed, moving, true = _deformed_pair(textured, modality=True)
    rigid = register(fixed, moving, method="elastix")
    res = register(fixed, moving, method="elastix", transform="deformable")
    assert res.ok and isinstance(res.transform, CompositeTransform)
    assert isinstance(res.transform.transforms[0], AffineTransform)
    assert _tre(res.transform, true) < 0.8 * _tre(rigid.transform, true)
    assert res.details["folded_fraction"] == 0.0


def test_cubic_weights_equal_torch_bicubic_grid_sample():
    """The separable upsampling of the control grid reproduces grid_sample's bicubic
    (align_corners=True, border) at arbitrary positions, edges included."""
    import torch

    from comir.register.deformable import cubic_weights

    rng = np.random.default_rng(0)
    ctrl = rng.standard_normal((2, 5, 7)).astype(np.float32)
    ux, uy = np.linspace(0, 6, 23), np.linspace(0, 4, 17)
    ours = cubic_weights(uy, 5) @ ctrl @ cubic_weights(ux, 7).T
    gx, gy = np.meshgrid(2 * ux / 6 - 1, 2 * uy / 4 - 1)
    grid = torch.tensor(np.stack([gx, gy], -1)[None], dtype=torch.float32)
    ref = torch.nn.functional.grid_sample(
        torch.tensor(ctrl[None]), grid, mode="bicubic", padding_mode="border", align_corners=True
    )[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    np.testing.assert_allclose(cubic_weights(ux, 7).sum(axis=1), 1.0, atol=1e-12)
