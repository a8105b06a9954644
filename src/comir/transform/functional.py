"""Functional 2-D geometry on homogeneous 3×3 matrices, batched where it matters.

Every function follows the convention of :mod:`comir.transform`: points are ``(x, y)`` with
x = column, y = row, the origin at the centre of the top-left pixel, and matrices map
moving-image points to fixed-image points. Shapes are given as ``(..., 3, 3)`` (any
leading batch dimensions) and ``(..., 2)`` for points.

Examples
--------
>>> import numpy as np
>>> m = rigid_matrices(np.pi / 2, (0.0, 0.0), center=(1.0, 1.0))
>>> apply_matrices(m, np.array([2.0, 1.0])).round(6)
array([1., 2.])
"""

from __future__ import annotations

import numpy as np

ArrayLike = np.ndarray | float | tuple | list


def image_center(shape: tuple[int, ...]) -> tuple[float, float]:
    """Geometric centre ``(x, y)`` of an image of shape ``(H, W, ...)``."""
    return ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)


def patch_corners(width: float, height: float | None = None, origin: str = "edges") -> np.ndarray:
    """Outer corners of a ``width × height`` patch, ``(4, 2)``.

    Order as in the public evaluation protocol (Lu et al. 2022): upper-left, lower-left,
    lower-right, upper-right, at the outer pixel edges (``-0.5`` and ``size - 0.5``).
    ``origin="multiregeval"`` gives the values the MultiRegEval ``info_test.csv`` files hold
    instead, ``0`` and ``size`` (half a pixel off the edges in this frame; see
    :mod:`comir.evaluation.protocol`).
    """
    h = width if height is None else height
    if origin not in ("edges", "multiregeval"):
        raise ValueError(f"origin must be 'edges' or 'multiregeval', got {origin!r}")
    off = 0.0 if origin == "multiregeval" else -0.5
    lo_x, hi_x, lo_y, hi_y = off, width + off, off, h + off
    return np.array([[lo_x, lo_y], [lo_x, hi_y], [hi_x, hi_y], [hi_x, lo_y]])


