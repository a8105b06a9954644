"""The region-by-region deformable stage of whole-slide registration and deformed pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from comir.errors import ComirError
from comir.slide.deform import FieldBlend, axis_weights, plan_regions
from comir.slide.register import register_slides
from comir.slide.synth import SlideTexture, make_slide_pair, slide_truth
from comir.transform import AffineTransform
from comir.transform import functional as F


def _level_matrix(d: float) -> np.ndarray:
    """Level pixels → level-0 pixels for a level ``d`` times coarser (pixel centres)."""
    half = np.array([0.5, 0.5])
    return F.translation_matrix(-half) @ F.scale_matrix(d, d) @ F.translation_matrix(half)


def _tissue(size: int, pts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Whether fixed points lie in the synthetic tissue (mask > 0.5) of a ``size`` pair."""
    from comir import samples
    from comir.io import read_image

    base = np.asarray(read_image(samples.sample_path("ihc")))
    return SlideTexture(base, (size, size), seed).mask(pts.astype(np.float32)) > 0.5


# ---------------------------------------------------------------------------- synthetic truth
def test_deformed_truth_inverts_and_matches_the_written_slides(tmp_path):
    import cv2

    fixed, moving, truth = make_slide_pair(tmp_path, size=512, angle_deg=3.0, tile=256,
                                           deform_px=8.0)  # fmt: skip
    p = np.random.default_rng(1).uniform(60, 450, (3000, 2))
    q = truth.apply(p)
    np.testing.assert_allclose(truth.apply_inverse(q), p, atol=1e-5)  # fixed-point inverse
    u = q - truth.rigid.apply(p)
    assert 3.0 < np.linalg.norm(u, axis=1).max() <= 8.0 + 1e-9  # a real, bounded deformation
    f, m = (tifffile.imread(x)[..., 0].astype(np.float32) for x in (fixed, moving))

    def at(img, pts):
        xy = pts.astype(np.float32)[None]
        return cv2.remap(img, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR)[0]

    mp, inside = at(m, p), at(f, q) > 0
    ncc = lambda a, b: np.corrcoef(a[inside], b[inside])[0, 1]  # noqa: E731
    assert ncc(at(f, q), mp) > 0.99  # moving pixel p shows the fixed slide at T(p)
    assert ncc(at(f, truth.rigid.apply(p)), mp) < 0.9  # the rigid part alone does not


def test_too_strong_deformation_is_refused():
    with pytest.raises(ComirError, match="deform_px=.*fold.*lower deform_px"):
        slide_truth(512, deform_px=60.0, deform_scale=100.0)


# ---------------------------------------------------------------------------- regions, blend
def test_regions_cover_the_level_within_the_size_limit():
    shape, region, margin = (700, 530), 200, 24
    rs = plan_regions(shape, region, margin)
    assert len(rs) == 4 * 3
    cover = np.zeros(shape, int)
    for r in rs:
        assert max(r.shape) <= region + 2 * margin
        assert r.y0 <= r.cy0 < r.cy1 <= r.y1 and r.x0 <= r.cx0 < r.cx1 <= r.x1
        cover[r.cy0 : r.cy1, r.cx0 : r.cx1] += 1
    assert (cover == 1).all()  # cores tile the level exactly
    with pytest.raises(ValueError, match="margin"):
        plan_regions(shape, 100, 30)


def test_axis_weights_are_a_partition_of_unity():
    n, margin = 500, 20
    cuts = [0, 170, 330, 500]
    u = np.linspace(-0.5, n - 0.5, 2001)
    total = sum(axis_weights(u, a, b, n, margin) for a, b in zip(cuts[:-1], cuts[1:]))
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    w = axis_weights(u, 170, 330, n, margin)
    assert w[(u < 170 - margin - 0.5) | (u > 330 + margin - 0.5)].max() == 0  # zero outside
    assert w[(u >= 170 - 0.5 + margin) & (u <= 330 - 0.5 - margin)].min() == 1  # one in the core


def test_blended_field_has_no_seam_between_regions():
    d, shape, margin, step = 2.0, (300, 260), 16, 2
    full = (600, 520)
    rs = plan_regions(shape, 100, margin)
    consts = np.random.default_rng(0).uniform(-5, 5, (len(rs), 2))
    blend = FieldBlend(_level_matrix(d), shape, full, margin, step)
    for r, c in zip(rs, consts):
        blend.add(r, lambda pts, c=c: np.broadcast_to(c, pts.shape))
    v = blend.field().displacement / d  # level pixels again
    jump = max(np.abs(np.diff(v, axis=0)).max(), np.abs(np.diff(v, axis=1)).max())
    spread = np.abs(consts[:, None] - consts[None]).max()
    # a C¹ ramp over 2·margin px has slope ≤ 1.5 / (2 margin) per pixel: step px per node
    assert jump <= spread * 1.5 * step / (2 * margin) + 1e-6
    assert jump < spread / 4  # a hard cut would jump by up to the whole spread


