"""Training input statistics and the one-line warning for inputs outside them."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import TINY1

from comir import samples
from comir.embed import embed_files, load_model
from comir.errors import ComirWarning
from comir.input_stats import channel_stats, deviation
from comir.io import write_image


def comir_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ComirWarning)]


def holdout(name: str) -> np.ndarray:
    """The right half of a bundled scene: never seen in training, same distribution."""
    raw = samples.sample(name)["raw"]
    return raw[:, raw.shape[1] // 2 :]


def eight_bit(raw: np.ndarray) -> np.ndarray:
    """The scene as another sensor's 8-bit product: each channel stretched over 0..255."""
    lo, hi = np.percentile(raw, [1, 99], axis=(0, 1))
    return np.clip(np.rint((raw - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the rule
def test_rule_flags_scale_errors_not_content():
    rng = np.random.default_rng(0)
    train = [rng.uniform(0.2, 0.6, (40, 50, 2)).astype(np.float32)]
    stats = channel_stats(train)
    assert deviation(train[0], stats) is None
    assert deviation(train[0][:8, :8], stats) is None  # a small patch of the same data
    assert "channel 0" in deviation(train[0] / 8, stats)  # darker: median below p1 / 2
    assert deviation(train[0] * 3, stats) is not None  # brighter: median above 1.5 · p99
    shifted = train[0].copy()
    shifted[..., 1] -= 1.0
    assert "channel 1" in deviation(shifted, stats)  # any channel counts
    # data reaching down to 0 (no lower location bound): only a > 64× darker bright end warns
    sparse = [np.where(rng.random((60, 60, 1)) < 0.2, rng.uniform(0, 1, (60, 60, 1)), 0.0)]
    s0 = channel_stats(sparse)
    assert s0["p1"] == [0.0]
    assert deviation(sparse[0] / 20, s0) is None
    assert deviation(sparse[0] / 100, s0) is not None


def test_statistics_are_subsampled_uniformly_for_large_sets():
    rng = np.random.default_rng(1)
    images = [rng.random((100, 80, 1)).astype(np.float32), rng.random((50, 40, 1))]
    full = channel_stats(images)
    part = channel_stats(images, max_pixels=1000)
    assert full["pixels"] == 10_000 and 900 <= part["pixels"] <= 1000
    np.testing.assert_allclose(part["p50"], full["p50"], atol=0.05)


# ----------------------------------------------------------------------------- shipped models
@pytest.mark.parametrize("name", ["sentinel2", "ihc"])
def test_shipped_statistics_come_from_the_training_half(name, tmp_path):
    from comir.demo import sample_train_config
    from comir.input_stats import training_stats
    from comir.train import _load_data

    train_dir = samples.export_sample(name, tmp_path / "train", split="train")
    hold_dir = samples.export_sample(name, tmp_path / "holdout", split="holdout")
    pairs, _ = _load_data(sample_train_config(name, train_dir, hold_dir), None)
    stored = json.loads((samples.model_dir(name) / "config.json").read_text())["input_stats"]
    want = training_stats(pairs)
    assert (
        stored["a"]["pixels"]
        == want["a"]["pixels"]
        == pairs.images_a[0].shape[0] * (pairs.images_a[0].shape[1])
    )
    for m in "ab":
        for key in ("mean", "std", "p1", "p50", "p99"):
            np.testing.assert_allclose(stored[m][key], want[m][key], rtol=1e-5)


def test_sentinel2_model_warns_once_on_8bit_images():
    """8-bit RGB/NIR of another satellite through the bits:13 Sentinel-2 model."""
    model = load_model("sample:sentinel2", device="cpu")
    img = eight_bit(holdout("sentinel2"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.embed(img[:96, :96], "a", where="other_satellite.tif")
    (msg,) = comir_warnings(record)
    assert msg.startswith("other_satellite.tif: modality A intensities are far outside")
    assert "bits:13" in msg and "train on this data" in msg and "\n" not in msg

    patches = [img[:64, :64], holdout("sentinel2")[:64, :64], img[-64:, -64:]]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = model.embed_batch(patches, "b")
    assert len(out) == 3
    msgs = comir_warnings(record)
    assert [m.split(":")[0] for m in msgs] == ["image 0", "image 2"]  # one per flagged input


def test_training_distribution_gives_no_warning():
    """The held-out halves: whole (through embed) and every 64 px patch (the check alone)."""
    for name in ("sentinel2", "ihc"):
        model = load_model(f"sample:{name}", device="cpu")
        img = holdout(name)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            if name == "sentinel2":
                for m in "ab":
                    model.embed(img[:96, :96], m, where=f"{name}_holdout.tif")
            for m in "ab":
                x = model.data.prepare(img, m)
                for y in range(0, x.shape[0] - 63, 32):
                    for c in range(0, x.shape[1] - 63, 32):
                        assert not model.check_input(x[y : y + 64, c : c + 64], m, "patch")
        assert comir_warnings(record) == []


# ----------------------------------------------------------------------------- file paths
def test_file_embedding_warns_once_per_file_streamed_or_not(tmp_path, tiny_run, scene):
    """Old runs (no statistics) stay silent; with statistics every path warns once."""
    tiny_run(tmp_path / "run", TINY1)
    good = scene(96, 80, seed=1)
    dark = (scene(96, 80, seed=2) // 16).astype(np.uint8)
    paths = [write_image(tmp_path / "in" / f"{k}.tif", im) for k, im in (("good", good), ("dark", dark))]  # fmt: skip
    model = load_model(tmp_path / "run", device="cpu")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        embed_files(model, paths, "a", tmp_path / "old")
    assert comir_warnings(record) == []  # a run without statistics

    cfg = tmp_path / "run" / "config.json"
    info = json.loads(cfg.read_text())
    info["input_stats"] = {
        m: channel_stats([model.data.prepare(good, m)]) for m in "ab"
    }  # fmt: skip
    cfg.write_text(json.dumps(info))
    model = load_model(tmp_path / "run", device="cpu")
    for kw in ({}, {"tile": 32, "fmt": "npy"}):  # whole image; streamed in bands of tiles
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            embed_files(model, paths, "a", tmp_path / f"out{len(kw)}", **kw)
        (msg,) = comir_warnings(record)
        assert msg.startswith(f"{paths[1]}: modality A intensities")


def test_cli_embed_prints_one_warning_line(tmp_path, capsys):
    from comir.cli import main

    src = write_image(tmp_path / "other_satellite.tif", eight_bit(holdout("sentinel2"))[:96, :96])
    args = ["embed", "sample:sentinel2", str(src), "--modality", "b", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"comir embed: warning: {src}: modality B intensities are far")
    assert err[0].endswith("check --norm (the model was trained with bits:13, i.e. stored value / 8191) or train on this data")  # fmt: skip
