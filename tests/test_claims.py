"""The claims report (``scripts/paper_claims.py``, :mod:`comir.claims`): its statistics and,
end to end with ``--quick``, its structure."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from comir.claims import best_match_correlation, bootstrap_ci, channel_correlations
from comir.claims.sections import level_rates
from comir.equivariance import equivariance_correlation

ROOT = Path(__file__).resolve().parents[1]


def test_best_match_correlation_undoes_permutation_and_signs(textured) -> None:
    z = textured((40, 36, 3), seed=4).astype(np.float32)
    other = np.stack([-z[..., 2], z[..., 0], -z[..., 1]], axis=-1)  # channels (2, 0, 1)
    corr, perm, signs = best_match_correlation(z, other)
    assert corr == pytest.approx(1.0, abs=1e-9)
    # channel i of z is channel perm[i] of `other`, times signs[i]
    assert perm == (1, 2, 0) and signs == (1, -1, -1)
    for i in range(3):
        np.testing.assert_allclose(signs[i] * other[..., perm[i]], z[..., i], atol=1e-6)
    # the raw per-channel correlation does not see the match
    raw = np.diag(channel_correlations(z, other))
    assert np.all(np.abs(raw) < 0.5)


def test_best_match_correlation_of_independent_maps_is_small(textured) -> None:
    a = textured((64, 64, 2), seed=1, sigma=1.0)
    b = textured((64, 64, 2), seed=2, sigma=1.0)
    corr, _, _ = best_match_correlation(a, b)
    assert corr < 0.15
    naive = max(
        abs(np.corrcoef(a[..., i].ravel(), b[..., j].ravel())[0, 1]) for i in (0, 1) for j in (0, 1)
    )
    assert corr <= naive + 1e-12  # a mean over a permutation never beats the best single entry


def test_bootstrap_ci_constant_and_binary() -> None:
    assert bootstrap_ci(np.full(12, 0.75)) == (0.75, 0.75, 0.75)
    assert bootstrap_ci(np.ones(5)) == (1.0, 1.0, 1.0)
    v = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 1], float)
    mean, low, high = bootstrap_ci(v, n_boot=4000, seed=1)
    assert mean == pytest.approx(0.7)
    assert 0.3 < low < mean < high <= 1.0
    # the normal approximation for a proportion: mean ± 1.96 sqrt(p(1-p)/n) = [0.42, 0.98]
    assert low == pytest.approx(0.42, abs=0.08) and high == pytest.approx(0.98, abs=0.05)
    assert bootstrap_ci(v, n_boot=4000, seed=1) == (mean, low, high)  # seeded
    assert all(np.isnan(bootstrap_ci(np.array([]))))


def test_equivariance_curve_of_a_c4_equivariant_function_is_one_at_quarter_turns(textured):
    from scipy.ndimage import sobel

    def anisotropic(x):  # squared horizontal gradient: not rotation equivariant
        return sobel(x, axis=1) ** 2

    def c4(x):  # averaged over the four quarter turns: exactly C4 equivariant
        return sum(np.rot90(anisotropic(np.rot90(x, k)), -k) for k in range(4))

    img = textured((48, 48), seed=3, sigma=1.5)
    angles = np.array([0, 45, 90, 180, 270, 360], float)
    curve = equivariance_correlation(c4, img, angles)
    np.testing.assert_allclose(curve[[0, 2, 3, 4, 5]], 1.0, atol=1e-9)
    assert curve[1] < 0.995  # 45° is not a symmetry of the filter
    plain = equivariance_correlation(anisotropic, img, angles)
    assert plain[2] < 0.5  # the un-symmetrised filter is not equivariant at 90°


def test_level_rates_per_level_and_all() -> None:
    scored = {
        "labels": ["1", "1", "2", "2", "3", "3", "4", "4"],
        "success": np.array([1, 1, 1, 0, 0, 0, 1, 0], bool),
    }
    r = level_rates(scored, n_boot=100)
    assert [r[lv][0] for lv in ("1", "2", "3", "4", "all")] == [1.0, 0.5, 0.0, 0.5, 0.5]
    assert r["1"][1:] == [1.0, 1.0] and r["3"][1:] == [0.0, 0.0]
    assert r["n"] == {"1": 2, "2": 2, "3": 2, "4": 2, "all": 8}


# ---------------------------------------------------------------------------- end to end
RATE = re.compile(r"(\d\.\d\d) \[(\d\.\d\d), (\d\.\d\d)\]")
SECTIONS = (
    "## 1. Equivariance",
    "## 2. Seed stability",
    "## 3. CoMIR vs MI vs SIFT",
    "## 4. SIFT on CoMIRs",
    "## 5. Defaults",
)


def _check_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"), float)
    assert arr.shape[0] > 300 and arr.shape[1] > 500, (path, arr.shape)
    # a real plot: not blank, and many distinct grey levels (text, lines, bars)
    assert arr.std() > 10 and len(np.unique(arr)) > 50, path


@pytest.mark.slow
def test_paper_claims_quick_end_to_end(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("paper_claims", ROOT / "scripts/paper_claims.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "claims.md").read_text()
    positions = [md.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "python scripts/paper_claims.py --quick" in md
    rates = [tuple(map(float, m)) for m in RATE.findall(md)]
    assert len(rates) > 50
    assert all(0 <= lo <= mean <= hi <= 1 for mean, lo, hi in rates)
    for name in ("equivariance", "seeds", "methods", "sift", "defaults"):
        assert f"](claims/{name}.png)" in md
        _check_png(tmp_path / "claims" / f"{name}.png")
    results = json.loads((tmp_path / "claims" / "results.json").read_text())
    # the report's numbers are the script's own: the SIFT row equals results.json
    after = results["sift"]["sentinel2"]["settings"]["after (comir preset)"]["success"]["all"]
    assert f"| sentinel2 | after (comir preset) | {after[0]:.2f} [{after[1]:.2f}, " in md
    assert len(results["equivariance"]["angles"]) == 9  # 0..360 in 45° steps (quick)
    for pair in results["seeds"]["pairs"]:
        for m in "ab":
            assert abs(pair[m]["raw"]) <= pair[m]["best"] + 1e-9 <= 1 + 1e-9
