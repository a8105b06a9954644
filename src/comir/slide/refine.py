"""Region-by-region refinement of a slide transform on progressively finer levels.

The global search runs on a small working level, where one pixel may be 30 level-0
pixels. :func:`refine_by_patches` then improves the transform level by level (each
``step`` times finer, down to ``finest``) without ever reading a level whole: at each
level it takes ``n_patches`` patches of ``patch`` px around textured places of the fixed
slide (chosen once on the working image), reads just that region of both slides, resamples
the moving one through the current transform onto the fixed patch grid (one
interpolation from the stored pixels), and measures the residual shift by phase
correlation (OpenCV ``phaseCorrelate``, Hanning window; Kuglin & Hines 1975). The patch
centres and their shifted positions are point pairs; a weighted least-squares rigid
(:func:`comir.transform.functional.fit_rigid`) or affine (``fit_affine``) fit, after
dropping outliers, composes a correction onto the transform. Patches go through the
model first when there is one (CoMIRs of both modalities), so multimodal pairs refine too.
"""

from __future__ import annotations

import numpy as np

from comir.transform import AffineTransform
from comir.transform import functional as F

#: Side (px) of a refinement patch; the capture range is about a quarter of it.
PATCH = 256
#: Patches per level.
N_PATCHES = 16
#: Patches whose phase-correlation peak is below this are ignored.
MIN_RESPONSE = 0.05


