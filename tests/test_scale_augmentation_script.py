"""``scripts/scale_augmentation.py``: its coarser evaluation levels are block means."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from comir.io import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "scale_augmentation", ROOT / "scripts/scale_augmentation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("factor", [2, 4])
def test_block_mean_level_is_the_naive_block_mean(script, textured, tmp_path, factor):
    # fine texture (sigma 0.7) so that a decimation or a shifted block grid is far off
    img = np.rint(textured((264, 136, 2), seed=3, sigma=0.7) * 65535).astype(np.uint16)
    src = tmp_path / "src"
    write_image(src / "pair.tif", img)
    h, w = 264 // factor, 136 // factor
    naive = img.astype(np.float64).reshape(h, factor, w, factor, 2).mean((1, 3))
    level = script.block_mean_level(src / "pair.tif", factor)
    assert level.shape == (h, w, 2) and level.dtype == np.uint16
    assert np.abs(level - naive).max() <= 0.5 + 1e-9  # rounded to the stored integer type
    written = script.coarser(src, tmp_path / "dst", factor)
    np.testing.assert_array_equal(read_image(written / "pair.tif"), level)


def test_block_mean_level_rejects_a_missing_factor(script, textured, tmp_path):
    write_image(tmp_path / "a.tif", (textured((264, 136)) * 255).astype(np.uint8))
    with pytest.raises(SystemExit, match="no 3x block-mean level"):
        script.block_mean_level(tmp_path / "a.tif", 3)


def test_number_list_accepts_repeats_and_lists(script):
    assert script.number_list(["0.25", "0.5,1"]) == [0.25, 0.5, 1.0]
    assert script.number_list(["1,2,4"], int) == [1, 2, 4]
