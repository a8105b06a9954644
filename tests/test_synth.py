"""Tests of the synthetic multimodal pair generator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

from comir.data import load_pairs
from comir.errors import ComirError
from comir.io import read_image
from comir.synth import DIFFICULTIES, _bspline_matrix, synth_pair, synth_scene, write_synth


def _gradmag(x: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_gradient_magnitude(x.astype(np.float64), 2.0)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_deterministic_per_seed_and_seeds_differ(difficulty: str) -> None:
    a1, b1 = synth_pair(64, difficulty, seed=5)
    a2, b2 = synth_pair(64, difficulty, seed=5)
    a3, b3 = synth_pair(64, difficulty, seed=6)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert np.abs(a1 - a3).mean() > 0.02 and np.abs(b1 - b3).mean() > 0.02
    for x in (a1, b1):
        assert x.dtype == np.float32 and x.shape == (64, 64)
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.05


def test_shapes_channels_and_non_square() -> None:
    a, b = synth_pair((48, 80), "easy", seed=0, channels_a=3, channels_b=2)
    assert a.shape == (48, 80, 3) and b.shape == (48, 80, 2)
    # channels are correlated colour-like bands, not copies
    assert not np.allclose(a[..., 0], a[..., 1])
    s = synth_scene((40, 24), seed=1)
    assert s.a.shape == s.b.shape == s.field_id.shape == (40, 24)
    assert all(m.shape == (40, 24) and m.dtype == bool for m in s.masks.values())


def test_aligned_but_not_monotonically_related() -> None:
    """Edges coincide (gradient maps correlate) while raw intensities are not monotonic."""
    rhos, aligned, shifted = [], [], []
    for seed in range(8):
        s = synth_scene(128, "medium", seed=seed)
        ga, gb = _gradmag(s.a), _gradmag(s.b)
        aligned.append(np.corrcoef(ga.ravel(), gb.ravel())[0, 1])
        shifted.append(np.corrcoef(ga[8:, 8:].ravel(), gb[:-8, :-8].ravel())[0, 1])
        rhos.append(abs(stats.spearmanr(s.a.ravel(), s.b.ravel())[0]))
        # a monotonic relation would make rank-transformed A predict B well; it does not
        assert rhos[-1] < 0.8
    assert min(a - s for a, s in zip(aligned, shifted)) > 0.15
    assert np.mean(aligned) > 2 * np.mean(shifted)
    assert np.median(rhos) < 0.4


def test_shared_structures_show_edges_in_both() -> None:
    s = synth_scene(128, "easy", seed=2)
    shared = s.masks["shared"]
    edge = shared ^ ndimage.binary_erosion(shared, iterations=1)
    for img in (s.a, s.b):
        g = _gradmag(img)
        assert g[edge].mean() > 1.5 * g[~ndimage.binary_dilation(shared, iterations=4)].mean()


def test_each_modality_has_exclusive_structures() -> None:
    with_x = synth_scene(128, "medium", seed=3)
    without = synth_scene(128, "medium", seed=3, exclusive=False)
    a_only, b_only = with_x.masks["a_only"], with_x.masks["b_only"]
    assert a_only.sum() > 20 and b_only.sum() > 20
    assert not without.masks["a_only"].any() and not without.masks["b_only"].any()
    # blur spreads a change by up to 4 sigma (3 px in A, 6 px in B) along both axes
    square = np.ones((3, 3), bool)
    near_a = ndimage.binary_dilation(a_only, square, iterations=5)
    near_b = ndimage.binary_dilation(b_only, square, iterations=8)
    da = np.abs(with_x.a - without.a)
    db = np.abs(with_x.b - without.b)
    # A changes only around A's exclusive structures, B only around B's
    assert da[~near_a].max() == 0.0 and db[~near_b].max() == 0.0
    assert da[a_only].mean() > 0.03 and db[b_only].mean() > 0.03
    # the exclusive structures of A leave B untouched and vice versa
    assert db[a_only & ~near_b].max() == 0.0 and da[b_only & ~near_a].max() == 0.0


def test_difficulty_increases_noise() -> None:
    def residual(x: np.ndarray) -> float:  # high-frequency content (noise) estimate
        return float(np.median(np.abs(x - ndimage.median_filter(x, 3))))

    r = [residual(synth_pair(96, d, seed=4)[0]) for d in DIFFICULTIES]
    assert r[0] < r[1] < r[2]


def test_bspline_rows_are_partition_of_unity() -> None:
    m = _bspline_matrix(50, 50 // 7 + 5, 7.0)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    # the interpolation of a linear ramp is the ramp itself (B-splines reproduce lines)
    ramp = np.arange(m.shape[1], dtype=np.float64)
    np.testing.assert_allclose(m @ ramp, np.arange(50) / 7.0 + 1.0, atol=1e-4)


def test_bad_arguments() -> None:
    with pytest.raises(ComirError, match="difficulty"):
        synth_pair(64, "extreme")
    with pytest.raises(ComirError, match="too small"):
        synth_pair(8)


def test_write_synth_folders_layout(tmp_path) -> None:
    out = write_synth(tmp_path / "syn", n=3, size=(40, 56), seed=7, progress=False)
    names = sorted(p.name for p in (out / "A").iterdir())
    assert (
        names
        == sorted(p.name for p in (out / "B").iterdir())
        == [
            "synth_00000.png",
            "synth_00001.png",
            "synth_00002.png",
        ]
    )
    a0 = read_image(out / "A" / names[0])
    assert a0.dtype == np.uint16 and a0.shape == (40, 56)
    # pair i depends only on (seed, i): rewriting with a larger n keeps the first pairs
    out2 = write_synth(tmp_path / "syn2", n=4, size=(40, 56), seed=7, fmt="npy", progress=False)
    a0f = read_image(out2 / "A" / "synth_00000.npy")
    np.testing.assert_allclose(a0 / 65535.0, a0f, atol=1 / 65535)
    assert not list(out.glob("**/*.part"))


def test_write_synth_is_read_back_by_load_pairs(tmp_path) -> None:
    """Stored v means v / (2**bits - 1): ``--norm dtype`` gives the generator's floats back."""
    out = write_synth(tmp_path / "syn", n=4, size=32, seed=0, fmt="tif", bits=8, progress=False)
    ps = load_pairs(out, "folders", "A", "B", norm="dtype")
    assert [p.name for p in ps.pairs] == [f"synth_{i:05d}" for i in range(4)]
    assert ps.spec.norm_a == ps.spec.norm_b == "bits:8"
    a, b = synth_pair(
        32, "medium", seed=np.random.default_rng(np.random.SeedSequence(0).spawn(4)[2])
    )
    np.testing.assert_allclose(ps.images_a[2][..., 0], a, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(ps.images_b[2][..., 0], b, atol=0.5 / 255 + 1e-6)


def test_cli_synth(tmp_path) -> None:
    from comir.cli import main

    rc = main(["synth", "--out", str(tmp_path / "s"), "--n", "2", "--size", "32x48", "--seed", "1"])
    assert rc == 0
    a, _ = synth_pair(
        (32, 48), "medium", seed=np.random.default_rng(np.random.SeedSequence(1).spawn(2)[1])
    )
    np.testing.assert_allclose(
        read_image(tmp_path / "s" / "A" / "synth_00001.png") / 65535.0, a, atol=1e-4
    )
    with pytest.raises(SystemExit):  # argparse rejects an unknown difficulty
        main(["synth", "--out", str(tmp_path / "t"), "--n", "1", "--difficulty", "x"])
    assert main(["synth", "--out", str(tmp_path / "u"), "--n", "0"]) == 2  # ComirError
