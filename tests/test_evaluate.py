"""Tests of the public evaluation protocol (comir.evaluate; Lu et al., PLOS ONE 2022)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    make_scene,
    make_textured,
    make_tiny_run,
    oracle,
    public_transform,
    write_pairs,
)
from scipy.ndimage import map_coordinates

from comir.errors import ComirError, ComirWarning
from comir.evaluate import (
    INFO_COLUMNS,
    PairResult,
    compare,
    evaluate,
    ground_truth_matrices,
    level_ranges,
    make_eval,
    merge_shards,
    patch_encoder,
    read_level,
    read_patch,
    success_curve,
)
from comir.evaluate.protocol import recovered_corners, translation_step
from comir.io import read_image, write_image
from comir.transform import RigidTransform
from comir.transform import functional as F


# ----------------------------------------------------------------------------- helpers
def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def fail_some(fixed, moving, info, **_):
    """Test back-end: the oracle, but fails every pair whose name ends in 1."""
    from comir.register.base import failed

    if info["Filename"].endswith("1"):
        return failed("fail_some", "on purpose")
    return oracle(fixed, moving, info)


def inverse_oracle(fixed, moving, info, **_):
    res = oracle(fixed, moving, info)
    res.transform = res.transform.inverse()
    return res


def public_matrix(tx: float, ty: float, deg: float, w: int) -> np.ndarray:
    """3×3 matrix of the written-out public formula, from three mapped points."""
    q = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = public_transform(q, tx, ty, deg, w)
    m = np.eye(3)
    m[:2, 0], m[:2, 1], m[:2, 2] = p[1] - p[0], p[2] - p[0], p[0]
    return m


@pytest.fixture(scope="module")
def multimodal_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    imgs = [make_textured((150, 190), seed=s, sigma=2.5) for s in (0, 1)]
    write_pairs(root, imgs, [1.0 - x**2 for x in imgs])  # non-linear, inverted B
    return make_eval(root, "folders", "A", "B", root.parent / "eval_mm", width=48, seed=3)


# ----------------------------------------------------------------------------- geometry
def test_ground_truth_matrix_hand_example():
    # w = 3 -> c = (1, 1); θ = 90°, t = (1, 2): T(0, 0) = R90 (0, 1) + c = (-1, 0) + (1, 1)
    m = ground_truth_matrices(1.0, 2.0, math.pi / 2, 3)[0]
    np.testing.assert_allclose(
        RigidTransform(m).apply(np.array([0.0, 0.0])), [0.0, 1.0], atol=1e-12
    )
    np.testing.assert_allclose(RigidTransform(m).angle_deg, 90.0)


def test_ground_truth_matches_written_out_public_formula():
    rng = np.random.default_rng(0)
    tx, ty, deg = rng.uniform(-30, 30, 5), rng.uniform(-30, 30, 5), rng.uniform(-20, 20, 5)
    widths = np.array([300, 834, 48, 49, 96])
    mats = ground_truth_matrices(tx, ty, np.deg2rad(deg), widths)
    q = rng.uniform(-50, 900, (5, 7, 2))
    want = np.stack([public_transform(q[i], tx[i], ty[i], deg[i], widths[i]) for i in range(5)])
    np.testing.assert_allclose(F.apply_matrices(mats, q), want, atol=1e-9)


def test_corner_error_hand_computed():
    w = 300
    ref = np.array([[0, 0], [0, w], [w, w], [w, 0]], float)[None]
    trans = ref + np.array([10.0, 0.0])  # true transform: shift by +10 px in x
    rec_m = RigidTransform.from_params(0.0, (7.0, 4.0)).matrix[None]  # recovered: (7, 4)
    rec = recovered_corners(rec_m, trans)
    np.testing.assert_allclose(rec[0], ref[0] + [3.0, -4.0])
    np.testing.assert_allclose(F.corner_errors(rec_m, trans, ref), [5.0])  # |(3, -4)| = 5
    # a recovered 90° rotation about the origin, no true motion: R(-90°): (x, y) -> (y, -x)
    rot = RigidTransform.from_params(90.0).matrix[None]
    rec = recovered_corners(rot, ref)
    np.testing.assert_allclose(rec[0], [[0, 0], [300, 0], [300, -300], [0, -300]], atol=1e-9)
    expected = (600 * math.sqrt(2) + 600) / 4  # distances 0, 300√2, 600, 300√2
    np.testing.assert_allclose(F.corner_errors(rot, ref, ref), [expected])
    assert np.isnan(recovered_corners(np.full((1, 3, 3), np.nan), ref)).all()


def test_success_curve_counts_failures():
    e = np.array([0.5, 1.0, 2.0, np.nan])
    np.testing.assert_allclose(success_curve(e, [0.0, 0.5, 1.5, 10.0]), [0, 0.25, 0.5, 0.75])


def test_level_ranges_use_published_steps():
    assert level_ranges(1, 300) == ((0.0, 5.0), (0.0, 7.0))
    assert level_ranges(4, 300) == ((15.0, 20.0), (21.0, 28.0))
    # the histology set: 20 px steps at w = 834 (not 7 · 834 / 300 = 19.46)
    assert level_ranges(1, 834) == ((0.0, 5.0), (0.0, 20.0))
    assert level_ranges(4, 834) == ((15.0, 20.0), (60.0, 80.0))
    assert level_ranges(2, 150) == ((5.0, 10.0), (3.5, 7.0))  # other widths: 7 w / 300
    assert level_ranges(3, 834, trans_step=7.0)[1] == (14.0, 21.0)
    assert translation_step(600) == 14.0
    with pytest.raises(ComirError):
        level_ranges(0, 300)
    with pytest.raises(ComirError, match="trans-step"):
        translation_step(300, -1.0)


def test_pair_result_round_trips_through_json():
    r = PairResult(3, np.eye(3).tolist(), float("nan"), 0.25, "ok")
    back = PairResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.index == 3 and back.matrix == r.matrix and math.isnan(back.score)
    assert (back.seconds, back.status) == (0.25, "ok") and not back.missing
    assert PairResult(0, None, 0.0, 0.0, "missing: x").missing


# ----------------------------------------------------------------------------- make_eval
def test_make_eval_layout_and_csv(multimodal_set: Path):
    info = json.loads((multimodal_set / "eval_info.json").read_text())
    assert info["levels"] == [1, 2, 3, 4] and info["width"] == 48
    assert info["tiling"] == "context" and info["offset"] is None
    assert info["trans_step_px"] == pytest.approx(7 * 48 / 300)
    for k in (1, 2, 3, 4):
        level = multimodal_set / f"patch_tlevel{k}"
        rows = read_csv(level / "info_test.csv")
        assert list(rows[0]) == INFO_COLUMNS
        assert len(rows) == info["n_per_level"] > 2
        for r in rows:
            for m in ("A", "B"):
                for kind in ("R", "T"):
                    img = read_image(level / m / "test" / f"{r['Filename']}_{kind}.png")
                    assert img.shape == (48, 48) and img.dtype == np.uint16


def test_make_eval_deterministic_and_ranges(tmp_path: Path):
    root = write_pairs(tmp_path / "d", [make_textured((120, 130))], [make_textured((120, 130))])
    kw = dict(width=40, per_image=30, levels=(1, 2, 3, 4))
    e1 = make_eval(root, "folders", "A", "B", tmp_path / "e1", seed=7, **kw)
    e2 = make_eval(root, "folders", "A", "B", tmp_path / "e2", seed=7, **kw)
    e3 = make_eval(root, "folders", "A", "B", tmp_path / "e3", seed=8, **kw)
    for k in (1, 2, 3, 4):
        name = f"patch_tlevel{k}/info_test.csv"
        assert (e1 / name).read_text() == (e2 / name).read_text()
        assert (e1 / name).read_text() != (e3 / name).read_text()
        rows = read_csv(e1 / name)
        first = rows[0]["Filename"]
        assert (e1 / f"patch_tlevel{k}/B/test/{first}_T.png").read_bytes() == (
            e2 / f"patch_tlevel{k}/B/test/{first}_T.png"
        ).read_bytes()
        s = 7.0 * 40 / 300
        ang = np.array([float(r["AngleDegree"]) for r in rows])
        txy = np.array([[float(r["Tx"]), float(r["Ty"])] for r in rows])
        assert np.all((np.abs(ang) >= 5 * (k - 1)) & (np.abs(ang) < 5 * k))
        assert np.all((np.abs(txy) >= s * (k - 1)) & (np.abs(txy) < s * k))
        assert (ang > 0).any() and (ang < 0).any() and (txy > 0).any() and (txy < 0).any()
        np.testing.assert_allclose([float(r["AngleRad"]) for r in rows], np.deg2rad(ang))
        # corners: Ref at 0 and w; Trans = T(Ref) by the public formula; Displacement
        for r in rows:
            ref = np.array([float(r[f"{a}{i}_Ref"]) for i in range(1, 5) for a in "XY"])
            tr = np.array([float(r[f"{a}{i}_Trans"]) for i in range(1, 5) for a in "XY"])
            ref, tr = ref.reshape(4, 2), tr.reshape(4, 2)
            np.testing.assert_array_equal(ref, [[0, 0], [0, 40], [40, 40], [40, 0]])
            expect = public_transform(
                ref, float(r["Tx"]), float(r["Ty"]), float(r["AngleDegree"]), 40
            )
            np.testing.assert_allclose(tr, expect, atol=1e-9)
            d = np.linalg.norm(tr - ref, axis=1).mean()
            np.testing.assert_allclose(float(r["Displacement"]), d)
            np.testing.assert_allclose(float(r["RelativeDisplacement"]), d / 40)


def test_transformed_patch_is_sampled_from_full_image(tmp_path: Path):
    full = make_textured((140, 150), seed=4, sigma=2.5)
    root = write_pairs(tmp_path / "d", [full], [full])
    ev = make_eval(root, "folders", "A", "B", tmp_path / "e", width=40, levels=(3,), seed=2)
    stored = read_image(root / "A" / "img0.png").astype(np.float64) / 65535
    rows = read_csv(ev / "patch_tlevel3/info_test.csv")
    assert len(rows) == 6  # 2 × 3 grid of non-overlapping regions inside the margin
    boxes = {(int(r["X0"]), int(r["Y0"])) for r in rows}
    assert all(
        abs(x1 - x2) >= 40 or abs(y1 - y2) >= 40
        for x1, y1 in boxes
        for x2, y2 in boxes
        if (x1, y1) != (x2, y2)
    )
    yy, xx = np.mgrid[0:40, 0:40].astype(float)
    q = np.stack([xx, yy], -1)
    for r in rows:
        o = np.array([float(r["X0"]), float(r["Y0"])])
        ref = read_image(ev / f"patch_tlevel3/A/test/{r['Filename']}_R.png") / 65535
        trn = read_image(ev / f"patch_tlevel3/A/test/{r['Filename']}_T.png") / 65535
        x0, y0 = int(o[0]), int(o[1])
        np.testing.assert_allclose(ref, stored[y0 : y0 + 40, x0 : x0 + 40], atol=3e-5)
        p = public_transform(q, float(r["Tx"]), float(r["Ty"]), float(r["AngleDegree"]), 40) + o
        naive = map_coordinates(stored, [p[..., 1], p[..., 0]], order=1, mode="mirror")
        assert int(r["Reflected"]) == 0
        np.testing.assert_allclose(trn, naive, atol=2e-4)


@pytest.fixture(scope="module")
def tiling_sets(tmp_path_factory) -> dict[str, Path]:
    """A 1000² and a 600² image, cut with w = 300 in both tilings (level 4 only)."""
    root = tmp_path_factory.mktemp("tiles")
    imgs = [make_textured((1000, 1000), seed=1), make_textured((600, 600), seed=2)]
    write_pairs(root / "d", imgs, [1.0 - x for x in imgs])
    return {
        t: make_eval(
            root / "d", "folders", "A", "B", root / t, width=300, levels=(4,), tiling=t, bits=8
        )  # fmt: skip
        for t in ("context", "public")
    }


def test_patch_counts_of_the_two_tilings(tiling_sets):
    counts = {}
    for tiling, ev in tiling_sets.items():
        rows = read_csv(ev / "patch_tlevel4" / "info_test.csv")
        counts[tiling] = {s: sum(r["Source"] == s for r in rows) for s in ("img0", "img1")}
        assert json.loads((ev / "eval_info.json").read_text())["tiling"] == tiling
    # the public generator: (H // w) × (W // w) regions; context keeps a level-4 margin
    assert counts == {"public": {"img0": 9, "img1": 4}, "context": {"img0": 4, "img1": 1}}
    rows = read_csv(tiling_sets["public"] / "patch_tlevel4" / "info_test.csv")
    # 1000 px: tiles of ⌊1000 / 3⌋ = 333 px, patch at the tile centre (offset 16)
    assert {int(r["X0"]) for r in rows if r["Source"] == "img0"} == {16, 349, 682}
    assert {r["Filename"] for r in rows if r["Source"] == "img1"} == {
        "img1_01_01", "img1_01_02", "img1_02_01", "img1_02_02",
    }  # fmt: skip


def test_public_tiling_warps_the_patch_with_reflect_padding(tiling_sets):
    from skimage.transform import AffineTransform, warp

    level = tiling_sets["public"] / "patch_tlevel4"
    rows = read_csv(level / "info_test.csv")
    for r in rows[:3]:
        for m in ("A", "B"):
            ref = read_image(level / m / "test" / f"{r['Filename']}_R.png") / 255.0
            trn = read_image(level / m / "test" / f"{r['Filename']}_T.png") / 255.0
            tform = public_matrix(float(r["Tx"]), float(r["Ty"]), float(r["AngleDegree"]), 300)
            # the public generator: skimage warp of the patch, T as inverse map, reflect
            naive = warp(ref, AffineTransform(matrix=tform), order=1, mode="reflect")
            np.testing.assert_allclose(trn, naive, atol=1.5 / 255)
            assert np.abs(trn - naive).mean() < 0.3 / 255
        assert int(r["Reflected"]) == 1


@pytest.mark.parametrize(
    "source_bits,bits", [(8, 8), (8, 16), (16, 16)], ids=["u8-8", "u8-16", "u16-16"]
)
def test_make_eval_round_trips_source_values_exactly(tmp_path: Path, source_bits, bits):
    top = 2**source_bits - 1
    dtype = np.uint8 if source_bits == 8 else np.uint16
    src = np.rint(make_textured((70, 80), seed=5) * top).astype(dtype)
    src[0, 0], src[0, 1] = 0, top  # full range: norm auto -> bits:N
    for m in ("A", "B"):
        (tmp_path / "d" / m).mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / "d" / m / "s.png", src)
    ev = make_eval(tmp_path / "d", "folders", "A", "B", tmp_path / "e", width=32, levels=(1,),
                   bits=bits)  # fmt: skip
    assert json.loads((ev / "eval_info.json").read_text())["norm_a"] == f"bits:{source_bits}"
    rows = read_csv(ev / "patch_tlevel1" / "info_test.csv")
    assert rows
    for r in rows:
        x0, y0 = int(r["X0"]), int(r["Y0"])
        got = read_patch(ev / "patch_tlevel1" / "A" / "test" / f"{r['Filename']}_R.png")
        want = src[y0 : y0 + 32, x0 : x0 + 32].astype(np.float32) / np.float32(top)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)  # bit for bit


def test_published_offset_and_step_at_834(tmp_path: Path):
    img = make_textured((1450, 1450), seed=3, sigma=4.0)
    write_pairs(tmp_path / "d", [img], [img])
    ev = make_eval(tmp_path / "d", "folders", "A", "B", tmp_path / "e", width=834, levels=(4,),
                   bits=8)  # fmt: skip
    info = json.loads((ev / "eval_info.json").read_text())
    assert (info["trans_step_px"], info["offset"], info["n_per_level"]) == (20.0, 608, 1)
    (row,) = read_csv(ev / "patch_tlevel4" / "info_test.csv")
    # one patch per image at the histology generator's offset, named by the image alone
    assert (row["Filename"], int(row["X0"]), int(row["Y0"])) == ("img0", 608, 608)
    assert 60 <= abs(float(row["Tx"])) < 80 and 60 <= abs(float(row["Ty"])) < 80
    ref = read_patch(ev / "patch_tlevel4" / "A" / "test" / "img0_R.png")
    np.testing.assert_allclose(ref, img[608 : 608 + 834, 608 : 608 + 834], atol=0.5 / 255 + 1e-6)


def test_make_eval_rejects_bad_options(tmp_path: Path):
    root = write_pairs(tmp_path / "d", [make_textured((30, 30))], [make_textured((30, 30))])
    with pytest.raises(ComirError, match="smaller than the patch width"):
        make_eval(root, "folders", "A", "B", tmp_path / "e", width=40)
    with pytest.raises(ComirError, match="--tiling"):
        make_eval(root, "folders", "A", "B", tmp_path / "e", width=16, tiling="tiles")


# ----------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("direction", ["b2a", "a2b"])
def test_oracle_gives_zero_error_at_every_level(multimodal_set: Path, tmp_path: Path, direction):
    s = evaluate(
        multimodal_set, method=oracle, direction=direction, out=tmp_path / "r", workers=1,
        progress=False,
    )  # fmt: skip
    assert s["success_rate"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0, "all": 1.0}
    assert s["median_error"] < 1e-9 and s["threshold_px"] == pytest.approx(0.96)
    assert s["n_missing"] == 0 and s["missing"] == []
    rows = read_csv(tmp_path / "r" / "results.csv")
    assert len(rows) == s["n_pairs"] and all(float(r["Error"]) < 1e-9 for r in rows)
    assert (tmp_path / "r" / "success_vs_threshold.png").stat().st_size > 1000


def test_wrong_sign_oracle_fails(multimodal_set: Path, tmp_path: Path):
    # the inverse of the truth must not pass: proves the error really depends on the transform
    s = evaluate(
        multimodal_set, method=inverse_oracle, out=tmp_path / "r", workers=1, progress=False
    )
    assert s["success_rate"]["all"] == 0.0


def test_failures_count_as_errors(multimodal_set: Path, tmp_path: Path):
    s = evaluate(multimodal_set, method=fail_some, out=tmp_path / "r", workers=1, progress=False)
    rows = read_csv(tmp_path / "r" / "results.csv")
    bad = [r for r in rows if r["Filename"].endswith("1")]
    assert bad and all(r["Status"].startswith("failed") and r["Error"] == "" for r in bad)
    assert s["n_failed"] == len(bad)
    assert s["success_rate"]["all"] == pytest.approx(1 - len(bad) / len(rows))


def _break_images(ev: Path) -> tuple[Path, Path]:
    """Delete one moving image, truncate one fixed image (b2a) and delete an unused one."""
    level = ev / "patch_tlevel2"
    names = [r["Filename"] for r in read_csv(level / "info_test.csv")]
    gone = level / "B" / "test" / f"{names[1]}_T.png"
    gone.unlink()
    bad = level / "A" / "test" / f"{names[2]}_R.png"
    bad.write_bytes(bad.read_bytes()[:40])
    (level / "A" / "test" / f"{names[3]}_T.png").unlink()  # not used by b2a
    return gone, bad


@pytest.fixture(scope="module")
def scene_set(tmp_path_factory) -> Path:
    """RGB (A) / NIR (B) patches of a 4-channel scene, levels 1 and 2, 4 pairs each."""
    root = tmp_path_factory.mktemp("scene")
    (root / "d").mkdir()
    write_image(root / "d" / "scene.tif", make_scene(90, 100, seed=1))
    return make_eval(root / "d", "channels", "0:3", "3", root / "e", width=32, levels=(1, 2))


@pytest.mark.parametrize("with_model", [False, True], ids=["raw", "model"])
def test_missing_and_unreadable_images_count_as_failures(
    multimodal_set: Path, scene_set: Path, tmp_path: Path, with_model
):
    ev = tmp_path / "ev"
    shutil.copytree(scene_set if with_model else multimodal_set, ev)
    gone, bad = _break_images(ev)
    model = None
    if with_model:
        make_tiny_run(tmp_path / "run")
        model = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = evaluate(ev, method=oracle, model=model, out=tmp_path / "r", workers=1,
                     progress=False)  # fmt: skip
    ours = [str(w.message) for w in caught if issubclass(w.category, ComirWarning)]
    assert len(ours) == 1 and "\n" not in ours[0], ours
    assert ours[0].startswith(f"2 of {s['n_pairs']} pairs") and str(gone.with_suffix("")) in ours[0]
    n2 = len(read_csv(ev / "patch_tlevel2" / "info_test.csv"))
    assert s["n_pairs"] == sum(len(read_csv(p)) for p in ev.glob("patch_tlevel*/info_test.csv"))
    assert s["n_missing"] == 2 and s["n_failed"] == 2
    assert s["missing"] == [str(gone.with_suffix("")), str(bad)]
    assert s["success_rate"]["2"] == pytest.approx(1 - 2 / n2) and s["success_rate"]["1"] == 1.0
    status = {r["Filename"]: r["Status"] for r in read_csv(tmp_path / "r" / "results.csv")
              if r["level"] == "2"}  # fmt: skip
    assert status[gone.stem[:-2]].startswith("missing: ")
    assert status[bad.stem[:-2]].startswith("unreadable: ")


def test_sharded_run_records_each_shard_wall_time(multimodal_set: Path, tmp_path: Path):
    res = tmp_path / "r"
    kw = dict(method=oracle, out=res, workers=1, progress=False)
    evaluate(multimodal_set, shard="0/2", **kw)
    files = [res / "shards" / f"shard-{i}-of-2.json" for i in (0, 1)]
    rec = json.loads(files[0].read_text())
    first = rec["results"][0]
    assert set(first) == {"index", "matrix", "score", "seconds", "status"}
    assert first["status"] == "ok" and np.asarray(first["matrix"]).shape == (3, 3)
    rec["wall_seconds"] = 1.5
    files[0].write_text(json.dumps(rec))
    evaluate(multimodal_set, shard="1/2", **kw)
    rec = json.loads(files[1].read_text())
    rec["wall_seconds"] = 2.25
    files[1].write_text(json.dumps(rec))
    s = merge_shards(res)
    assert s["wall_seconds"] == 3.75 and s["shard_wall_seconds"] == [1.5, 2.25]
    assert s["success_rate"]["all"] == 1.0 and s["n_pairs"] == 4 * 12


@pytest.fixture(scope="module")
def monomodal_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mono")
    # smooth texture: the mi back-end's coarsest level (1/4 scale) needs structure to lock on
    imgs = [make_textured((150, 250), seed=s, sigma=3.0) for s in (5, 6)]
    write_pairs(root, imgs, imgs)
    return make_eval(
        root, "folders", "A", "B", root.parent / "eval_mono", width=96, levels=(1,), seed=0
    )


@pytest.mark.parametrize(
    "method,workers", [pytest.param("fft", 2, marks=pytest.mark.slow), ("mi", 1)]
)
def test_real_backends_monomodal_level1(monomodal_set: Path, tmp_path: Path, method, workers):
    s = evaluate(
        monomodal_set, method=method, out=tmp_path / method, workers=workers, progress=False
    )
    assert s["n_pairs"] == 4
    assert s["success_rate"]["1"] == 1.0, s
    assert s["median_error"] < 0.5


def _backends() -> list[str]:
    from comir.register import elastix_available

    return ["fft", "sift", "mi", *(["elastix"] if elastix_available() else [])]


@pytest.mark.parametrize("method", _backends())
def test_two_runs_give_identical_errors(tmp_path: Path, method):
    img = make_textured((80, 90), seed=9, sigma=2.0)
    write_pairs(tmp_path / "d", [img], [np.sqrt(img)])
    ev = make_eval(tmp_path / "d", "folders", "A", "B", tmp_path / "e", width=40, levels=(2,),
                   per_image=2, seed=4)  # fmt: skip
    cols = ["Filename", "Error", *[f"{a}{i}_Recover" for i in range(1, 5) for a in "XY"]]
    runs = []
    for k in range(2):
        evaluate(ev, method=method, out=tmp_path / f"r{k}", workers=1, progress=False)
        runs.append([[r[c] for c in cols] for r in read_csv(tmp_path / f"r{k}" / "results.csv")])
    assert len(runs[0]) == 2 and all(row[1] != "" for row in runs[0])  # registered, not failed
    assert runs[0] == runs[1]  # the same digits, pair for pair


@pytest.mark.slow
def test_shared_pool_gives_the_in_process_results(monomodal_set: Path, tmp_path: Path):
    from comir.evaluate import registration_pool

    cols = ["Filename", "Error", "Status"]
    ref = evaluate(monomodal_set, method="mi", out=tmp_path / "one", workers=1, progress=False)
    want = [[r[c] for c in cols] for r in read_csv(tmp_path / "one" / "results.csv")]
    with registration_pool(2) as pool:
        for method in ("mi", "mi"):  # the pool serves several evaluations
            s = evaluate(monomodal_set, method=method, out=tmp_path / "p", pool=pool,
                         progress=False)  # fmt: skip
            got = [[r[c] for c in cols] for r in read_csv(tmp_path / "p" / "results.csv")]
            assert got == want and s["success_rate"] == ref["success_rate"]


def test_public_release_layout_tif(multimodal_set: Path, tmp_path: Path):
    """A set laid out as the Zenodo release: .tif patches, extra CSV columns, integer corners."""
    pub = tmp_path / "Zurich_patches" / "fold1"
    header = [
        "Filename", "ReferenceImage", "Method",
        *[f"{a}{i}_Ref" for i in range(1, 5) for a in "XY"],
        *[f"{a}{i}_Trans" for i in range(1, 5) for a in "XY"],
        *[f"{a}{i}_Recover" for i in range(1, 5) for a in "XY"],
        "Displacement", "RelativeDisplacement", "Tx", "Ty", "AngleDegree", "AngleRad", "Error",
        "DisplacementCategory",
    ]  # fmt: skip
    for k in (1, 2):
        src = multimodal_set / f"patch_tlevel{k}"
        dst = pub / f"patch_tlevel{k}"
        rows = read_csv(src / "info_test.csv")
        for m in ("A", "B"):
            (dst / m / "test").mkdir(parents=True)
            for p in (src / m / "test").iterdir():
                img8 = (read_image(p) // 257).astype(np.uint8)
                write_image(dst / m / "test" / f"{p.stem}.tif", img8)
        with open(dst / "info_test.csv", "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(header)
            for r in rows:
                r = {**r, **{c: str(int(float(r[c]))) for c in header if c.endswith("_Ref")}}
                wr.writerow([r.get(c, "") for c in header])
    s = evaluate(pub, method=oracle, out=tmp_path / "r", workers=1, progress=False)
    assert set(s["success_rate"]) == {"1", "2", "all"} and s["success_rate"]["all"] == 1.0
    one = evaluate(
        pub / "patch_tlevel2", method=oracle, out=tmp_path / "r2", workers=1, progress=False
    )
    assert set(one["success_rate"]) == {"2", "all"} and one["n_pairs"] == s["n_pairs"] // 2
    assert read_level(pub / "patch_tlevel1").files["A"]["img0_01_01_R"].suffix == ".tif"


def test_bad_sets_raise_one_line_errors(tmp_path: Path, multimodal_set: Path):
    with pytest.raises(ComirError, match="not found"):
        evaluate(tmp_path / "missing", method=oracle, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ComirError, match="no info_test.csv"):
        evaluate(tmp_path / "empty", method=oracle, progress=False)
    bad = tmp_path / "bad"
    (bad / "A" / "test").mkdir(parents=True)
    (bad / "B" / "test").mkdir(parents=True)
    (bad / "info_test.csv").write_text("Filename,X1_Ref,Y1_Ref\nx,0,0\n")
    with pytest.raises(ComirError, match=r"info_test.csv: lacks column\(s\) X2_Ref") as ei:
        evaluate(bad, method=oracle, progress=False)
    assert "\n" not in str(ei.value)
    with pytest.raises(ComirError, match="direction"):
        evaluate(multimodal_set, method=oracle, direction="x2y", progress=False)


def test_compare_table_and_figure(multimodal_set: Path, tmp_path: Path):
    evaluate(multimodal_set, method=oracle, out=tmp_path / "good", workers=1, progress=False)
    evaluate(multimodal_set, method=fail_some, out=tmp_path / "half", workers=1, progress=False)
    table = compare([tmp_path / "good", tmp_path / "half"], out=tmp_path / "cmp")
    lines = table.strip().splitlines()
    assert lines[0].startswith("| run | method | model | L1 | L2 | L3 | L4 | all |")
    good = lines[2].split("|")
    assert good[1].strip() == "good" and good[2].strip() == "oracle" and good[8].strip() == "1.000"
    half = json.loads((tmp_path / "half" / "summary.json").read_text())
    assert f"{half['success_rate']['all']:.3f}" in lines[3]
    assert (tmp_path / "cmp" / "compare.md").read_text() == table
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    with pytest.raises(ComirError, match="summary.json"):
        compare([tmp_path / "nothing"])


# ----------------------------------------------------------------------------- with a model
class EmbeddingCheck:
    """Test back-end: checks that fixed/moving are the CoMIRs of the stored patches, each
    through its own modality's encoder with no second normalisation, then acts as oracle."""

    def __init__(self, level_dir: Path, model, direction: str):
        self.level_dir, self.model, self.direction, self.checked = level_dir, model, direction, 0

    def naive(self, path: Path, modality: str) -> np.ndarray:
        import torch

        x = read_image(path).astype(np.float32) / 65535
        x = x[..., None] if x.ndim == 2 else x
        with torch.no_grad():
            t = torch.from_numpy(x).permute(2, 0, 1)[None]
            return self.model(t, modality)[0].permute(1, 2, 0).numpy()

    def __call__(self, fixed, moving, info, **_):
        name, fm, mm = info["Filename"], self.direction[2], self.direction[0]
        want_f = self.naive(self.level_dir / f"{fm.upper()}/test/{name}_R.png", fm)
        want_m = self.naive(self.level_dir / f"{mm.upper()}/test/{name}_T.png", mm)
        np.testing.assert_allclose(fixed, want_f, atol=1e-4)
        np.testing.assert_allclose(moving, want_m, atol=1e-4)
        self.checked += 1
        return oracle(fixed, moving, info)


