"""`comir train` and `comir embed` end to end through ``comir.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_textured

from comir.cli import main
from comir.io import read_image, write_image

TOML = """
steps = 3
steps_per_epoch = 2
batch_size = 4
patch_size = 32
lr = 0.5
device = "cpu"

[model_overrides]
first_filters = 4
down_layers = [1]
bottleneck_layers = 1
growth = 4

[augment]
rotate = false
"""


def make_scenes(root: Path, n: int = 2, size: int = 40) -> Path:
    """4-channel uint16 files (RGB + NIR-like band): the ``channels`` layout."""
    for i in range(n):
        rgb = make_textured((size, size, 3), seed=i)
        nir = np.cos(4.0 * rgb[..., 1] - 2.0 * rgb[..., 0]) ** 2
        img = np.concatenate([rgb, nir[..., None]], -1)
        write_image(root / f"s{i}.tif", (img * 4095).astype(np.uint16))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cli")
    data = make_scenes(base / "data")
    cfg = base / "train.toml"
    cfg.write_text(TOML)
    run = base / "run"
    args = ["train", str(data), "--layout", "channels", "--a", "0:3", "--b", "3"]
    args += ["--out", str(run), "--config", str(cfg), "--lr", "0.002", "--quiet"]
    assert main(args) == 0
    return data, run


def test_train_writes_run_and_flags_override_config(trained, capsys):
    data, run = trained
    for name in ("model.safetensors", "config.json", "metrics.csv", "loss.png"):
        assert (run / name).is_file(), name
    info = json.loads((run / "config.json").read_text())
    assert info["train"]["lr"] == 0.002  # flag beats the TOML file
    assert info["train"]["steps"] == 3 and info["train"]["batch_size"] == 4  # from the TOML
    assert info["data"]["norm_a"] == "bits:12"  # 12-bit data in uint16 files
    assert info["data"]["channels_a"] == [0, 1, 2] and info["data"]["channels_b"] == [3]


def test_resume_without_data_argument(trained, tmp_path, capsys):
    data, run = trained
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.rglob("*"):
        if f.is_file():
            (copy / f.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(run)).write_bytes(f.read_bytes())
    assert main(["train", "--out", str(copy), "--resume", "--steps", "5", "--quiet"]) == 0
    assert "trained 5 steps" in capsys.readouterr().out
    assert json.loads((copy / "config.json").read_text())["train"]["steps"] == 5


def test_embed_outputs(trained, tmp_path, capsys):
    data, run = trained
    inputs = [str(p) for p in sorted(data.glob("*.tif"))]
    out = tmp_path / "out"
    assert main(["embed", str(run), "--modality", "B", *inputs, "--out", str(out)]) == 0
    assert "embedded 2 image(s)" in capsys.readouterr().out
    z = read_image(out / "s0.tif")
    assert z.shape == (40, 40) and z.dtype == np.float32
    # same numbers as the Python API
    from comir.embed import load_model

    ref = load_model(run, device="cpu").embed(read_image(data / "s0.tif"), "b")
    np.testing.assert_array_equal(z, ref[..., 0])
    args = ["embed", str(run), "--modality", "a", inputs[0], "--out", str(out)]
    assert main([*args, "--format", "png", "--tile", "24", "--overlap", "16"]) == 0
    png = read_image(out / "s0.png")
    assert png.dtype == np.uint8 and png.shape == (40, 40) and png.max() == 255


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_folder_exit_code(tmp_path, capsys):
    rc = main(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2
    err = _one_line_error(capsys)
    assert "nowhere" in err and "not found" in err
    assert not (tmp_path / "run").exists()
    assert main(["embed", str(tmp_path / "norun"), "--modality", "a", "x.tif"] + [
        "--out", str(tmp_path / "o")
    ]) == 2  # fmt: skip
    assert "norun" in _one_line_error(capsys)


def test_wrong_channel_count_at_embed(trained, tmp_path, capsys):
    data, run = trained
    two = write_image(tmp_path / "two.tif", np.zeros((32, 32, 2), np.uint16))
    out = tmp_path / "out"
    rc = main(["embed", str(run), "--modality", "a", str(two), "--out", str(out)])
    assert rc == 2
    err = _one_line_error(capsys)
    assert "two.tif" in err and "2 channel" in err
    assert not out.exists() or not any(out.iterdir())  # nothing partial written


def test_bad_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('data = "x"\nlearning_rate = 0.1\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "learning_rate" in _one_line_error(capsys)


def test_cosine_with_one_latent_channel_exits_2(tmp_path, capsys):
    args = ["train", str(tmp_path), "--critic", "cosine", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert err.startswith("comir train: error:") and "--latent-channels 3" in err
    assert not (tmp_path / "run").exists()


def test_collapse_warning_is_one_line_in_the_cli_voice(trained, tmp_path, capsys, monkeypatch):
    import comir.train as train_module

    data, _ = trained
    cfg = tmp_path / "train.toml"
    cfg.write_text(TOML)
    monkeypatch.setattr(train_module, "COLLAPSE_LOSS", float("inf"))  # every loss "collapses"
    args = ["train", str(data), "--layout", "channels", "--a", "0:3", "--b", "3"]
    assert main([*args, "--out", str(tmp_path / "run"), "--config", str(cfg), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("comir train: warning: the contrastive loss collapsed to ")
    assert err[0].count("comir train") == 1 and "raise --l2" in err[0]


def test_choices_come_from_the_constants():
    from comir.cli import build_parser
    from comir.losses import CRITICS
    from comir.runtime import DEVICES, PRECISIONS, TRAIN_PRECISIONS
    from comir.train_config import OPTIMIZERS

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    choices = {
        cmd: {a.dest: tuple(a.choices) for a in sub[cmd]._actions if a.choices}
        for cmd in ("train", "embed")
    }
    assert choices["train"]["critic"] == CRITICS and choices["train"]["optimizer"] == OPTIMIZERS
    assert choices["train"]["precision"] == TRAIN_PRECISIONS
    assert choices["embed"]["precision"] == PRECISIONS
    assert choices["train"]["device"] == choices["embed"]["device"] == DEVICES


def test_python_dash_m_comir_is_the_command():
    import subprocess
    import sys

    import comir

    out = subprocess.run(
        [sys.executable, "-m", "comir", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"comir {comir.__version__}"


def test_train_scale_range_is_stored_and_checked(trained, tmp_path, capsys):
    data, _ = trained
    cfg = tmp_path / "t.toml"
    cfg.write_text(TOML)
    base = ["train", str(data), "--layout", "channels", "--a", "0:3", "--b", "3", "--config",
            str(cfg), "--quiet"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "r"), "--scale-range", "0.8:1"]) == 0
    aug = json.loads((tmp_path / "r" / "config.json").read_text())["train"]["augment"]
    assert aug["scale_min"] == 0.8 and aug["scale_max"] == 1.0 and aug["rotate"] is False
    assert main([*base, "--out", str(tmp_path / "x"), "--scale-range", "2:1"]) == 2
    assert "--scale-range" in capsys.readouterr().err and not (tmp_path / "x").exists()
