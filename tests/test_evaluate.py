"""Tests of the public evaluation protocol (comir.evaluate)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates

from comir.errors import ComirError
from comir.evaluate import (
    INFO_COLUMNS,
    compare,
    corner_errors,
    evaluate,
    ground_truth_matrices,
    level_ranges,
    make_eval,
    read_level,
    recover_corners,
    success_curve,
)
from comir.io import read_image, write_image
from comir.transform import RigidTransform


# ----------------------------------------------------------------------------- helpers
def smooth_image(shape=(150, 190), seed=0, sigma=2.5) -> np.ndarray:
    """Textured test image in [0, 1]."""
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random(shape), sigma)
    return (img - img.min()) / (img.max() - img.min())


def write_pairs(root: Path, images_a, images_b) -> Path:
    """``folders`` layout: root/A/<i>.png, root/B/<i>.png (16-bit)."""
    for m, imgs in (("A", images_a), ("B", images_b)):
        (root / m).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(imgs):
            write_image(root / m / f"img{i}.png", np.rint(img * 65535).astype(np.uint16))
    return root


def public_transform(q: np.ndarray, tx: float, ty: float, deg: float, w: int) -> np.ndarray:
    """The MultiRegEval generator, written out: T(q) = R(θ)(q + t − c) + c, c = (w−1)/2."""
    th = math.radians(deg)
    c = (w - 1) / 2.0
    x, y = q[..., 0] + tx - c, q[..., 1] + ty - c
    return np.stack(
        [math.cos(th) * x - math.sin(th) * y + c, math.sin(th) * x + math.cos(th) * y + c], -1
    )


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def oracle(fixed, moving, info, **_):
    """Test back-end: returns the ground-truth moving -> fixed transform from the CSV row."""
    from comir.register.base import RegistrationResult

    q = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = public_transform(
        q, float(info["Tx"]), float(info["Ty"]), float(info["AngleDegree"]), fixed.shape[1]
    )
    m = np.eye(3)
    m[:2, 0], m[:2, 1], m[:2, 2] = p[1] - p[0], p[2] - p[0], p[0]
    return RegistrationResult(RigidTransform(m), 1.0, 0.0, "ok", "oracle")


def fail_some(fixed, moving, info, **_):
    """Test back-end: the oracle, but fails every pair whose name ends in 1."""
    from comir.register.base import failed

    if info["Filename"].endswith("1"):
        return failed("fail_some", "on purpose")
    return oracle(fixed, moving, info)


@pytest.fixture(scope="module")
def multimodal_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    imgs = [smooth_image(seed=s) for s in (0, 1)]
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


def test_corner_error_hand_computed():
    w = 300
    ref = np.array([[0, 0], [0, w], [w, w], [w, 0]], float)[None]
    trans = ref + np.array([10.0, 0.0])  # true transform: shift by +10 px in x
    rec_m = RigidTransform.from_params(0.0, (7.0, 4.0)).matrix[None]  # recovered: (7, 4)
    rec = recover_corners(rec_m, trans)
    np.testing.assert_allclose(rec[0], ref[0] + [3.0, -4.0])
    np.testing.assert_allclose(corner_errors(rec, ref), [5.0])  # |(3, -4)| = 5 at every corner
    # a recovered 90° rotation about the origin, no true motion
    rot = RigidTransform.from_params(90.0).matrix[None]
    rec = recover_corners(rot, ref)  # R(-90°): (x, y) -> (y, -x)
    # distances 0, 300√2, 600, 300√2
    expected = (600 * math.sqrt(2) + 600) / 4
    np.testing.assert_allclose(rec[0], [[0, 0], [300, 0], [300, -300], [0, -300]], atol=1e-9)
    np.testing.assert_allclose(corner_errors(rec, ref), [expected])


def test_success_curve_counts_failures():
    e = np.array([0.5, 1.0, 2.0, np.nan])
    np.testing.assert_allclose(success_curve(e, [0.0, 0.5, 1.5, 10.0]), [0, 0.25, 0.5, 0.75])


def test_level_ranges_match_spec_table():
    assert level_ranges(1, 300) == ((0.0, 5.0), (0.0, 7.0))
    assert level_ranges(4, 300) == ((15.0, 20.0), (21.0, 28.0))
    (_, _), (lo, hi) = level_ranges(2, 150)
    assert (lo, hi) == (3.5, 7.0)
    with pytest.raises(ComirError):
        level_ranges(0, 300)


# ----------------------------------------------------------------------------- make_eval
def test_make_eval_layout_and_csv(multimodal_set: Path):
    info = json.loads((multimodal_set / "eval_info.json").read_text())
    assert info["levels"] == [1, 2, 3, 4] and info["width"] == 48
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
    root = write_pairs(tmp_path / "d", [smooth_image((120, 130))], [smooth_image((120, 130))])
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
            ref = np.array([float(r[f"{a}{i}_Ref"]) for i in range(1, 5) for a in "XY"]).reshape(
                4, 2
            )
            tr = np.array([float(r[f"{a}{i}_Trans"]) for i in range(1, 5) for a in "XY"]).reshape(
                4, 2
            )
            np.testing.assert_array_equal(ref, [[0, 0], [0, 40], [40, 40], [40, 0]])
            expect = public_transform(
                ref, float(r["Tx"]), float(r["Ty"]), float(r["AngleDegree"]), 40
            )
            np.testing.assert_allclose(tr, expect, atol=1e-9)
            d = np.linalg.norm(tr - ref, axis=1).mean()
            np.testing.assert_allclose(float(r["Displacement"]), d)
            np.testing.assert_allclose(float(r["RelativeDisplacement"]), d / 40)


def test_transformed_patch_is_sampled_from_full_image(tmp_path: Path):
    full = smooth_image((140, 150), seed=4)
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


def test_make_eval_rejects_too_small_images(tmp_path: Path):
    root = write_pairs(tmp_path / "d", [smooth_image((30, 30))], [smooth_image((30, 30))])
    with pytest.raises(ComirError, match="smaller than the patch width"):
        make_eval(root, "folders", "A", "B", tmp_path / "e", width=40)


# ----------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("direction", ["b2a", "a2b"])
def test_oracle_gives_zero_error_at_every_level(multimodal_set: Path, tmp_path: Path, direction):
    s = evaluate(
        multimodal_set,
        method=oracle,
        direction=direction,
        out=tmp_path / "r",
        workers=1,
        progress=False,
    )
    assert s["success_rate"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0, "all": 1.0}
    assert s["median_error"] < 1e-9 and s["threshold_px"] == pytest.approx(0.96)
    rows = read_csv(tmp_path / "r" / "results.csv")
    assert len(rows) == s["n_pairs"] and all(float(r["Error"]) < 1e-9 for r in rows)
    assert (tmp_path / "r" / "success_vs_threshold.png").stat().st_size > 1000


def test_wrong_sign_oracle_fails(multimodal_set: Path, tmp_path: Path):
    # the inverse of the truth must not pass: proves the error really depends on the transform
    s = evaluate(
        multimodal_set, method=inverse_oracle, out=tmp_path / "r", workers=1, progress=False
    )
    assert s["success_rate"]["all"] == 0.0


def inverse_oracle(fixed, moving, info, **_):
    res = oracle(fixed, moving, info)
    res.transform = res.transform.inverse()
    return res


def test_failures_count_as_errors(multimodal_set: Path, tmp_path: Path):
    s = evaluate(multimodal_set, method=fail_some, out=tmp_path / "r", workers=1, progress=False)
    rows = read_csv(tmp_path / "r" / "results.csv")
    bad = [r for r in rows if r["Filename"].endswith("1")]
    assert bad and all(r["Status"].startswith("failed") and r["Error"] == "" for r in bad)
    assert s["n_failed"] == len(bad)
    assert s["success_rate"]["all"] == pytest.approx(1 - len(bad) / len(rows))


@pytest.fixture(scope="module")
def monomodal_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mono")
    # smooth texture: the mi back-end's coarsest level (1/4 scale) needs structure to lock on
    imgs = [smooth_image((150, 250), seed=s, sigma=3.0) for s in (5, 6)]
    write_pairs(root, imgs, imgs)
    return make_eval(
        root, "folders", "A", "B", root.parent / "eval_mono", width=96, levels=(1,), seed=0
    )


@pytest.mark.parametrize("method,workers", [("fft", 2), ("mi", 1)])
def test_real_backends_monomodal_level1(monomodal_set: Path, tmp_path: Path, method, workers):
    s = evaluate(
        monomodal_set, method=method, out=tmp_path / method, workers=workers, progress=False
    )
    assert s["n_pairs"] == 4
    assert s["success_rate"]["1"] == 1.0, s
    assert s["median_error"] < 0.5


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
TINY = {"first_filters": 4, "down_layers": [1], "bottleneck_layers": 1, "growth": 4}


def tiny_run(run: Path):
    """A run folder with random weights for RGB (A = channels 0:3) / NIR (B = channel 3)."""
    import torch

    from comir.data import DataSpec
    from comir.model import EncoderPair, tiramisu_config
    from comir.runtime import save_weights

    torch.manual_seed(0)
    model = EncoderPair(
        tiramisu_config("small", 3, 1, **TINY), tiramisu_config("small", 1, 1, **TINY)
    )
    spec = DataSpec(
        layout="channels", a="0:3", b="3", channels_a=[0, 1, 2], channels_b=[3],
        file_channels_a=4, file_channels_b=4, in_channels_a=3, in_channels_b=1,
        norm_a="bits:8", norm_b="bits:8",
    )  # fmt: skip
    run.mkdir(parents=True)
    info = {"comir_version": "test", "model": model.config_dict(), "data": spec.to_dict()}
    (run / "config.json").write_text(json.dumps(info))
    save_weights(model, run / "model.safetensors")
    return model.eval()


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
    rng = np.random.default_rng(1)
    scene = np.stack([gaussian_filter(rng.random((90, 100)), s) for s in (1, 2, 3, 2)], -1)
    scene = np.rint(255 * (scene - scene.min((0, 1))) / np.ptp(scene, (0, 1))).astype(np.uint8)
    (tmp_path / "d").mkdir()
    write_image(tmp_path / "d" / "scene.tif", scene)
    ev = make_eval(tmp_path / "d", "channels", "0:3", "3", tmp_path / "e", width=32, levels=(2,))
    assert json.loads((ev / "eval_info.json").read_text())["norm_a"] == "bits:8"
    model = tiny_run(tmp_path / "run")
    check = EmbeddingCheck(ev / "patch_tlevel2", model, direction)
    s = evaluate(
        ev, method=check, model=tmp_path / "run", direction=direction, out=tmp_path / "r",
        workers=1, progress=False,
    )  # fmt: skip
    assert check.checked == s["n_pairs"] > 0 and s["success_rate"]["all"] == 1.0
    assert s["model"] == str(tmp_path / "run") and s["embed_seconds_per_pair"] > 0
    assert not list((tmp_path / "r").glob(".comirs-*"))  # temporary CoMIRs removed