def test_blended_field_equals_a_known_field_sampled_by_regions():
    d, shape, margin = 4.0, (260, 300), 12
    lm = _level_matrix(d)
    full = (1040, 1200)

    def known(q):  # pull-back displacement in level-0 pixels at level-0 points
        return np.stack([6 * np.sin(q[..., 0] / 300), 4 * np.cos(q[..., 1] / 250)], -1)

    blend = FieldBlend(lm, shape, full, margin, step=3)
    for r in plan_regions(shape, 90, margin):
        to_full = lm @ F.translation_matrix((r.x0, r.y0))  # region pixels → level 0

        def sample(pts, to_full=to_full):  # what a region returns: level pixels
            return known(F.apply_matrices(to_full, pts)) / d

        blend.add(r, sample)
    field = blend.field()
    field.check_grid(full)
    q = np.random.default_rng(2).uniform(0, 1039, (500, 2))
    # bilinear between nodes 12 px apart: error ≤ spacing² |v''| / 8 ≈ 0.01 px
    np.testing.assert_allclose(field.sample(q), known(q), atol=0.02)


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_deformable_slides_recover_a_smooth_deformation(tmp_path):
    size = 768
    fixed, moving, truth = make_slide_pair(tmp_path, size=size, angle_deg=3.0, tile=256,
                                           deform_px=9.0)  # fmt: skip
    out = register_slides(fixed, moving, tmp_path / "o", max_size=192, transform="deformable",
                          refine={"region": 256, "margin": 32}, progress=False,
                          write_registered=False)  # fmt: skip
    info = out.result.details["deformable"]
    assert info["level"] == 0 and info["regions"] == 9 and info["applied"] >= 5
    assert max(info["max_region_shape"]) <= info["region_limit"] == 320
    saved = json.loads(out.transform_json.read_text())["deformable"]
    assert saved["regions"] == 9 and len(saved["per_region"]) == 9
    applied = [e for e in saved["per_region"] if e["applied"]]
    assert all(e["ncc"] > e["ncc_affine"] and e["folded_fraction"] == 0 for e in applied)
    g = np.linspace(0.2, 0.8, 13) * (size - 1)
    q = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    q = q[_tissue(size, q)]
    affine = out.transform.transforms[0]
    assert isinstance(affine, AffineTransform)
    e_def = np.linalg.norm(out.transform.apply_inverse(q) - truth.apply_inverse(q), axis=1)
    e_aff = np.linalg.norm(affine.apply_inverse(q) - truth.apply_inverse(q), axis=1)
    assert len(q) > 40 and np.median(e_def) < 0.5 and np.mean(e_def) < 1.0
    assert np.mean(e_def) < np.mean(e_aff) / 3


