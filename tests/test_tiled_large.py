"""Tiled inference for big images: exact default overlap, bounded bands, streamed files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import TINY1, TINY2, make_scene, make_tiny_run

import comir.embed as embed_mod
from comir.cli import main
from comir.embed import embed_files, load_model
from comir.io import read_image, write_image
from comir.tiling import plan_tiles


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / std(b): the acceptance measure for tiled vs whole output."""
    return float(np.abs(a - b).max() / b.std())


def test_exact_overlap_of_presets():
    from comir.embed import ComirModel
    from comir.model import EncoderPair, tiramisu_config
    from comir.tiling import receptive_radius

    for preset, radius, overlap in (("small", 74, 160), ("paper", 950, 1984)):
        net = EncoderPair(tiramisu_config(preset, 1, 1), tiramisu_config(preset, 1, 1))
        m = ComirModel(net, None, {}, torch.device("cpu"))
        assert receptive_radius(net.encoders["a"].config) == radius
        mult = net.encoders["a"].multiple
        # 2·radius + one pooling cell of ramp, on the pooling grid
        assert m.exact_overlap() == overlap == -(-(2 * radius + mult) // mult) * mult


def test_plan_weights_sum_to_one_and_vanish_near_interior_edges():
    plan = plan_tiles(203, 157, tile=64, overlap=40, multiple=4, radius=12)
    assert plan.margin == 12 and plan.overlap == 40
    total_y = np.zeros(plan.hp)
    for y, wy in zip(plan.ys, plan.wy):
        total_y[y : y + plan.th] += wy
        if y > 0:  # interior top edge: no weight within the receptive radius
            assert np.all(wy[: plan.margin] == 0)
        if y + plan.th < plan.hp:
            assert np.all(wy[-plan.margin :] == 0)
    np.testing.assert_allclose(total_y, 1.0, atol=1e-6)
    assert all(y % 4 == 0 for y in plan.ys) and plan.ys[-1] + plan.th == plan.hp


def test_default_overlap_is_exact_and_too_small_is_not(tmp_path: Path):
    make_tiny_run(tmp_path / "run", TINY2, latent=2)
    m = load_model(tmp_path / "run", device="cpu")
    img = make_scene(100, 117, seed=4)
    whole = m.embed(img, "a", max_pixels=None)
    tiled = m.embed(img, "a", tile=m.exact_overlap() + 8)  # overlap=None: exact
    assert rel_err(tiled, whole) < 1e-4
    rough = m.embed(img, "a", tile=48, overlap=0)
    assert rel_err(rough, whole) > 1e-3  # seams: the comparison has teeth


def test_small_preset_default_tiling_is_exact(tmp_path: Path):
    """The preset the issue is about: radius 74 px, default overlap 160 px."""
    from comir.data import DataSpec
    from comir.embed import ComirModel
    from comir.model import EncoderPair, tiramisu_config

    torch.manual_seed(0)
    net = EncoderPair(tiramisu_config("small", 1, 1), tiramisu_config("small", 1, 1)).eval()
    spec = DataSpec(
        layout="folders", a="A", b="B", channels_a=None, channels_b=None,
        file_channels_a=1, file_channels_b=1, in_channels_a=1, in_channels_b=1,
        norm_a="bits:8", norm_b="bits:8",
    )  # fmt: skip
    m = ComirModel(net, spec, {}, torch.device("cpu"))
    img = make_scene(345, 333, seed=1)[..., 0]
    whole = m.embed(img, "a", max_pixels=None)
    tiled = m.embed(img, "a", tile=256)  # 2×2 tiles with the 160 px default overlap
    assert rel_err(tiled, whole) < 1e-4


def test_bands_are_bounded_by_the_tile(tmp_path: Path):
    """The engine only ever asks for ≤ tile (+ padding) rows and writes every row once."""
    make_tiny_run(tmp_path / "run", TINY1)
    m = load_model(tmp_path / "run", device="cpu")
    img = make_scene(301, 97, seed=2)
    x = m.data.prepare(img, "b")
    reads, writes = [], []
    out = np.zeros((301, 97, 1), np.float32)

    def read_rows(r0, r1):
        reads.append((r0, r1))
        return x[r0:r1]

    def write_rows(r0, rows):
        writes.append((r0, rows.shape[0]))
        out[r0 : r0 + rows.shape[0]] = rows

    plan = m.embed_rows(read_rows, (301, 97), "b", write_rows, tile=40, overlap=20)
    assert len(plan.ys) > 10
    assert max(r1 - r0 for r0, r1 in reads) <= 40
    assert writes[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(writes, writes[1:]))
    assert sum(n for _, n in writes) == 301
    assert rel_err(out, m.embed(img, "b", max_pixels=None)) < 1e-4


def test_auto_tiling_above_max_pixels(tmp_path: Path, monkeypatch):
    make_tiny_run(tmp_path / "run", TINY1)
    m = load_model(tmp_path / "run", device="cpu")
    img = make_scene(90, 100, seed=3)
    calls = []
    orig = embed_mod.ComirModel.embed_rows

    def spy(self, *a, **k):
        calls.append(k["tile"])
        return orig(self, *a, **k)

    monkeypatch.setattr(embed_mod.ComirModel, "embed_rows", spy)
    monkeypatch.setattr(embed_mod, "DEFAULT_TILE", 48)
    whole = m.embed(img, "a")  # 9000 px, below the default budget
    assert calls == []
    tiled = m.embed(img, "a", max_pixels=5000)
    assert calls == [48] and rel_err(tiled, whole) < 1e-4


@pytest.mark.parametrize("fmt", ["tif", "npy"])
def test_streamed_file_embedding_equals_whole(tmp_path: Path, fmt: str):
    make_tiny_run(tmp_path / "run", TINY2, latent=3)
    m = load_model(tmp_path / "run", device="cpu")
    img = make_scene(211, 150, seed=5)
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, img, tile=(32, 32), compression="zlib", photometric="rgb",
                     extrasamples=["unspecified"])  # fmt: skip
    whole = m.embed(read_image(src), "a", max_pixels=None)
    (out,) = embed_files(m, [src], "a", tmp_path / "o", fmt=fmt, tile=96, progress=False)
    if fmt == "tif":
        with tifffile.TiffFile(out) as tf:
            assert tf.is_bigtiff and tf.pages[0].compression == 1
    z = read_image(out)
    assert z.shape == whole.shape and z.dtype == np.float32
    assert rel_err(z, whole) < 1e-4
    assert not list((tmp_path / "o").glob(".*.part"))


def test_cli_embed_tile_and_auto(tmp_path: Path, capsys):
    make_tiny_run(tmp_path / "run", TINY1)
    img = make_scene(120, 90, seed=6)
    write_image(tmp_path / "im.tif", img)
    args = ["embed", str(tmp_path / "run"), str(tmp_path / "im.tif"), "--modality", "b"]
    assert main([*args, "--out", str(tmp_path / "w"), "--max-pixels", "0", "--quiet"]) == 0
    assert main([*args, "--out", str(tmp_path / "t"), "--tile", "48", "--quiet"]) == 0
    assert main([*args, "--out", str(tmp_path / "a"), "--max-pixels", "4000", "--quiet"]) == 0
    whole = read_image(tmp_path / "w" / "im.tif")
    assert rel_err(read_image(tmp_path / "t" / "im.tif"), whole) < 1e-4
    assert rel_err(read_image(tmp_path / "a" / "im.tif"), whole) < 1e-4
    assert main([*args, "--out", str(tmp_path / "e"), "--tile", "8"]) == 2
    assert "too small" in capsys.readouterr().err
