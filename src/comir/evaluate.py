"""The public evaluation protocol for multimodal rigid registration (Lu et al., PLOS ONE 2022).

:func:`make_eval` cuts an evaluation set from aligned image pairs in exactly the on-disk
layout of the MultiRegEval releases, :func:`evaluate` registers every pair of such a set
(ours or a released one, unchanged) and scores it, :func:`compare` puts several results
side by side.

Facts of the public framework
-----------------------------
Read from the MultiRegEval repository (github.com/MIDA-group/MultiRegEval): the patch
makers ``utils/make_zurich_patches.py``, ``utils/make_balvan_patches.py``,
``utils/make_eliceiri_patches.py``, the scorer ``evaluate.py`` with ``mi.py``/``sift.py``,
and ``Datasets/README.md`` (Zenodo 4587903, 5557568).

* **Frame of the corners.** ``X*_Ref``/``Y*_Ref`` and ``X*_Trans``/``Y*_Trans`` are in the
  frame of the *reference patch* (not the full image), x = column, y = row, with
  scikit-image's origin at the centre of the top-left pixel -- the same frame as
  :mod:`comir.transform`. The reference corners are written as ``0`` and ``w`` (not the
  pixel edges ``-0.5``/``w - 0.5`` nor the centres ``0``/``w - 1``), in the order
  upper-left, lower-left, lower-right, upper-right, while the rotation centre is the true
  patch centre ``c = ((w - 1)/2, (w - 1)/2)``. The corners are thus half a pixel off the
  true edges; for a rigid error measure this is immaterial, and we write the same values
  so that ``Displacement`` is comparable (``transform.patch_corners(w, origin="multiregeval")``).
* **Signs and the transformed patch.** With ``R(θ) = [[cos, -sin], [sin, cos]]``
  (``AngleRad = θ``) and ``t = (Tx, Ty)``, the map ``T(q) = R(θ) (q + t - c) + c``
  ("first translation, then rotation" about the patch centre) takes a pixel ``q`` of the
  transformed patch ``<id>_T`` to the reference-patch point whose content it shows:
  ``I_T(q) = I(T(q))``, sampled bilinearly from the whole source image (skimage ``warp``
  with ``T`` as inverse map). In our convention ``T`` is the moving → fixed transform,
  ``RigidTransform.from_params(θ, R(θ) t, c)``. A positive angle turns the patch outline
  clockwise on screen (y down), so the content of ``<id>_T`` appears turned anticlockwise.
* **Trans corners.** ``X*_Trans = T(X*_Ref)``: the outline of the transformed patch drawn
  in the reference frame. ``Displacement`` = mean distance between Trans and Ref corners,
  ``RelativeDisplacement`` = Displacement / w.
* **Recovered corners and the error.** The public scorer applies the recovered
  fixed → moving map (elastix, skimage ``ransac`` from reference to transformed keypoints)
  to the Trans corners: ``X*_Recover = M⁻¹(X*_Trans)`` for our moving → fixed ``M``;
  ``Error`` = mean Euclidean distance of Recover to Ref corners; success is
  ``Error ≤ 0.02 w``; a failed registration leaves the row empty and counts as a failure.
* **Levels and ranges.** Level k draws θ from ±[5(k−1), 5k) degrees and Tx, Ty
  independently from ±[7(k−1), 7k) px for w = 300 (±[20(k−1), 20k) for the 834 px
  histology patches), each sign with probability 1/2.
* **Layout.** ``<set>/patch_tlevel<k>/A/test/<id>_R.<ext>``, ``<id>_T.<ext>``, the same
  under ``B/test/``, and ``patch_tlevel<k>/info_test.csv`` indexed by ``Filename`` (extra,
  empty columns such as ``Method``, ``Error`` may be present). Zurich and cytological
  patches are 8-bit ``.png``, histology ``.tif``; ids look like ``zh5_03_02`` (image,
  row, column of the region). Direction ``b2a`` registers B's ``_T`` onto A's ``_R``.

Our differences, by design: transformed patches are sampled from the full source image
with real content around the patch where it exists (the released Zurich/cytological
tiles were transformed with reflect padding); a ``Reflected`` column says whether a
patch needed reflect padding. Translations scale as ``7 w / 300`` px per level. Images
are prepared floats (``data.load_pairs``: channel selection and normalisation) clipped
to [0, 1] and stored as 16-bit PNG by default (``bits=8`` gives the public 8-bit
format; modalities with 2 or more than 4 channels go to TIFF); :func:`evaluate` maps
integer images back to [0, 1] by dividing by the dtype's maximum.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comir.batch import parse_shard, shard_indices
from comir.errors import ComirError
from comir.io import IMAGE_SUFFIXES, read_image, write_image, write_text
from comir.transform import patch_corners
from comir.transform.functional import apply_matrices as apply_matrix

#: Rotation step per level in degrees (level k: ±[5(k−1), 5k)).
ROT_STEP_DEG = 5.0
#: Translation step per level in px for a 300 px patch (scaled by w / 300).
TRANS_STEP_300 = 7.0
#: Success threshold as a fraction of the patch width.
SUCCESS_FRACTION = 0.02
DIRECTIONS = ("b2a", "a2b", "a2a", "b2b")

REF_COLUMNS = [f"{a}{i}_Ref" for i in range(1, 5) for a in "XY"]
TRANS_COLUMNS = [f"{a}{i}_Trans" for i in range(1, 5) for a in "XY"]
RECOVER_COLUMNS = [f"{a}{i}_Recover" for i in range(1, 5) for a in "XY"]
INFO_COLUMNS = [
    "Filename",
    *REF_COLUMNS,
    *TRANS_COLUMNS,
    "Displacement",
    "RelativeDisplacement",
    "Tx",
    "Ty",
    "AngleDegree",
    "AngleRad",
    "Reflected",
    "Source",
    "X0",
    "Y0",
]
RESULT_COLUMNS = [
    "Filename",
    "level",
    *RECOVER_COLUMNS,
    "Error",
    "Success",
    "Displacement",
    "Seconds",
    "Status",
]


# ----------------------------------------------------------------------------- geometry
def level_ranges(
    level: int, width: int, trans_step: float | None = None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Magnitude ranges ``((rot_lo, rot_hi), (t_lo, t_hi))`` of a level; signs are random.

    Parameters
    ----------
    level : int
        1, 2, 3, ... (level k: rotation ±[5(k−1), 5k) degrees).
    width : int
        Patch width w; translations are ±[s(k−1), sk) px with ``s = 7 w / 300``.
    trans_step : float, optional
        Override s (the released 834 px histology set used 20).
    """
    if level < 1:
        raise ComirError(f"transformation level {level} is invalid; use 1, 2, 3 or 4")
    s = TRANS_STEP_300 * width / 300.0 if trans_step is None else float(trans_step)
    return (
        (ROT_STEP_DEG * (level - 1), ROT_STEP_DEG * level),
        (s * (level - 1), s * level),
    )


