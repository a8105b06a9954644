"""Landmark CSVs, TRE / rTRE / robustness, and the `warp-points`, `warp` and
`register --landmarks-*` commands."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from comir.cli import main
from comir.errors import ComirError, ComirWarning
from comir.io import read_image, write_image
from comir.landmarks import (
    check_inside,
    landmark_errors,
    read_points,
    warp_points,
    write_points,
)
from comir.transform import AffineTransform, DisplacementField, RigidTransform


def test_read_anhir_style_csv_keeps_columns(tmp_path):
    path = tmp_path / "lm.csv"
    path.write_text(",X,Y,name\n0,10.5,20.25,a\n1,3,4,b\n")
    t = read_points(path)
    np.testing.assert_array_equal(t.points, [[10.5, 20.25], [3.0, 4.0]])
    out = write_points(tmp_path / "w.csv", t.with_points(t.points + (1.0, -2.0)))
    assert out.read_text().splitlines() == [",X,Y,name", "0,11.5,18.25,a", "1,4.0,2.0,b"]
    np.testing.assert_array_equal(read_points(out).points, t.points + (1.0, -2.0))


@pytest.mark.parametrize(
    "text, needle",
    [
        ("a,b\n1,2\n", "no x/y columns"),
        ("x,y\n", "no landmarks"),
        ("x,y\n1,2\nnan,3\n", "NaN/Inf coordinates (first: row 2)"),
        ("x,y\n1,two\n", "not a number"),
    ],
)
def test_bad_csv_is_one_line_error_naming_the_file(tmp_path, text, needle):
    path = tmp_path / "lm.csv"
    path.write_text(text)
    with pytest.raises(ComirError) as exc:
        read_points(path)
    msg = str(exc.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_tre_rtre_and_robustness_by_hand():
    fixed_shape = (30, 40)  # diagonal 50
    moving = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 5.0], [5.0, 25.0]])
    shift = np.array([3.0, 4.0])
    fixed = moving + shift
    fixed[3] = moving[3]  # this landmark did not move: registration makes it worse
    t = AffineTransform(np.array([[1.0, 0, 3.0], [0, 1, 4.0], [0, 0, 1]]))
    e = landmark_errors(t, fixed, moving, fixed_shape)
    np.testing.assert_allclose(e.tre, [0, 0, 0, 5])
    np.testing.assert_allclose(e.initial_tre, [5, 5, 5, 0])
    s = e.summary()
    assert s["diagonal_px"] == 50.0
    assert s["median_rtre"] == 0.0 and s["max_rtre"] == pytest.approx(0.1)
    assert s["robustness"] == 0.75
    np.testing.assert_allclose(warp_points(t, moving), moving + shift)
    with pytest.raises(ComirError, match="pair row by row"):
        landmark_errors(t, fixed[:3], moving, fixed_shape)


def test_points_outside_warn_once_and_are_kept():
    pts = np.array([[-3.0, 2.0], [5.0, 5.0], [12.0, 1.0]])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert check_inside(pts, (10, 10), "m.csv") == 2
    assert len([r for r in rec if issubclass(r.category, ComirWarning)]) == 1
    assert "2 of 3" in str(rec[0].message)


def test_cli_warp_points_matches_transform(tmp_path, capsys):
    t = RigidTransform.from_params(30.0, (2.0, -1.0), (10.0, 10.0)) @ DisplacementField(
        np.full((5, 5, 2), 0.5), spacing=(5.0, 5.0)
    )
    t.save(tmp_path / "t.json")
    pts = np.array([[1.0, 2.0], [7.5, 3.25], [40.0, -5.0]])
    write_points(tmp_path / "p.csv", pts)
    rc = main(["warp-points", str(tmp_path / "t.json"), str(tmp_path / "p.csv"),
               "--out", str(tmp_path / "w.csv")])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    np.testing.assert_allclose(read_points(tmp_path / "w.csv").points, t.apply(pts), atol=1e-12)
    assert (
        np.abs(t.apply(pts) - RigidTransform(t.transforms[1].matrix).apply(pts + 0.5)).max() < 1e-9
    )


def test_cli_warp_one_interpolation_dtype_kept_and_grid_checked(tmp_path, capsys, textured):
    h, w = 30, 36
    moving = np.rint(textured((h, w), seed=1) * 65535).astype(np.uint16)
    write_image(tmp_path / "m.tif", moving)
    write_image(tmp_path / "f.tif", np.zeros((h, w), np.uint16))
    rng = np.random.default_rng(0)
    field = DisplacementField.from_inverse(rng.uniform(-1, 1, (h, w, 2)))
    t = field @ RigidTransform.from_params(5.0, (1.0, 0.5), (17.5, 14.5))  # field last
    t.save(tmp_path / "t.json")
    argv = ["warp", str(tmp_path / "t.json"), str(tmp_path / "m.tif"), "--like"]
    rc = main([*argv, str(tmp_path / "f.tif"), "--out", str(tmp_path / "o.tif")])
    assert rc == 0, capsys.readouterr().err
    got = read_image(tmp_path / "o.tif")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, t.warp(moving, (h, w)))
    # the field was made for a 36x30 fixed image: a 72x60 one is refused, nothing written
    write_image(tmp_path / "big.tif", np.zeros((2 * h, 2 * w), np.uint16))
    rc = main([*argv, str(tmp_path / "big.tif"), "--out", str(tmp_path / "o2.tif")])
    err = capsys.readouterr().err
    assert rc == 2 and "t.json" in err and "fixed image is 72x60" in err
    assert not (tmp_path / "o2.tif").exists()
    # a transform file of another version
    (tmp_path / "v9.json").write_text(json.dumps({"format": "comir-transform/9", "type": "rigid"}))
    rc = main(["warp", str(tmp_path / "v9.json"), str(tmp_path / "m.tif"), "--like",
               str(tmp_path / "f.tif"), "--out", str(tmp_path / "o3.tif")])  # fmt: skip
    assert rc == 2 and "comir-transform/9" in capsys.readouterr().err


def test_register_with_landmarks_writes_tre_and_ngff(tmp_path: Path, capsys, textured):
    fixed = np.rint(textured((80, 96), seed=2) * 255).astype(np.uint8)
    truth = RigidTransform.from_params(0.0, (4.0, -3.0))  # moving -> fixed
    moving = truth.inverse().warp(fixed, fixed.shape, border="reflect")
    write_image(tmp_path / "fixed.png", fixed)
    write_image(tmp_path / "moving.png", moving)
    m_pts = np.array([[10.0, 12.0], [50.0, 40.0], [80.0, 70.0], [30.0, 60.0]])
    write_points(tmp_path / "m.csv", m_pts)
    write_points(tmp_path / "f.csv", truth.apply(m_pts))
    argv = ["register", str(tmp_path / "fixed.png"), str(tmp_path / "moving.png"),
            "--out", str(tmp_path / "out"), "--landmarks-fixed", str(tmp_path / "f.csv")]  # fmt: skip
    assert main(argv) == 2 and "go together" in capsys.readouterr().err
    assert main([*argv, "--landmarks-moving", str(tmp_path / "m.csv")]) == 0
    assert "rTRE median" in capsys.readouterr().out
    d = json.loads((tmp_path / "out" / "landmarks.json").read_text())
    assert d["n_landmarks"] == 4 and d["robustness"] == 1.0
    np.testing.assert_allclose(d["initial_tre_px"], 5.0)
    assert d["max_tre_px"] < 0.3
    assert d["max_rtre"] == pytest.approx(d["max_tre_px"] / math.hypot(80, 96))
    ngff = json.loads((tmp_path / "out" / "transform_ngff.json").read_text())
    (tr,) = ngff["coordinateTransformations"]
    reg = json.loads((tmp_path / "out" / "transform.json").read_text())
    want = np.asarray(reg["matrix"])[[1, 0]][:, [1, 0, 2]]  # (x, y) -> (y, x) order
    if tr["type"] == "translation":
        got = np.c_[np.eye(2), tr["translation"]]
    else:
        got = np.asarray(tr["affine"])
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_register_bad_landmarks_write_nothing(tmp_path: Path, capsys, textured):
    img = np.rint(textured((40, 40)) * 255).astype(np.uint8)
    write_image(tmp_path / "a.png", img)
    (tmp_path / "bad.csv").write_text("u,v\n1,2\n")
    write_points(tmp_path / "ok.csv", np.array([[1.0, 2.0]]))
    rc = main(["register", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--out",
               str(tmp_path / "out"), "--landmarks-fixed", str(tmp_path / "ok.csv"),
               "--landmarks-moving", str(tmp_path / "bad.csv")])  # fmt: skip
    assert rc == 2 and "bad.csv: no x/y columns" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