def rotation_matrices(angle_rad: ArrayLike) -> np.ndarray:
    """``[[cos, -sin], [sin, cos]]`` per angle: ``(...) -> (..., 2, 2)``.

    A positive angle turns clockwise on screen (y points down).
    """
    a = np.asarray(angle_rad, dtype=float)
    c, s = np.cos(a), np.sin(a)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def from_linear(linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Homogeneous matrices ``(..., 3, 3)`` of ``p -> linear @ p + offset``."""
    linear = np.asarray(linear, dtype=float)
    offset = np.asarray(offset, dtype=float)
    batch = np.broadcast_shapes(linear.shape[:-2], offset.shape[:-1])
    m = np.zeros((*batch, 3, 3))
    m[..., :2, :2] = linear
    m[..., :2, 2] = offset
    m[..., 2, 2] = 1.0
    return m


def about_center(linear: np.ndarray, translation: ArrayLike, center: ArrayLike) -> np.ndarray:
    """``p -> A (p - c) + c + t`` for linear parts ``A (..., 2, 2)``; returns ``(..., 3, 3)``."""
    linear = np.asarray(linear, dtype=float)
    c = np.asarray(center, dtype=float)
    t = np.asarray(translation, dtype=float)
    offset = c + t - np.einsum("...ij,...j->...i", linear, np.broadcast_to(c, linear.shape[:-1]))
    return from_linear(linear, offset)


def rigid_matrices(
    angle_rad: ArrayLike, translation: ArrayLike = (0.0, 0.0), center: ArrayLike = (0.0, 0.0)
) -> np.ndarray:
    """Rotation by ``angle`` about ``center``, then translation: ``(...) -> (..., 3, 3)``.

    ``p_fixed = R(angle) (p_moving - center) + center + translation``; ``translation`` and
    ``center`` are ``(..., 2)`` and broadcast against the angles.
    """
    return about_center(rotation_matrices(angle_rad), translation, center)


def similarity_matrices(
    angle_rad: ArrayLike,
    scale: ArrayLike,
    translation: ArrayLike = (0.0, 0.0),
    center: ArrayLike = (0.0, 0.0),
) -> np.ndarray:
    """``p -> s R(angle) (p - c) + c + t``: ``(...) -> (..., 3, 3)``."""
    s = np.asarray(scale, dtype=float)[..., None, None]
    return about_center(s * rotation_matrices(angle_rad), translation, center)


def translation_matrix(shift: ArrayLike) -> np.ndarray:
    """``p -> p + shift`` for shifts ``(..., 2)``; returns ``(..., 3, 3)``."""
    shift = np.asarray(shift, dtype=float)
    return from_linear(np.broadcast_to(np.eye(2), (*shift.shape[:-1], 2, 2)), shift)


def scale_matrix(sx: float, sy: float | None = None) -> np.ndarray:
    """``p -> (sx x, sy y)``, ``(3, 3)`` (pyramid levels: level pixels to full resolution)."""
    return from_linear(np.diag([sx, sx if sy is None else sy]), np.zeros(2))


def apply_matrices(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points by matrices, broadcasting batches.

    Parameters
    ----------
    matrices : ndarray, shape (..., 3, 3)
    points : ndarray, shape (..., K, 2) or (2,)
        ``(N, K, 2)`` with ``(N, 3, 3)`` maps the k-th point of item n by matrix n;
        ``(K, 2)`` with ``(3, 3)`` maps every point by one matrix.

    Returns
    -------
    ndarray
        Mapped points, the broadcast shape of ``points``.
    """
    m = np.asarray(matrices, dtype=float)
    p = np.asarray(points, dtype=float)
    if p.ndim == 1:
        return m[..., :2, :2] @ p + m[..., :2, 2]
    return np.einsum("...ij,...kj->...ki", m[..., :2, :2], p) + m[..., None, :2, 2]


def invert_matrices(matrices: np.ndarray) -> np.ndarray:
    """Inverse of every matrix ``(..., 3, 3)``; NaN where a matrix is not finite or singular."""
    m = np.asarray(matrices, dtype=float)
    out = np.full_like(m, np.nan)
    flat_m, flat_o = m.reshape(-1, 3, 3), out.reshape(-1, 3, 3)
    ok = np.isfinite(flat_m).all(axis=(1, 2))
    ok[ok] &= np.abs(np.linalg.det(flat_m[ok])) > 1e-300
    if ok.any():
        flat_o[ok] = np.linalg.inv(flat_m[ok])
    return flat_o.reshape(m.shape)


def matrix_angles(matrices: np.ndarray) -> np.ndarray:
    """Rotation angle in radians of rigid or similarity matrices: ``(..., 3, 3) -> (...)``."""
    m = np.asarray(matrices, dtype=float)
    return np.arctan2(m[..., 1, 0], m[..., 0, 0])


def translation_about(matrices: np.ndarray, center: ArrayLike) -> np.ndarray:
    """``t`` such that ``M p = A (p - c) + c + t``: ``(..., 3, 3) -> (..., 2)``."""
    m = np.asarray(matrices, dtype=float)
    c = np.asarray(center, dtype=float)
    return np.einsum("...ij,j->...i", m[..., :2, :2], c) + m[..., :2, 2] - c


def with_angles(matrices: np.ndarray, angle_rad: ArrayLike, center: ArrayLike) -> np.ndarray:
    """Rigid matrices with new angles, keeping each translation about ``center``."""
    return rigid_matrices(angle_rad, translation_about(matrices, center), center)


def corner_errors(
    recovered: np.ndarray, trans_corners: np.ndarray, ref_corners: np.ndarray
) -> np.ndarray:
    """Registration error of the public protocol (Lu et al., PLOS ONE 2022), per pair.

    The transformed patch's outline ``trans_corners`` is mapped back by the recovered
    moving → fixed transform, ``M⁻¹(trans)``, and compared with the reference corners.
    For rigid ``M`` this equals the mean distance between ``M(ref)`` and ``trans``.

    Parameters
    ----------
    recovered : ndarray, shape (N, 3, 3) or (3, 3)
        Recovered moving → fixed matrices; non-finite rows (failures) give NaN.
    trans_corners, ref_corners : ndarray, shape (N, 4, 2) or (4, 2)

    Returns
    -------
    ndarray, shape (N,) or ()
        Mean Euclidean distance of the four corners, in pixels.
    """
    back = apply_matrices(invert_matrices(recovered), trans_corners)
    return np.linalg.norm(back - np.asarray(ref_corners, dtype=float), axis=-1).mean(axis=-1)


def fit_rigid(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares rigid map ``dst ≈ R src + t`` (2-D Kabsch/Umeyama without scale).

    Parameters
    ----------
    src, dst : ndarray, shape (N, 2)
    weights : ndarray, shape (N,), optional

    Returns
    -------
    ndarray, shape (3, 3)
    """
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    a, b = src - ms, dst - md
    # The optimal angle maximises Σ w b · R a: atan2(Σ w (a × b), Σ w (a · b)).
    ang = np.arctan2(w @ (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]), w @ (a * b).sum(axis=1))
    r = rotation_matrices(ang)
    return from_linear(r, md - r @ ms)


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares affine map ``dst ≈ A src + t`` from ``N ≥ 3`` point pairs, ``(3, 3)``."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    design = np.concatenate([src, np.ones((len(src), 1))], axis=1)
    sol, *_ = np.linalg.lstsq(design, dst, rcond=None)  # (3, 2)
    return from_linear(sol[:2].T, sol[2])


def grid_sample_matrix(height: int, width: int) -> np.ndarray:
    """Pixel ``(x, y)`` → the normalised coordinates of ``torch.nn.functional.grid_sample``
    with ``align_corners=False`` (``-1`` and ``1`` at the outer pixel edges), ``(3, 3)``."""
    return from_linear(np.diag([2.0 / width, 2.0 / height]), [1.0 / width - 1, 1.0 / height - 1])
