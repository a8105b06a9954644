"""Tests of the bundled sample data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from comir import samples
from comir.data import load_pairs
from comir.errors import ComirError
from comir.io import normalize, read_image


def test_list_samples() -> None:
    assert samples.list_samples() == ["ihc", "sentinel2"]


@pytest.mark.parametrize(
    ("name", "shape", "a_ch", "b_ch"),
    [("sentinel2", (300, 300, 4), 3, 1), ("ihc", (512, 512, 2), 1, 1)],
)
def test_sample_shapes_and_channel_selection(name: str, shape: tuple, a_ch: int, b_ch: int) -> None:
    s = samples.sample(name)
    raw = s["raw"]
    assert raw.shape == shape and raw.dtype == np.uint16
    assert s["a"].shape == (*shape[:2], a_ch) and s["b"].shape == (*shape[:2], b_ch)
    assert s["layout"] == "channels" and s["description"]
    a_idx = list(range(*map(int, s["a_spec"].split(":")))) if ":" in s["a_spec"] else [0]
    np.testing.assert_array_equal(s["a"], raw[..., a_idx])
    np.testing.assert_array_equal(s["b"][..., 0], raw[..., int(s["b_spec"])])
    # the normalisation spec maps the data into about [0, 1] and uses the range
    for x in (s["a"], s["b"]):
        v = normalize(x, s["norm"])
        assert 0.0 <= v.min() and v.max() <= 1.25 and np.percentile(v, 99) > 0.15
    assert samples.sample_path(name) == s["path"] and s["path"].is_file()


def test_pixels_match_manifest_hash() -> None:
    manifest = json.loads((samples.DATA_DIR / "manifest.json").read_text())
    for name, entry in manifest.items():
        raw = samples.sample(name)["raw"]
        digest = hashlib.sha256(np.ascontiguousarray(raw).astype("<u2").tobytes()).hexdigest()
        assert digest == entry["sha256_pixels"], name


def test_sentinel2_channel_order_is_rgb_nir() -> None:
    """Vegetation reflects NIR far more than red: NIR > R on average, and G > B over it."""
    raw = samples.sample("sentinel2")["raw"].astype(float)
    r, g, b, nir = np.moveaxis(raw, -1, 0)
    ndvi = (nir - r) / (nir + r)
    veg = ndvi > 0.5
    assert veg.mean() > 0.1
    assert nir[veg].mean() > 3 * r[veg].mean() and g[veg].mean() > b[veg].mean()


def test_ihc_stains_differ() -> None:
    """Haematoxylin (nuclei) and DAB are different stains, not one channel twice."""
    s = samples.sample("ihc")
    h, d = s["a"][..., 0].astype(float), s["b"][..., 0].astype(float)
    assert abs(np.corrcoef(h.ravel(), d.ravel())[0, 1]) < 0.5


@pytest.mark.parametrize("name", ["sentinel2", "ihc"])
def test_export_halves_disjoint_and_cover(tmp_path, name: str) -> None:
    raw = samples.sample(name)["raw"]
    left_dir = samples.export_sample(name, tmp_path / "tr", split="train")
    right_dir = samples.export_sample(name, tmp_path / "ho", split="holdout")
    assert left_dir == tmp_path / "tr"
    (left_file,) = left_dir.iterdir()
    (right_file,) = right_dir.iterdir()
    left, right = read_image(left_file), read_image(right_file)
    w = raw.shape[1]
    assert left.shape[1] + right.shape[1] == w and left.shape[1] == w // 2
    np.testing.assert_array_equal(np.concatenate([left, right], axis=1), raw)
    # "left"/"right" are the same halves as "train"/"holdout"
    np.testing.assert_array_equal(
        read_image(
            samples.export_sample(name, tmp_path / "l", split="left")
            / left_file.name.replace("train", "left")
        ),
        left,
    )
    whole = samples.export_sample(name, tmp_path / "all")
    np.testing.assert_array_equal(read_image(whole / f"{name}.tif"), raw)


def test_export_loads_with_the_sample_spec(tmp_path) -> None:
    s = samples.sample("sentinel2")
    out = samples.export_sample("sentinel2", tmp_path / "d", split="train")
    ps = load_pairs(out, s["layout"], s["a_spec"], s["b_spec"], norm=s["norm"])
    assert [p.name for p in ps.pairs] == ["sentinel2_train"]
    half = s["raw"].shape[1] // 2
    np.testing.assert_array_equal(ps.images_a[0], normalize(s["a"][:, :half], s["norm"]))
    np.testing.assert_array_equal(ps.images_b[0], normalize(s["b"][:, :half], s["norm"]))


def test_unknown_names_and_splits(tmp_path) -> None:
    with pytest.raises(ComirError, match="ihc, sentinel2"):
        samples.sample("zurich")
    with pytest.raises(ComirError, match="ihc, sentinel2"):
        samples.model_dir("zurich")
    with pytest.raises(ComirError, match="split"):
        samples.export_sample("ihc", tmp_path, split="top")


def test_model_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(samples, "MODELS_DIR", tmp_path)
    with pytest.raises(ComirError, match="no shipped model"):
        samples.model_dir("ihc")
    (tmp_path / "ihc").mkdir()
    (tmp_path / "ihc" / "config.json").write_text("{}")
    (tmp_path / "ihc" / "model.safetensors").write_bytes(b"x")
    assert samples.model_dir("ihc") == tmp_path / "ihc"