@pytest.mark.parametrize("direction", ["b2a", "a2b"])
def test_evaluate_with_model_embeds_each_modality(tmp_path: Path, direction):
    (tmp_path / "d").mkdir()
    write_image(tmp_path / "d" / "scene.tif", make_scene(90, 100, seed=1))
    ev = make_eval(tmp_path / "d", "channels", "0:3", "3", tmp_path / "e", width=32, levels=(2,))
    assert json.loads((ev / "eval_info.json").read_text())["norm_a"] == "bits:8"
    model = make_tiny_run(tmp_path / "run")
    check = EmbeddingCheck(ev / "patch_tlevel2", model, direction)
    s = evaluate(
        ev, method=check, model=tmp_path / "run", direction=direction, out=tmp_path / "r",
        workers=1, progress=False,
    )  # fmt: skip
    assert check.checked == s["n_pairs"] > 0 and s["success_rate"]["all"] == 1.0
    assert s["model"] == str(tmp_path / "run") and s["embed_seconds_per_pair"] > 0
    assert not list((tmp_path / "r").glob(".comirs-*"))  # temporary CoMIRs removed


def test_patch_encoder_warns_once_on_other_normalisation(tmp_path: Path):
    make_tiny_run(tmp_path / "run")  # trained on bits:8 for A and B
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = patch_encoder(tmp_path / "run", {"norm_a": "bits:8", "norm_b": "bits:8"})
        patch_encoder(tmp_path / "run", {"norm_a": "bits:12", "norm_b": "percentile"})
    ours = [str(w.message) for w in caught if issubclass(w.category, ComirWarning)]
    assert len(ours) == 1 and "\n" not in ours[0] and "bits:12" in ours[0], ours
    assert (enc.data.norm_a, enc.data.norm_b, enc.data.log_a) == ("none", "none", False)