def patch_center(width: int) -> np.ndarray:
    """Rotation centre ``((w − 1)/2, (w − 1)/2)`` of a w×w patch (pixel-centre origin)."""
    return np.full(2, (width - 1) / 2.0)


def ground_truth_matrices(
    tx: np.ndarray, ty: np.ndarray, angle_rad: np.ndarray, width: int | np.ndarray
) -> np.ndarray:
    """Moving (``_T`` patch) → fixed (``_R`` patch) matrices of the public generator.

    ``T(q) = R(θ) (q + t − c) + c`` with ``c`` the patch centre.

    Parameters
    ----------
    tx, ty, angle_rad : ndarray, shape (N,)
        The ``Tx``, ``Ty``, ``AngleRad`` columns.
    width : int or ndarray (N,)
        Patch width(s).

    Returns
    -------
    ndarray, shape (N, 3, 3)
    """
    tx, ty, th = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (tx, ty, angle_rad))
    c = (np.broadcast_to(np.asarray(width, dtype=float), th.shape) - 1) / 2.0
    cos, sin = np.cos(th), np.sin(th)
    m = np.zeros((th.size, 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    # R (q + t - c) + c  =  R q + R (t - c) + c
    dx, dy = tx - c, ty - c
    m[:, 0, 2] = cos * dx - sin * dy + c
    m[:, 1, 2] = sin * dx + cos * dy + c
    m[:, 2, 2] = 1.0
    return m


def recover_corners(matrices: np.ndarray, trans_corners: np.ndarray) -> np.ndarray:
    """Map Trans corners back by recovered moving → fixed matrices: ``M⁻¹(X_Trans)``.

    Parameters
    ----------
    matrices : ndarray, shape (N, 3, 3)
        Recovered moving → fixed transforms (NaN rows for failures).
    trans_corners : ndarray, shape (N, 4, 2)

    Returns
    -------
    ndarray, shape (N, 4, 2)
    """
    m = np.asarray(matrices, dtype=float)
    ok = np.isfinite(m).all(axis=(1, 2))
    inv = np.full_like(m, np.nan)
    if ok.any():
        inv[ok] = np.linalg.inv(m[ok])
    pts = np.asarray(trans_corners, dtype=float)
    return np.einsum("nij,nkj->nki", inv[:, :2, :2], pts) + inv[:, None, :2, 2]


def corner_errors(recovered: np.ndarray, ref_corners: np.ndarray) -> np.ndarray:
    """Mean Euclidean corner distance per pair, ``(N, 4, 2), (N, 4, 2) -> (N,)``."""
    return np.linalg.norm(np.asarray(recovered) - np.asarray(ref_corners), axis=-1).mean(axis=-1)


def success_curve(errors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of ``errors`` ≤ each threshold; NaN errors (failures) never succeed."""
    e = np.asarray(errors, dtype=float)
    if e.size == 0:
        return np.zeros(len(thresholds))
    e = np.sort(np.where(np.isfinite(e), e, np.inf))
    return np.searchsorted(e, np.asarray(thresholds, dtype=float), side="right") / e.size


# ----------------------------------------------------------------------------- image values
def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Integer images → float32 in [0, 1] (divide by the dtype's maximum); floats unchanged."""
    if image.dtype.kind in "ui":
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32, copy=False)


def _to_storage(image: np.ndarray, bits: int) -> np.ndarray:
    """Prepared float ``(H, W, C)`` → uint8/uint16 ``(H, W[, C])`` over [0, 1] (clipped)."""
    top = 2**bits - 1
    out = np.rint(np.clip(image, 0.0, 1.0) * top).astype(np.uint8 if bits == 8 else np.uint16)
    return out[..., 0] if out.ndim == 3 and out.shape[2] == 1 else out


def _storage_suffix(channels: int) -> str:
    return ".png" if channels in (1, 3, 4) else ".tif"


# ----------------------------------------------------------------------------- make_eval
def _regions(
    shape: tuple[int, int], width: int, margin: int, per_image: int | None, rng
) -> list[tuple[str, int, int]]:
    """Patch positions ``(suffix, x0, y0)`` (top-left, full-image pixels) for one image.

    The image minus a ``margin`` on each side (room for the largest transformation; less
    along an axis without room for it) is divided into the maximal grid of equal
    non-overlapping regions that each hold one w×w patch, and the patch is cut from the
    centre of a region (as the public Zurich set). ``per_image`` below the number of
    regions keeps a random subset, above it draws that many random (possibly
    overlapping) positions within the same margins instead.
    """
    h, w_img = shape
    if h < width or w_img < width:
        raise ComirError(
            f"image of {w_img}×{h} px is smaller than the patch width {width}; "
            f"use --width {min(h, w_img)} or less"
        )
    my, mx = min(margin, (h - width) // 2), min(margin, (w_img - width) // 2)
    ny, nx = (h - 2 * my) // width, (w_img - 2 * mx) // width
    cell_y, cell_x = (h - 2 * my) / ny, (w_img - 2 * mx) / nx
    grid = [
        (
            f"{r + 1:02d}_{c + 1:02d}",
            int(round(mx + (c + 0.5) * cell_x - width / 2)),
            int(round(my + (r + 0.5) * cell_y - width / 2)),
        )
        for r in range(ny)
        for c in range(nx)
    ]
    if per_image is None or per_image == len(grid):
        return grid
    if per_image < 1:
        raise ComirError(f"--per-image must be at least 1, got {per_image}")
    if per_image < len(grid):
        keep = np.sort(rng.choice(len(grid), size=per_image, replace=False))
        return [grid[i] for i in keep]
    x0 = rng.integers(mx, w_img - mx - width + 1, size=per_image)
    y0 = rng.integers(my, h - my - width + 1, size=per_image)
    return [(f"p{k + 1:02d}", int(x), int(y)) for k, (x, y) in enumerate(zip(x0, y0))]


def _sample_bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image (H, W, C)`` at ``points (..., 2)`` (x, y); reflect border.

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


def _draw_level(level: int, n: int, width: int, seed: int, trans_step: float | None):
    """``(angle_deg, tx, ty)`` arrays of n draws for a level; independent of other levels."""
    (r_lo, r_hi), (t_lo, t_hi) = level_ranges(level, width, trans_step)
    rng = np.random.default_rng([seed, 1000 + level])
    mag = rng.uniform(0.0, 1.0, size=(n, 3))
    sign = np.where(rng.random((n, 3)) < 0.5, -1.0, 1.0)
    angle = sign[:, 0] * (r_lo + mag[:, 0] * (r_hi - r_lo))
    tx = sign[:, 1] * (t_lo + mag[:, 1] * (t_hi - t_lo))
    ty = sign[:, 2] * (t_lo + mag[:, 2] * (t_hi - t_lo))
    return angle, tx, ty


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
        Transformation levels (see :func:`level_ranges`).
    per_image : int, optional
        Patches per image; default all non-overlapping grid regions.
    seed : int
        Seed of positions and transformations; the same seed gives the same set.
    norm : str
        Normalisation passed to ``load_pairs`` (``auto``, ``bits:N``, ``percentile``, ``none``).
    bits : {8, 16}
        Bit depth of the written images (prepared floats over [0, 1]).
    trans_step : float, optional
        Translation step per level in px (default ``7 w / 300``).

    Returns
    -------
    Path
        ``out``.
    """
    from comir.data import load_pairs

    if bits not in (8, 16):
        raise ComirError(f"--bits must be 8 or 16, got {bits}")
    width = int(width)
    if width < 8:
        raise ComirError(f"--width {width} is too small; use at least 8 px")
    levels = sorted({int(k) for k in levels})
    for k in levels:
        level_ranges(k, width, trans_step)
    pairs = load_pairs(root, layout=layout, a=a, b=b, norm=norm, **load_options)
    out = Path(out)

    # room for the largest level: outline corners reach |q - c| + |t| from the centre
    _, (_, t_hi) = level_ranges(max(levels), width, trans_step)
    reach = (width / 2.0) * math.sqrt(2.0) + t_hi * math.sqrt(2.0)
    margin = int(math.ceil(reach - width / 2.0)) + 1
    pos_rng = np.random.default_rng([seed, 0])
    samples = []  # (pair index, id, x0, y0)
    for i, pair in enumerate(pairs.pairs):
        img = pairs.images_a[i]
        if pairs.images_b[i].shape[:2] != img.shape[:2]:
            raise ComirError(f"{pair.name}: modalities A and B differ in size; align them first")
        for suffix, x0, y0 in _regions(img.shape[:2], width, margin, per_image, pos_rng):
            samples.append((i, f"{pair.name}_{suffix}", x0, y0))

    ref = patch_corners(width, origin="multiregeval")
    # outermost pixel centres of a patch: bilinear sampling stays inside when they do
    centres = np.array([[0, 0], [0, width - 1], [width - 1, width - 1], [width - 1, 0]], float)
    yy, xx = np.mgrid[0:width, 0:width].astype(np.float64)
    grid = np.stack([xx, yy], axis=-1)
    n = len(samples)
    iterator = levels
    if progress:
        from tqdm import tqdm

        iterator = tqdm(levels, desc="make-eval", unit="level")
    for level in iterator:
        ldir = out / f"patch_tlevel{level}"
        angle, tx, ty = _draw_level(level, n, width, seed, trans_step)
        mats = ground_truth_matrices(tx, ty, np.deg2rad(angle), width)
        trans = np.einsum("nij,kj->nki", mats[:, :2, :2], ref) + mats[:, None, :2, 2]
        disp = corner_errors(trans, np.broadcast_to(ref, trans.shape))
        rows = []
        for j, (i, sid, x0, y0) in enumerate(samples):
            # sampling map: T-patch pixel q -> full-image point o + T(q)
            shift = np.eye(3)
            shift[:2, 2] = (x0, y0)
            sample_map = shift @ mats[j]
            img_shape = pairs.images_a[i].shape[:2]
            reach_pts = apply_matrix(sample_map, centres)
            reflected = bool(
                (reach_pts < 0).any()
                or (reach_pts[:, 0] > img_shape[1] - 1).any()
                or (reach_pts[:, 1] > img_shape[0] - 1).any()
            )
            pts = apply_matrix(sample_map, grid)  # (w, w, 2) full-image points
            for mod, images in (("A", pairs.images_a), ("B", pairs.images_b)):
                full = images[i]
                ext = _storage_suffix(full.shape[2] if full.ndim == 3 else 1)
                r_patch = full[y0 : y0 + width, x0 : x0 + width]
                t_patch = _sample_bilinear(full, pts)
                mdir = ldir / mod / "test"
                write_image(mdir / f"{sid}_R{ext}", _to_storage(r_patch, bits))
                write_image(mdir / f"{sid}_T{ext}", _to_storage(t_patch, bits))
            rows.append(
                {
                    "Filename": sid,
                    **dict(zip(REF_COLUMNS, ref.ravel(), strict=True)),
                    **dict(zip(TRANS_COLUMNS, trans[j].ravel(), strict=True)),
                    "Displacement": disp[j],
                    "RelativeDisplacement": disp[j] / width,
                    "Tx": tx[j],
                    "Ty": ty[j],
                    "AngleDegree": angle[j],
                    "AngleRad": math.radians(angle[j]),
                    "Reflected": int(reflected),
                    "Source": pairs.pairs[i].name,
                    "X0": x0,
                    "Y0": y0,
                }
            )
        _write_csv(ldir / "info_test.csv", INFO_COLUMNS, rows)
    info = {
        "format": "MultiRegEval",
        "source": str(root),
        "layout": layout,
        "a": a,
        "b": b,
        "norm": norm,
        "norm_a": pairs.spec.norm_a,
        "norm_b": pairs.spec.norm_b,
        "log_a": bool(pairs.spec.log_a),
        "log_b": bool(pairs.spec.log_b),
        "width": width,
        "levels": levels,
        "per_image": per_image,
        "seed": seed,
        "bits": bits,
        "trans_step_px": TRANS_STEP_300 * width / 300.0 if trans_step is None else trans_step,
        "n_per_level": n,
        "values": f"prepared float = stored value / {2**bits - 1}",
    }
    write_text(out / "eval_info.json", json.dumps(info, indent=2) + "\n")
    return out


def _fmt(v) -> str:
    if isinstance(v, float | np.floating):
        return "" if not np.isfinite(v) else repr(float(v))
    return str(v)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    buf = _io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(columns)
    for r in rows:
        wr.writerow([_fmt(r.get(c, "")) for c in columns])
    write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- reading sets
@dataclass
class EvalLevel:
    """One level folder of an evaluation set."""

    label: str
    folder: Path
    names: list[str]
    ref: np.ndarray  # (N, 4, 2)
    trans: np.ndarray  # (N, 4, 2)
    rows: list[dict] = field(repr=False)
    files: dict[str, dict[str, Path]] = field(repr=False)  # "A"/"B" -> stem -> path


def _level_label(folder: Path) -> str:
    m = re.search(r"tlevel(\d+)$", folder.name)
    return m.group(1) if m else folder.name


def find_levels(eval_dir: str | os.PathLike) -> list[Path]:
    """Level folders of an evaluation set: ``eval_dir`` itself or its ``patch_tlevel*``.

    Raises
    ------
    ComirError
        When neither ``eval_dir/info_test.csv`` nor sub-folders holding one exist.
    """
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise ComirError(f"{eval_dir}: evaluation folder not found; create it with comir make-eval")
    if (eval_dir / "info_test.csv").is_file():
        return [eval_dir]
    subs = [p for p in eval_dir.iterdir() if p.is_dir() and (p / "info_test.csv").is_file()]
    if not subs:
        raise ComirError(
            f"{eval_dir}: no info_test.csv here or in patch_tlevel*/ sub-folders; "
            "expected the MultiRegEval layout (make one with comir make-eval)"
        )

    def key(p: Path):
        m = re.search(r"(\d+)$", p.name)
        return (0, int(m.group(1)), p.name) if m else (1, 0, p.name)

    return sorted(subs, key=key)


def _index_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise ComirError(f"{folder}: folder not found; an evaluation level needs A/test and B/test")
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


def read_level(folder: str | os.PathLike) -> EvalLevel:
    """Read ``info_test.csv`` and index ``A/test``, ``B/test`` of one level folder."""
    folder = Path(folder)
    csv_path = folder / "info_test.csv"
    try:
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = list(reader)
    except OSError as exc:
        raise ComirError(f"{csv_path}: cannot be read ({exc})") from None
    missing = [c for c in ("Filename", *REF_COLUMNS, *TRANS_COLUMNS) if c not in header]
    if missing:
        raise ComirError(
            f"{csv_path}: lacks column(s) {', '.join(missing[:4])}"
            f"{' …' if len(missing) > 4 else ''}; expected the MultiRegEval info_test.csv"
        )
    if not rows:
        raise ComirError(f"{csv_path}: has no rows; regenerate the set with comir make-eval")
    try:
        ref = np.array([[float(r[c]) for c in REF_COLUMNS] for r in rows]).reshape(-1, 4, 2)
        trans = np.array([[float(r[c]) for c in TRANS_COLUMNS] for r in rows]).reshape(-1, 4, 2)
    except ValueError as exc:
        raise ComirError(f"{csv_path}: non-numeric corner coordinate ({exc})") from None
    files = {m: _index_images(folder / m / "test") for m in ("A", "B")}
    names = [r["Filename"] for r in rows]
    for name in names:
        for m in ("A", "B"):
            for kind in ("R", "T"):
                if f"{name}_{kind}" not in files[m]:
                    raise ComirError(
                        f"{folder / m / 'test'}: image {name}_{kind} listed in info_test.csv "
                        "is missing; restore it or remove the row"
                    )
    return EvalLevel(_level_label(folder), folder, names, ref, trans, rows, files)


# ----------------------------------------------------------------------------- workers
def _init_worker(threads: int) -> None:
    try:
        from comir.register import set_library_threads

        set_library_threads(threads)
    except ImportError:  # pragma: no cover - register back-end missing
        pass


def read_patch(path: str | os.PathLike) -> np.ndarray:
    """An evaluation patch (or a cached ``.npy`` CoMIR) as float32 ``(H, W[, C])`` in [0, 1]."""
    path = str(path)
    return np.load(path) if path.endswith(".npy") else to_unit_float(read_image(path))


def _register_task(task: tuple) -> tuple[int, list | None, float, float, str]:
    """Register one pair; returns ``(index, matrix or None, score, seconds, status)``."""
    idx, fixed_path, moving_path, method, options, info = task
    t0 = time.perf_counter()
    try:
        fixed, moving = read_patch(fixed_path), read_patch(moving_path)
        if callable(method):
            res = method(fixed, moving, info=info, **options)
        else:
            from comir.register import register

            res = register(fixed, moving, method=method, **options)
    except ComirError:  # a user error (bad option, unusable images): stop the evaluation
        raise
    except Exception as exc:  # one pair's failure must not stop the evaluation
        return (
            idx,
            None,
            float("nan"),
            time.perf_counter() - t0,
            f"failed: {type(exc).__name__}: {exc}",
        )
    status = str(getattr(res, "status", "ok"))
    ok = bool(getattr(res, "ok", status == "ok"))
    seconds = float(getattr(res, "seconds", time.perf_counter() - t0))
    score = float(getattr(res, "score", float("nan")))
    if not ok or res.transform is None:
        return idx, None, score, seconds, status if status != "ok" else "failed"
    return idx, np.asarray(res.transform.matrix, dtype=float).tolist(), score, seconds, status


# ----------------------------------------------------------------------------- evaluate
def _model_name(model) -> str | None:
    if model is None:
        return None
    if isinstance(model, str | os.PathLike):
        return str(model)
    return str(getattr(model, "name", None) or getattr(model, "run", None) or type(model).__name__)


def patch_encoder(model, eval_info: dict | None = None):
    """The model for evaluation patches: loaded, with its input normalisation switched off.

    Evaluation images already hold prepared values (:func:`make_eval`; public 8-bit sets
    are taken as such) and are read by :func:`read_patch` into [0, 1]; only the channel
    selection of the model's ``DataSpec`` still applies. ``model.embed(read_patch(p), m)``
    on the returned model gives the CoMIR of patch ``p``. Warns when ``eval_info`` (the
    set's ``eval_info.json``) records another normalisation than the model was trained on.

    Parameters
    ----------
    model : run dir, ``"sample:<name>"`` or ComirModel
    eval_info : dict, optional
    """
    import dataclasses
    import warnings

    if isinstance(model, str | os.PathLike):
        from comir.embed import load_model

        model = load_model(model)
    spec = getattr(model, "data", None)
    if not (dataclasses.is_dataclass(model) and dataclasses.is_dataclass(spec)):
        return model
    if eval_info is not None:
        for m in ("a", "b"):
            want = (getattr(spec, f"norm_{m}"), bool(getattr(spec, f"log_{m}")))
            have = (eval_info.get(f"norm_{m}"), bool(eval_info.get(f"log_{m}", False)))
            if have[0] is not None and have != want:
                warnings.warn(
                    f"evaluation set modality {m.upper()} was prepared with {have}, the model "
                    f"was trained on {want}; remake the set with that normalisation",
                    stacklevel=3,
                )
    spec = dataclasses.replace(spec, norm_a="none", norm_b="none", log_a=False, log_b=False)
    return dataclasses.replace(model, data=spec)


def _embed_all(model, items: list[tuple[str, str]], cache: Path, progress: bool) -> list[str]:
    """Embed images ``(path, modality)`` in batches of equal size; returns ``.npy`` paths."""
    groups: dict[tuple, list[int]] = {}
    images: dict[int, np.ndarray] = {}
    for k, (path, mod) in enumerate(items):
        img = read_patch(path)
        images[k] = img
        groups.setdefault((mod, img.shape), []).append(k)
    out: list[str] = [""] * len(items)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="embed", unit="img")
    batch = 16
    for (mod, _), idx in groups.items():
        for s in range(0, len(idx), batch):
            chunk = idx[s : s + batch]
            zs = model.embed_batch([images[k] for k in chunk], mod)
            for k, z in zip(chunk, zs, strict=True):
                p = cache / f"{k}.npy"
                np.save(p, np.asarray(z, dtype=np.float32))
                out[k] = str(p)
                images.pop(k)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


def evaluate(
    eval_dir: str | os.PathLike,
    method: str | Callable = "fft",
    model=None,
    direction: str = "b2a",
    out: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    shard: tuple[int, int] | str | None = None,
    **method_options,
) -> dict:
    """Register every pair of an evaluation set and score it by the public protocol.

    Parameters
    ----------
    eval_dir : path
        A set from :func:`make_eval` or a released MultiRegEval set: a folder with
        ``patch_tlevel*/`` sub-folders, or one level folder (``A/test``, ``B/test``,
        ``info_test.csv``); ``.png`` or ``.tif`` images.
    method : str or callable
        A :func:`comir.register.register` back-end (``fft``, ``sift``, ``mi``, ``elastix``)
        or ``f(fixed, moving, info=row, **options) -> RegistrationResult`` (``row`` is the
        pair's CSV row; for custom back-ends and test oracles; must be picklable).
    model : run dir, ``"sample:<name>"`` or ComirModel, optional
        Register CoMIRs instead of raw images: every patch goes through the encoder of its
        own modality first (in this process, batched by size).
    direction : {"b2a", "a2b", "a2a", "b2b"}
        ``b2a``: moving = ``B/test/<id>_T``, fixed = ``A/test/<id>_R``.
    out : path, optional
        Results folder (default ``eval_dir/results/<method>[_comir]_<direction>``).
    workers : int, optional
        Registration processes (default ``min(cpu, 4)``; 1 runs in this process). The pool
        uses the ``spawn`` start method, so a script calling this with workers > 1 needs the
        usual ``if __name__ == "__main__":`` guard.
    shard : (I, N) or "I/N", optional
        Register only the ``I``-th of ``N`` interleaved parts of the pairs sorted by
        (level, Filename) (:func:`comir.batch.shard_indices`) and write them to
        ``out/shards/shard-I-of-N.json``; a shard whose file already exists with the same
        settings is not recomputed (resume). When all ``N`` shard files are present they
        are merged (:func:`merge_shards`) into the outputs of an unsharded run.
    **method_options
        Passed to the back-end.

    Returns
    -------
    dict
        The summary also written to ``out/summary.json``; for a shard whose siblings are
        not finished yet, ``{"shard", "n_pairs", "shard_file", "complete": False, ...}``.
    """
    t_start = time.perf_counter()
    if direction not in DIRECTIONS:
        raise ComirError(
            f"--direction {direction!r} is invalid; use one of {', '.join(DIRECTIONS)}"
        )
    method_name = getattr(method, "__name__", type(method).__name__) if callable(method) else method
    if not callable(method):
        from comir.register import available_methods

        known = list(available_methods())
        if method not in known:
            raise ComirError(f"unknown method {method!r}; available: {', '.join(known)}")
    levels = [read_level(p) for p in find_levels(eval_dir)]
    mov_mod, fix_mod = direction[0].upper(), direction[2].upper()
    if out is None:
        tag = f"{method_name}{'_comir' if model is not None else ''}_{direction}"
        out = Path(eval_dir) / "results" / tag
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    labels, names, fixed_paths, moving_paths, infos = [], [], [], [], []
    for lv in levels:
        for name, row in zip(lv.names, lv.rows, strict=True):
            labels.append(lv.label)
            names.append(name)
            fixed_paths.append(str(lv.files[fix_mod][f"{name}_R"]))
            moving_paths.append(str(lv.files[mov_mod][f"{name}_T"]))
            infos.append(dict(row))
    n = len(names)
    header = {
        "format": SHARD_FORMAT,
        "eval_dir": str(eval_dir),
        "method": method_name,
        "model": _model_name(model),
        "direction": direction,
        "method_options": {k: _jsonable(v) for k, v in method_options.items()},
        "n_pairs": n,
    }
    shard = parse_shard(shard)
    own = shard_indices(list(zip(labels, names)), shard)
    shard_file = _shard_path(out, shard) if shard is not None else None
    record = _read_shard(shard_file) if shard_file is not None else None
    if record is not None and not _same_settings(record, header):
        record = None  # other settings: recompute
    if record is None:
        embed_seconds = 0.0
        fix_sel, mov_sel = [fixed_paths[i] for i in own], [moving_paths[i] for i in own]
        with tempfile.TemporaryDirectory(prefix=".comirs-", dir=out) as tmp:
            if model is not None:
                t0 = time.perf_counter()
                items = [(p, fix_mod.lower()) for p in fix_sel] + [
                    (p, mov_mod.lower()) for p in mov_sel
                ]
                info_path = Path(eval_dir) / "eval_info.json"
                info = json.loads(info_path.read_text()) if info_path.is_file() else None
                emb = _embed_all(patch_encoder(model, info), items, Path(tmp), progress)
                fix_sel, mov_sel = emb[: len(own)], emb[len(own) :]
                embed_seconds = time.perf_counter() - t0
            tasks = [
                (i, f, mv, method, method_options, infos[i])
                for i, f, mv in zip(own, fix_sel, mov_sel, strict=True)
            ]
            results = _run_tasks(tasks, workers, progress)
        record = {
            **header,
            "shard": list(shard) if shard is not None else None,
            "keys": [[labels[i], names[i]] for i in own],
            "results": sorted(results, key=lambda r: r[0]),
            "embed_seconds": embed_seconds,
            "wall_seconds": time.perf_counter() - t_start,
        }
        if shard_file is not None:
            write_text(shard_file, json.dumps(record) + "\n")
    if shard is None:
        return _finish(out, levels, record["results"], header, embed_seconds, t_start)
    status = shard_status(out, shard[1])
    if status["complete"]:
        return merge_shards(out)
    return {
        **header,
        "shard": list(shard),
        "shard_file": str(shard_file),
        "n_shard_pairs": len(own),
        "complete": False,
        "missing_shards": status["missing"],
    }


#: ``format`` value of the per-shard result files.
SHARD_FORMAT = "comir-evaluate-shard/1"
_SHARD_NAME = re.compile(r"^shard-(\d+)-of-(\d+)\.json$")


def _shard_path(out: Path, shard: tuple[int, int]) -> Path:
    return Path(out) / "shards" / f"shard-{shard[0]}-of-{shard[1]}.json"


def _read_shard(path: Path) -> dict | None:
    """A finished shard file, or ``None`` (absent; unreadable files count as absent)."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("format") == SHARD_FORMAT else None


def _same_settings(a: dict, b: dict) -> bool:
    keys = ("eval_dir", "method", "model", "direction", "method_options", "n_pairs")
    return all(a.get(k) == b.get(k) for k in keys)


def shard_status(res_dir: str | os.PathLike, n_shards: int) -> dict:
    """Which of ``n_shards`` shard files in ``res_dir/shards`` are finished.

    Returns
    -------
    dict
        ``{"done": [I, ...], "missing": [I, ...], "complete": bool}``.
    """
    done = [i for i in range(n_shards) if _read_shard(_shard_path(Path(res_dir), (i, n_shards)))]
    missing = sorted(set(range(n_shards)) - set(done))
    return {"done": done, "missing": missing, "complete": not missing}


def merge_shards(res_dir: str | os.PathLike) -> dict:
    """Combine the shard files of ``res_dir/shards`` into ``results.csv``, ``summary.json``
    and the success plot, exactly as an unsharded :func:`evaluate` would write them.

    ``wall_seconds`` is the sum of the shards' wall times.

    Raises
    ------
    ComirError
        No shard files, shards of different runs or shard counts, missing shards, or an
        evaluation set that changed since the shards were computed.
    """
    t_start = time.perf_counter()
    res_dir = Path(res_dir)
    folder = res_dir / "shards"
    found = sorted(p for p in folder.glob("shard-*-of-*.json")) if folder.is_dir() else []
    counts = {int(_SHARD_NAME.match(p.name).group(2)) for p in found if _SHARD_NAME.match(p.name)}
    if not counts:
        raise ComirError(
            f"{res_dir}: no shards/shard-I-of-N.json files; run comir evaluate --shard I/N first"
        )
    if len(counts) > 1:
        raise ComirError(
            f"{folder}: shard files of different shard counts {sorted(counts)}; remove the "
            "stale ones"
        )
    n_shards = counts.pop()
    status = shard_status(res_dir, n_shards)
    if not status["complete"]:
        raise ComirError(
            f"{res_dir}: shard(s) {', '.join(map(str, status['missing']))} of {n_shards} are "
            "not finished; run them with --shard I/N before merging"
        )
    records = [_read_shard(_shard_path(res_dir, (i, n_shards))) for i in range(n_shards)]
    head = records[0]
    for r in records[1:]:
        if not _same_settings(r, head):
            raise ComirError(
                f"{folder}: shards were run with different settings (method, model, direction, "
                "options or evaluation set); rerun the odd ones"
            )
    levels = [read_level(p) for p in find_levels(head["eval_dir"])]
    keys = [[lv.label, name] for lv in levels for name in lv.names]
    results = sorted((tuple(x) for r in records for x in r["results"]), key=lambda x: x[0])
    idx = [x[0] for x in results]
    if len(keys) != head["n_pairs"] or idx != list(range(len(keys))):
        raise ComirError(
            f"{res_dir}: the shards do not cover the {len(keys)} pairs of {head['eval_dir']} "
            "exactly once (the set changed?); rerun all shards"
        )
    for r in records:
        own = [x[0] for x in r["results"]]
        if [keys[i] for i in own] != r["keys"]:
            raise ComirError(
                f"{res_dir}: shard {r['shard']} was computed on other pairs (the evaluation set "
                "changed); rerun it"
            )
    header = {k: head[k] for k in ("eval_dir", "method", "model", "direction", "method_options")}
    header["n_pairs"] = head["n_pairs"]
    embed = sum(float(r.get("embed_seconds", 0.0)) for r in records)
    wall = sum(float(r.get("wall_seconds", 0.0)) for r in records)
    return _finish(
        res_dir, levels, results, header, embed, t_start - wall, has_model=head["model"] is not None
    )


def _finish(
    out: Path,
    levels: list[EvalLevel],
    results: Sequence[Sequence],
    header: dict,
    embed_seconds: float,
    t_start: float,
    has_model: bool | None = None,
) -> dict:
    """Score registration results of every pair and write results.csv, summary.json, plot."""
    out = Path(out)
    labels = [lv.label for lv in levels for _ in lv.names]
    names = [name for lv in levels for name in lv.names]
    ref = np.concatenate([lv.ref for lv in levels])
    trans = np.concatenate([lv.trans for lv in levels])
    n = len(names)
    has_model = header["model"] is not None if has_model is None else has_model
    matrices = np.full((n, 3, 3), np.nan)
    seconds = np.zeros(n)
    status = ["failed"] * n
    for idx, mat, _score, sec, st in results:
        if mat is not None:
            matrices[idx] = mat
        seconds[idx] = sec
        status[idx] = st
    recovered = recover_corners(matrices, trans)
    errors = corner_errors(recovered, ref)
    widths = np.array([_patch_width(p) for p in _first_per_level(levels)], dtype=float)
    level_w = {lv.label: w for lv, w in zip(levels, widths, strict=True)}
    w_pair = np.array([level_w[lb] for lb in labels])
    thr = SUCCESS_FRACTION * w_pair
    success = np.isfinite(errors) & (errors <= thr)
    disp = np.linalg.norm(trans - ref, axis=-1).mean(axis=-1)

    rows = []
    for i in range(n):
        rows.append(
            {
                "Filename": names[i],
                "level": labels[i],
                **dict(zip(RECOVER_COLUMNS, recovered[i].ravel(), strict=True)),
                "Error": errors[i],
                "Success": int(success[i]),
                "Displacement": disp[i],
                "Seconds": seconds[i],
                "Status": status[i],
            }
        )
    _write_csv(out / "results.csv", RESULT_COLUMNS, rows)

    rates = {lb: float(success[np.array(labels) == lb].mean()) for lb in level_w}
    rates["all"] = float(success.mean())
    finite = np.where(np.isfinite(errors), errors, np.inf)
    median = float(np.median(finite))
    summary = {
        "method": header["method"],
        "model": header["model"],
        "direction": header["direction"],
        "eval_dir": header["eval_dir"],
        "width": float(widths[0]) if len(set(widths.tolist())) == 1 else widths.tolist(),
        "threshold_px": float(SUCCESS_FRACTION * widths[0]),
        "success_rate": rates,
        "median_error": median if np.isfinite(median) else None,
        "seconds_per_pair": float(seconds.mean()),
        "embed_seconds_per_pair": embed_seconds / n if has_model else None,
        "wall_seconds": round(time.perf_counter() - t_start, 3),
        "n_pairs": n,
        "n_failed": int(sum(not np.isfinite(m).all() for m in matrices)),
        "method_options": header["method_options"],
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _plot_curves(out, labels, errors, float(widths.max()), summary)
    return summary


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


def _first_per_level(levels: list[EvalLevel]) -> list[Path]:
    return [lv.files["A"][f"{lv.names[0]}_R"] for lv in levels]


def _patch_width(path: Path) -> int:
    return int(read_image(path).shape[1])


def _run_tasks(tasks: list[tuple], workers: int | None, progress: bool) -> list[tuple]:
    """Run :func:`_register_task` over ``tasks``, in a spawn process pool when workers > 1."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 4)
    workers = max(1, min(int(workers), len(tasks)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="register", unit="pair")
    results = []
    if workers == 1:
        for t in tasks:
            results.append(_register_task(t))
            if bar is not None:
                bar.update(1)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(1,),
        ) as pool:
            futures = [pool.submit(_register_task, t) for t in tasks]
            try:
                for f in as_completed(futures):
                    results.append(f.result())
                    if bar is not None:
                        bar.update(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    if bar is not None:
        bar.close()
    return results


def _curves(labels: Sequence[str], errors: np.ndarray, thresholds: np.ndarray) -> dict:
    lab = np.asarray(labels)
    curves = {
        f"level {lb}": success_curve(errors[lab == lb], thresholds) for lb in dict.fromkeys(labels)
    }
    curves["all"] = success_curve(errors, thresholds)
    return curves


def _plot_curves(out: Path, labels, errors: np.ndarray, width: float, summary: dict) -> None:
    from comir.plot import plot_success_curves

    thresholds = np.linspace(0.0, 0.1 * width, 201)
    title = (
        f"{summary['method']}{' on CoMIRs' if summary['model'] else ''} ({summary['direction']})"
    )
    plot_success_curves(
        thresholds,
        _curves(labels, errors, thresholds),
        width,
        out / "success_vs_threshold.png",
        title=title,
    )


# ----------------------------------------------------------------------------- compare
def _load_run(res_dir: Path) -> dict:
    s_path = res_dir / "summary.json"
    r_path = res_dir / "results.csv"
    if not s_path.is_file() or not r_path.is_file():
        raise ComirError(
            f"{res_dir}: no summary.json/results.csv; pass folders written by comir evaluate"
        )
    try:
        summary = json.loads(s_path.read_text())
    except ValueError as exc:
        raise ComirError(f"{s_path}: not valid JSON ({exc})") from None
    with open(r_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    errors = np.array([float(r["Error"]) if r.get("Error") else np.nan for r in rows])
    return {
        "dir": res_dir,
        "summary": summary,
        "errors": errors,
        "levels": [r["level"] for r in rows],
    }


def compare(results_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> str:
    """Side-by-side table of evaluation runs (markdown), plus ``compare.md``/``compare.png``.

    Parameters
    ----------
    results_dirs : sequence of path
        Folders written by :func:`evaluate`.
    out : path, optional
        Where to write ``compare.md`` and ``compare.png``.

    Returns
    -------
    str
        The markdown table: run, method, model, success per level, all, median error (px),
        seconds per pair.
    """
    if not results_dirs:
        raise ComirError("no results folders given; pass one or more folders from comir evaluate")
    runs = [_load_run(Path(d)) for d in results_dirs]
    levels = list(
        dict.fromkeys(k for r in runs for k in r["summary"]["success_rate"] if k != "all")
    )
    head = [
        "run",
        "method",
        "model",
        *[f"L{k}" for k in levels],
        "all",
        "median err (px)",
        "s/pair",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        s = r["summary"]
        rates = s["success_rate"]
        med = s.get("median_error")
        cells = [
            r["dir"].name,
            str(s.get("method")),
            Path(str(s["model"])).name if s.get("model") else "raw",
            *[f"{rates[k]:.3f}" if k in rates else "" for k in levels],
            f"{rates['all']:.3f}",
            f"{med:.2f}" if med is not None else "inf",
            f"{s.get('seconds_per_pair', float('nan')):.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    if out is not None:
        from comir.plot import plot_compare

        out = Path(out)
        write_text(out / "compare.md", table)
        width = max(
            float(np.max(r["summary"]["width"]))
            if "width" in r["summary"]
            else r["summary"]["threshold_px"] / SUCCESS_FRACTION
            for r in runs
        )
        thresholds = np.linspace(0.0, 0.1 * width, 201)
        plot_compare(
            [r["dir"].name for r in runs],
            levels,
            [[r["summary"]["success_rate"].get(k, np.nan) for k in [*levels, "all"]] for r in runs],
            thresholds,
            [success_curve(r["errors"], thresholds) for r in runs],
            width,
            out / "compare.png",
        )
    return table
