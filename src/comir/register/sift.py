"""SIFT keypoints + RANSAC rigid fit (the classical feature-based baseline).

Lowe, "Distinctive image features from scale-invariant keypoints", IJCV 60(2), 2004
(ratio test); Fischler & Bolles, RANSAC, CACM 24(6), 1981. The rigid model (rotation +
translation, no scale) is fitted from 2-point hypotheses, all scored at once, and the
inliers are refitted by least squares (Kabsch/Umeyama without scale).

Two presets (:data:`PRESETS`):

* ``"comir"`` (default) — tuned here: PCA grey, 0.5/99.5 percentile stretch to 8 bit, all
  keypoints, Lowe's ratio test (0.75), 2000 RANSAC hypotheses with a threshold of 1 % of
  the image side (at least 3 px), iterated inlier refits, at least 6 inliers.
* ``"public"`` — the SIFT baseline of Lu et al., PLOS ONE 2022 (MultiRegEval ``sift.py``):
  OpenCV grey of an 8-bit image, 500 keypoints, brute-force L2 matching with cross-check
  and no ratio test, RANSAC with a 2 px residual threshold and 100 trials, the model
  refitted once on the best hypothesis' inliers. The study samples 3 matches per trial
  (scikit-image ``ransac`` with ``EuclideanTransform``); here every trial is an exact
  2-point rigid hypothesis (the minimal sample), drawn from a seeded generator, so the
  result is deterministic. The study fails only when RANSAC cannot run (fewer than 3
  matches); so does this preset (``min_inliers=3``).
"""

from __future__ import annotations

import numpy as np

from comir.errors import ComirError
from comir.io import from_unit_float, percentile_scale
from comir.register.base import RegistrationResult, check_image, failed, timed, to_gray
from comir.transform import RigidTransform
from comir.transform import functional as F

#: Settings of each ``preset`` (an explicit option overrides its preset's value).
PRESETS: dict[str, dict] = {
    "comir": {
        "matcher": "ratio",
        "ratio": 0.75,
        "n_features": 0,
        "threshold": None,  # 1 % of the larger image side, at least 3 px
        "iterations": 2000,
        "min_inliers": 6,
        "gray": "pca",
        "refits": 3,
    },
    "public": {
        "matcher": "cross_check",
        "ratio": None,
        "n_features": 500,
        "threshold": 2.0,
        "iterations": 100,
        "min_inliers": 3,
        "gray": "opencv",
        "refits": 0,
    },
}
MATCHERS = ("ratio", "cross_check")
GRAYS = ("pca", "opencv")


