"""Cutting evaluation sets in the MultiRegEval layout from aligned image pairs.

Two tilings (``docs/reproduce.md`` gives the patch counts):

* ``context`` (default): the image minus a margin that holds the largest transformation
  is divided into the maximal grid of equal regions that each hold one w×w patch, the
  patch is cut from the centre of each region, and the transformed patch is sampled from
  the whole image, so it shows the real surroundings of the patch (``Reflected`` says
  whether the image border was still reached and mirrored).
* ``public``: as the released Zurich and cytological sets (MultiRegEval
  ``utils/make_zurich_patches.py``): the whole image is cut into ``(H // w) × (W // w)``
  tiles of ``⌊H / rows⌋ × ⌊W / cols⌋`` px, the patch is the centre w×w of each tile, and
  the transformed patch is the patch itself warped with reflect padding.

At w = 834 the histology generator's fixed offset (:data:`protocol.PUBLISHED`) places one
patch per image at ``(608, 608)`` in either tiling, sampled from the whole image.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comir.batch import progress_bar
from comir.errors import ComirError
from comir.evaluate import protocol as P
from comir.evaluate.sets import write_csv
from comir.io import from_unit_float, unit_max, write_image, write_text
from comir.transform import functional as F


@dataclass(frozen=True)
class Placement:
    """One patch of a source image: top-left ``(x0, y0)`` in full-image pixels.

    ``local``: the transformed patch is sampled from the reference patch alone (public
    tiling, reflect padding at the patch border) rather than from the whole image.
    """

    pair: int
    id: str
    x0: int
    y0: int
    local: bool


def _random_subset(grid: list, per_image: int | None, rng) -> list | None:
    """``grid`` itself (all regions), a seeded random subset, or None when more patches
    than regions are asked for."""
    if per_image is None or per_image == len(grid):
        return grid
    if per_image < len(grid):
        keep = np.sort(rng.choice(len(grid), size=per_image, replace=False))
        return [grid[i] for i in keep]
    return None


def _context_grid(h: int, w_img: int, width: int, margin: int) -> tuple[list, tuple]:
    """Centred regions inside a margin (less along an axis without room for it)."""
    my, mx = min(margin, (h - width) // 2), min(margin, (w_img - width) // 2)
    ny, nx = (h - 2 * my) // width, (w_img - 2 * mx) // width
    cell_y, cell_x = (h - 2 * my) / ny, (w_img - 2 * mx) / nx
    grid = [
        (
            r,
            c,
            round(mx + (c + 0.5) * cell_x - width / 2),
            round(my + (r + 0.5) * cell_y - width / 2),
        )
        for r in range(ny)
        for c in range(nx)
    ]
    return grid, (mx, my)


def _public_grid(h: int, w_img: int, width: int) -> tuple[list, tuple]:
    """``(H // w) × (W // w)`` tiles of ``⌊H / rows⌋ × ⌊W / cols⌋`` px, patch at each centre."""
    ny, nx = h // width, w_img // width
    th, tw = h // ny, w_img // nx
    grid = [
        (r, c, c * tw + (tw - width) // 2, r * th + (th - width) // 2)
        for r in range(ny)
        for c in range(nx)
    ]
    return grid, (0, 0)


def place_patches(
    shape: tuple[int, int],
    width: int,
    margin: int,
    per_image: int | None,
    rng: np.random.Generator,
    tiling: str = "context",
) -> list[tuple[str, int, int]]:
    """Patch positions ``(suffix, x0, y0)`` (top-left, full-image pixels) in one image.

    ``suffix`` is ``<row>_<col>`` of the region (1-based, two digits, as the public ids
    ``zh5_03_02``). ``per_image`` below the number of regions keeps a seeded random
    subset; above it draws that many random (possibly overlapping) positions instead,
    within the margin (``context``) or anywhere in the image (``public``), named ``pK``.
    """
    h, w_img = shape
    if h < width or w_img < width:
        raise ComirError(
            f"image of {w_img}×{h} px is smaller than the patch width {width}; "
            f"use --width {min(h, w_img)} or less"
        )
    if per_image is not None and per_image < 1:
        raise ComirError(f"--per-image must be at least 1, got {per_image}")
    if tiling == "public":
        grid, (mx, my) = _public_grid(h, w_img, width)
    else:
        grid, (mx, my) = _context_grid(h, w_img, width, margin)
    named = [(f"{r + 1:02d}_{c + 1:02d}", int(x), int(y)) for r, c, x, y in grid]
    chosen = _random_subset(named, per_image, rng)
    if chosen is not None:
        return chosen
    x0 = rng.integers(mx, w_img - mx - width + 1, size=per_image)
    y0 = rng.integers(my, h - my - width + 1, size=per_image)
    return [(f"p{k + 1:02d}", int(x), int(y)) for k, (x, y) in enumerate(zip(x0, y0))]


def context_margin(width: int, t_max: float) -> int:
    """Room around a patch for its largest transformation: the outline corners reach
    ``(w/2 + |t|)·√2`` from the patch centre at worst."""
    reach = (width / 2.0 + t_max) * math.sqrt(2.0)
    return int(math.ceil(reach - width / 2.0)) + 1


def _placements(pairs, width: int, margin: int, per_image, seed: int, tiling: str, offset):
    """Every patch of every image, in pair order (seeded by ``(seed, 0)``)."""
    rng = np.random.default_rng([seed, 0])
    out: list[Placement] = []
    for i, pair in enumerate(pairs.pairs):
        shape = pairs.images_a[i].shape[:2]
        if pairs.images_b[i].shape[:2] != shape:
            raise ComirError(f"{pair.name}: modalities A and B differ in size; align them first")
        if offset is not None and per_image is None and min(shape) >= offset + width:
            out.append(Placement(i, pair.name, offset, offset, False))
            continue
        for suffix, x0, y0 in place_patches(shape, width, margin, per_image, rng, tiling):
            out.append(Placement(i, f"{pair.name}_{suffix}", x0, y0, tiling == "public"))
    return out


def sample_bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image (H, W, C)`` at ``points (..., 2)`` (x, y), mirrored at
    the border (skimage's ``reflect``), float32 ``(..., C)``.

    scipy rather than ``cv2.warpAffine``, which rounds sub-pixel positions to 1/32 px.
    """
    from scipy.ndimage import map_coordinates

    coords = [points[..., 1], points[..., 0]]
    return np.stack(
        [
            map_coordinates(image[..., c], coords, order=1, mode="mirror")
            for c in range(image.shape[2])
        ],
        axis=-1,
    ).astype(np.float32)


def _pixel_grid(width: int) -> np.ndarray:
    """``(w·w, 2)`` pixel centres ``(x, y)`` of a w×w patch, row-major."""
    yy, xx = np.mgrid[0:width, 0:width].astype(np.float64)
    return np.stack([xx.ravel(), yy.ravel()], axis=-1)


def _storage(image: np.ndarray, bits: int) -> np.ndarray:
    """Prepared float ``(H, W, C)`` → uint8/16 ``(H, W[, C])`` by :func:`comir.io.from_unit_float`."""
    out = from_unit_float(image, bits)
    return out[..., 0] if out.shape[2] == 1 else out


def _write_patches(
    ldir: Path, pl: Placement, matrix: np.ndarray, pairs, width: int, bits: int, field=None
) -> bool:
    """Write ``<id>_R``/``<id>_T`` of both modalities; True when sampling left the source.

    ``field``: the transformed pixel ``p`` shows the reference at ``M(field(p))``.
    """
    sample_map = matrix if pl.local else F.translation_matrix((pl.x0, pl.y0)) @ matrix
    grid = _pixel_grid(width)
    pts = F.apply_matrices(sample_map, grid if field is None else field.apply(grid))
    crop = (slice(pl.y0, pl.y0 + width), slice(pl.x0, pl.x0 + width))
    h, w = (width, width) if pl.local else pairs.images_a[pl.pair].shape[:2]
    reflected = bool((pts < 0).any() or (pts[:, 0] > w - 1).any() or (pts[:, 1] > h - 1).any())
    for mod, images in (("A", pairs.images_a), ("B", pairs.images_b)):
        ref = images[pl.pair][crop]
        source = ref if pl.local else images[pl.pair]
        trn = sample_bilinear(source, pts.reshape(width, width, 2))
        ext = ".png" if ref.shape[2] in (1, 3, 4) else ".tif"
        mdir = ldir / mod / "test"
        write_image(mdir / f"{pl.id}_R{ext}", _storage(ref, bits))
        write_image(mdir / f"{pl.id}_T{ext}", _storage(trn, bits))
    return reflected


def _write_level(ldir: Path, level: int, places: list[Placement], pairs, width: int,
                 seed: int, step: float, bits: int, deform=None) -> None:  # fmt: skip
    """One ``patch_tlevel<k>`` folder: images and ``info_test.csv`` (with ``deform =
    (sigma, scale)`` also the ground truth and landmarks of :mod:`.deform`)."""
    from comir.evaluate import deform as D

    angle, tx, ty = P.draw_level(level, len(places), width, seed, step)
    mats = P.ground_truth_matrices(tx, ty, np.deg2rad(angle), width)
    truths = None if deform is None else D.truth_transforms(mats, width, *deform, seed, level)
    ref = P.reference_corners(width)
    trans = P.transformed_corners(mats, width)
    disp = P.displacements(trans, ref)
    rows = []
    for j, pl in enumerate(places):
        field = None if truths is None else truths[j].transforms[0]
        reflected = _write_patches(ldir, pl, mats[j], pairs, width, bits, field)
        rows.append(
            {
                "Filename": pl.id,
                **dict(zip(P.REF_COLUMNS, ref.ravel(), strict=True)),
                **dict(zip(P.TRANS_COLUMNS, trans[j].ravel(), strict=True)),
                "Displacement": disp[j],
                "RelativeDisplacement": disp[j] / width,
                "Tx": tx[j],
                "Ty": ty[j],
                "AngleDegree": angle[j],
                "AngleRad": math.radians(angle[j]),
                "Reflected": int(reflected),
                "Source": pairs.pairs[pl.pair].name,
                "X0": pl.x0,
                "Y0": pl.y0,
            }
        )
    write_csv(ldir / "info_test.csv", P.INFO_COLUMNS, rows)
    if truths is not None:
        D.write_truth(ldir, [pl.id for pl in places], truths, width)


def _check_options(width: int, bits: int, tiling: str, levels: Sequence[int], step) -> list[int]:
    if bits not in (8, 16):
        raise ComirError(f"--bits must be 8 or 16, got {bits}")
    if width < 8:
        raise ComirError(f"--width {width} is too small; use at least 8 px")
    if tiling not in P.TILINGS:
        raise ComirError(f"--tiling {tiling!r} is invalid; use {' or '.join(P.TILINGS)}")
    levels = sorted({int(k) for k in levels})
    if not levels:
        raise ComirError("--levels is empty; give at least one level, e.g. 1 2 3 4")
    for k in levels:
        P.level_ranges(k, width, step)
    return levels


def _resolve_offset(offset, width: int) -> int | None:
    if offset == "published":
        return P.published_offset(width)
    if offset is not None and int(offset) < 0:
        raise ComirError(f"patch offset {offset} is invalid; use 0 or more px")
    return None if offset is None else int(offset)


def _set_info(root, layout, a, b, norm, spec, width, levels, per_image, seed) -> dict:
    """The part of ``eval_info.json`` that describes the source and its preparation."""
    return {
        "format": "MultiRegEval",
        "source": str(root),
        "layout": layout,
        "a": a,
        "b": b,
        "norm": norm,
        "norm_a": spec.norm_a,
        "norm_b": spec.norm_b,
        "log_a": bool(spec.log_a),
        "log_b": bool(spec.log_b),
        "width": width,
        "levels": levels,
        "per_image": per_image,
        "seed": seed,
    }


def make_eval(
    root: str | os.PathLike,
    layout: str,
    a: str,
    b: str,
    out: str | os.PathLike,
    width: int = 300,
    levels: Sequence[int] = (1, 2, 3, 4),
    per_image: int | None = None,
    seed: int = 0,
    norm: str = "auto",
    bits: int = 16,
    trans_step: float | None = None,
    tiling: str = "context",
    offset: int | str | None = "published",
    deform: float | None = None,
    deform_scale: float | None = None,
    progress: bool = False,
    **load_options,
) -> Path:
    """Write an evaluation set in the MultiRegEval layout.

    Parameters
    ----------
    root, layout, a, b
        Aligned pairs, as for :func:`comir.data.load_pairs` (channel specs of A and B).
    out : path
        Output folder; gets ``patch_tlevel<k>/{A,B}/test/<id>_{R,T}.<ext>``,
        ``patch_tlevel<k>/info_test.csv`` and ``eval_info.json``.
    width : int
        Patch width w (square patches).
    levels : sequence of int
        Transformation levels (:func:`comir.evaluate.level_ranges`).
    per_image : int, optional
        Patches per image; default all regions of the tiling.
    seed : int
        Seed of positions and transformations; the same seed gives the same set.
    norm : str
        Normalisation passed to ``load_pairs`` (``auto``, ``bits:N``, ``percentile``, ``none``).
    bits : {8, 16}
        Bit depth of the written images: prepared floats over [0, 1] stored by
        :func:`comir.io.from_unit_float` (an 8-bit source round-trips exactly).
    trans_step : float, optional
        Translation step per level in px (default: the published step for w, 7 px at
        300 and 20 px at 834, else ``7 w / 300``).
    tiling : {"context", "public"}
        Patch placement and padding (module docstring).
    offset : int, "published" or None
        One patch per image at ``(offset, offset)`` when ``per_image`` is not given and the
        image holds it; ``"published"``: the released set's offset for w (608 at 834).
    deform : float, optional
        Compose each level's rigid motion with a smooth random displacement of this
        standard deviation per component in px, and write the ground truth and landmarks
        (:mod:`comir.evaluate.deform`); :func:`evaluate` then also reports TRE / rTRE.
    deform_scale : float, optional
        Length scale of that field in px (default ``0.2 w``).

    Returns
    -------
    Path
        ``out``.
    """
    from comir.data import load_pairs
    from comir.evaluate.deform import check_deform

    width = int(width)
    levels = _check_options(width, bits, tiling, levels, trans_step)
    step = P.translation_step(width, trans_step)
    off = _resolve_offset(offset, width)
    scale = check_deform(deform, deform_scale, width)
    pairs = load_pairs(root, layout=layout, a=a, b=b, norm=norm, **load_options)
    out = Path(out)
    _, (_, t_hi) = P.level_ranges(max(levels), width, step)
    places = _placements(pairs, width, context_margin(width, t_hi), per_image, seed, tiling, off)
    field = None if scale is None else (float(deform), scale)
    _write_levels(out, levels, places, pairs, width, seed, step, bits, field, progress)
    info = _set_info(root, layout, a, b, norm, pairs.spec, width, levels, per_image, seed)
    info.update(bits=bits, tiling=tiling, offset=off, trans_step_px=step)
    _write_info(out, info, field, len(places), bits)
    return out


def _write_levels(out: Path, levels, places, pairs, width, seed, step, bits, field, progress):
    """Every ``patch_tlevel<k>`` folder of the set, with a progress bar over levels."""
    bar = progress_bar(len(levels), "make-eval", progress, unit="level")
    for level in levels:
        _write_level(out / f"patch_tlevel{level}", level, places, pairs, width, seed, step, bits,
                     field)  # fmt: skip
        bar.update(1)
    bar.close()


def _write_info(out: Path, info: dict, field: tuple | None, n: int, bits: int) -> None:
    """``eval_info.json``: the set's options, the deformation (if any) and the value scale."""
    if field is not None:
        info.update(deform_px=field[0], deform_scale_px=field[1],
                    landmarks="patch_tlevel<k>/landmarks_test.csv, truth/<id>.json")  # fmt: skip
    info.update(n_per_level=n, values=f"prepared float = stored value / {unit_max(bits)}")
    write_text(out / "eval_info.json", json.dumps(info, indent=2) + "\n")
