"""Tests for comir.data: pair discovery, validation, normalisation, batched augmentation.

Image-file problems (corrupt, empty, NaN files) are tested in test_io.py; here only that
:func:`comir.data.load_pairs` passes them on with the file's name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage
from scipy.ndimage import gaussian_filter

from comir import data
from comir.data import AugmentConfig, DataSpec, PairSet, PairSpec, streams
from comir.errors import ComirError, ComirWarning
from comir.transform import functional as geom


# ---------------------------------------------------------------------------- helpers
def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[..., ::-1]
    assert cv2.imwrite(str(path), img)
    return path


def write_tif(path: Path, img: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, img, **kw)
    return path


def make_set(images_a: list[np.ndarray], images_b: list[np.ndarray]) -> PairSet:
    """PairSet from in-memory ``(H, W, C)`` float32 arrays."""
    spec = DataSpec(
        "folders",
        "A",
        "B",
        None,
        None,
        images_a[0].shape[2],
        images_b[0].shape[2],
        images_a[0].shape[2],
        images_b[0].shape[2],
        "none",
        "none",
    )
    pairs = [PairSpec(f"p{i}", Path(f"a{i}.tif"), Path(f"b{i}.tif")) for i in range(len(images_a))]
    return PairSet(pairs, list(images_a), list(images_b), spec)


def find_offset(image: np.ndarray, patch: np.ndarray) -> tuple[int, int]:
    """Top-left (row, col) where ``patch`` occurs in an image whose pixel values encode it."""
    r, c = int(round(patch[0, 0, 0])), int(round(patch[0, 0, 1]))
    p = patch.shape[0]
    np.testing.assert_array_equal(patch, image[r : r + p, c : c + p])
    return r, c


# ---------------------------------------------------------------------------- layouts
def test_folders_layout_png_and_12bit_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a_imgs, b_imgs = {}, {}
    for stem in ("s1", "s2"):
        a_imgs[stem] = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
        b_imgs[stem] = rng.integers(0, 4096, (24, 30), dtype=np.uint16)
        write_png(tmp_path / "A" / f"{stem}.png", a_imgs[stem])
        write_tif(tmp_path / "B" / f"{stem}.tif", b_imgs[stem])
    write_png(tmp_path / "A" / "lonely.png", a_imgs["s1"])
    with pytest.warns(ComirWarning, match="lonely.png") as record:
        pairs = data.find_pairs(tmp_path, "folders")
    assert ["\n" in str(w.message) for w in record] == [False]  # one one-line warning
    assert [p.name for p in pairs] == ["s1", "s2"]
    assert pairs[0].path_a == tmp_path / "A" / "s1.png"
    assert pairs[0].path_b == tmp_path / "B" / "s1.tif"

    with pytest.warns(ComirWarning):
        ps = data.load_pairs(tmp_path, "folders", min_size=16)
    assert ps.spec.norm_a == "bits:8"
    assert ps.spec.norm_b == "bits:12"  # 12-bit data in uint16 files: / 4095, not / 65535
    assert (ps.spec.in_channels_a, ps.spec.in_channels_b) == (3, 1)
    np.testing.assert_allclose(ps.images_a[1], a_imgs["s2"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ps.images_b[0][..., 0], b_imgs["s1"] / 4095.0, rtol=1e-6)
    assert ps.images_b[0].dtype == np.float32 and ps.images_b[0].shape == (24, 30, 1)


def test_suffix_layout_float_tiff_and_overlapping_suffixes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    shg = {i: rng.random((20, 22)).astype(np.float32) * 7 for i in ("c1", "c2")}
    for i, img in shg.items():
        write_tif(tmp_path / f"{i}_SHG.tif", img)
        write_png(tmp_path / f"{i}_BF.png", rng.integers(0, 256, (20, 22, 3), dtype=np.uint8))
    # "_F" is a suffix of "_BF": the longer suffix must win.
    write_tif(tmp_path / "c3_F.tif", shg["c1"])
    write_png(tmp_path / "c3_BF.png", rng.integers(0, 256, (20, 22, 3), dtype=np.uint8))
    with pytest.warns(ComirWarning, match="c3_BF.png"):
        pairs = data.find_pairs(tmp_path, "suffix", a="_SHG", b="_BF")
    assert [(p.name, p.path_a.name, p.path_b.name) for p in pairs] == [
        ("c1", "c1_SHG.tif", "c1_BF.png"),
        ("c2", "c2_SHG.tif", "c2_BF.png"),
    ]
    with pytest.warns(ComirWarning, match="c3_BF.png"):
        ps = data.load_pairs(tmp_path, "suffix", a="_SHG", b="_BF", log_a=True)
    assert ps.spec.norm_a == "none" and ps.spec.log_a
    np.testing.assert_allclose(ps.images_a[1][..., 0], np.log1p(shg["c2"]), rtol=1e-6)
    with pytest.warns(ComirWarning, match="c1_BF.png, c2_BF.png"):
        pairs = data.find_pairs(tmp_path, "suffix", a="_F", b="_BF")
    assert [p.name for p in pairs] == ["c3"]


def test_channels_layout_planar_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    scenes = [rng.integers(0, 4096, (4, 20, 26), dtype=np.uint16) for _ in range(2)]
    for i, s in enumerate(scenes):  # C×H×W (planar) files
        write_tif(tmp_path / f"zh{i}.tif", s, photometric="minisblack", planarconfig="separate")
    ps = data.load_pairs(tmp_path, "channels", a="0:3", b="3")
    assert [p.path_a for p in ps.pairs] == [p.path_b for p in ps.pairs]
    spec = ps.spec
    assert spec.channels_a == [0, 1, 2] and spec.channels_b == [3]
    assert (spec.file_channels_a, spec.in_channels_a, spec.in_channels_b) == (4, 3, 1)
    assert spec.norm_a == spec.norm_b == "bits:12"
    np.testing.assert_allclose(ps.images_a[1], np.moveaxis(scenes[1][:3], 0, -1) / 4095, rtol=1e-6)
    np.testing.assert_allclose(ps.images_b[0][..., 0], scenes[0][3] / 4095, rtol=1e-6)
    ps2 = data.load_pairs(tmp_path, "channels", a="0,2", b="1:")
    assert ps2.spec.channels_a == [0, 2] and ps2.spec.channels_b == [1, 2, 3]


def test_validation_set_reuses_spec(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write_tif(tmp_path / "tr" / "A" / "x.tif", rng.integers(0, 4096, (16, 16), dtype=np.uint16))
    write_tif(tmp_path / "tr" / "B" / "x.tif", rng.integers(0, 4096, (16, 16), dtype=np.uint16))
    val_a = rng.integers(0, 200, (16, 16), dtype=np.uint16)  # alone, auto would say bits:8
    write_tif(tmp_path / "va" / "A" / "x.tif", val_a)
    write_tif(tmp_path / "va" / "B" / "x.tif", val_a)
    train = data.load_pairs(tmp_path / "tr", "folders")
    assert data.load_pairs(tmp_path / "va", "folders").spec.norm_a == "bits:8"
    val = data.load_pairs(tmp_path / "va", "folders", spec=train.spec)
    assert val.spec == train.spec
    np.testing.assert_allclose(val.images_a[0][..., 0], val_a / 4095.0, rtol=1e-6)


def test_norm_words_auto_and_dtype(tmp_path: Path) -> None:
    """``auto`` scales 12-bit data in uint16 files by 4095, ``dtype`` by 65535."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 4096, (16, 16), dtype=np.uint16)
    img[0, 0] = 4095
    write_tif(tmp_path / "A" / "x.tif", img)
    write_tif(tmp_path / "B" / "x.tif", (img // 16).astype(np.uint8))
    auto = data.load_pairs(tmp_path, "folders")
    assert (auto.spec.norm_a, auto.spec.norm_b) == ("bits:12", "bits:8")
    assert auto.images_a[0].max() == 1.0
    dt = data.load_pairs(tmp_path, "folders", norm="dtype", norm_b="auto")
    assert (dt.spec.norm_a, dt.spec.norm_b) == ("bits:16", "bits:8")
    np.testing.assert_array_equal(dt.images_a[0][..., 0], (img / 65535.0).astype(np.float32))
    np.testing.assert_array_equal(auto.images_b[0], dt.images_b[0])


# ---------------------------------------------------------------------------- bad input
def _pair_folder(tmp_path: Path, a: np.ndarray, b: np.ndarray) -> Path:
    write_tif(tmp_path / "A" / "im.tif", a)
    write_tif(tmp_path / "B" / "im.tif", b)
    return tmp_path


@pytest.mark.parametrize(
    "case",
    ["sizes", "too_small", "empty_file", "channel_range", "channel_count"],
)
def test_bad_input_names_the_file(tmp_path: Path, case: str) -> None:
    rng = np.random.default_rng(4)
    img = rng.integers(0, 255, (20, 20), dtype=np.uint8)
    layout, a, b, min_size = "folders", "A", "B", 0
    culprit = tmp_path / "B" / "im.tif"
    if case == "sizes":
        _pair_folder(tmp_path, img, img[:, :15])
        expect = ["A/im.tif", "B/im.tif", "20×20", "20×15"]
    elif case == "too_small":
        _pair_folder(tmp_path, img, img)
        min_size = 32
        expect = ["im.tif", "20×20", "--patch-size"]
    elif case == "empty_file":  # any comir.io.read_image error, passed on (see test_io.py)
        _pair_folder(tmp_path, img, img)
        culprit.write_bytes(b"")
        expect = ["B/im.tif", "empty"]
    elif case == "channel_range":
        write_tif(tmp_path / "s.tif", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
        layout, a, b = "channels", "0:2", "3"
        expect = ["s.tif", "'3'", "out of range"]
    else:  # channel counts differ between files of one modality
        _pair_folder(tmp_path, img, img)
        write_tif(tmp_path / "A" / "im2.tif", np.stack([img, img, img], -1))
        write_tif(tmp_path / "B" / "im2.tif", img)
        expect = ["A/im2.tif", "3 channel", "A/im.tif"]
    with pytest.raises(ComirError) as err:
        data.load_pairs(tmp_path, layout, a=a, b=b, min_size=min_size)
    msg = str(err.value)
    assert "\n" not in msg
    for part in expect:
        assert part in msg, (part, msg)


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(ComirError, match="nowhere.*not found"):
        data.find_pairs(tmp_path / "nowhere", "folders")
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    with pytest.raises(ComirError, match=r"A.*no image files"):
        data.find_pairs(tmp_path, "folders")
    write_tif(tmp_path / "A" / "one.tif", np.zeros((8, 8), np.uint8))
    write_tif(tmp_path / "B" / "two.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(ComirError, match=r"no aligned pairs.*one\.tif.*two\.tif"):
        data.find_pairs(tmp_path, "folders")
    with pytest.raises(ComirError, match="C.*not found"):
        data.find_pairs(tmp_path, "folders", b="C")
    with pytest.raises(ComirError, match="unknown layout"):
        data.find_pairs(tmp_path, "pairs")
    with pytest.raises(ComirError, match="channel specs"):
        data.load_pairs(tmp_path / "A", "channels")  # default a="A" is no channel spec


# ---------------------------------------------------------------------------- DataSpec
def test_dataspec_prepare_and_roundtrip() -> None:
    spec = DataSpec(
        "channels", "0,2", "3", [0, 2], [3], 4, 4, 2, 1, "bits:12", "bits:12", log_b=True
    )
    back = DataSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 4096, (6, 7, 4), dtype=np.uint16)
    out = spec.prepare(raw, "a", "scene.tif")
    assert out.dtype == np.float32 and out.shape == (6, 7, 2)
    np.testing.assert_allclose(out, raw[..., [0, 2]] / 4095.0, rtol=1e-6)
    out_b = spec.prepare(raw, "B")
    np.testing.assert_allclose(out_b[..., 0], np.log1p(raw[..., 3] / 4095.0), rtol=1e-6)
    # An image that already has the network's channel count is used as is.
    np.testing.assert_allclose(spec.prepare(raw[..., 3], "b"), out_b, rtol=1e-6)
    with pytest.raises(ComirError, match=r"rgb\.png.*3 channel.*expects 2"):
        spec.prepare(raw[..., :3], "a", where="rgb.png")
    with pytest.raises(ComirError, match="missing"):
        DataSpec.from_dict({"layout": "folders"})


@pytest.mark.parametrize("word", ["auto", "dtype"])
def test_dataspec_holds_only_concrete_normalisations(word: str) -> None:
    with pytest.raises(ComirError, match=f"norm_b is '{word}'.*resolve_norm"):
        DataSpec("folders", "A", "B", None, None, 1, 1, 1, 1, "bits:8", word)
    with pytest.raises(ComirError, match="invalid normalisation"):
        DataSpec.from_dict(
            {**DataSpec("folders", "A", "B", None, None, 1, 1, 1, 1, "none", "none").to_dict(),
             "norm_a": "bits:x"}
        )  # fmt: skip


# ---------------------------------------------------------------------------- splitting
def test_split_pairs(textured) -> None:
    imgs = [textured((16, 16, 1), i).astype(np.float32) for i in range(5)]
    ps = make_set(imgs, imgs)
    tr, va = data.split_pairs(ps, 0.4, seed=3)
    assert len(tr) == 3 and len(va) == 2
    assert sorted(p.name for p in tr.pairs + va.pairs) == [p.name for p in ps.pairs]
    assert [p.name for p in data.split_pairs(ps, 0.4, seed=3)[1].pairs] == [
        p.name for p in va.pairs
    ]
    assert len(data.split_pairs(ps, 0.0)[1]) == 0

    single = make_set(
        [textured((40, 100, 2), 6).astype(np.float32)],
        [textured((40, 100, 1), 7).astype(np.float32)],
    )
    tr, va = data.split_pairs(single, 0.25, min_size=20)
    assert tr.images_a[0].shape == (40, 75, 2) and va.images_b[0].shape == (40, 25, 1)
    np.testing.assert_array_equal(va.images_a[0], single.images_a[0][:, 75:])
    np.testing.assert_array_equal(tr.images_b[0], single.images_b[0][:, :75])
    assert tr.pairs[0].name == "p0[train]" and va.pairs[0].name == "p0[val]"
    with pytest.raises(ComirError, match="cannot be split"):
        data.split_pairs(single, 0.5, min_size=60)


# ---------------------------------------------------------------------------- rotation
@pytest.mark.parametrize("angle_deg", [30.0, -123.0])
def test_rotate_crop_matches_naive_rotation(textured, angle_deg: float) -> None:
    s, p = 64, 32
    windows = np.stack([textured((s, s, 2), i, 3.0) for i in range(2)]).astype(np.float32)
    flips = torch.tensor([False, True])
    out = data.rotate_crop(
        torch.from_numpy(windows).permute(0, 3, 1, 2),
        torch.full((2,), math.radians(angle_deg)),
        flips,
        p,
    ).numpy()
    m = (s - p) // 2
    for i, flip in enumerate(flips.tolist()):
        # Naive per-sample reference: flip, then rotate about the centre with scipy, whose
        # positive angles turn counter-clockwise on screen (ours: clockwise, as transform.py).
        src = windows[i][:, ::-1] if flip else windows[i]
        ref = ndimage.rotate(src, -angle_deg, axes=(1, 0), reshape=False, order=1)
        got = np.moveaxis(out[i], 0, -1)
        np.testing.assert_allclose(got, ref[m : m + p, m : m + p], atol=1e-5)
        assert np.abs(got - src[m : m + p, m : m + p]).max() > 0.05  # it did rotate


def test_sampling_matrices_follow_the_transform_convention() -> None:
    """Offset p samples centre + F R(-angle) p, converted to grid_sample units by hand."""
    rng = np.random.default_rng(16)
    b, h, w = 6, 50, 70
    centre = rng.uniform(10, 40, (b, 2))
    angle = rng.uniform(-np.pi, np.pi, b)
    flip = np.array([False, True] * 3)
    mats = data.sampling_matrices(centre, angle, flip, h, w)
    p = rng.uniform(-5, 5, (b, 7, 2))
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x = c * p[..., 0] + s * p[..., 1]  # R(-angle) p, written out
    y = -s * p[..., 0] + c * p[..., 1]
    x = np.where(flip[:, None], -x, x) + centre[:, :1]
    y = y + centre[:, 1:]
    want = np.stack([(x + 0.5) * 2 / w - 1, (y + 0.5) * 2 / h - 1], -1)
    np.testing.assert_allclose(geom.apply_matrices(mats, p), want, atol=1e-12)
    # the float32 grid is the matrices evaluated on the patch's pixel offsets
    grid = data.rotation_grid(
        torch.from_numpy(centre), torch.from_numpy(angle), torch.from_numpy(flip), 5, h, w
    ).numpy()
    t = np.arange(5) - 2.0
    offsets = np.stack(np.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2)  # (u, v) row-major
    ref = geom.apply_matrices(mats, np.broadcast_to(offsets, (b, 25, 2))).reshape(b, 5, 5, 2)
    assert grid.dtype == np.float32
    np.testing.assert_allclose(grid, ref, atol=1e-6)


def test_rotate_crop_identity_and_flip_are_exact(textured) -> None:
    img = textured((20, 20, 1), 8).astype(np.float32)
    w = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    out = data.rotate_crop(w, torch.zeros(2), torch.tensor([False, True]), 12)
    np.testing.assert_allclose(out[0], w[0, :, 4:16, 4:16], atol=1e-6)
    np.testing.assert_allclose(out[1], w[0, :, 4:16, 4:16].flip(-1), atol=1e-6)


# ---------------------------------------------------------------------------- patch streams
def coord_image(h: int, w: int) -> np.ndarray:
    """``(H, W, 2)`` float32 holding each pixel's (row, col)."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([r, c], -1).astype(np.float32)


def test_stream_without_augmentation_cuts_true_crops() -> None:
    imgs = [coord_image(30, 40), coord_image(25, 25)]
    ps = make_set(imgs, [im[..., :1] * 2 for im in imgs])
    stream = data.PatchStream(ps, patch_size=10, batch_size=16, augment=None, seed=1)
    xa, xb = next(iter(stream))
    assert xa.shape == (16, 2, 10, 10) and xb.shape == (16, 1, 10, 10)
    assert xa.dtype == torch.float32
    offsets = set()
    for i in range(16):
        # Both coordinate images agree where they overlap, so the larger one locates any crop.
        offsets.add(find_offset(imgs[0], xa[i].permute(1, 2, 0).numpy()))
        np.testing.assert_array_equal(xb[i, 0], xa[i, 0] * 2)
    assert len(offsets) > 8


@pytest.mark.parametrize("channels_a", [1, 3])
def test_augmentation_keeps_pair_aligned(textured, channels_a: int) -> None:
    imgs_a = [
        textured(shape, seed).astype(np.float32)
        for seed, shape in ((9, (50, 60, channels_a)), (10, (40, 40, channels_a)))
    ]
    imgs_b = [1.0 - im.mean(axis=2, keepdims=True) for im in imgs_a]  # B = 1 - mean(A)
    ps = make_set(imgs_a, imgs_b)
    cfg = AugmentConfig(flip=True, rotate=True)
    xa, xb = next(iter(data.PatchStream(ps, 24, 32, cfg, seed=2)))
    np.testing.assert_allclose(xb[:, 0], 1.0 - xa.mean(1), atol=1e-5)
    # Augmented patches are not axis-aligned crops: the unaugmented stream differs.
    xa0, _ = next(iter(data.PatchStream(ps, 24, 32, None, seed=2)))
    assert not torch.allclose(xa, xa0, atol=1e-3)


def test_stream_rotations_are_rigid_and_uniform() -> None:
    # On an image whose channels are its own column and row coordinates, bilinear
    # sampling is exact, so every patch must be an exact rigid map of the pixel grid.
    img = coord_image(80, 90)[..., ::-1].copy()  # (x, y)
    ps = make_set([img], [img[..., :1] + img[..., 1:]])
    p = 9
    xa, xb = next(iter(data.PatchStream(ps, p, 512, AugmentConfig(), seed=3)))
    t = np.arange(p) - (p - 1) / 2
    v, u = np.meshgrid(t, t, indexing="ij")
    design = np.stack([np.ones(p * p), u.ravel(), v.ravel()], 1)
    coef = np.linalg.lstsq(design, xa.flatten(2).permute(2, 0, 1).reshape(p * p, -1).numpy())[0]
    coef = coef.reshape(3, -1, 2)  # (offset/du/dv, B, x/y)
    jac = np.stack([coef[1], coef[2]], -1)  # (B, 2, 2): d(x, y) / d(u, v)
    centre = coef[0]
    inside = ((centre > p) & (centre < np.array([90, 80]) - 1 - p)).all(1)
    assert inside.sum() > 300
    jac = jac[inside]
    np.testing.assert_allclose(
        jac @ jac.transpose(0, 2, 1), np.broadcast_to(np.eye(2), jac.shape), atol=1e-3
    )
    det = np.linalg.det(jac)
    np.testing.assert_allclose(np.abs(det), 1.0, atol=1e-3)
    assert 0.4 < (det < 0).mean() < 0.6  # flipped half of the time
    # Rotation angle of the content: sampling at F R(-a) p means d(x, y)/d(u, v) = F R(-a).
    angle = np.arctan2(jac[:, 1, 0], jac[:, 1, 1]) * -1
    assert np.histogram(angle, bins=4, range=(-np.pi, np.pi))[0].min() > 0.15 * len(angle)
    # Modality B saw the very same geometry.
    np.testing.assert_allclose(xb[:, 0], xa.sum(1), atol=1e-3)


def test_stream_flip_only_is_exact_mirror_crops() -> None:
    img = coord_image(30, 40)
    ps = make_set([img], [img[..., :1]])
    xa, xb = next(iter(data.PatchStream(ps, 10, 64, AugmentConfig(rotate=False), seed=5)))
    flipped = 0
    for i in range(64):
        patch = xa[i].permute(1, 2, 0).numpy()
        if patch[0, 0, 1] > patch[0, -1, 1]:
            patch = patch[:, ::-1]
            flipped += 1
        r, c = int(round(patch[0, 0, 0])), int(round(patch[0, 0, 1]))
        np.testing.assert_allclose(patch, img[r : r + 10, c : c + 10], atol=1e-3)
    assert 15 < flipped < 49
    torch.testing.assert_close(xb[:, 0], xa[:, 0])


def test_stream_rotation_pads_by_reflection_inside_image() -> None:
    # A patch the size of the image rotated by 45° needs values from outside the image;
    # they come from symmetric padding, so the patch stays within the image's range.
    ps = make_set([coord_image(16, 16)[..., :1] / 15], [coord_image(16, 16)[..., 1:] / 15])
    xa, xb = next(iter(data.PatchStream(ps, 16, 8, AugmentConfig(), seed=0)))
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1 + 1e-6
    assert torch.isfinite(xb).all()


def test_stream_is_deterministic_and_distinct_per_worker(textured, monkeypatch) -> None:
    ps = make_set(
        [textured((40, 40, 3), 10).astype(np.float32)],
        [textured((40, 40, 1), 11).astype(np.float32)],
    )
    cfg = AugmentConfig(noise_a=0.05, blur_b=1.0, contrast_a=0.3)

    def first(seed: int, n: int = 2) -> list[torch.Tensor]:
        it = iter(data.PatchStream(ps, 16, 4, cfg, seed=seed))
        return [t for _ in range(n) for t in next(it)]

    base = first(0)
    for x, y in zip(base, first(0)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert not torch.allclose(base[0], first(1)[0])

    class Info:
        id = 1

    monkeypatch.setattr(streams, "get_worker_info", lambda: Info())
    assert not torch.allclose(base[0], first(0)[0])


def test_images_sampled_in_proportion_to_area() -> None:
    small = np.zeros((10, 10, 1), np.float32)
    large = np.ones((20, 15, 1), np.float32)  # 3× the area
    ps = make_set([small, large], [small, large])
    xa, _ = next(iter(data.PatchStream(ps, 4, 4000, None, seed=0)))
    frac_large = float(xa[:, 0, 0, 0].mean())
    assert abs(frac_large - 0.75) < 0.03


def test_fixed_batches_are_reproducible_crops() -> None:
    img = coord_image(30, 35)
    ps = make_set([img], [img[..., ::-1].copy()])
    b1 = data.fixed_batches(ps, 8, n_batches=3, batch_size=5, seed=4)
    b2 = data.fixed_batches(ps, 8, n_batches=3, batch_size=5, seed=4)
    assert len(b1) == 3
    for (xa, xb), (ya, yb) in zip(b1, b2):
        torch.testing.assert_close(xa, ya, rtol=0, atol=0)
        torch.testing.assert_close(xb, yb, rtol=0, atol=0)
        assert xa.shape == (5, 2, 8, 8)
        for i in range(5):
            find_offset(img, xa[i].permute(1, 2, 0).numpy())
        torch.testing.assert_close(xb, xa.flip(1))
    assert not torch.equal(b1[0][0], data.fixed_batches(ps, 8, 1, 5, seed=5)[0][0])


def test_make_loader_and_patch_size_errors(textured) -> None:
    ps = make_set(
        [textured((20, 24, 3), 11).astype(np.float32)],
        [textured((20, 24, 1), 12).astype(np.float32)],
    )
    it = data.make_loader(ps, 16, 3, AugmentConfig(), seed=0, workers=0)
    xa, xb = next(it)
    assert xa.shape == (3, 3, 16, 16) and xb.shape == (3, 1, 16, 16)
    ref = next(iter(data.PatchStream(ps, 16, 3, AugmentConfig(), seed=0)))
    torch.testing.assert_close(xa, ref[0])
    with pytest.raises(ComirError, match=r"a0\.tif.*20×24.*--patch-size"):
        data.PatchStream(ps, 32, 3)
    with pytest.raises(ComirError, match="patch size"):
        data.fixed_batches(ps, 21, 1, 2)


# ---------------------------------------------------------------------------- intensity
def test_augment_batch_intensity(textured) -> None:
    xa = np.stack([textured((32, 32, 3), 20 + i) for i in range(4)]).astype(np.float32)
    xb = np.stack([textured((32, 32, 1), 30 + i) for i in range(4)]).astype(np.float32)
    xa, xb = (torch.from_numpy(x).permute(0, 3, 1, 2) for x in (xa, xb))
    g = torch.Generator().manual_seed(0)
    ya, yb = data.augment_batch(xa, xb, AugmentConfig(), g)
    assert torch.equal(ya, xa) and torch.equal(yb, xb)

    ya, yb = data.augment_batch(xa, xb, AugmentConfig(noise_a=0.1), g)
    assert torch.equal(yb, xb)  # modality B untouched
    assert abs(float((ya - xa).std()) - 0.1) < 0.005

    ya, yb = data.augment_batch(xa, xb, AugmentConfig(contrast_b=0.5), g)
    assert torch.equal(ya, xa) and not torch.allclose(yb, xb)
    # Gamma and gain are increasing maps: the order of pixel values within a sample stays.
    order = xb.flatten(1).argsort(1)
    assert (yb.flatten(1).gather(1, order).diff(dim=1) >= -1e-6).all()


def test_gaussian_blur_matches_scipy() -> None:
    rng = np.random.default_rng(13)
    x = rng.random((3, 2, 24, 28)).astype(np.float32)
    sigma = torch.tensor([2.0, 0.7, 0.0])
    y = data.gaussian_blur(torch.from_numpy(x), sigma).numpy()
    # Radius ceil(3·max σ) = 6 for every sample; torch "reflect" is scipy "mirror".
    for i, s in enumerate(sigma.tolist()):
        if s == 0:
            np.testing.assert_allclose(y[i], x[i], atol=1e-6)
            continue
        ref = gaussian_filter(x[i], (0, s, s), mode="mirror", truncate=6 / s)
        np.testing.assert_allclose(y[i], ref, atol=1e-5)


@pytest.mark.slow  # DataLoader worker processes
def test_make_loader_with_workers_gives_distinct_streams(textured) -> None:
    ps = make_set(
        [textured((24, 24, 1), 14).astype(np.float32)],
        [textured((24, 24, 1), 15).astype(np.float32)],
    )
    it = data.make_loader(ps, 8, 4, AugmentConfig(), seed=0, workers=2)
    (a0, _), (a1, _) = next(it), next(it)  # one batch from each worker
    assert a0.shape == a1.shape == (4, 1, 8, 8)
    assert not torch.allclose(a0, a1)
    torch.testing.assert_close(a0, next(iter(data.PatchStream(ps, 8, 4, AugmentConfig())))[0])
    del it


def test_stream_scale_augmentation_is_an_area_averaged_zoom() -> None:
    """With a fixed scale 0.5 and no rotation/flip, a patch is the 2×2 block mean of a
    crop twice its size (coordinates: exactly linear maps of slope 2), and the scales of
    a log-uniform range show up as Jacobians between 1/HI and 1/LO."""
    img = coord_image(80, 90)[..., ::-1].copy()  # (x, y)
    ps = make_set([img], [img[..., :1]])
    cfg = AugmentConfig(rotate=False, flip=False, scale_min=0.5, scale_max=0.5)
    xa, xb = next(iter(data.PatchStream(ps, 8, 64, cfg, seed=4)))
    patch = xa.numpy()  # (B, 2, 8, 8): x and y of the sampled positions
    np.testing.assert_allclose(np.diff(patch[:, 0], axis=2), 2.0, atol=1e-4)
    np.testing.assert_allclose(np.diff(patch[:, 1], axis=1), 2.0, atol=1e-4)
    # block means of a source crop: pixel (i, j) is the mean of source pixels 2i, 2i+1 (x)
    x0 = patch[:, 0, 0, 0] - 0.5
    assert np.allclose(x0, np.round(x0), atol=1e-4)  # aligned to source pixels: an area mean
    torch.testing.assert_close(xb[:, 0], xa[:, 0])  # both modalities alike
    cfg = AugmentConfig(rotate=False, flip=False, scale_min=0.25, scale_max=1.0)
    xa, _ = next(iter(data.PatchStream(ps, 8, 256, cfg, seed=5)))
    slope = np.diff(xa.numpy()[:, 0], axis=2).mean(axis=(1, 2))  # 1 / scale
    assert slope.min() >= 1.0 - 1e-4 and slope.max() <= 4.0 + 1e-4
    assert (slope > 2.0).mean() == pytest.approx(0.5, abs=0.12)  # log-uniform: median 2


def test_stream_without_scale_range_is_unchanged_and_bad_ranges_fail() -> None:
    img = coord_image(40, 40)
    ps = make_set([img], [img[..., :1]])
    a, _ = next(iter(data.PatchStream(ps, 10, 8, AugmentConfig(), seed=1)))
    b, _ = next(iter(data.PatchStream(ps, 10, 8, AugmentConfig(scale_min=1, scale_max=1), 1)))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="scale range"):
        AugmentConfig(scale_min=0.0)
    with pytest.raises(ComirError, match="scale-range"):
        data.PatchStream(ps, 16, 8, AugmentConfig(scale_min=0.25), seed=1)  # 64 px > 40 px


def test_stream_scale_augmentation_reaches_the_whole_image_at_fine_scales() -> None:
    """Crops are drawn per sample for that sample's scale: on an image exactly as wide as
    the footprint of the smallest scale (4 P), patches near scale 1 still lie anywhere
    across it, not all on its centre column (the footprint of scale 1/4 has one position)."""
    img = coord_image(64, 64)[..., ::-1].copy()  # (x, y)
    ps = make_set([img], [img[..., :1]])
    cfg = AugmentConfig(rotate=False, flip=False, scale_min=0.25, scale_max=1.0)
    xa, _ = next(iter(data.PatchStream(ps, 16, 512, cfg, seed=2)))
    patch = xa.numpy()
    slope = np.diff(patch[:, 0], axis=2).mean(axis=(1, 2))  # 1 / scale
    centre_x = patch[:, 0, 7:9, 7:9].mean(axis=(1, 2))
    span = 16 * slope  # source columns each patch covers
    # every patch inside the image; fine-scale patches spread over its width
    assert (centre_x - span / 2 >= -0.5 - 1e-3).all() and (centre_x + span / 2 <= 63.5 + 1e-3).all()
    fine = centre_x[slope < 1.25]
    assert fine.size > 50 and fine.min() < 16 and fine.max() > 47
