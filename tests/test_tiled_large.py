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


def _small_model(seed: int = 0, **overrides):
    """The ``small`` preset (with ``overrides``) with random weights for 1-channel uint8."""
    from comir.data import DataSpec
    from comir.embed import ComirModel
    from comir.model import EncoderPair, tiramisu_config

    torch.manual_seed(seed)
    cfg = tiramisu_config("small", 1, 1, **overrides)
    net = EncoderPair(cfg, cfg).eval()
    spec = DataSpec(
        layout="folders", a="A", b="B", channels_a=None, channels_b=None,
        file_channels_a=1, file_channels_b=1, in_channels_a=1, in_channels_b=1,
        norm_a="bits:8", norm_b="bits:8",
    )  # fmt: skip
    return ComirModel(net, spec, {}, torch.device("cpu"))


def test_exact_overlap_of_presets():
    from comir.model import tiramisu_config
    from comir.tiling import exact_overlap, receptive_halo, receptive_radius

    for preset, halo, overlap in (("small", 67, 136), ("paper", 887, 1792)):
        cfg = tiramisu_config(preset, 1, 1)
        assert receptive_halo(cfg) == (halo, halo)
        assert exact_overlap(cfg) == overlap  # 2·halo rounded up to the pooling multiple
        assert halo <= receptive_radius(cfg)  # the old bound holds, and was loose


@pytest.mark.parametrize("overrides", [TINY1, TINY2, {"down_layers": [2, 1, 1]}])
def test_halo_equals_measured_dependency_extent(overrides):
    """Perturb whole input rows at every pooling phase (float64): the farthest output row
    that changes is exactly the computed halo away, on both sides."""
    from comir.model import Tiramisu, tiramisu_config
    from comir.tiling import receptive_halo

    torch.manual_seed(0)
    cfg = tiramisu_config("small", 1, 1, **{**TINY1, **overrides})
    net = Tiramisu(cfg).double().eval()
    mult = net.multiple
    x = torch.rand(1, 1, 128, 24, dtype=torch.float64)
    with torch.no_grad():
        base = net(x)
        before = after = 0
        for c in range(64, 64 + mult):
            x2 = x.clone()
            x2[0, 0, c] += 10.0
            rows = torch.nonzero((net(x2) - base)[0, 0].abs().amax(1) > 0).ravel()
            before, after = max(before, c - int(rows.min())), max(after, int(rows.max()) - c)
    assert receptive_halo(cfg) == (after, before)  # output p needs input p-before..p+after


def test_layout_is_balanced_and_minimal():
    from comir.tiling import _layout

    for size, tile, overlap, mult in ((2048, 1024, 136, 8), (1000, 256, 40, 4), (64, 64, 8, 8)):
        t, starts = _layout(size, tile, overlap, mult)
        n = 1 if size <= tile else -(-(size - overlap) // (tile - overlap))
        assert len(starts) == n and t <= tile and t % mult == 0
        assert all(s % mult == 0 for s in starts) and starts[0] == 0 and starts[-1] + t == size
        assert all(b - a <= t - overlap for a, b in zip(starts, starts[1:]))  # overlap kept
    assert _layout(2048, 1024, 136, 8) == (776, [0, 640, 1272])  # was 3 tiles of 1024


def test_plan_weights_sum_to_one_and_vanish_near_interior_edges():
    plan = plan_tiles(203, 157, tile=64, overlap=40, multiple=4, halo=(12, 9))
    assert plan.margins == (12, 9) and plan.overlap == 40
    for starts, n, size, ws in (
        (plan.ys, plan.th, plan.hp, plan.wy),
        (plan.xs, plan.tw, plan.wp, plan.wx),
    ):
        total = np.zeros(size)
        for s, wt in zip(starts, ws):
            total[s : s + n] += wt
            if s > 0:  # interior leading edge: no weight within the context before
                assert np.all(wt[:12] == 0) and wt[12] > 0
            if s + n < size:
                assert np.all(wt[-9:] == 0) and wt[-10] > 0
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
        assert all(s % 4 == 0 for s in starts) and starts[-1] + n == size


@pytest.mark.parametrize("overrides", [TINY2, {**TINY1, "down_layers": [2, 1, 1]}])
def test_exact_overlap_odd_sizes(overrides):
    """Tiled == whole (max |Δ| / std < 1e-5) at the computed overlap for odd sizes and
    2×2 to 3×3 tile grids (the ``small`` preset: the test below)."""
    m = _small_model(**overrides)
    ov = m.exact_overlap()
    assert (
        ov == -(-sum(m.halo()) // m.model.encoders["a"].multiple) * m.model.encoders["a"].multiple
    )
    for h, w in ((157, 203), (131, 97)):
        img = make_scene(h, w, seed=1)[..., 0]
        whole = m.embed(img, "a", max_pixels=None)
        tiled = m.embed(img, "a", tile=ov + 24)  # overlap=None: the exact one
        assert rel_err(tiled, whole) < 1e-5


def test_overlap_warning_names_the_exact_value():
    import warnings

    from comir.errors import ComirWarning

    m = _small_model()
    with pytest.warns(ComirWarning, match=r"--overlap 32 is below the 136 px .*--overlap 136"):
        m.tile_plan((600, 500), "a", 256, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ComirWarning)
        m.tile_plan((600, 500), "a", 256, 136)  # sufficient
        m.tile_plan((600, 500), "a", 256, 130)  # rounds up to 136 on the pooling grid
        m.tile_plan((600, 500), "a", 256)  # default
        m.tile_plan((200, 180), "a", 256, 32)  # one tile: no seams, no warning


def test_batching_tiles_changes_nothing():
    """One tile per forward pass vs all tiles of a row in one batch: the same output to
    float rounding (oneDNN picks kernels per batch size: 2e-6 of the std measured)."""
    from comir.infer import run_tiles

    m = _small_model(**TINY2)
    img = make_scene(151, 173, seed=2)[..., 0]
    x = m.data.prepare(img, "a")
    plan = m.tile_plan(img.shape, "a", 64)
    assert len(plan.xs) >= 3
    outs = []
    for batch in (1, 2**24):
        out = np.zeros((*img.shape, 1), np.float32)

        def write(r0, rows, out=out):
            out[r0 : r0 + rows.shape[0]] = rows

        def forward(t):
            return m._forward(t, "a")

        run_tiles(forward, lambda r0, r1: x[r0:r1], img.shape, write, plan, 1, batch_pixels=batch)
        outs.append(out)
    assert rel_err(outs[0], outs[1]) < 1e-5


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
    """The preset the issue is about: halo 67 px, default overlap 136 px."""
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
    tiled = m.embed(img, "a", tile=256)  # 2×2 tiles with the 136 px default overlap
    assert rel_err(tiled, whole) < 1e-5


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
