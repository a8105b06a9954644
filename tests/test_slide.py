"""Whole slides: pyramid readers, pyramid writers, whole-slide registration, bad inputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile

from comir.errors import ComirError
from comir.slide import is_slide, ome_pixel_size, open_slide, warp_slide, write_pyramid
from comir.slide.register import register_slides, working_downsamples
from comir.slide.synth import make_slide_pair
from comir.transform import AffineTransform, CompositeTransform, DisplacementField, RigidTransform


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Naive f × f block mean, edge pixels replicated to a multiple of f (float64)."""
    h, w = a.shape[:2]
    ph, pw = -h % f, -w % f
    p = np.pad(a.astype(float), ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    return p.reshape(p.shape[0] // f, f, p.shape[1] // f, f, *a.shape[2:]).mean(axis=(1, 3))


@pytest.fixture
def rgb(textured):
    return np.rint(textured((1000, 840, 3), seed=1, sigma=2) * 255).astype(np.uint8)


def write_ome_pyramid(path, levels, tile=256, pixel_size=0.25, compression="zlib"):
    """A pyramidal OME-TIFF written by tifffile itself (independent of comir's writer)."""
    rgb = levels[0].ndim == 3
    meta = {"axes": "YXS" if rgb else "YX", "PhysicalSizeX": pixel_size,
            "PhysicalSizeY": pixel_size, "PhysicalSizeXUnit": "µm"}  # fmt: skip
    kw = dict(tile=(tile, tile), compression=compression,
              photometric="rgb" if rgb else "minisblack")  # fmt: skip
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, metadata=meta, **kw)
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, **kw)
    return path


def test_ome_tiff_levels_regions_and_pixel_size(tmp_path, rgb):
    lv1 = np.rint(block_mean(rgb, 2)).astype(np.uint8)
    lv2 = np.rint(block_mean(lv1, 2)).astype(np.uint8)
    path = write_ome_pyramid(tmp_path / "s.ome.tif", [rgb, lv1, lv2])
    assert is_slide(path)
    with open_slide(path) as s:
        assert s.n_stored == 3 and s.pixel_size == pytest.approx(0.25)
        assert [lv.shape for lv in s.levels[:3]] == [rgb.shape, lv1.shape, lv2.shape]
        assert s.levels[2].downsample == (4.0, 4.0)
        np.testing.assert_array_equal(s.read_level(1), lv1)
        np.testing.assert_array_equal(s.read_region(0, 300, 250, 400, 333), rgb[300:700, 250:583])
        edge = s.read_region(2, 230, -5, 40, 30)  # partly outside: zeros there
        np.testing.assert_array_equal(edge[:20, 5:], lv2[230:, :25])
        assert not edge[20:].any() and not edge[:, :5].any()
        derived = s.read_level(3)  # 2x below the coarsest stored level, built on the fly
        assert not s.levels[3].stored and s.levels[3].downsample == (8.0, 8.0)
        assert np.abs(derived.astype(float) - block_mean(lv2, 2)).max() <= 1
        # level 2 pixel (0, 0) is the mean of level-0 pixels 0..3: centre 1.5
        np.testing.assert_allclose(s.level_matrix(2) @ [0, 0, 1], [1.5, 1.5, 1])
        assert s.level_pixel_size(2) == pytest.approx(1.0)


def test_plain_tiff_gets_block_mean_levels(tmp_path, textured):
    a = np.rint(textured((1000, 900), seed=2) * 4095).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", a, rowsperstrip=64)  # strips, no pyramid
    assert not is_slide(tmp_path / "plain.tif")
    with open_slide(tmp_path / "plain.tif", pixel_size=0.5) as s:
        assert s.n_stored == 1 and s.pixel_size == 0.5
        assert s.levels[2].shape == (250, 225) and s.levels[3].shape == (125, 113)
        assert np.abs(s.read_level(3).astype(float) - block_mean(a, 8)).max() <= 1
        np.testing.assert_array_equal(s.read_region(0, 10, 20, 30, 40), a[10:40, 20:60])
        assert s.level_for(300) == 2


