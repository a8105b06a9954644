"""Tests for comir.io: image files in and out, the N-bit convention, intensity helpers.

Reference values come from independent code: files are written or decoded with tifffile,
OpenCV or Pillow directly, and scalings are recomputed with plain NumPy in float64.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from comir import io
from comir.errors import ComirError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- round trips
def _random(shape, dtype, top=None) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return RNG.random(shape).astype(dtype)
    hi = np.iinfo(dtype).max if top is None else top
    return RNG.integers(0, hi, shape, endpoint=True).astype(dtype)


ROUND_TRIPS = {
    "png-u8-grey": ("x.png", (17, 23), np.uint8, None),
    "png-u8-rgb": ("x.png", (17, 23, 3), np.uint8, None),
    "png-u16-grey": ("x.png", (17, 23), np.uint16, None),
    "png-u16-rgba": ("x.png", (17, 23, 4), np.uint16, None),
    "png-12bit-in-u16": ("x.png", (17, 23), np.uint16, 4095),
    "tif-u8": ("x.tif", (17, 23), np.uint8, None),
    "tif-u16-rgb": ("x.tif", (17, 23, 3), np.uint16, None),
    "tif-12bit-in-u16": ("x.tiff", (17, 23, 2), np.uint16, 4095),
    "tif-f32": ("x.tif", (17, 23), np.float32, None),
    "tif-f32-5ch": ("x.tif", (17, 23, 5), np.float32, None),
    "npy-f64-2ch": ("x.npy", (17, 23, 2), np.float64, None),
    "npy-i16": ("x.npy", (17, 23), np.int16, None),
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_write_read_round_trip_is_exact(tmp_path: Path, case: str) -> None:
    name, shape, dtype, top = ROUND_TRIPS[case]
    img = _random(shape, dtype, top)
    assert io.write_image(tmp_path / name, img) == tmp_path / name
    back = io.read_image(tmp_path / name)
    assert back.dtype == img.dtype and back.shape == img.shape
    np.testing.assert_array_equal(back, img)
    assert not list(tmp_path.glob(".*.part"))


def test_colour_png_channel_order_matches_pillow(tmp_path: Path) -> None:
    """write_image/read_image use RGB(A) order, as an independent decoder sees it."""
    rgb = _random((9, 11, 3), np.uint8)
    io.write_image(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), rgb)
    rgba = _random((9, 11, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "p.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "p.png"), rgba)


def test_tiff_written_by_tifffile_planar_and_interleaved(tmp_path: Path) -> None:
    planar = _random((4, 20, 26), np.uint16, 4095)  # C×H×W, as many multiband exports
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="minisblack", planarconfig="separate")
    np.testing.assert_array_equal(io.read_image(tmp_path / "p.tif"), np.moveaxis(planar, 0, -1))
    inter = _random((20, 26, 4), np.uint8)
    tifffile.imwrite(tmp_path / "i.tif", inter, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(io.read_image(tmp_path / "i.tif"), inter)
    # a single-channel image stored as (1, H, W) comes back as (H, W)
    tifffile.imwrite(tmp_path / "s.tif", planar[:1])
    np.testing.assert_array_equal(io.read_image(tmp_path / "s.tif"), planar[0])


def test_written_tiff_is_read_by_tifffile(tmp_path: Path) -> None:
    img = _random((12, 10, 3), np.float32)
    io.write_image(tmp_path / "f.tif", img)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "f.tif"), img)


def test_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 250  # pure red survives JPEG compression closely
    assert cv2.imwrite(str(tmp_path / "r.jpg"), rgb[..., ::-1])
    back = io.read_image(tmp_path / "r.jpg")
    assert back.shape == (16, 16, 3)
    assert back[..., 0].min() > 230 and back[..., 1:].max() < 20


# ----------------------------------------------------------------------------- the N-bit convention
@pytest.mark.parametrize("bits,dtype", [(8, np.uint8), (16, np.uint16)])
def test_unit_float_conversions_are_exact_inverses(bits: int, dtype) -> None:
    v = np.arange(2**bits, dtype=dtype)
    x = io.to_unit_float(v)
    assert x.dtype == np.float32 and x[0] == 0.0 and x[-1] == 1.0
    np.testing.assert_array_equal(x, (v / float(2**bits - 1)).astype(np.float32))
    back = io.from_unit_float(x, bits)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, v)


def test_from_unit_float_rounds_and_clips() -> None:
    x = np.array([-0.5, 0.0, (7 + 0.4) / 255, (7 + 0.6) / 255, 1.0, 1.5])
    np.testing.assert_array_equal(io.from_unit_float(x, 8), [0, 0, 7, 8, 255, 255])
    assert io.from_unit_float(np.array([0.5]), 16)[0] == 32768  # rint(32767.5), half to even
    with pytest.raises(ValueError, match="8 or 16"):
        io.from_unit_float(x, 12)


def test_to_unit_float_keeps_floats() -> None:
    x = np.array([[-1.0, 2.5]], np.float64)
    out = io.to_unit_float(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x.astype(np.float32))


def test_unit_max_and_infer_bits() -> None:
    assert [io.unit_max(n) for n in (1, 8, 12, 16)] == [1, 255, 4095, 65535]
    cases = {0: 8, 255: 8, 256: 10, 4095: 12, 4096: 14, 16383: 14, 65535: 16, 65536: 32}
    assert {v: io.infer_bits(v) for v in cases} == cases


# ----------------------------------------------------------------------------- normalize
def test_normalize_bits_divides_by_two_to_the_n_minus_one() -> None:
    v8 = np.arange(256, dtype=np.uint8)
    x = io.normalize(v8, "bits:8")
    assert x.dtype == np.float32 and x[255] == 1.0  # exactly, not 255/256
    np.testing.assert_array_equal(x, (v8 / 255.0).astype(np.float32))
    v12 = np.arange(4096, dtype=np.uint16)
    np.testing.assert_array_equal(io.normalize(v12, "bits:12"), (v12 / 4095.0).astype(np.float32))
    logged = io.normalize(v12, "bits:12", log=True)
    np.testing.assert_allclose(logged, np.log1p(v12 / 4095.0), rtol=1e-6)


def test_normalize_none_and_percentile() -> None:
    img = _random((30, 40, 2), np.uint16)
    np.testing.assert_array_equal(io.normalize(img, "none"), img.astype(np.float32))
    np.testing.assert_array_equal(io.normalize(img, "percentile"), io.percentile_scale(img))
    neg = np.array([[-2.0, 3.0]], np.float32)
    np.testing.assert_allclose(io.normalize(neg, "none", log=True), [[0.0, np.log1p(3.0)]])


@pytest.mark.parametrize("word", ["auto", "dtype"])
def test_normalize_rejects_set_level_words(word: str) -> None:
    with pytest.raises(ComirError, match=f"'{word}'.*resolve_norm"):
        io.normalize(np.zeros((2, 2), np.uint16), word)


@pytest.mark.parametrize("bad", ["bits:x", "bits:0", "bits:40", "minmax", ""])
def test_normalize_rejects_invalid_specs(bad: str) -> None:
    with pytest.raises(ComirError, match="invalid normalisation"):
        io.normalize(np.zeros((2, 2), np.float32), bad)


# ----------------------------------------------------------------------------- scaling helpers
def _naive_percentile_scale(img: np.ndarray, low: float, high: float) -> np.ndarray:
    x = img.astype(np.float64)
    lo, hi = np.percentile(x, low), np.percentile(x, high)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def test_percentile_scale_matches_numpy_per_channel_and_global() -> None:
    img = _random((25, 31, 3), np.float32) * np.array([1.0, 50.0, 1e4], np.float32)
    out = io.percentile_scale(img, 2.0, 98.0)
    assert out.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(
            out[..., c], _naive_percentile_scale(img[..., c], 2.0, 98.0), atol=1e-5
        )
    glob = io.percentile_scale(img, 0.5, 99.5, per_channel=False)
    np.testing.assert_allclose(glob, _naive_percentile_scale(img, 0.5, 99.5), atol=1e-5)
    grey = io.percentile_scale(img[..., 0])  # 2-D input, default 0.5 / 99.5
    np.testing.assert_allclose(grey, _naive_percentile_scale(img[..., 0], 0.5, 99.5), atol=1e-5)


def test_percentile_scale_constant_channel_is_zero() -> None:
    img = np.stack([np.full((8, 8), 7.0), np.arange(64.0).reshape(8, 8)], -1)
    out = io.percentile_scale(img)
    np.testing.assert_array_equal(out[..., 0], 0.0)
    assert np.isfinite(out).all() and out[..., 1].max() > 0.99


def test_standardize_matches_numpy() -> None:
    img = _random((20, 30, 3), np.float32) * 5 + 2
    z = io.standardize(img)
    x = img.astype(np.float64)
    np.testing.assert_allclose(z, (x - x.mean()) / x.std(), atol=1e-5)
    per_channel = io.standardize(img, axis=(0, 1))
    np.testing.assert_allclose(per_channel.mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(per_channel.std(axis=(0, 1)), 1.0, atol=1e-5)
    np.testing.assert_array_equal(io.standardize(np.full((4, 4), 3.0)), 0.0)


def test_standardize_with_reference_statistics() -> None:
    ref = _random((20, 30), np.float32)
    half = ref[:10] * 0.5  # other size and scale: scaled by the reference's statistics
    z = io.standardize(half, reference=ref)
    r = ref.astype(np.float64)
    np.testing.assert_allclose(z, (half - r.mean()) / r.std(), atol=1e-5)


# ----------------------------------------------------------------------------- resolve_norm
def test_resolve_norm_auto_uses_the_data_maximum() -> None:
    twelve = [_random((6, 6), np.uint16, 300), _random((6, 6), np.uint16, 4000)]
    twelve[1][0, 0] = 4000
    assert io.resolve_norm("auto", twelve) == "bits:12"  # largest value of the whole set
    assert io.resolve_norm("auto", twelve[:1]) in ("bits:8", "bits:10")
    assert io.resolve_norm("auto", [np.full((2, 2), 255, np.uint16)]) == "bits:8"


def test_resolve_norm_dtype_uses_the_storage_type() -> None:
    twelve = [_random((6, 6), np.uint16, 4095)]
    assert io.resolve_norm("dtype", twelve) == "bits:16"
    assert io.resolve_norm("dtype", [np.zeros((2, 2), np.uint8)]) == "bits:8"


@pytest.mark.parametrize("word", ["auto", "dtype"])
def test_resolve_norm_floats_get_none(word: str) -> None:
    assert io.resolve_norm(word, [np.full((2, 2), 7.5, np.float32)]) == "none"


def test_resolve_norm_passes_concrete_specs_and_rejects_bad_ones() -> None:
    imgs = [np.zeros((2, 2), np.uint16)]
    for spec in ("bits:12", "percentile", "none"):
        assert io.resolve_norm(spec, imgs) == spec
    with pytest.raises(ComirError, match="invalid normalisation"):
        io.resolve_norm("bits:99", imgs)


# ----------------------------------------------------------------------------- channels
def test_parse_and_select_channels() -> None:
    assert io.parse_channels("0:3", 4) == [0, 1, 2]
    assert io.parse_channels("1:", 4) == [1, 2, 3]
    assert io.parse_channels("3", 4) == [3]
    assert io.parse_channels("0, 2", 4) == [0, 2]
    assert io.parse_channels(None, 2) == io.parse_channels(":", 2) == [0, 1]
    with pytest.raises(ComirError, match=r"scene\.tif.*'4'.*out of range.*0\.\.3"):
        io.parse_channels("4", 4, where="scene.tif")
    with pytest.raises(ComirError, match="invalid channel spec"):
        io.parse_channels("a:b", 4)
    img = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(io.select_channels(img, [3, 0]), img[..., [3, 0]])
    assert io.select_channels(img[..., 0], None).shape == (2, 3, 1)


# ----------------------------------------------------------------------------- bad files
def _truncated(path: Path, img: np.ndarray) -> None:
    io.write_image(path, img)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _bad_file(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Write the broken file of ``case``; return it and a word the message must hold."""
    big = _random((64, 64, 3), np.uint8)
    if case == "missing":
        return tmp_path / "nowhere.png", "not found"
    if case == "empty":
        (tmp_path / "empty.tif").write_bytes(b"")
        return tmp_path / "empty.tif", "empty"
    if case == "folder":
        (tmp_path / "dir.png").mkdir()
        return tmp_path / "dir.png", "folder"
    if case in ("truncated-png", "truncated-tif"):
        path = tmp_path / ("half.png" if case == "truncated-png" else "half.tif")
        _truncated(path, big)
        return path, "corrupt"
    if case in ("nan-tif", "inf-tif"):
        img = RNG.random((8, 8)).astype(np.float32)
        img[2, 3] = np.nan if case == "nan-tif" else np.inf
        tifffile.imwrite(tmp_path / f"{case}.tif", img)
        return tmp_path / f"{case}.tif", "NaN or Inf"
    if case == "not-an-image":
        np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4, 5)))
        return tmp_path / "cube.npy", "2-D image"
    (tmp_path / "x.bmp").write_bytes(b"BM not really")
    return tmp_path / "x.bmp", "unsupported file type"


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "folder",
        "truncated-png",
        "truncated-tif",
        "nan-tif",
        "inf-tif",
        "not-an-image",
        "suffix",
    ],
)
def test_bad_files_raise_one_line_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path, word = _bad_file(tmp_path, case)
    with pytest.raises(ComirError) as err:
        io.read_image(path)
    msg = str(err.value)
    assert str(path) in msg and word in msg and "\n" not in msg


