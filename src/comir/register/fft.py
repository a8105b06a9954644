"""Global rigid registration by a rotation sweep × FFT masked normalised cross-correlation.

No initial guess is needed: every rotation of the full circle (or ``±max_angle``) is tried
on a coarse pyramid level, the translation for each angle comes from one masked NCC
surface computed in the Fourier domain, and the best few candidates are refined on finer
levels (local shift windows, sub-pixel parabolic peak fit, sub-degree parabolic angle fit).
All angles of the sweep go through one batched FFT call; the surfaces cover only the
shifts whose overlap can reach ``min_overlap`` (an exact bound from the masks' row and
column counts, :func:`_axis_shift_range`), about half the side of the full range.

The masked NCC follows Padfield, "Masked object registration in the Fourier domain",
IEEE TIP 21(5), 2012: for a shift ``s`` every sum runs over the overlap of the fixed
image and the rotated moving image only, so pixels outside the rotated moving image (and
the zero padding) never count, and shifts whose overlap is a small fraction of the images
are rejected instead of winning by accident. Multichannel inputs (e.g. 3-channel CoMIRs)
use the mean over channels of the per-channel NCC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft

from comir.errors import ComirError
from comir.io import standardize
from comir.register.base import (
    RegistrationResult,
    check_image,
    failed,
    fft_workers,
    no_contrast,
    timed,
    to_gray,
)
from comir.transform import RigidTransform, image_center
from comir.transform import functional as F

_VAR_EPS = 1e-4  # variance floor (per pixel) of the unit-variance inputs


@dataclass
class _Level:
    """One pyramid level: block-mean downsampled ``(C, H, W)`` images."""

    factor: int
    fixed: np.ndarray
    moving: np.ndarray
    spectra: dict = field(default_factory=dict)

    @property
    def scale(self) -> np.ndarray:
        """3×3 matrix mapping level pixel coordinates to full-resolution coordinates."""
        f = float(self.factor)
        return F.translation_matrix(((f - 1) / 2, (f - 1) / 2)) @ F.scale_matrix(f)

    def fixed_spectra(self, shape: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
        """``rfft2`` of ``[mask, fixed, fixed²]`` placed at ``offset`` in zeros of ``shape``.

        Returns ``(1 + 2C, P0, P1 // 2 + 1)`` complex; cached per ``(shape, offset)``.
        """
        key = (shape, offset)
        if key not in self.spectra:
            f = self.fixed
            c, h, w = f.shape
            buf = np.zeros((1 + 2 * c, *shape), np.float32)
            region = buf[:, offset[0] : offset[0] + h, offset[1] : offset[1] + w]
            region[0] = 1.0
            region[1 : 1 + c] = f
            region[1 + c :] = f * f
            self.spectra[key] = sfft.rfft2(buf, workers=fft_workers())
        return self.spectra[key]


def _downsample(x: np.ndarray, f: int) -> np.ndarray:
    """Block mean of ``(C, H, W)`` by an integer factor (border remainder dropped).

    Level pixel ``i`` covers full-resolution pixels ``f·i … f·i + f − 1``, so its centre is
    at full-resolution coordinate ``f·i + (f − 1)/2``.
    """
    if f == 1:
        return x
    c, h, w = x.shape
    h2, w2 = h // f, w // f
    return x[:, : h2 * f, : w2 * f].reshape(c, h2, f, w2, f).mean(axis=(2, 4))


def _warp_batch(
    img: np.ndarray, inv: np.ndarray, out_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinearly resample ``img`` under a batch of affine maps (one OpenCV call each).

    Parameters
    ----------
    img : ndarray, shape (C, H, W), float32
    inv : ndarray, shape (A, 3, 3)
        Maps output pixel coordinates ``(x, y, 1)`` to ``img`` coordinates (OpenCV's
        convention is the same: x = column, origin at the centre of the top-left pixel).
    out_shape : (Ho, Wo)

    Returns
    -------
    values : ndarray, shape (A, C, Ho, Wo), float32; zero outside the mask
    mask : ndarray, shape (A, Ho, Wo), float32; 1 where the sample point lies inside the
        image (both bilinear neighbours exist), else 0
    """
    import cv2

    c, h, w = img.shape
    ho, wo = out_shape
    # Mask as an extra channel: bilinear weights of a ones image sum to 1 only inside.
    # OpenCV warps at most 4 channels per call.
    stack = np.concatenate([np.ones((1, h, w), np.float32), img]).transpose(1, 2, 0)
    groups = [np.ascontiguousarray(stack[..., i : i + 4]) for i in range(0, c + 1, 4)]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = np.empty((inv.shape[0], c + 1, ho, wo), np.float32)
    for k, m in enumerate(inv[:, :2].astype(np.float64)):
        planes = [
            cv2.warpAffine(
                g, m, (wo, ho), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
            )
            for g in groups
        ]
        out[k] = np.concatenate([p.reshape(ho, wo, -1) for p in planes], axis=-1).transpose(2, 0, 1)
    mask = (out[:, 0] > 0.999).astype(np.float32)
    values = out[:, 1:]
    values *= mask[:, None]
    return values, mask


def _irfft2_rows(spec: np.ndarray, shape: tuple[int, int], ny: int, nx: int) -> np.ndarray:
    """``irfft2(spec, s=shape)[..., :ny, :nx]``, transforming only the ``ny`` needed rows
    along the last axis (about half the work of the full inverse when ``ny ≪ P0``).

    Parameters
    ----------
    spec : ndarray, shape (..., P0, P1 // 2 + 1), complex
    """
    workers = fft_workers()
    cols = sfft.ifft(spec, n=shape[0], axis=-2, workers=workers)[..., :ny, :]
    return sfft.irfft(cols, n=shape[1], axis=-1, workers=workers)[..., :nx]


def _masked_ncc(
    level: _Level,
    canvas: np.ndarray,
    mask: np.ndarray,
    lo: tuple[int, int],
    hi: tuple[int, int],
    min_overlap: float,
) -> np.ndarray:
    """Masked NCC of the fixed image with a batch of masked moving canvases.

    Parameters
    ----------
    canvas : ndarray, shape (A, C, Hc, Wc)
        Moving image warped into canvas coordinates, zero outside ``mask``.
    mask : ndarray, shape (A, Hc, Wc)
    lo, hi : (int, int)
        Inclusive shift range ``(sy, sx)`` to evaluate, ``lo ≤ 0``.

    Returns
    -------
    ndarray, shape (A, ny, nx), float32
        Entry ``[a, i, j]`` is the channel-mean NCC for the shift ``s = lo + (i, j)`` such
        that ``fixed(q) ≈ canvas[a](q − s)``; ``-inf`` where the overlap is below
        ``min_overlap`` of the smaller image.
    """
    a, c, hc, wc = canvas.shape
    hf, wf = level.fixed.shape[1:]
    ny, nx = hi[0] - lo[0] + 1, hi[1] - lo[1] + 1
    # Padding at which the circular correlation equals the linear one for every requested
    # shift (no wrapped copy of the canvas reaches the fixed image). The fixed image sits at
    # offset −lo so that output index i is the shift lo + i.
    shape = (
        sfft.next_fast_len(max(hc + hi[0], hf - lo[0]), True),
        sfft.next_fast_len(max(wc + hi[1], wf - lo[1]), True),
    )
    workers = fft_workers()
    fspec = level.fixed_spectra(shape, (-lo[0], -lo[1]))
    fm, ff, fff = fspec[:1], fspec[1 : 1 + c], fspec[1 + c :]
    stack = np.concatenate([mask[:, None], canvas, canvas * canvas], axis=1)
    spec = np.conj(sfft.rfft2(stack, s=shape, workers=workers))
    mm, mv, mvv = spec[:, :1], spec[:, 1 : 1 + c], spec[:, 1 + c :]
    # Σ_q a(q) g(q − s) = irfft2(A · conj(G)) for the six sums of the masked NCC.
    prods = np.empty((a, 1 + 5 * c, *spec.shape[2:]), spec.dtype)
    np.multiply(fm, mm, out=prods[:, :1])
    np.multiply(ff, mm, out=prods[:, 1 : 1 + c])
    np.multiply(fff, mm, out=prods[:, 1 + c : 1 + 2 * c])
    np.multiply(fm, mv, out=prods[:, 1 + 2 * c : 1 + 3 * c])
    np.multiply(fm, mvv, out=prods[:, 1 + 3 * c : 1 + 4 * c])
    np.multiply(ff, mv, out=prods[:, 1 + 4 * c :])
    if 4 * ny < shape[0]:
        sums = _irfft2_rows(prods, shape, ny, nx)
    else:
        sums = sfft.irfft2(prods, s=shape, workers=workers)[..., :ny, :nx]
    sf, sff, sm, smm, sfm = (sums[:, 1 + k * c : 1 + (k + 1) * c] for k in range(5))
    n = np.rint(sums[:, 0])
    nn = np.maximum(n, 1.0)[:, None]
    var_f = np.maximum(sff - sf * sf / nn, _VAR_EPS * nn)
    var_m = np.maximum(smm - sm * sm / nn, _VAR_EPS * nn)
    ncc = ((sfm - sf * sm / nn) / np.sqrt(var_f * var_m)).mean(axis=1)
    need = _min_pixels(mask, hf * wf, min_overlap)
    return np.where(n >= need[:, None, None], ncc, -np.inf).astype(np.float32)


def _min_pixels(mask: np.ndarray, fixed_area: int, min_overlap: float) -> np.ndarray:
    """Smallest accepted overlap (pixels) per canvas of ``mask`` ``(A, Hc, Wc)``: ``A``."""
    area_m = mask.sum(axis=(1, 2))
    return np.maximum(min_overlap * np.minimum(float(fixed_area), area_m), 4.0)


def _axis_shift_range(
    counts: np.ndarray, n_fixed: int, cap: int, need: np.ndarray
) -> tuple[int, int]:
    """Inclusive shift range along one axis outside which no canvas reaches ``need``.

    The overlap of the fixed image (``n_fixed`` lines of ``cap`` pixels) with a canvas
    shifted by ``s`` along this axis is at most ``Σ_{k = −s}^{n_fixed − 1 − s} min(cap,
    counts[k])``: each fixed line meets one canvas line of ``counts[k]`` mask pixels.

    Parameters
    ----------
    counts : ndarray, shape (A, N)
        Mask pixels per canvas line (row or column) for each of ``A`` canvases.
    need : ndarray, shape (A,)
        Smallest accepted overlap per canvas (:func:`_min_pixels`).
    """
    a, n = counts.shape
    cum = np.zeros((a, n + 1))
    np.cumsum(np.minimum(counts, cap), axis=1, out=cum[:, 1:])
    shifts = np.arange(1 - n, n_fixed)
    upper = cum[:, np.clip(n_fixed - shifts, 0, n)] - cum[:, np.clip(-shifts, 0, n)]
    keep = np.flatnonzero((upper >= need[:, None] - 0.5).any(axis=0))
    if keep.size == 0:
        return 0, 0
    return int(shifts[keep[0]]), int(shifts[keep[-1]])


def _parabola(
    left: np.ndarray, mid: np.ndarray, right: np.ndarray, limit: float = 0.5
) -> np.ndarray:
    """Vertex offset of the parabola through three equally spaced samples, in samples.

    Clipped to ``[-limit, limit]``; 0 where a neighbour is missing or the parabola is
    not concave.
    """
    den = left - 2 * mid + right
    ok = np.isfinite(left) & np.isfinite(right) & (den < 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(ok, 0.5 * (left - right) / np.where(ok, den, -1.0), 0.0)
    return np.clip(off, -limit, limit)


def _peaks(ncc: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best score and sub-pixel shift per angle of NCC surfaces ``(A, ny, nx)``.

    Returns
    -------
    score : ndarray, shape (A,)
    shift : ndarray, shape (A, 2), (x, y); parabolic peak fit along each axis
    """
    a, ny, nx = ncc.shape
    pad = np.pad(ncc, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    flat = ncc.reshape(a, -1).argmax(axis=1)
    iy, ix = np.divmod(flat, nx)
    rows = np.arange(a)
    best = ncc[rows, iy, ix]
    dy = _parabola(pad[rows, iy, ix + 1], best, pad[rows, iy + 2, ix + 1])
    dx = _parabola(pad[rows, iy + 1, ix], best, pad[rows, iy + 1, ix + 2])
    return best, np.stack([sx[ix] + dx, sy[iy] + dy], axis=1)


def _with_shift(mats: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Prepend a translation by ``shift`` ``(A, 2)`` to matrices ``(A, 3, 3)``."""
    return F.translation_matrix(shift) @ mats


def _global_search(
    level: _Level, angles_deg: np.ndarray, min_overlap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full-shift masked NCC for every angle on one level.

    Returns
    -------
    score : ndarray, shape (A,)
    mats : ndarray, shape (A, 3, 3)
        Level moving → level fixed matrices at each angle's best shift.
    """
    cm, hm, wm = level.moving.shape
    hf, wf = level.fixed.shape[1:]
    side = math.ceil(math.hypot(hm, wm)) + 2
    c_m = np.array(image_center((hm, wm)))
    c_f = np.array(image_center((hf, wf)))
    c_c = np.array([(side - 1) / 2.0, (side - 1) / 2.0])
    origin = np.round(c_f - c_c)  # canvas pixel k sits at fixed coordinate k + origin
    mats = F.rigid_matrices(np.radians(angles_deg), c_f - c_m, c_m)
    inv = F.invert_matrices(mats) @ F.translation_matrix(origin)
    canvas, mask = _warp_batch(level.moving, inv, (side, side))
    # Only shifts whose overlap can reach min_overlap (an exact bound): the NCC surfaces
    # and FFTs shrink to about half the side of the full shift range.
    need = _min_pixels(mask, hf * wf, min_overlap)
    y0, y1 = _axis_shift_range(mask.sum(axis=2), hf, wf, need)
    x0, x1 = _axis_shift_range(mask.sum(axis=1), wf, hf, need)
    lo, hi = (y0, x0), (y1, x1)
    ncc = _masked_ncc(level, canvas, mask, lo, hi, min_overlap)
    score, s = _peaks(ncc, np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    return score, _with_shift(mats, s - origin)


def _local_search(
    level: _Level, mats_full: np.ndarray, window: int, min_overlap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Refine the translation of full-resolution candidates within ``±window`` level pixels.

    Returns scores ``(A,)`` and refined full-resolution matrices ``(A, 3, 3)``.
    """
    s, s_inv = level.scale, F.invert_matrices(level.scale)
    mats = s_inv @ mats_full @ s
    hf, wf = level.fixed.shape[1:]
    m = int(window)
    origin = np.array([-m, -m], dtype=float)
    canvas, mask = _warp_batch(
        level.moving,
        F.invert_matrices(mats) @ F.translation_matrix(origin),
        (hf + 2 * m, wf + 2 * m),
    )
    ncc = _masked_ncc(level, canvas, mask, (-2 * m, -2 * m), (0, 0), min_overlap)
    score, sh = _peaks(ncc, np.arange(-2 * m, 1), np.arange(-2 * m, 1))
    return score, s @ _with_shift(mats, sh - origin) @ s_inv


def _angle_candidates(score: np.ndarray, circular: bool, k: int) -> np.ndarray:
    """Indices of the ``k`` best local maxima of ``score`` over angle."""
    if circular:
        left, right = np.roll(score, 1), np.roll(score, -1)
    else:
        left = np.concatenate([[-np.inf], score[:-1]])
        right = np.concatenate([score[1:], [-np.inf]])
    peaks = np.flatnonzero((score >= left) & (score >= right) & np.isfinite(score))
    if peaks.size == 0:
        return peaks
    return peaks[np.argsort(-score[peaks])][:k]


def _refine_angle(
    level: _Level,
    mats_full: np.ndarray,
    delta: float,
    window: int,
    center: np.ndarray,
    min_overlap: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One parabolic angle step per candidate: try ``θ − δ, θ, θ + δ`` in one batch.

    Returns
    -------
    score : ndarray, shape (K,)
        Best score of the three trials.
    mats : ndarray, shape (K, 3, 3)
        Translation of the best trial, angle at the parabola's vertex (at most ``δ`` away
        from ``θ``; one full step towards the better side when the samples are not concave).
    centred : ndarray of bool, shape (K,)
        Whether the middle trial won (the optimum is bracketed).
    """
    k = len(mats_full)
    theta = np.degrees(F.matrix_angles(mats_full))
    trial = (theta[:, None] + delta * np.array([-1.0, 0.0, 1.0])).ravel()
    base = np.repeat(mats_full, 3, axis=0)
    score, mats = _local_search(
        level, F.with_angles(base, np.radians(trial), center), window, min_overlap
    )
    score, mats = score.reshape(k, 3), mats.reshape(k, 3, 3, 3)
    best = score.argmax(axis=1)
    rows = np.arange(k)
    off = _parabola(score[:, 0], score[:, 1], score[:, 2], limit=1.0)
    off = np.where((best != 1) & (off == 0), best - 1.0, off)
    new = F.with_angles(mats[rows, best], np.radians(theta + off * delta), center)
    return score[rows, best], new, best == 1


def _pyramid(f_img: np.ndarray, m_img: np.ndarray, coarse_size: int) -> list[_Level]:
    """Standardised ``(C, H, W)`` levels, coarsest first, halving the factor down to 1."""
    # (H, W, C) -> (C, H, W), each channel zero mean and unit variance
    f_std, m_std = (
        np.ascontiguousarray(standardize(np.moveaxis(x, -1, 0), axis=(1, 2)))
        for x in (f_img, m_img)
    )
    sides = (*f_img.shape[:2], *m_img.shape[:2])
    factor = max(1, min(math.ceil(max(sides) / coarse_size), min(sides) // 8))
    factors = [factor]
    while factors[-1] > 1:
        factors.append(max(1, factors[-1] // 2))
    return [_Level(f, _downsample(f_std, f), _downsample(m_std, f)) for f in factors]


def _sweep_angles(
    coarse: _Level, max_angle: float, angle_step: float | None
) -> tuple[np.ndarray, float, bool]:
    """Angles (degrees) of the coarse sweep, their spacing, and whether they wrap around."""
    if angle_step is None:
        r = 0.5 * math.hypot(*coarse.moving.shape[1:])
        angle_step = float(min(6.0, math.degrees(2.5 / r)))
    if max_angle >= 180:
        n = math.ceil(360.0 / angle_step)
        return np.arange(n) * (360.0 / n) - 180.0, 360.0 / n, True
    n = math.ceil(2 * max_angle / angle_step) + 1
    angles = np.linspace(-max_angle, max_angle, n)
    return angles, (angles[1] - angles[0] if n > 1 else angle_step), False


def _coarse_to_fine(
    levels: list[_Level],
    cand: np.ndarray,
    cand_score: np.ndarray,
    delta: float,
    center: np.ndarray,
    min_overlap: float,
) -> tuple[np.ndarray, float]:
    """Refine angle candidates level by level, halving them each time; the best one on
    the full-resolution level ``(1, 3, 3)`` and the angle step reached."""
    prev = levels[0].factor
    for i, level in enumerate(levels[1:], start=1):
        if i == len(levels) - 1:  # full resolution is the expensive level: best candidate only
            top = int(np.argmax(cand_score))
            cand, cand_score = cand[top : top + 1], cand_score[top : top + 1]
        window = math.ceil(prev / level.factor) + 1
        cand_score, cand, centred = _refine_angle(level, cand, delta, window, center, min_overlap)
        order = np.argsort(-cand_score)
        delta /= 4.0 if centred[order[0]] else 2.0
        keep = order[: max(1, len(cand) // 2)]
        cand, cand_score = cand[keep], cand_score[keep]
        prev = level.factor
    return cand[:1], delta


@timed("fft")
def register_fft(
    fixed: np.ndarray,
    moving: np.ndarray,
    max_angle: float = 180.0,
    angle_step: float | None = None,
    coarse_size: int = 32,
    candidates: int = 4,
    min_overlap: float = 0.4,
    angle_tol: float = 0.15,
) -> RegistrationResult:
    """Rigid registration by a global rotation sweep × FFT masked NCC (no initial guess).

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
        Sizes may differ. With equal channel counts the NCC is averaged over channels,
        otherwise both images are reduced to grey by PCA (:func:`to_gray`).
    max_angle : float
        Search rotations in ``[-max_angle, max_angle]`` degrees; 180 = full circle.
    angle_step : float, optional
        Coarse angular step in degrees; default ``≈ 143°/r`` (2.5 pixels of arc) for a
        coarse image of half-diagonal ``r`` pixels: about 6° for the 32-pixel coarse
        level of a 96 px patch, at most 6°.
    coarse_size : int
        Longest side of the coarse level (block-mean downsampling by an integer factor).
        32 (was 48): on the demo's 48 CoMIR pairs of 96 px the sweep costs a fifth and
        success went from 47 to 48 pairs (no pair lost; the IHC demo set: 48 of 48 either
        way, benchmarks/notes.md).
    candidates : int
        Angle candidates (local maxima of the coarse score) refined on finer levels.
    min_overlap : float
        Shifts whose overlap is below this fraction of the smaller image are rejected.
    angle_tol : float
        Stop the parabolic angle refinement once the step is below this (degrees).

    Returns
    -------
    RegistrationResult
        ``score`` is the channel-mean masked NCC at the solution, in ``[-1, 1]``.
    """
    if not 0 < max_angle <= 180:
        raise ComirError(f"fft: max_angle must be in (0, 180] degrees, got {max_angle}")
    if angle_step is not None and not 0 < angle_step <= 90:
        raise ComirError(f"fft: angle_step must be in (0, 90] degrees, got {angle_step}")
    if not 0 < min_overlap < 1:
        raise ComirError(f"fft: min_overlap must be in (0, 1), got {min_overlap}")
    if coarse_size < 16:
        raise ComirError(f"fft: coarse_size must be at least 16, got {coarse_size}")
    f_img, m_img = check_image(fixed, "fixed"), check_image(moving, "moving")
    why = no_contrast(f_img, m_img)
    if why:
        return failed("fft", why)
    if f_img.shape[2] != m_img.shape[2]:
        f_img, m_img = to_gray(f_img)[..., None], to_gray(m_img)[..., None]
    levels = _pyramid(f_img, m_img, coarse_size)
    angles, step, circular = _sweep_angles(levels[0], max_angle, angle_step)
    score, mats = _global_search(levels[0], angles, min_overlap)
    picks = _angle_candidates(score, circular, candidates)
    if picks.size == 0:
        return failed("fft", "no shift with enough overlap")
    center = np.array(image_center(m_img.shape))
    s = levels[0].scale
    cand = s @ mats[picks] @ F.invert_matrices(s)
    mat, delta = _coarse_to_fine(levels, cand, score[picks], step / 2.0, center, min_overlap)
    fine = levels[-1]
    window = 2 if len(levels) > 1 else 1
    for _ in range(12):  # bounded: each step either shrinks delta or moves by delta
        if delta < angle_tol:
            break
        _, mat, centred = _refine_angle(fine, mat, delta, window, center, min_overlap)
        if centred[0]:
            delta /= 4.0
    final_score, mat = _local_search(fine, mat, window, min_overlap)
    if not np.isfinite(final_score[0]):
        return failed("fft", "refinement lost the overlap")
    return RegistrationResult(RigidTransform(mat[0]), float(final_score[0]), 0.0, "ok", "fft")