def test_ome_pixel_size_units():
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels '
           'PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.25"/></Image></OME>')  # fmt: skip
    assert ome_pixel_size(xml) == pytest.approx(0.25)
    assert ome_pixel_size(None) is None


def test_ome_zarr_round_trip(tmp_path, rgb):
    path = write_pyramid(tmp_path / "s.zarr", rgb.shape, rgb.dtype, lambda r0, r1: rgb[r0:r1],
                         tile=256, pixel_size=0.5)  # fmt: skip
    import zarr

    ms = dict(zarr.open_group(str(path), mode="r").attrs)["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert is_slide(path)
    with open_slide(path) as s:
        assert s.kind == "ome-zarr" and s.pixel_size == pytest.approx(0.5)
        np.testing.assert_array_equal(s.read_level(0), rgb)
        assert np.abs(s.read_level(1).astype(float) - block_mean(rgb, 2)).max() <= 1
        np.testing.assert_array_equal(
            s.read_region(1, 10, 20, 50, 60), s.read_level(1)[10:60, 20:80]
        )


def test_warp_slide_writes_the_whole_image_warp(tmp_path, rgb):
    src = write_ome_pyramid(
        tmp_path / "m.ome.tif", [rgb, np.rint(block_mean(rgb, 2)).astype(np.uint8)]
    )
    t = RigidTransform.from_params(angle_deg=6.0, translation=(25.0, -14.0), center=(419.5, 499.5))
    with open_slide(src) as s:
        out = warp_slide(s, t, (1100, 1050), tmp_path / "w.ome.tif", tile=256, pixel_size=0.25)
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [
            (1100, 1050, 3),
            (550, 525, 3),
            (275, 263, 3),
            (138, 132, 3),
        ]
        page = levels[0].keyframe
        assert (page.tilelength, page.tilewidth, page.compression.name) == (
            256,
            256,
            "ADOBE_DEFLATE",
        )
        assert ome_pixel_size(tif.ome_metadata) == pytest.approx(0.25)
        got, lv1 = levels[0].asarray(), levels[1].asarray()
    ref = t.warp(rgb, (1100, 1050))
    diff = np.abs(got.astype(int) - ref)
    assert diff.max() <= 2 and diff.mean() < 0.05
    assert np.abs(lv1.astype(float) - block_mean(got, 2)).max() <= 1
    assert not list(tmp_path.glob(".*"))  # no spool or temporary file left


def test_warp_slide_deformable_matches_composite_warp(tmp_path, textured):
    a = np.rint(textured((700, 640), seed=3, sigma=4) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", a, tile=(128, 128), compression="zlib")
    yy, xx = np.mgrid[0:12, 0:11]
    disp = np.stack([3 * np.sin(xx / 3.0), 2 * np.cos(yy / 4.0)], -1).astype(np.float32)
    field = DisplacementField.from_inverse(disp, (0.0, 0.0), (64.0, 64.0))
    t = CompositeTransform(
        [AffineTransform(np.array([[1.02, 0.03, 5], [-0.02, 0.99, -4], [0, 0, 1]])), field]
    )
    with open_slide(tmp_path / "m.tif") as s:
        warp_slide(s, t, (680, 650), tmp_path / "w.ome.tif", tile=256)
    got = tifffile.imread(tmp_path / "w.ome.tif").astype(float)
    ref = t.warp(a, (680, 650)).astype(float)
    inner = (slice(5, -5), slice(5, -5))
    assert np.abs(got - ref)[inner].mean() < 0.002 * 60000


def _corner_error(t, truth, size):
    c = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float)
    return np.linalg.norm(t.apply(c) - truth.apply(c), axis=1).max()


def test_register_slides_recovers_rigid_at_full_resolution(tmp_path):
    fixed, moving, truth = make_slide_pair(tmp_path, size=1200, angle_deg=5.0, tile=256)
    out = register_slides(fixed, moving, tmp_path / "out", max_size=300, progress=False)
    assert out.ok and out.result.details["working_downsample"] == pytest.approx([4.0, 4.0])
    assert _corner_error(out.transform, truth, 1200) < 1.0
    d = json.loads(out.transform_json.read_text())
    assert d["pixel_size_um"] == {"fixed": 0.5, "moving": 0.5}
    t_px = out.transform.translation_about(out.center)
    np.testing.assert_allclose(d["translation_um"], t_px * 0.5, rtol=1e-6)
    reg = tifffile.imread(out.registered).astype(float)[300:900, 300:900, 0]
    ref = tifffile.imread(fixed).astype(float)[300:900, 300:900, 0]
    assert np.corrcoef(reg.ravel(), ref.ravel())[0, 1] > 0.9
    assert out.registered.name == "moving_registered.ome.tif"


# ---------------------------------------------------------------------------- bad input
def test_inconsistent_levels_are_refused(tmp_path, rgb):
    bad_aspect = rgb[:250, :420]  # 420x250 under an 840x1000 level 0
    path = write_ome_pyramid(tmp_path / "a.ome.tif", [rgb, bad_aspect])
    with pytest.raises(ComirError, match=r"a\.ome\.tif.*aspect ratio.*rebuild"):
        open_slide(path)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((40, 64, 2), np.uint8))  # 40 pages
    with pytest.raises(ComirError, match=r"stack\.tif: the TIFF holds a stack"):
        open_slide(tmp_path / "stack.tif")
    path = write_ome_pyramid(tmp_path / "b.ome.tif", [rgb[:600, :500], rgb])
    with pytest.raises(ComirError, match=r"b\.ome\.tif.*not smaller.*rebuild"):
        open_slide(path)


