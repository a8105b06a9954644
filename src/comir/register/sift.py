"""SIFT keypoints + RANSAC rigid fit (the classical feature-based baseline).

Lowe, "Distinctive image features from scale-invariant keypoints", IJCV 60(2), 2004
(ratio test); Fischler & Bolles, RANSAC, CACM 24(6), 1981. The rigid model (rotation +
translation, no scale) is fitted from 2-point hypotheses, all scored at once, and the
inliers are refitted by least squares (Kabsch/Umeyama without scale).
"""

from __future__ import annotations

import numpy as np

from comir.errors import ComirError
from comir.register.base import (
    RegistrationResult,
    check_image,
    failed,
    robust_uint8,
    timed,
    to_gray,
)
from comir.transform import RigidTransform
from comir.transform.functional import fit_rigid, rotation_matrices


def ransac_rigid(
    src: np.ndarray,
    dst: np.ndarray,
    threshold: float,
    iterations: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """RANSAC over 2-point rigid hypotheses, evaluated for all hypotheses at once.

    Parameters
    ----------
    src, dst : ndarray, shape (N, 2)
        Matched points, ``dst ≈ R src + t``.
    threshold : float
        Inlier distance in pixels.

    Returns
    -------
    matrix : ndarray, shape (3, 3)
        Least-squares refit on the inliers of the best hypothesis.
    inliers : ndarray of bool, shape (N,)
    """
    n = len(src)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, iterations)
    j = (i + rng.integers(1, n, iterations)) % n  # j != i
    ds, dd = src[j] - src[i], dst[j] - dst[i]
    ang = np.arctan2(dd[:, 1], dd[:, 0]) - np.arctan2(ds[:, 1], ds[:, 0])
    rot = rotation_matrices(ang)  # (I, 2, 2)
    t = dst[i] - np.einsum("hab,hb->ha", rot, src[i])
    best_count, inliers = -1, np.zeros(n, bool)
    chunk = max(1, 2_000_000 // max(n, 1))  # bound the (hypotheses, N, 2) temporaries
    for k in range(0, iterations, chunk):
        pred = np.einsum("hab,nb->hna", rot[k : k + chunk], src) + t[k : k + chunk, None]
        inl = np.linalg.norm(pred - dst[None], axis=-1) < threshold
        counts = inl.sum(axis=1)
        h = int(np.argmax(counts))
        if counts[h] > best_count:
            best_count, inliers = int(counts[h]), inl[h]
    m = fit_rigid(src[inliers], dst[inliers])
    for _ in range(3):  # refit until the inlier set settles
        new = np.linalg.norm(src @ m[:2, :2].T + m[:2, 2] - dst, axis=1) < threshold
        if new.sum() < 2 or np.array_equal(new, inliers):
            break
        inliers = new
        m = fit_rigid(src[inliers], dst[inliers])
    return m, inliers


@timed("sift")
def register_sift(
    fixed: np.ndarray,
    moving: np.ndarray,
    ratio: float = 0.75,
    min_inliers: int = 6,
    threshold: float | None = None,
    iterations: int = 2000,
    n_features: int = 0,
    seed: int = 0,
) -> RegistrationResult:
    """Rigid registration from SIFT matches (OpenCV) and a RANSAC rigid fit.

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
        Reduced to grey by PCA (:func:`to_gray`) and scaled to uint8 between the 0.5 and
        99.5 percentiles.
    ratio : float
        Lowe's ratio test threshold.
    min_inliers : int
        Fewer RANSAC inliers than this is reported as a failure.
    threshold : float, optional
        RANSAC inlier distance in pixels; default 1 % of the larger image side, at least 3.
    n_features : int
        Keypoints to keep per image (0 = all).

    Returns
    -------
    RegistrationResult
        ``score`` is the inlier count.
    """
    import cv2

    if not 0 < ratio < 1:
        raise ComirError(f"sift: ratio must be in (0, 1), got {ratio}")
    if min_inliers < 2:
        raise ComirError(f"sift: min_inliers must be at least 2, got {min_inliers}")
    f8 = robust_uint8(to_gray(check_image(fixed, "fixed")))
    m8 = robust_uint8(to_gray(check_image(moving, "moving")))
    if threshold is None:
        threshold = max(3.0, 0.01 * max(f8.shape + m8.shape))
    sift = cv2.SIFT_create(nfeatures=int(n_features))
    kf, df = sift.detectAndCompute(f8, None)
    km, dm = sift.detectAndCompute(m8, None)
    if df is None or dm is None or len(kf) < 2 or len(km) < 2:
        return failed("sift", f"too few keypoints ({len(km)} moving, {len(kf)} fixed)")
    # OpenCV fits src -> dst: moving keypoints are the source, so the fit is moving -> fixed.
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(dm, df, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if len(good) < min_inliers:
        return failed("sift", f"only {len(good)} matches pass the ratio test")
    src = np.array([km[g.queryIdx].pt for g in good], dtype=float)
    dst = np.array([kf[g.trainIdx].pt for g in good], dtype=float)
    mat, inliers = ransac_rigid(src, dst, threshold, iterations, seed)
    k = int(inliers.sum())
    if k < min_inliers:
        return failed("sift", f"only {k} inliers")
    res = RegistrationResult(RigidTransform(mat), float(k), 0.0, "ok", "sift")
    res.details = {"matches": len(good), "inliers": k}
    return res