@pytest.mark.slow
def test_cli_deformable_registered_slide_matches_the_fixed_better(tmp_path, capsys):
    from comir.cli import main
    from comir.slide import open_slide
    from comir.transform import load_transform

    size = 512
    fixed, moving, truth = make_slide_pair(tmp_path, size=size, angle_deg=-2.0, tile=128,
                                           deform_px=7.0)  # fmt: skip
    argv = ["register", str(fixed), str(moving), "--out", str(tmp_path / "o"), "--transform",
            "deformable", "--max-size", "128", "--refine", "region=192", "--refine",
            "margin=24"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    t = load_transform(tmp_path / "o" / "transform.json")
    with open_slide(tmp_path / "o" / "moving_registered.ome.tif") as s:
        assert s.shape[:2] == (size, size)
        reg = s.read_level(0)[..., 0].astype(float)
    f = tifffile.imread(fixed)[..., 0].astype(float)
    m = tifffile.imread(moving)[..., 0].astype(float)
    aff = t.transforms[0].warp(m, (size, size))  # the affine stage alone, warped here
    yy, xx = np.mgrid[0:size, 0:size]
    pts = np.stack([xx, yy], -1).astype(float)
    inside = _tissue(size, pts) & (f > 0)
    inside[:16], inside[-16:], inside[:, :16], inside[:, -16:] = False, False, False, False
    ncc = lambda a: np.corrcoef(a[inside], f[inside])[0, 1]  # noqa: E731
    assert ncc(reg) > 0.97 and ncc(reg) > ncc(aff) + 0.05


def test_confidence_is_one_in_texture_and_zero_in_empty_background(textured):
    from comir.slide.deform import confidence

    img = textured((200, 240), seed=4, sigma=2).astype(np.float32)
    img[:, 120:] = 0  # right half: empty background
    c = confidence(img, sigma=8.0)
    assert c.shape == (200, 240) and 0 <= c.min() and c.max() <= 1
    assert c[20:-20, 10:90].min() > 0.95 and c[:, 170:].max() < 0.05
    assert np.abs(np.diff(c, axis=1)).max() < 0.1  # smooth: no step at the tissue edge


def test_region_pair_reads_bounded_boxes_with_the_affine_in_region_pixels(tmp_path):
    from comir.slide import open_slide
    from comir.slide.deform import region_pair
    from comir.transform import RigidTransform

    fixed, moving, _ = make_slide_pair(tmp_path, size=512, tile=128)
    a = RigidTransform.from_params(angle_deg=7.0, translation=(9.0, -5.0), center=(255.5, 255.5))
    r = plan_regions((256, 256), 100, 16)[4]  # the middle region of level 1
    pad = 16
    with open_slide(fixed) as f, open_slide(moving) as m:
        f_img, m_img, init = region_pair(f, m, 1, 1, r, a.matrix, pad)
        rf, rm_level = f.level_matrix(1), m.level_matrix(1)
        m_level = m.read_level(1)
        assert f_img.shape[:2] == r.shape
        np.testing.assert_array_equal(f_img, f.read_region(1, r.y0, r.x0, *r.shape))
    # the box holds the rotated region plus the pad, nothing more
    side = np.array(r.shape[::-1]) * (np.cos(np.radians(7)) + np.sin(np.radians(7)))
    assert (np.array(m_img.shape[:2][::-1]) <= side + 2 * pad + 3).all()
    # content: the box warped by init = the whole moving level warped by the level map, cropped
    whole_level = np.linalg.inv(rf) @ a.matrix @ rm_level
    ref = AffineTransform(whole_level).warp(m_level.astype(float), (256, 256))
    ref = ref[r.y0 : r.y1, r.x0 : r.x1]
    got = AffineTransform(init).warp(m_img.astype(float), r.shape)
    inner = (slice(4, -4), slice(4, -4))
    err = np.abs(got - ref)[inner].mean()
    off = np.abs(got[:, 1:] - ref[:, :-1])[inner].mean()  # one pixel off
    assert err < 0.001 * ref[inner].mean() and err < off / 100  # OpenCV's 1/32 px grid only


# ---------------------------------------------------------------------------- warping a tile
def _composite(noise: float = 0.0):
    from comir.transform import CompositeTransform, DisplacementField

    yy, xx = np.mgrid[0:40, 0:40]
    v = np.stack([20 * np.sin(xx / 9.0) * np.cos(yy / 7.0), 15 * np.cos(xx / 11.0 + yy / 13.0)], -1)
    v = v + noise * np.random.default_rng(0).standard_normal(v.shape)
    affine = F.rigid_matrices(np.array([0.07]), np.array([[31.0, -17.0]]), np.array([600.0, 600.0]))
    return CompositeTransform([AffineTransform(affine[0]),
                               DisplacementField.from_inverse(v, (0.0, 0.0), (32.0, 32.0))])  # fmt: skip


def test_pullback_map_of_a_smooth_field_is_the_exact_map_within_a_twentieth_px():
    from comir.slide.writer import pullback_map

    t = _composite()
    for r0, c0, th, tw in ((0, 0, 512, 512), (700, 300, 300, 512), (100, 900, 37, 5)):
        yy, xx = np.mgrid[r0 : r0 + th, c0 : c0 + tw].astype(float)
        exact = t.apply_inverse(np.stack([xx, yy], -1))  # every pixel, independently
        fast = pullback_map(t, r0, c0, th, tw)
        assert fast.shape == (th, tw, 2)
        assert np.abs(fast - exact).max() < 0.05


def test_pullback_map_falls_back_to_every_pixel_where_the_lattice_is_off():
    from comir.slide.writer import pullback_map

    t = _composite(noise=3.0)  # node-to-node jumps: linear in between is visibly wrong
    yy, xx = np.mgrid[64:576, 64:576].astype(float)
    np.testing.assert_array_equal(pullback_map(t, 64, 64, 512, 512),
                                  t.apply_inverse(np.stack([xx, yy], -1)))  # fmt: skip