def patch_centres(work, n: int = N_PATCHES) -> np.ndarray:
    """``(k, 2)`` level-0 points (x, y) in the most textured cells of a working image."""
    img = work.image.astype(np.float32)
    gray = img.mean(axis=2) if img.ndim == 3 else img
    h, w = gray.shape
    g = int(np.ceil(np.sqrt(4 * n)))  # candidate cells: 4n on a g × g grid
    ys, xs = (np.linspace(0, s, g + 1).astype(int) for s in (h, w))
    score, centres = [], []
    for i in range(g):
        for j in range(g):
            cell = gray[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            score.append(float(cell.std()) if cell.size else 0.0)
            centres.append(((xs[j] + xs[j + 1] - 1) / 2, (ys[i] + ys[i + 1] - 1) / 2))
    order = np.argsort(score)[::-1][:n]
    keep = [k for k in order if score[k] > 0.25 * score[order[0]]]
    return F.apply_matrices(work.matrix, np.asarray(centres, float)[keep])


def _moving_level(fixed, moving, level: int) -> int:
    """The moving level with the fixed level's pixel size (or downsample when unknown)."""
    d = float(np.mean(fixed.levels[level].downsample))
    if fixed.pixel_size is not None and moving.pixel_size is not None:
        d *= fixed.pixel_size / moving.pixel_size
    ds = np.array([float(np.mean(lv.downsample)) for lv in moving.levels])
    return int(np.argmin(np.abs(np.log(ds / d))))


def patch_pair(fixed, moving, level: int, centre: np.ndarray, t_full: np.ndarray, size: int):
    """Fixed patch of ``level`` around level-0 point ``centre`` and the moving slide
    resampled onto the same grid through ``t_full`` (moving → fixed, level-0 pixels).

    Returns ``(fixed_patch, moving_patch, origin)``; ``origin`` (x, y) is the patch's
    top-left pixel in ``level`` pixels.
    """
    lf = fixed.level_matrix(level)
    c = F.apply_matrices(np.linalg.inv(lf), centre)
    x0, y0 = int(round(c[0] - size / 2)), int(round(c[1] - size / 2))
    f_patch = fixed.read_region(level, y0, x0, size, size)
    ml = _moving_level(fixed, moving, level)
    lm = moving.level_matrix(ml)
    # patch pixels → fixed level → level 0 → moving level 0 → moving level
    g = np.linalg.inv(lm) @ np.linalg.inv(t_full) @ lf @ F.translation_matrix((x0, y0))
    corners = np.array([[-0.5, -0.5], [size, -0.5], [-0.5, size], [size, size]])
    q = F.apply_matrices(g, corners)
    lo, hi = np.floor(q.min(0)).astype(int) - 2, np.ceil(q.max(0)).astype(int) + 3
    region = moving.read_region(ml, int(lo[1]), int(lo[0]), int(hi[1] - lo[1]), int(hi[0] - lo[0]))
    to_patch = np.linalg.inv(F.translation_matrix(-lo) @ g)  # region pixels → patch pixels
    m_patch = AffineTransform(to_patch).warp(region, (size, size))
    return f_patch, m_patch, np.array([x0, y0], float)


def _gray(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    if x.ndim == 3:
        sd = x.std(axis=(0, 1), keepdims=True)
        x = ((x - x.mean(axis=(0, 1), keepdims=True)) / np.where(sd > 0, sd, 1)).mean(axis=2)
    sd = x.std()
    return ((x - x.mean()) / (sd if sd > 0 else 1)).astype(np.float32)


def patch_shifts(f_patches: list, m_patches: list) -> tuple[np.ndarray, np.ndarray]:
    """Phase-correlation shift ``(k, 2)`` of each moving patch against its fixed patch
    (where the moving content sits minus where the fixed content sits) and the peak."""
    import cv2

    size = f_patches[0].shape[:2]
    win = cv2.createHanningWindow((size[1], size[0]), cv2.CV_32F)
    shifts, resp = [], []
    for f, m in zip(f_patches, m_patches):
        (dx, dy), r = cv2.phaseCorrelate(_gray(f), _gray(m), win)
        shifts.append((dx, dy))
        resp.append(r)
    return np.asarray(shifts, float), np.asarray(resp, float)


def _fit(src: np.ndarray, dst: np.ndarray, w: np.ndarray, affine: bool) -> np.ndarray | None:
    """Weighted rigid / affine fit ``dst ≈ M src`` after one round of outlier removal."""
    need = 3 if affine else 2
    keep = np.ones(len(src), bool)
    for _ in range(2):
        if keep.sum() < need + 1:
            return None
        m = (
            F.fit_affine(src[keep], dst[keep])
            if affine
            else F.fit_rigid(src[keep], dst[keep], w[keep])
        )
        res = np.linalg.norm(F.apply_matrices(m, src) - dst, axis=1)
        keep = res <= max(3 * float(np.median(res[keep])), 1.0)
    return m


def refine_by_patches(
    fixed,
    moving,
    t_full: np.ndarray,
    centres: np.ndarray,
    levels: list[int],
    embed=None,
    affine: bool = False,
    size: int = PATCH,
) -> tuple[np.ndarray, list[dict]]:
    """Refine ``t_full`` (``(3, 3)``, moving → fixed, level-0 px) level by level.

    Parameters
    ----------
    fixed, moving : Slide
    t_full : ndarray, shape (3, 3)
    centres : ndarray, shape (k, 2)
        Level-0 patch centres on the fixed slide (:func:`patch_centres`).
    levels : list of int
        Fixed levels to refine on, coarse to fine.
    embed : callable, optional
        ``embed(patches, "fixed"|"moving") -> list`` of CoMIRs.
    affine : bool
        Fit an affine correction instead of a rigid one.

    Returns
    -------
    matrix : ndarray, shape (3, 3)
        The refined transform.
    log : list of dict
        Per level: level, patches used, median shift (level px).
    """
    log = []
    for level in levels:
        pairs = [patch_pair(fixed, moving, level, c, t_full, size) for c in centres]
        fp, mp = [p[0] for p in pairs], [p[1] for p in pairs]
        if embed is not None:
            fp, mp = embed(fp, "fixed"), embed(mp, "moving")
        shift, resp = patch_shifts(fp, mp)
        ok = (resp > MIN_RESPONSE) & (np.abs(shift).max(axis=1) < size / 4)
        lf = fixed.level_matrix(level)
        centre_px = np.array([p[2] for p in pairs]) + (size - 1) / 2
        dst = F.apply_matrices(lf, centre_px[ok])  # where the content belongs
        src = F.apply_matrices(lf, centre_px[ok] + shift[ok])  # where t_full puts it
        corr = _fit(src, dst, resp[ok], affine) if ok.sum() else None
        entry = {"level": level, "patches": int(ok.sum()),
                 "median_shift_px": float(np.median(np.linalg.norm(shift[ok], axis=1))) if ok.any() else None}  # fmt: skip
        if corr is not None:
            t_full = corr @ t_full
        entry["applied"] = corr is not None
        log.append(entry)
    return t_full, log