def _corrupt_one_tile(path, index=5):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        off, n = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x13\x37" * (n // 2))


def test_corrupt_tile_is_one_line_error(tmp_path, rgb):
    path = write_ome_pyramid(
        tmp_path / "c.ome.tif", [rgb, np.rint(block_mean(rgb, 2)).astype(np.uint8)]
    )
    _corrupt_one_tile(path)
    with open_slide(path) as s:
        s.read_level(1)  # other levels stay readable
        with pytest.raises(
            ComirError, match=r"c\.ome\.tif: a tile cannot be decoded.*corrupt"
        ) as e:
            s.read_level(0)
    assert "\n" not in str(e.value)


def test_zarr_without_multiscales_names_the_fix(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w", zarr_format=2)
    g.create_array("0", shape=(64, 64), dtype="uint8")
    with pytest.raises(
        ComirError, match=r"x\.zarr: .*no OME-NGFF 'multiscales'.*write it as OME-Zarr"
    ):
        open_slide(tmp_path / "x.zarr")


def test_pixel_size_mismatch_with_the_model(tmp_path, rgb):
    path = write_ome_pyramid(tmp_path / "p.ome.tif", [rgb], pixel_size=1.0)
    with open_slide(path) as s:
        with pytest.raises(ComirError, match=r"p\.ome\.tif: level 0 has 1 µm pixels, coarser"):
            working_downsamples(s, s, 1024, model_px=0.25, tol=0.1)
        d_f, d_m = working_downsamples(s, s, 1024, model_px=4.0, tol=0.1)
        assert d_f == d_m == 4.0
    tifffile.imwrite(tmp_path / "nopx.tif", rgb)
    with open_slide(tmp_path / "nopx.tif") as s:
        with pytest.raises(ComirError, match=r"nopx\.tif: pixel size unknown.*--pixel-size"):
            working_downsamples(s, s, 1024, model_px=0.5, tol=0.1)


def test_cli_corrupt_moving_slide_exits_2_and_leaves_nothing(tmp_path, capsys):
    from comir.cli import main

    fixed, moving, _ = make_slide_pair(tmp_path, size=1024, tile=256)
    _corrupt_one_tile(moving, index=6)  # level 0 only: fails while warping
    out = tmp_path / "out"
    rc = main(["register", str(fixed), str(moving), "--out", str(out), "--max-size", "256"])
    assert rc == 2
    err = capsys.readouterr().err  # the progress bar's lines, then the error
    msg = err.split("comir register: error: ")[-1]
    assert "moving.ome.tif: a tile cannot be decoded" in msg and len(msg.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_register_batch_slide_pairs_by_shard_resumable(tmp_path, capsys):
    from comir.cli import main
    from comir.register import register_pairs

    rows = ["name,fixed,moving"]
    truths = {}
    for k, angle in enumerate((3.0, -4.0)):
        d = tmp_path / f"p{k}"
        fixed, moving, truths[f"p{k}"] = make_slide_pair(d, size=800, angle_deg=angle, tile=256)
        rows.append(f"p{k},{fixed},{moving}")
    csv = tmp_path / "pairs.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    argv = ["register-batch", str(csv), "--out", str(out), "--workers", "1", "--quiet"]
    assert main([*argv, "--shard", "0/2", "--max-size", "200"]) == 0
    first = [p.name for p in out.iterdir() if p.is_dir()]
    assert len(first) == 1 and (out / "summary.shard-0-of-2.csv").exists()
    rep = register_pairs(csv, out, workers=1, progress=False, shard="1/2", max_size=200)
    assert rep.n_ok == 1 and rep.n_skipped == 0
    again = register_pairs(csv, out, workers=1, progress=False, max_size=200)
    assert again.n_skipped == 2 and again.n_ok == 0
    from comir.transform import load_transform

    for name, truth in truths.items():
        t = load_transform(out / name / "transform.json")
        assert _corner_error(t, truth, 800) < 1.0
        assert (out / name / "moving_registered.ome.tif").exists()


def test_level_field_becomes_the_same_map_in_full_resolution(tmp_path, rgb):
    from comir.slide.deform import FieldBlend, plan_regions

    path = write_ome_pyramid(
        tmp_path / "f.ome.tif", [rgb, np.rint(block_mean(rgb, 2)).astype(np.uint8)]
    )
    with open_slide(path) as s:
        lf, shape = s.level_matrix(1), s.levels[1].shape[:2]
        blend = FieldBlend(lf, shape, s.shape[:2], margin=8, step=2)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    v = np.stack([np.sin(xx / 40.0) * 3, np.cos(yy / 30.0) * 2], -1)  # smooth, level pixels
    level = CompositeTransform([AffineTransform(np.eye(3)), DisplacementField.from_inverse(v)])
    (whole,) = plan_regions(shape, region=1024, margin=8)
    blend.add(whole, level.transforms[-1].sample)
    full = blend.field()
    full.check_grid(rgb.shape[:2])  # spans level 0
    q = np.array([[40.0, 60.0], [200.0, 310.0], [333.0, 111.0]])  # fixed level points
    expect = (lf[:2, :2] @ level.apply_inverse(q).T).T + lf[:2, 2]  # level map, then to level 0
    got = full.apply_inverse((lf[:2, :2] @ q.T).T + lf[:2, 2])
    np.testing.assert_allclose(got, expect, atol=0.05)


@pytest.mark.slow
def test_write_comir_slide_equals_whole_image_embedding(tmp_path, tiny_run, scene):
    from comir.embed import load_model
    from comir.slide import write_comir_slide

    tiny_run(tmp_path / "run")
    model = load_model(tmp_path / "run", device="cpu")
    img = scene(300, 280)
    tifffile.imwrite(tmp_path / "s.tif", img, tile=(128, 128), photometric="rgb",
                     extrasamples=[0])  # fmt: skip
    with open_slide(tmp_path / "s.tif") as s:
        out = write_comir_slide(model, s, "a", tmp_path / "c.ome.tif", tile=128, pyramid_tile=128)
    with tifffile.TiffFile(out) as tif:
        levels = [lv.shape for lv in tif.series[0].levels]
        got = tif.series[0].levels[0].asarray()
    assert levels[:2] == [(300, 280), (150, 140)]
    ref = model.embed(img, "a", max_pixels=None)[..., 0]
    np.testing.assert_allclose(got, ref, atol=1e-4 * float(np.abs(ref).max()))


def test_plain_tiffs_register_through_derived_levels(tmp_path, capsys):
    from comir.cli import main
    from comir.transform import load_transform

    fixed, moving, truth = make_slide_pair(tmp_path, size=800, angle_deg=-3.0, tile=256)
    for p in (fixed, moving):  # level 0 only, strips: no stored pyramid
        plain = tmp_path / f"{p.name.split('.')[0]}.tif"
        tifffile.imwrite(plain, tifffile.imread(p), rowsperstrip=32, planarconfig="contig",
                         photometric="minisblack")  # fmt: skip
    argv = ["register", str(tmp_path / "fixed.tif"), str(tmp_path / "moving.tif"), "--out",
            str(tmp_path / "o"), "--max-size", "200", "--pixel-size", "0.5"]  # fmt: skip
    assert main(argv) == 0
    assert "moving_registered.ome.tif" in capsys.readouterr().out
    t = load_transform(tmp_path / "o" / "transform.json")
    assert _corner_error(t, truth, 800) < 1.0
    d = json.loads((tmp_path / "o" / "transform.json").read_text())
    assert d["levels"] == [2, 2] and d["pixel_size_um"]["fixed"] == 0.5


def test_affine_slides_fit_an_affine_on_the_finest_levels(tmp_path):
    fixed, moving, truth = make_slide_pair(tmp_path, size=800, angle_deg=2.0, tile=256)
    out = register_slides(fixed, moving, tmp_path / "o", max_size=200, transform="affine",
                          progress=False, write_registered=False)  # fmt: skip
    assert type(out.transform) is AffineTransform and out.registered is None
    assert _corner_error(out.transform, truth, 800) < 1.0
    steps = out.result.details["refinement"]
    assert [s["level"] for s in steps] == [1, 0] and all(s["applied"] for s in steps)


def test_deform_level_follows_the_model_pixel_size(tmp_path, rgb):
    from comir.errors import ComirWarning
    from comir.slide.register import deform_level

    g = rgb[..., 0]
    levels = [g, g[::2, ::2], g[::4, ::4], g[::8, ::8]]  # 1000, 500, 250, 125 px; 0.25 µm
    write_ome_pyramid(tmp_path / "s.ome.tif", levels, tile=128, pixel_size=0.25)
    with open_slide(tmp_path / "s.ome.tif") as s, warnings.catch_warnings():
        warnings.simplefilter("error", ComirWarning)
        assert deform_level(s, 64, None) == 2  # no model: 4 × max-size = 256 px → 250
        assert deform_level(s, 64, None, model_px=0.5) == 1  # the model's 0.5 µm level
        assert deform_level(s, 64, None, model_px=1.05) == 2  # within 10 % of 1.0 µm
        assert deform_level(s, 64, 600, model_px=0.5) == 1  # an explicit size that agrees
        with pytest.warns(ComirWarning, match=r"level 3 \(2 µm.*refine_size=500"):
            assert deform_level(s, 64, 200, model_px=0.5) == 3


def test_cli_embed_writes_a_comir_pyramid_of_a_slide_level(tmp_path, tiny_run, scene, capsys):
    from comir.cli import main
    from comir.embed import load_model

    tiny_run(tmp_path / "run")
    img = scene(256, 240)
    levels = [img, np.ascontiguousarray(img[::2, ::2])]
    write_ome_pyramid(tmp_path / "s.ome.tif", levels, tile=128)
    args = ["embed", str(tmp_path / "run"), str(tmp_path / "s.ome.tif"), "--modality", "a",
            "--out", str(tmp_path / "e"), "--format", "ome.tif", "--quiet", "--level"]  # fmt: skip
    assert main([*args, "1"]) == 0
    with tifffile.TiffFile(tmp_path / "e" / "s.ome.tif") as tif:
        got = tif.series[0].levels[0].asarray()
    ref = load_model(tmp_path / "run", device="cpu").embed(levels[1], "a", max_pixels=None)
    assert got.shape == (128, 120)  # level 1, one latent channel
    np.testing.assert_allclose(got, ref[..., 0], atol=1e-4 * float(np.abs(ref).max()))
    assert main([*args, "5", "--overwrite"]) == 2
    assert "--level 5 does not exist; the slide has levels 0–" in capsys.readouterr().err
