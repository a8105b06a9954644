"""Batch registration (comir.register.batch, ``comir register-batch``): the same results as
``register_files`` per pair, resume, per-pair failures, pool / Dask parity, CLI exit codes."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from comir.errors import ComirError, ComirWarning
from comir.transform import RigidTransform, load_transform

ANGLES = (-8.0, 5.0, 12.0)
SIZE = (64, 72)


def _write_set(root: Path, textured, names=("p0", "p1", "p2"), landmarks=False) -> Path:
    """Rotated uint8 pairs under ``root/img`` and ``root/pairs.csv`` (relative paths);
    returns the CSV path."""
    from comir.io import write_image
    from comir.landmarks import write_points

    img = root / "img"
    img.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, name in enumerate(names):
        fixed = np.rint(textured(SIZE, seed=20 + k, sigma=2.0) * 255).astype(np.uint8)
        truth = RigidTransform.from_params(ANGLES[k % 3], (2.0, -1.5), center=(35.5, 31.5))
        moving = truth.inverse().warp(fixed, SIZE, order=3, border="reflect")
        write_image(img / f"f{k}.png", fixed)
        write_image(img / f"m{k}.png", np.clip(moving, 0, 255).astype(np.uint8))
        row = {"name": name, "fixed": f"img/f{k}.png", "moving": f"img/m{k}.png"}
        if landmarks:
            pts = np.array([[20.0, 20.0], [50.0, 25.0], [30.0, 45.0]])
            write_points(img / f"lf{k}.csv", truth.apply(pts))
            write_points(img / f"lm{k}.csv", pts)
            row.update(landmarks_fixed=f"img/lf{k}.csv", landmarks_moving=f"img/lm{k}.csv")
        rows.append(row)
    path = root / "pairs.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _matrices(out: Path, names) -> dict:
    return {n: load_transform(out / n / "transform.json").matrix for n in names}


def _summary(out: Path) -> dict:
    with open(out / "summary.csv", newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def test_batch_equals_register_files_per_pair(tmp_path, textured) -> None:
    from comir.register import register_files, register_pairs

    pairs = _write_set(tmp_path, textured, landmarks=True)
    rep = register_pairs(pairs, tmp_path / "out", workers=1, progress=False)
    assert (rep.n_ok, rep.n_failed, rep.n_skipped) == (3, 0, 0)
    rows = _summary(tmp_path / "out")
    for k, name in enumerate(("p0", "p1", "p2")):
        img = tmp_path / "img"
        lm = (img / f"lf{k}.csv", img / f"lm{k}.csv")
        ref = register_files(img / f"f{k}.png", img / f"m{k}.png", tmp_path / "ref" / name,
                             landmarks=lm)  # fmt: skip
        got = load_transform(tmp_path / "out" / name / "transform.json")
        np.testing.assert_array_equal(got.matrix, ref.transform.matrix)
        # the same files as register_files, plus the done marker
        written = {p.name for p in (tmp_path / "out" / name).iterdir()}
        assert written == {p.name for p in (tmp_path / "ref" / name).iterdir()} | {"done.json"}
        assert abs(float(rows[name]["angle_deg"]) - ANGLES[k]) < 0.5
        assert rows[name]["status"] == "ok"
        tre = ref.landmarks.summary()
        assert float(rows[name]["tre_median_px"]) == pytest.approx(tre["median_tre_px"])
        assert float(rows[name]["tre_max_px"]) == pytest.approx(tre["max_tre_px"])


def test_resume_skips_finished_and_redoes_partial(tmp_path, textured) -> None:
    from comir.register import register_pairs

    pairs = _write_set(tmp_path, textured)
    out = tmp_path / "out"
    register_pairs(pairs, out, workers=1, progress=False)
    first = _matrices(out, ("p0", "p1", "p2"))
    mtime = (out / "p0" / "transform.json").stat().st_mtime_ns
    (out / "p1" / "done.json").unlink()  # p1 now looks interrupted: partial folder
    (out / "p1" / "leftover.tmp").write_text("junk")
    rep = register_pairs(pairs, out, workers=1, progress=False)
    assert [r["status"] for r in rep.rows] == ["skipped", "ok", "skipped"]
    assert (rep.n_ok, rep.n_skipped) == (1, 2)
    assert (out / "p0" / "transform.json").stat().st_mtime_ns == mtime
    assert not (out / "p1" / "leftover.tmp").exists() and (out / "p1" / "done.json").is_file()
    again = _matrices(out, ("p0", "p1", "p2"))
    for n in first:
        np.testing.assert_array_equal(again[n], first[n])
    # skipped rows keep their stored values in the summary
    rows = _summary(out)
    assert abs(float(rows["p0"]["angle_deg"]) - ANGLES[0]) < 0.5
    # finished with fft: a rerun with another method is refused before it touches them
    with pytest.raises(ComirError, match="p0.*registered with other settings"):
        register_pairs(pairs, out, method="sift", workers=1, progress=False)
    assert (out / "p0" / "transform.json").stat().st_mtime_ns == mtime


def test_corrupt_moving_fails_only_its_pair(tmp_path, textured) -> None:
    from comir.register import register_pairs

    pairs = _write_set(tmp_path, textured)
    (tmp_path / "img" / "m1.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = register_pairs(pairs, out, workers=1, progress=False)
    mine = [str(w.message) for w in caught if issubclass(w.category, ComirWarning)]
    assert len(mine) == 1 and "pair p1" in mine[0] and "\n" not in mine[0]
    assert (rep.n_ok, rep.n_failed) == (2, 1)
    rows = _summary(out)
    assert rows["p1"]["status"].startswith("failed") and rows["p1"]["angle_deg"] == ""
    assert rows["p0"]["status"] == rows["p2"]["status"] == "ok"
    assert not (out / "p1" / "done.json").exists()


def test_input_errors_before_anything_runs(tmp_path, textured) -> None:
    from comir.register import register_pairs

    pairs = _write_set(tmp_path, textured, names=("a", "a", "b"))
    with pytest.raises(ComirError, match="duplicate pair name 'a' \\(rows 1 and 2\\)"):
        register_pairs(pairs, tmp_path / "out", progress=False)
    img = tmp_path / "img"
    with pytest.raises(ComirError, match=r"pair 'nope'.*nope\.png not found"):
        register_pairs([(img / "f0.png", img / "m0.png"), (img / "f1.png", img / "nope.png")],
                       tmp_path / "out", progress=False)  # fmt: skip
    with pytest.raises(ComirError, match="unknown option"):
        register_pairs([(img / "f0.png", img / "m0.png")], tmp_path / "out", bogus=1)
    assert not (tmp_path / "out").exists()
    # list input: names default to the moving stems
    rep = register_pairs([(img / "f0.png", img / "m0.png")], tmp_path / "out", progress=False)
    assert rep.rows[0]["name"] == "m0" and (tmp_path / "out" / "m0" / "done.json").is_file()


def test_cli_register_batch_exit_codes(tmp_path, textured, capsys) -> None:
    from comir.cli import main

    pairs = _write_set(tmp_path, textured, names=("x", "y", "z"))
    assert main(["register-batch", str(pairs), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "3 ok, 0 failed, 0 skipped" in capsys.readouterr().out
    assert main(["register-batch", str(pairs), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "0 ok, 0 failed, 3 skipped" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("fixed,other\nimg/f0.png,img/m0.png\n")
    assert main(["register-batch", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "no column moving" in capsys.readouterr().err
    bad.write_text("fixed,moving\nimg/f0.png,img/m0.png\nimg/f1.png,img/gone.png\n")
    assert main(["register-batch", str(bad), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "row 2" in err and "gone.png not found" in err and err.count("\n") == 1
    bad.write_text("fixed,moving,name\nimg/f0.png,img/m0.png,q\nimg/f1.png,img/m1.png,q\n")
    assert main(["register-batch", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "duplicate pair name 'q'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_pool_equals_in_process(tmp_path, textured) -> None:
    from comir.register import register_pairs

    pairs = _write_set(tmp_path, textured)
    names = ("p0", "p1", "p2")
    register_pairs(pairs, tmp_path / "one", workers=1, progress=False)
    rep = register_pairs(pairs, tmp_path / "pool", workers=2, progress=False)
    assert rep.n_ok == 3
    one, pool = _matrices(tmp_path / "one", names), _matrices(tmp_path / "pool", names)
    for n in names:
        np.testing.assert_array_equal(pool[n], one[n])


@pytest.mark.slow
def test_dask_local_equals_in_process(tmp_path, textured) -> None:
    pytest.importorskip("distributed")
    from comir.register import register_pairs

    pairs = _write_set(tmp_path, textured)
    (tmp_path / "img" / "m2.png").write_bytes(b"broken")
    names = ("p0", "p1")
    with pytest.warns(ComirWarning, match="pair p2"):
        register_pairs(pairs, tmp_path / "one", workers=1, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = register_pairs(pairs, tmp_path / "dask", scheduler="local:2", progress=False)
    assert (rep.n_ok, rep.n_failed) == (2, 1)
    assert sum("pair p2" in str(w.message) for w in caught) == 1
    one, dask = _matrices(tmp_path / "one", names), _matrices(tmp_path / "dask", names)
    for n in names:
        np.testing.assert_array_equal(dask[n], one[n])
    summary = json.loads((tmp_path / "dask" / "p0" / "done.json").read_text())
    assert summary["status"] == "ok"


def test_model_loaded_once_per_process(tmp_path, scene, tiny_run, monkeypatch) -> None:
    import comir.embed
    from comir.io import write_image
    from comir.register import register_files, register_pairs

    run = tmp_path / "run"
    tiny_run(run)
    pairs = []
    for k in range(2):
        fixed = scene(32, 32, seed=k)
        truth = RigidTransform.from_params(ANGLES[k], (1.0, 0.5), center=(15.5, 15.5))
        write_image(tmp_path / f"f{k}.png", fixed)
        write_image(tmp_path / f"m{k}.png", truth.inverse().warp(fixed, (32, 32), order=1))
        pairs.append((tmp_path / f"f{k}.png", tmp_path / f"m{k}.png"))
    calls = []
    real = comir.embed.load_model
    monkeypatch.setattr(comir.embed, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    rep = register_pairs(pairs, tmp_path / "out", model=str(run), workers=1, progress=False)
    assert rep.n_ok == 2 and len(calls) == 1
    for fixed, moving in pairs:
        ref = register_files(fixed, moving, tmp_path / "ref" / moving.stem, model=str(run))
        got = load_transform(tmp_path / "out" / moving.stem / "transform.json")
        np.testing.assert_array_equal(got.matrix, ref.transform.matrix)