def ransac_rigid(
    src: np.ndarray,
    dst: np.ndarray,
    threshold: float,
    iterations: int = 2000,
    seed: int = 0,
    refits: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """RANSAC over 2-point rigid hypotheses, evaluated for all hypotheses at once.

    Parameters
    ----------
    src, dst : ndarray, shape (N, 2), N ≥ 2
        Matched points, ``dst ≈ R src + t``.
    threshold : float
        Inlier distance in pixels (rigid maps keep distances, so it is the same residual
        whichever direction the model is written in).
    iterations : int
        Hypotheses, each from a pair of distinct matches drawn with ``seed``.
    refits : int
        After the least-squares fit on the best hypothesis' inliers, recompute the inliers
        and refit up to this many times (0: one fit, as scikit-image's ``ransac``).

    Returns
    -------
    matrix : ndarray, shape (3, 3)
        Least-squares refit on the final inliers.
    inliers : ndarray of bool, shape (N,)
    """
    n = len(src)
    if n < 2:
        raise ValueError(f"ransac_rigid needs at least 2 matches, got {n}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, iterations)
    j = (i + rng.integers(1, n, iterations)) % n  # j != i
    ds, dd = src[j] - src[i], dst[j] - dst[i]
    ang = np.arctan2(dd[:, 1], dd[:, 0]) - np.arctan2(ds[:, 1], ds[:, 0])
    # the rotation by ang about src[i] followed by the shift src[i] -> dst[i]
    hyp = F.rigid_matrices(ang, dst[i] - src[i], src[i])  # (I, 3, 3)
    best_count, inliers = -1, np.zeros(n, bool)
    chunk = max(1, 2_000_000 // max(n, 1))  # bound the (hypotheses, N, 2) temporaries
    for k in range(0, iterations, chunk):
        pred = F.apply_matrices(hyp[k : k + chunk], src)  # (chunk, N, 2)
        inl = np.linalg.norm(pred - dst[None], axis=-1) < threshold
        counts = inl.sum(axis=1)
        h = int(np.argmax(counts))
        if counts[h] > best_count:
            best_count, inliers = int(counts[h]), inl[h]
    m = F.fit_rigid(src[inliers], dst[inliers])
    for _ in range(refits):  # refit until the inlier set settles
        new = np.linalg.norm(F.apply_matrices(m, src) - dst, axis=1) < threshold
        if new.sum() < 2 or np.array_equal(new, inliers):
            break
        inliers = new
        m = F.fit_rigid(src[inliers], dst[inliers])
    return m, inliers


def opencv_gray(image: np.ndarray) -> np.ndarray:
    """An image as the 8-bit grey picture OpenCV's SIFT sees in the public baseline.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        ``uint8`` is taken as it is (the study's inputs were 8-bit files); anything else
        is min–max scaled to 0…255 over all channels at once (as ``cv2.normalize`` with
        ``NORM_MINMAX`` does in the study for non-8-bit data), then rounded.

    Returns
    -------
    ndarray, shape (H, W), uint8
        Three channels (RGB) or four (RGBA, alpha ignored) through OpenCV's grey
        conversion ``0.299 R + 0.587 G + 0.114 B``; one channel unchanged; other channel
        counts (e.g. 2-channel CoMIRs) by their rounded mean.
    """
    import cv2

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = from_unit_float(percentile_scale(arr, 0.0, 100.0, per_channel=False), 8)
    if arr.ndim == 2:
        return arr
    codes = {3: cv2.COLOR_RGB2GRAY, 4: cv2.COLOR_RGBA2GRAY}
    if arr.shape[2] in codes:
        return cv2.cvtColor(np.ascontiguousarray(arr), codes[arr.shape[2]])
    return np.rint(arr.mean(axis=2)).astype(np.uint8)


def _pca_uint8(image: np.ndarray) -> np.ndarray:
    """PCA grey (:func:`to_gray`) stretched to 8 bit between its 0.5/99.5 percentiles."""
    return from_unit_float(percentile_scale(to_gray(image), 0.5, 99.5), 8)


def _to_uint8(image: np.ndarray, name: str, gray: str) -> np.ndarray:
    """Validated ``(H, W)`` uint8 SIFT input (8-bit inputs reach :func:`opencv_gray` as such)."""
    checked = check_image(image, name)  # (H, W, C) float32
    if gray == "pca":
        return _pca_uint8(checked)
    return opencv_gray(image if np.asarray(image).dtype == np.uint8 else checked)


def _settings(preset: str, given: dict) -> dict:
    """The preset's settings with the explicitly given (non-None) options applied."""
    if preset not in PRESETS:
        raise ComirError(f"sift: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    s = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
    if s["matcher"] not in MATCHERS:
        raise ComirError(
            f"sift: matcher must be one of {', '.join(MATCHERS)}, got {s['matcher']!r}"
        )
    if s["gray"] not in GRAYS:
        raise ComirError(f"sift: gray must be one of {', '.join(GRAYS)}, got {s['gray']!r}")
    if s["matcher"] == "ratio" and not 0 < s["ratio"] < 1:
        raise ComirError(f"sift: ratio must be in (0, 1), got {s['ratio']}")
    if s["matcher"] == "cross_check" and given.get("ratio") is not None:
        raise ComirError("sift: ratio applies to matcher=ratio only; drop it or set matcher=ratio")
    if s["min_inliers"] < 2:
        raise ComirError(f"sift: min_inliers must be at least 2, got {s['min_inliers']}")
    if s["iterations"] < 1:
        raise ComirError(f"sift: iterations must be at least 1, got {s['iterations']}")
    return s


def _match(dm: np.ndarray, df: np.ndarray, matcher: str, ratio: float | None) -> list:
    """Brute-force L2 matches of moving descriptors ``dm`` against fixed ``df``."""
    import cv2

    if matcher == "cross_check":
        return list(cv2.BFMatcher(cv2.NORM_L2, crossCheck=True).match(dm, df))
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(dm, df, k=2)
    return [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]


@timed("sift")
def register_sift(
    fixed: np.ndarray,
    moving: np.ndarray,
    preset: str = "comir",
    matcher: str | None = None,
    ratio: float | None = None,
    n_features: int | None = None,
    threshold: float | None = None,
    iterations: int | None = None,
    min_inliers: int | None = None,
    gray: str | None = None,
    seed: int = 0,
) -> RegistrationResult:
    """Rigid registration from SIFT matches (OpenCV) and a RANSAC rigid fit.

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
    preset : {"comir", "public"}
        Defaults of every option below (:data:`PRESETS`; see the module docstring).
    matcher : {"ratio", "cross_check"}, optional
        Nearest neighbour with Lowe's ratio test, or mutual nearest neighbours.
    ratio : float, optional
        Ratio test threshold (``matcher="ratio"``).
    n_features : int, optional
        Keypoints kept per image, the strongest first (0 = all).
    threshold : float, optional
        RANSAC inlier distance in pixels (``comir``: 1 % of the larger side, at least 3).
    iterations : int, optional
        RANSAC hypotheses.
    min_inliers : int, optional
        Fewer matches or RANSAC inliers than this is reported as a failure.
    gray : {"pca", "opencv"}, optional
        ``pca``: :func:`to_gray` stretched between the 0.5/99.5 percentiles to 8 bit;
        ``opencv``: :func:`opencv_gray`.
    seed : int
        Seed of the RANSAC draws (the only random choice; results are repeatable).

    Returns
    -------
    RegistrationResult
        ``score`` is the inlier count; ``details`` holds the preset, keypoint, match and
        inlier counts.
    """
    import cv2

    s = _settings(
        preset,
        {"matcher": matcher, "ratio": ratio, "n_features": n_features, "threshold": threshold,
         "iterations": iterations, "min_inliers": min_inliers, "gray": gray},
    )  # fmt: skip
    f8, m8 = (
        _to_uint8(img, name, s["gray"]) for img, name in ((fixed, "fixed"), (moving, "moving"))
    )
    thr = s["threshold"]
    if thr is None:
        thr = max(3.0, 0.01 * max(f8.shape + m8.shape))
    sift = cv2.SIFT_create(nfeatures=int(s["n_features"]))
    kf, df = sift.detectAndCompute(f8, None)
    km, dm = sift.detectAndCompute(m8, None)
    if df is None or dm is None or len(kf) < 2 or len(km) < 2:
        return failed("sift", f"too few keypoints ({len(km)} moving, {len(kf)} fixed)")
    good = _match(dm, df, s["matcher"], s["ratio"])
    if len(good) < s["min_inliers"]:
        return failed("sift", f"only {len(good)} matches ({s['matcher']})")
    # Moving keypoints are the source, so the fit maps moving -> fixed.
    src = np.array([km[g.queryIdx].pt for g in good], dtype=float)
    dst = np.array([kf[g.trainIdx].pt for g in good], dtype=float)
    mat, inliers = ransac_rigid(src, dst, thr, int(s["iterations"]), seed, s["refits"])
    k = int(inliers.sum())
    if k < s["min_inliers"]:
        return failed("sift", f"only {k} inliers")
    res = RegistrationResult(RigidTransform(mat), float(k), 0.0, "ok", "sift")
    res.details = {
        "preset": preset,
        "keypoints": (len(km), len(kf)),
        "matches": len(good),
        "inliers": k,
    }
    return res
