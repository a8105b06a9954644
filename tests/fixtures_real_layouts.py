"""Tiny stand-ins for the real datasets of ``docs/reproduce.md``, with their exact layouts.

Each builder writes a folder with the same file names, dtypes, bit depths and channel
layouts as the real data (docs/reproduce.md; MultiRegEval ``Datasets/README.md``), only
with small synthetic images:

* :func:`make_zurich` -- Zurich Summer v1.0: ``images_tif/zh<N>.tif``, uint16, 4 channels
  (R, G, B, NIR) with 12-bit values (< 4096).
* :func:`make_bfshg` -- BF/SHG (Zenodo 3874362): ``TrainSet/``, ``Validation1Set/``,
  ``TestSet/`` with ``<id>_SHG.tif`` (grey) and ``<id>_BF.tif`` (uint8 RGB).
* :func:`make_multiregeval` -- released MultiRegEval evaluation sets (Lu et al., PLOS ONE
  2022; Zenodo 5557568): ``Zurich_patches/fold1/patch_tlevel<k>/`` (8-bit PNG, A = NIR,
  B = RGB) and ``Eliceiri_patches/patch_tlevel<k>/`` (8-bit TIFF, A = SHG, B = BF), each
  level with ``A/test``, ``B/test`` and the public ``info_test.csv``.

The MultiRegEval writer re-implements the public generator's geometry from its
description (not from :mod:`comir.evaluate`), so that tests reading these sets check our
evaluator against the public format independently: for a patch of width ``w`` with centre
``c = (w/2 - 0.5, w/2 - 0.5)``, the map ``T(q) = R(θ) (q + t - c) + c`` ("first translation,
then rotation") is used by scikit-image's ``warp`` as the inverse map of the transformed
patch, and the ``*_Trans`` corners are ``T`` applied to the reference corners
``(0, 0), (0, w), (w, w), (w, 0)`` (x = column, y = row).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile
from scipy.ndimage import gaussian_filter

#: Test-image ids of the three Zurich folds (MultiRegEval ``utils/make_zurich_patches.py``).
ZURICH_FOLDS: dict[int, tuple[int, ...]] = {
    1: (7, 9, 20, 3, 15, 18),
    2: (10, 1, 13, 4, 11, 6, 16),
    3: (14, 8, 17, 5, 19, 12, 2),
}

#: Header of a released ``info_test.csv`` (pandas index ``Filename`` first, then the
#: columns of the public patch makers; ``ReferenceImage``, ``Method``, ``*_Recover``,
#: ``Error`` and ``DisplacementCategory`` are left empty there).
PUBLIC_HEADER: list[str] = [
    "Filename",
    "ReferenceImage",
    "Method",
    *[f"{a}{i}_Ref" for i in range(1, 5) for a in "XY"],
    *[f"{a}{i}_Trans" for i in range(1, 5) for a in "XY"],
    *[f"{a}{i}_Recover" for i in range(1, 5) for a in "XY"],
    "Displacement",
    "RelativeDisplacement",
    "Tx",
    "Ty",
    "AngleDegree",
    "AngleRad",
    "Error",
    "DisplacementCategory",
]


def smooth_field(shape: tuple[int, int], seed: int, sigma: float = 3.0) -> np.ndarray:
    """Smooth random texture in [0, 1], shape ``(H, W)`` float64."""
    f = gaussian_filter(np.random.default_rng(seed).random(shape), sigma, mode="wrap")
    return (f - f.min()) / (f.max() - f.min())


# ---------------------------------------------------------------------------- Zurich
def zurich_image(size: int, seed: int) -> np.ndarray:
    """One QuickBird-like scene ``(size, size, 4)`` uint16: R, G, B, NIR, values < 4096.

    NIR is a non-monotone function of the visible structure (bright where R is mid-range,
    as vegetation), so the two modalities are related but not by an intensity map.
    """
    f = smooth_field((size, size), seed)
    g = smooth_field((size, size), seed + 1000, sigma=5.0)
    r = 300 + 2400 * f
    gr = 250 + 1800 * (0.7 * f + 0.3 * g)
    b = 200 + 1500 * f**1.5
    nir = 400 + 3400 * 4.0 * f * (1.0 - f) * (0.6 + 0.4 * g)
    img = np.stack([r, gr, b, nir], axis=-1)
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def make_zurich(root: Path, ids: tuple[int, ...] = (1, 2, 3, 7, 9, 10), size: int = 96) -> Path:
    """Write ``root/images_tif/zh<N>.tif`` (uint16, ``(size, size, 4)``, 12-bit) for ``ids``.

    Returns ``root`` (the ``Zurich_dataset_v1.0`` folder).
    """
    folder = Path(root) / "images_tif"
    folder.mkdir(parents=True, exist_ok=True)
    for n in ids:
        tifffile.imwrite(
            folder / f"zh{n}.tif",
            zurich_image(size, seed=n),
            photometric="minisblack",
            planarconfig="contig",
        )
    return Path(root)


# ---------------------------------------------------------------------------- BF/SHG
def bfshg_pair(size: int, seed: int, shg_dtype: type = np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """One tissue-core-like pair: SHG ``(size, size)`` grey and BF ``(size, size, 3)`` uint8.

    SHG: bright sparse fibres (squared ridge of a smooth field); BF: pink-purple stain that
    darkens where the fibres and the "cells" are.
    """
    f = smooth_field((size, size), seed, sigma=2.0)
    cells = smooth_field((size, size), seed + 500, sigma=1.5)
    fibres = np.clip(1.0 - np.abs(f - 0.5) * 6.0, 0.0, 1.0) ** 2
    top = np.iinfo(shg_dtype).max
    shg = np.rint(fibres * 0.9 * top + 0.05 * top * cells).astype(shg_dtype)
    stain = 0.5 * fibres + 0.5 * cells
    bf = np.stack([235 - 60 * stain, 225 - 150 * stain, 235 - 80 * stain], axis=-1)
    return shg, np.clip(np.rint(bf), 0, 255).astype(np.uint8)


#: Core ids per split, named like the real ones (``<block>_<core>``).
BFSHG_IDS: dict[str, tuple[str, ...]] = {
    "TrainSet": ("1A_B3", "1B_A4", "2A_C7"),
    "Validation1Set": ("1A_D2",),
    "TestSet": ("1B_E5", "2B_F1"),
}


def make_bfshg(root: Path, size: int = 128, shg_dtype: type = np.uint8) -> Path:
    """Write ``root/{TrainSet,Validation1Set,TestSet}/<id>_SHG.tif`` and ``<id>_BF.tif``.

    Returns ``root``.
    """
    root = Path(root)
    for k, (split, ids) in enumerate(BFSHG_IDS.items()):
        (root / split).mkdir(parents=True, exist_ok=True)
        for j, core in enumerate(ids):
            shg, bf = bfshg_pair(size, seed=100 * k + j, shg_dtype=shg_dtype)
            tifffile.imwrite(root / split / f"{core}_SHG.tif", shg, photometric="minisblack")
            tifffile.imwrite(root / split / f"{core}_BF.tif", bf, photometric="rgb")
    return root


# ---------------------------------------------------------------------------- MultiRegEval
def public_matrix(angle_rad: float, tx: float, ty: float, center: float) -> np.ndarray:
    """``T(q) = R(θ) (q + t - c) + c`` as a 3×3 matrix on ``(x, y, 1)``."""
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    rot = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    shift = np.eye(3)
    shift[:2, 2] = (tx - center, ty - center)
    back = np.eye(3)
    back[:2, 2] = (center, center)
    return back @ rot @ shift


def _draw(level: int, n: int, rng: np.random.Generator, step_t: float) -> np.ndarray:
    """``(n, 3)`` draws of (angle°, tx, ty): magnitudes in [5(k-1), 5k) / [s(k-1), sk)."""
    lo = np.array([5.0, step_t, step_t]) * (level - 1)
    hi = np.array([5.0, step_t, step_t]) * level
    mag = lo + rng.random((n, 3)) * (hi - lo)
    return np.where(rng.random((n, 3)) < 0.5, -mag, mag)


def _write_public_level(
    ldir: Path,
    names: list[str],
    sources_a: list[np.ndarray],
    sources_b: list[np.ndarray],
    offset: int,
    width: int,
    draws: np.ndarray,
    ext: str,
) -> list[dict]:
    """Write one ``patch_tlevel<k>`` folder the way the public patch makers do."""
    from skimage.transform import warp

    for m in ("A", "B"):
        (ldir / m / "test").mkdir(parents=True, exist_ok=True)
    ref = np.array([[0, 0], [0, width], [width, width], [width, 0]], dtype=float)
    rows = []
    for name, img_a, img_b, (deg, tx, ty) in zip(names, sources_a, sources_b, draws):
        rad = np.deg2rad(deg)
        img_c = (img_a.shape[0]) / 2.0 - 0.5  # the whole source image's centre
        sample = public_matrix(rad, tx, ty, img_c)
        o = slice(offset, offset + width)
        for m, img in (("A", img_a), ("B", img_b)):
            moved = warp(img, sample, mode="reflect", preserve_range=True, order=1)
            patches = {"R": img[o, o], "T": np.rint(moved[o, o]).astype(np.uint8)}
            for kind, patch in patches.items():
                path = ldir / m / "test" / f"{name}_{kind}{ext}"
                if ext == ".png":
                    from comir.io import write_image

                    write_image(path, patch)
                else:
                    rgb = patch.ndim == 3
                    tifffile.imwrite(path, patch, photometric="rgb" if rgb else "minisblack")
        trans = (public_matrix(rad, tx, ty, width / 2.0 - 0.5) @ np.c_[ref, np.ones(4)].T).T[:, :2]
        disp = float(np.linalg.norm(trans - ref, axis=1).mean())
        row = dict.fromkeys(PUBLIC_HEADER, "")
        row.update({"Filename": name, "Tx": tx, "Ty": ty, "AngleDegree": deg, "AngleRad": rad})
        for i in range(4):
            row[f"X{i + 1}_Ref"], row[f"Y{i + 1}_Ref"] = int(ref[i, 0]), int(ref[i, 1])
            row[f"X{i + 1}_Trans"], row[f"Y{i + 1}_Trans"] = trans[i]
        row["Displacement"], row["RelativeDisplacement"] = disp, disp / width
        rows.append(row)
    with open(ldir / "info_test.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, PUBLIC_HEADER)
        wr.writeheader()
        wr.writerows(rows)
    return rows


def make_multiregeval(
    root: Path, width: int = 96, levels: int = 2, n_zurich: int = 3, seed: int = 0
) -> dict[str, dict[int, list[dict]]]:
    """Write released-style ``Zurich_patches/fold1`` and ``Eliceiri_patches`` sets.

    Zurich-like: every tile is one ``width`` px region (the transformed patch is the tile
    warped about its centre with reflect padding), ids ``zh<N>_<row>_<col>``, 8-bit PNG,
    A = NIR (grey), B = RGB. Eliceiri-like: a centre crop at offset ``width // 2`` of a
    ``2 width`` source warped about the source centre, ids ``<block>_<core>``, 8-bit TIFF,
    A = SHG, B = BF. Translations are drawn as for w = 300 (7 px per level); the colour
    channels and SHG increase with the same structure as A so that raw registration is
    expected to succeed.

    Returns
    -------
    dict
        ``{"Zurich_patches/fold1": {level: rows}, "Eliceiri_patches": {level: rows}}``, the
        rows as written to each ``info_test.csv``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[int, list[dict]]] = {}

    z_names = [f"zh{n}_01_{c:02d}" for n, c in zip((7, 7, 9, 20), (1, 2, 1, 1))][:n_zurich]
    fields = [smooth_field((width, width), 40 + i, sigma=2.5) for i in range(len(z_names))]
    nir = [np.rint(255 * f).astype(np.uint8) for f in fields]
    rgb = [
        np.rint(255 * np.stack([f**0.8, f, np.sqrt(f)], axis=-1)).astype(np.uint8) for f in fields
    ]
    out["Zurich_patches/fold1"] = {
        k: _write_public_level(
            root / "Zurich_patches" / "fold1" / f"patch_tlevel{k}",
            z_names,
            nir,
            rgb,
            0,
            width,
            _draw(k, len(z_names), rng, 7.0),
            ".png",
        )
        for k in range(1, levels + 1)
    }

    e_names = ["1B_A4", "2A_C7"]
    size = 2 * width
    e_fields = [smooth_field((size, size), 60 + i, sigma=2.5) for i in range(len(e_names))]
    shg = [np.rint(255 * f**2).astype(np.uint8) for f in e_fields]
    bf = [np.rint(255 * np.stack([f, f**1.2, f**0.9], axis=-1)).astype(np.uint8) for f in e_fields]
    out["Eliceiri_patches"] = {
        k: _write_public_level(
            root / "Eliceiri_patches" / f"patch_tlevel{k}",
            e_names,
            shg,
            bf,
            width // 2,
            width,
            _draw(k, len(e_names), rng, 7.0),
            ".tif",
        )
        for k in range(1, levels + 1)
    }
    return out