def test_out_of_distribution_set_warns_once_per_modality(tmp_path: Path):
    from comir.input_stats import channel_stats

    (tmp_path / "d").mkdir()
    write_image(tmp_path / "d" / "scene.tif", make_scene(90, 100, seed=1))
    ev = make_eval(tmp_path / "d", "channels", "0:3", "3", tmp_path / "e", width=32, levels=(1, 2))
    make_tiny_run(tmp_path / "run")
    cfg = tmp_path / "run" / "config.json"
    info = json.loads(cfg.read_text())
    bright = [np.full((8, 8, 3), 50.0, np.float32), np.full((8, 8, 1), 0.5, np.float32)]
    info["input_stats"] = {"a": channel_stats(bright[:1]), "b": channel_stats(bright[1:])}
    cfg.write_text(json.dumps(info))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = evaluate(ev, method=oracle, model=tmp_path / "run", out=tmp_path / "r",
                     workers=1, progress=False)  # fmt: skip
    ours = [str(w.message) for w in caught if issubclass(w.category, ComirWarning)]
    # modality A (trained on values near 50) is flagged once for all its patches; B is not
    assert len(ours) == 1 and "modality A" in ours[0] and "bits:8" in ours[0], ours
    assert f"{s['n_pairs']} modality A patches" in ours[0]
