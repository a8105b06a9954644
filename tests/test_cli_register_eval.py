"""CLI tests of `comir register`, `make-eval`, `evaluate` and `compare`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comir.cli import main
from comir.io import read_image, write_image
from comir.transform import RigidTransform


def test_register_writes_outputs_and_aligns(tmp_path: Path, capsys, textured):
    fixed = np.rint(textured((96, 112)) * 255).astype(np.uint8)
    # moving(p) = fixed(M p): M maps moving -> fixed
    truth = RigidTransform.from_params(4.0, (3.0, -2.0), center=(55.5, 47.5))
    moving = truth.inverse().warp(fixed, fixed.shape, border="reflect")
    write_image(tmp_path / "fixed.png", fixed)
    write_image(tmp_path / "moving.png", moving)
    out = tmp_path / "out"
    rc = main(
        ["register", str(tmp_path / "fixed.png"), str(tmp_path / "moving.png"), "--out", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    for name in ("transform.json", "transform.tfm", "moving_registered.png", "overlay.png"):
        assert (out / name).stat().st_size > 0, name
    d = json.loads((out / "transform.json").read_text())
    assert d["method"] == "fft" and d["center"] == [55.5, 47.5]
    np.testing.assert_allclose(d["matrix"], truth.matrix, atol=0.05)
    np.testing.assert_allclose(d["angle_deg"], 4.0, atol=0.3)
    reg = read_image(out / "moving_registered.png")
    assert reg.shape == fixed.shape and reg.dtype == np.uint8
    inner = (slice(16, -16), slice(16, -16))
    err = np.abs(reg[inner].astype(float) - fixed[inner]).mean()
    before = np.abs(moving[inner].astype(float) - fixed[inner]).mean()
    assert err < 0.2 * before and err < 4.0
    tfm = (out / "transform.tfm").read_text()
    assert "Euler2DTransform_double_2_2" in tfm


def test_register_failure_exits_1(tmp_path: Path, monkeypatch, capsys, textured):
    import comir.register as reg
    from comir.register.base import failed

    monkeypatch.setattr(reg, "register", lambda *a, **k: failed("fft", "no peak"))
    img = np.rint(textured((40, 40)) * 255).astype(np.uint8)
    write_image(tmp_path / "f.png", img)
    rc = main(
        ["register", str(tmp_path / "f.png"), str(tmp_path / "f.png"), "--out", str(tmp_path / "o")]
    )
    assert rc == 1
    assert "registration failed: failed: no peak" in capsys.readouterr().err
    assert not (tmp_path / "o" / "transform.json").exists()


def test_register_sift_public_preset_option(tmp_path: Path, capsys, textured):
    fixed = np.rint(textured((128, 160), seed=5, sigma=1.5) * 255).astype(np.uint8)
    truth = RigidTransform.from_params(-7.0, (4.0, 3.0), center=(79.5, 63.5))
    moving = truth.inverse().warp(fixed, fixed.shape, order=3, border="reflect")
    write_image(tmp_path / "f.png", fixed)
    write_image(tmp_path / "m.png", moving)
    argv = ["register", str(tmp_path / "f.png"), str(tmp_path / "m.png"), "--out",
            str(tmp_path / "o"), "--method", "sift", "--option", "preset=public"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    d = json.loads((tmp_path / "o" / "transform.json").read_text())
    assert d["method"] == "sift"
    np.testing.assert_allclose(d["angle_deg"], -7.0, atol=0.3)
    np.testing.assert_allclose(d["translation"], [4.0, 3.0], atol=0.5)
    capsys.readouterr()
    assert main([*argv[:-1], "preset=paper"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "comir register: error: sift: unknown preset 'paper'; choose one of comir, public\n"
    )


def test_make_eval_evaluate_compare_cli(tmp_path: Path, capsys, textured):
    data = tmp_path / "data"
    for m in ("A", "B"):
        (data / m).mkdir(parents=True)
    img = textured((120, 150), seed=3, sigma=1.5)
    write_image(data / "A" / "s.png", np.rint(img * 255).astype(np.uint8))
    write_image(data / "B" / "s.png", np.rint(img * 255).astype(np.uint8))
    ev, res = tmp_path / "eval", tmp_path / "res"
    rc = main(
        ["make-eval", str(data), "--layout", "folders", "--a", "A", "--b", "B", "--out", str(ev),
         "--width", "48", "--levels", "1", "2", "--per-image", "3", "--seed", "1", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in ev.iterdir()) == [
        "eval_info.json",
        "patch_tlevel1",
        "patch_tlevel2",
    ]
    assert len(list((ev / "patch_tlevel2" / "B" / "test").glob("*_T.png"))) == 3
    info = json.loads((ev / "eval_info.json").read_text())
    assert (info["tiling"], info["trans_step_px"]) == ("context", pytest.approx(7 * 48 / 300))
    rc = main(
        ["evaluate", str(ev), "--method", "fft", "--out", str(res), "--workers", "1", "--quiet"]
    )
    assert rc == 0
    s = json.loads((res / "summary.json").read_text())
    assert s["n_pairs"] == 6 and s["success_rate"]["1"] == 1.0
    assert "success L1 1.000" in capsys.readouterr().out
    rc = main(["compare", str(res), str(res), "--out", str(tmp_path / "cmp")])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("| run | method | model | L1 | L2 | all |")
    assert (tmp_path / "cmp" / "compare.png").exists()


def test_make_eval_tiling_and_trans_step_options(tmp_path: Path, capsys, textured):
    data = tmp_path / "data"
    img = np.rint(textured((100, 150), seed=2) * 255).astype(np.uint8)
    for m in ("A", "B"):
        (data / m).mkdir(parents=True)
        write_image(data / m / "s.png", img)
    ev = tmp_path / "eval"
    argv = ["make-eval", str(data), "--out", str(ev), "--width", "48", "--levels", "3",
            "--tiling", "public", "--trans-step", "2.5", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "public tiling, translation step 2.5 px" in capsys.readouterr().out
    info = json.loads((ev / "eval_info.json").read_text())
    assert (info["tiling"], info["trans_step_px"], info["n_per_level"]) == ("public", 2.5, 6)
    rows = (ev / "patch_tlevel3" / "info_test.csv").read_text().splitlines()[1:]
    header = (ev / "patch_tlevel3" / "info_test.csv").read_text().splitlines()[0].split(",")
    tx = [abs(float(r.split(",")[header.index("Tx")])) for r in rows]
    assert len(tx) == 6 and all(5.0 <= t < 7.5 for t in tx)  # level 3: ±[2s, 3s)
    with pytest.raises(SystemExit):  # argparse: invalid choice
        main([*argv, "--tiling", "grid"])


@pytest.mark.parametrize(
    "argv_tail,needle",
    [
        (["evaluate", "{tmp}/missing", "--out", "{tmp}/r"], "evaluation folder not found"),
        (["evaluate", "{tmp}/bad", "--out", "{tmp}/r"], "lacks column(s) X2_Ref"),
        (["make-eval", "{tmp}/missing", "--out", "{tmp}/e"], "data folder not found"),
        (["compare", "{tmp}/bad"], "no summary.json"),
        (["register", "{tmp}/nofile.png", "{tmp}/nofile.png", "--out", "{tmp}/o"], "not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, argv_tail, needle):
    bad = tmp_path / "bad"
    (bad / "A" / "test").mkdir(parents=True)
    (bad / "B" / "test").mkdir(parents=True)
    (bad / "info_test.csv").write_text("Filename,X1_Ref,Y1_Ref\nx,0,0\n")
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv_tail])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and err.count("\n") == 1, err


def test_register_with_model_uses_own_encoders_and_warps_original(
    tmp_path: Path, monkeypatch, textured, tiny_run
):
    import torch

    import comir.register as reg
    from comir.register.base import RegistrationResult

    model = tiny_run(tmp_path / "run")
    rng = np.random.default_rng(0)
    rgb = np.rint(255 * np.stack([textured((48, 56), s) for s in (1, 2, 3)], -1)).astype(np.uint8)
    nir = np.rint(255 * textured((48, 56), 4)).astype(np.uint16) * 3 + rng.integers(0, 3, (48, 56))
    write_image(tmp_path / "rgb.png", rgb)
    write_image(tmp_path / "nir.tif", nir.astype(np.uint16))
    truth = RigidTransform.from_params(10.0, (2.0, -1.0), center=(27.5, 23.5))
    seen = {}

    def fake_register(fixed, moving, method="fft", **_):
        seen["fixed"], seen["moving"] = fixed, moving
        return RegistrationResult(truth, 1.0, 0.0, "ok", method)

    monkeypatch.setattr(reg, "register", fake_register)
    out = tmp_path / "o"
    argv = ["register", str(tmp_path / "rgb.png"), str(tmp_path / "nir.tif"), "--out", str(out),
            "--model", str(tmp_path / "run"), "--fixed-modality", "a"]  # fmt: skip
    assert main(argv) == 0
    with torch.no_grad():  # bits:8 normalisation of the run, then each modality's own encoder
        za = model(torch.from_numpy(rgb / 255.0).float().permute(2, 0, 1)[None], "a")
        zb = model(torch.from_numpy(nir / 255.0).float()[None, None], "b")
    np.testing.assert_allclose(seen["fixed"], za[0].permute(1, 2, 0).numpy(), atol=1e-5)
    np.testing.assert_allclose(seen["moving"], zb[0].permute(1, 2, 0).numpy(), atol=1e-5)
    warped = read_image(out / "nir_registered.tif")
    assert warped.dtype == np.uint16 and warped.shape == (48, 56)
    np.testing.assert_array_equal(warped, truth.warp(nir.astype(np.uint16), (48, 56)))
