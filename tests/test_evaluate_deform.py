"""The deformable evaluation protocol: make-eval --deform, ground truth, TRE scoring."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from comir.cli import main
from comir.evaluate import evaluate, make_eval
from comir.evaluate.deform import landmark_grid, smooth_field, tre_table
from comir.evaluate.make import sample_bilinear
from comir.evaluate.sets import find_levels, read_level, read_patch
from comir.transform import load_transform

W = 48


@pytest.fixture
def deform_set(tmp_path: Path, scene, pair_folder) -> Path:
    """Two 160² scenes, levels 1 and 3, 2 patches per image, 1.5 px deformations."""
    imgs = [scene(160, 160, seed=s).astype(np.float32) / 255 for s in (0, 1)]
    root = pair_folder(tmp_path / "pairs", [i[..., :3] for i in imgs], [i[..., 3] for i in imgs])
    return make_eval(root, "folders", "A", "B", tmp_path / "eval", width=W, levels=(1, 3),
                     per_image=2, seed=4, deform=1.5)  # fmt: skip


def test_field_has_the_asked_amplitude_and_is_seeded():
    f1 = smooth_field(96, 2.5, 19.2, np.random.default_rng(0))
    f2 = smooth_field(96, 2.5, 19.2, np.random.default_rng(0))
    np.testing.assert_array_equal(f1.displacement, f2.displacement)
    np.testing.assert_allclose(f1.displacement.std(axis=(0, 1)), [2.5, 2.5], rtol=1e-5)
    assert f1.folded_fraction() == 0.0 and f1.grid_shape == (25, 25)


def test_landmarks_see_the_same_tissue_in_both_patches(deform_set: Path):
    """Independent of comir's geometry: the reference patch at a fixed landmark shows what
    the transformed patch shows at the paired moving landmark (and not elsewhere)."""
    for folder in find_levels(deform_set):
        lv = read_level(folder)
        assert set(lv.landmarks) == set(lv.names)
        for name in lv.names:
            moving, fixed = lv.landmarks[name]
            ref = read_patch(lv.image("A", name, "R"))
            trn = read_patch(lv.image("A", name, "T"))
            a, b = sample_bilinear(trn, moving), sample_bilinear(ref, fixed)
            unmapped = sample_bilinear(ref, moving)
            assert np.abs(a - b).mean() < 0.25 * np.abs(a - unmapped).mean()
            truth = load_transform(folder / "truth" / f"{name}.json")
            np.testing.assert_allclose(truth.apply(moving), fixed, atol=1e-6)


def _stored_truth(fixed, moving, info, eval_dir: str, **_):
    """Evaluation back-end returning the stored ground truth of the pair; ids repeat
    across levels, so the level is the one whose rigid part maps Ref onto Trans."""
    from comir.evaluate.protocol import REF_COLUMNS, TRANS_COLUMNS
    from comir.register.base import RegistrationResult

    ref = np.array([float(info[c]) for c in REF_COLUMNS]).reshape(4, 2)
    trans = np.array([float(info[c]) for c in TRANS_COLUMNS]).reshape(4, 2)
    for folder in find_levels(eval_dir):
        t = load_transform(Path(folder) / "truth" / f"{info['Filename']}.json")
        if np.allclose(t.transforms[1].apply(ref), trans, atol=1e-6):
            return RegistrationResult(t, 1.0, 0.0, "ok", "truth")
    raise AssertionError(f"no truth for {info['Filename']}")


def test_evaluate_reports_tre_of_the_whole_transform(deform_set: Path, tmp_path, truth_oracle):
    truth = functools.partial(_stored_truth, eval_dir=str(deform_set))
    s = evaluate(deform_set, method=truth, out=tmp_path / "t", workers=1, progress=False)
    assert s["tre"]["all"]["max"] < 1e-3 and s["tre"]["all"]["success"] == 1.0
    assert set(s["tre"]) == {"1", "3", "all"}
    rigid = evaluate(deform_set, method=truth_oracle, out=tmp_path / "r", workers=1,
                     progress=False)  # fmt: skip
    assert rigid["success_rate"]["all"] == 1.0  # the corners see the rigid part only
    assert 0.5 < rigid["tre"]["all"]["median"] < 6.0  # the field's part of the motion
    rows = (tmp_path / "r" / "results.csv").read_text().splitlines()
    assert "TRE_Median" in rows[0] and "rTRE_Max" in rows[0]


def test_tre_table_by_hand():
    fixed = [np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), np.zeros((2, 2))]
    warped = [[[3.0, 4.0], [10.0, 0.0], [0.0, 10.0]], None]
    t = tre_table(warped, fixed, np.array([10.0, 10.0]))
    assert t["tre_mean"][0] == pytest.approx(5 / 3) and t["tre_max"][0] == 5.0
    assert t["tre_median"][0] == 0.0 and np.isnan(t["tre_mean"][1])
    assert t["rtre_max"][0] == pytest.approx(5 / (10 * np.sqrt(2)))


def test_landmark_grid_is_inside_the_patch():
    g = landmark_grid(96)
    assert g.shape == (64, 2) and g.min() > 5 and g.max() < 90


@pytest.mark.slow
def test_cli_deform_set_and_deformable_evaluate(deform_set: Path, tmp_path, capsys):
    out = tmp_path / "res"
    code = main(["evaluate", str(deform_set), "--method", "fft", "--transform", "deformable",
                 "--refine", "iterations=[10,5,5]", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "landmarks: TRE mean" in printed and "folded" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["method_options"]["transform"] == "deformable" and s["folded_fraction"] == 0.0


@pytest.mark.parametrize(
    "args", [["--deform", "-1"], ["--deform-scale", "20"], ["--deform", "2", "--deform-scale", "3"]]
)
def test_bad_deform_options_exit_2(tmp_path, scene, pair_folder, capsys, args):
    img = scene(64, 64).astype(np.float32) / 255
    root = pair_folder(tmp_path / "p", [img[..., :3]], [img[..., 3]])
    out = tmp_path / "e"
    assert main(["make-eval", str(root), "--layout", "folders", "--a", "A", "--b", "B",
                 "--out", str(out), "--width", "32", *args]) == 2  # fmt: skip
    assert "--deform" in capsys.readouterr().err and not out.exists()