# ----------------------------------------------------------------------------- atomic writes
def test_failed_write_leaves_no_part_file_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    io.write_image(target, np.full((4, 4), 9, np.uint8))
    before = target.read_bytes()
    with pytest.raises(ComirError, match=r"out\.png.*uint8 or uint16"):
        io.write_image(target, np.zeros((4, 4), np.float32))  # PNG cannot hold floats
    with pytest.raises(ComirError, match=r"out\.png.*1, 3 or 4 channels"):
        io.write_image(target, np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ComirError, match="unsupported output type"):
        io.write_image(tmp_path / "out.bmp", np.zeros((4, 4), np.uint8))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_atomic_path_renames_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "notes.txt"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        assert tmp.parent == target.parent and tmp.name.endswith(".txt.part")
        raise RuntimeError("interrupted")
    assert list(target.parent.iterdir()) == []
    io.write_text(target, "done\n")
    assert target.read_text() == "done\n"
    assert [p.name for p in target.parent.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_single_channel_arrays_write_as_grey_images(tmp_path: Path, suffix: str) -> None:
    """(H, W, 1) arrays (what warping a one-band image returns) write as (H, W) images;
    tifffile itself refuses them with planarconfig contig."""
    import tifffile

    img = (np.arange(48, dtype=np.uint16).reshape(6, 8, 1) * 997).astype(np.uint16)
    path = io.write_image(tmp_path / f"g{suffix}", img)
    back = tifffile.imread(path) if suffix == ".tif" else io.read_image(path)
    np.testing.assert_array_equal(np.squeeze(back), img[..., 0])
