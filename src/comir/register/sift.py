"""SIFT keypoints + RANSAC rigid fit (the classical feature-based baseline).

Lowe, "Distinctive image features from scale-invariant keypoints", IJCV 60(2), 2004
(ratio test); Fischler & Bolles, RANSAC, CACM 24(6), 1981. The rigid model (rotation +
translation, no scale) is fitted from 2-point hypotheses, all scored at once, and the
inliers are refitted by least squares (Kabsch/Umeyama without scale).

Two presets (:data:`PRESETS`):

* ``"comir"`` (default) — tuned here for CoMIRs, which are smooth and low in contrast
  (docs/claims.md, "SIFT on CoMIRs"): PCA grey, 0.5/99.5 percentile stretch to 8 bit (the
  CoMIR paper converts CoMIRs to 8 bit over their own range), images smaller than 512 px
  upsampled ×2, a contrast threshold of 0.01 (OpenCV's 0.04 keeps too few extrema on a
  CoMIR) and a base blur σ = 2.0, the 1000 strongest keypoints, the two nearest fixed descriptors of every
  moving one as candidate matches (no ratio test: on CoMIRs of two modalities the true
  match is often only the second nearest). RANSAC scores one hypothesis per candidate
  (its position and the difference of the two SIFT orientations, as in Lowe 2004, §7.3)
  and 5000 two-point hypotheses, with a threshold of 1 % of the image side (at least
  3 px), iterated inlier refits, at least 6 inliers.
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
        "matcher": "knn",
        "ratio": None,
        "candidates": 2,
        "n_features": 1000,  # bounds matching and RANSAC time on large images
        "contrast_threshold": 0.01,
        "sigma": 2.0,
        "upsample": None,  # 2 when the larger side of both images is below 512 px, else 1
        "threshold": None,  # 1 % of the larger image side, at least 3 px
        "iterations": 5000,
        "orientation": True,
        "min_inliers": 6,
        "gray": "pca",
        "refits": 3,
    },
    "public": {
        "matcher": "cross_check",
        "ratio": None,
        "candidates": 1,
        "n_features": 500,
        "contrast_threshold": 0.04,  # OpenCV's defaults, as the study used them
        "sigma": 1.6,
        "upsample": 1,
        "threshold": 2.0,
        "iterations": 100,
        "orientation": False,
        "min_inliers": 3,
        "gray": "opencv",
        "refits": 0,
    },
}
MATCHERS = ("ratio", "cross_check", "knn")
#: Below this larger side (px) the ``comir`` preset upsamples ×2 (``upsample=None``).
UPSAMPLE_BELOW = 512
GRAYS = ("pca", "opencv")


def ransac_rigid(
    src: np.ndarray,
    dst: np.ndarray,
    threshold: float,
    iterations: int = 2000,
    seed: int = 0,
    refits: int = 3,
    angles: np.ndarray | None = None,
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
    if angles is not None:
        one = F.rigid_matrices(np.asarray(angles, float), dst - src, src)  # (N, 3, 3)
        hyp = np.concatenate([one, hyp])
    best_count, inliers = -1, np.zeros(n, bool)
    thr2 = float(threshold) ** 2
    chunk = max(1, 4_000_000 // max(n, 1))  # bound the (hypotheses, N) temporaries
    for k in range(0, len(hyp), chunk):
        h = hyp[k : k + chunk]
        # residuals component by component: (chunk, N) arrays, no (chunk, N, 2) einsum
        rx = h[:, 0, :1] * src[:, 0] + h[:, 0, 1:2] * src[:, 1] + h[:, 0, 2:] - dst[:, 0]
        ry = h[:, 1, :1] * src[:, 0] + h[:, 1, 1:2] * src[:, 1] + h[:, 1, 2:] - dst[:, 1]
        inl = rx * rx + ry * ry < thr2
        counts = inl.sum(axis=1)
        b = int(np.argmax(counts))
        if counts[b] > best_count:
            best_count, inliers = int(counts[b]), inl[b]
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
    if s["ratio"] is not None and not 0 < s["ratio"] < 1:
        raise ComirError(f"sift: ratio must be in (0, 1), got {s['ratio']}")
    if s["matcher"] == "ratio":
        s["ratio"] = 0.75 if s["ratio"] is None else s["ratio"]
    elif given.get("ratio") is not None:
        raise ComirError("sift: ratio applies to matcher=ratio only; drop it or set matcher=ratio")
    for key, low in (("min_inliers", 2), ("iterations", 1), ("candidates", 1)):
        if s[key] < low:
            raise ComirError(f"sift: {key} must be at least {low}, got {s[key]}")
    if s["upsample"] is not None and s["upsample"] not in (1, 2, 3, 4):
        raise ComirError(f"sift: upsample must be 1, 2, 3 or 4, got {s['upsample']!r}")
    if not (s["contrast_threshold"] >= 0 and s["sigma"] > 0):
        raise ComirError(
            f"sift: contrast_threshold must be >= 0 and sigma > 0, got "
            f"{s['contrast_threshold']} and {s['sigma']}"
        )
    return s


def _match(dm: np.ndarray, df: np.ndarray, s: dict) -> list[tuple[int, int]]:
    """Brute-force L2 matches ``(moving index, fixed index)`` of moving descriptors ``dm``
    against fixed ``df``: mutual nearest neighbours, Lowe's ratio test, or the
    ``candidates`` nearest fixed descriptors of every moving one (``knn``)."""
    import cv2

    if s["matcher"] == "cross_check":
        found = cv2.BFMatcher(cv2.NORM_L2, crossCheck=True).match(dm, df)
        return [(g.queryIdx, g.trainIdx) for g in found]
    if s["matcher"] == "knn":
        k = min(int(s["candidates"]), len(df))
        return [(g.queryIdx, g.trainIdx) for p in cv2.BFMatcher(cv2.NORM_L2).knnMatch(dm, df, k=k)
                for g in p]  # fmt: skip
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(dm, df, k=2)
    ratio = s["ratio"]
    return [(p[0].queryIdx, p[0].trainIdx) for p in pairs
            if len(p) == 2 and p[0].distance < ratio * p[1].distance]  # fmt: skip


def _upsampling(s: dict, f8: np.ndarray, m8: np.ndarray) -> int:
    if s["upsample"] is not None:
        return int(s["upsample"])
    return 2 if max(f8.shape + m8.shape) < UPSAMPLE_BELOW else 1


def _keypoints(img8: np.ndarray, s: dict, up: int):
    """SIFT keypoints (positions in the original pixel frame, orientations in radians) and
    descriptors of an 8-bit image, detected after ``up``-fold cubic upsampling."""
    import cv2

    if up > 1:
        img8 = cv2.resize(img8, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
    sift = cv2.SIFT_create(
        nfeatures=int(s["n_features"]),
        contrastThreshold=float(s["contrast_threshold"]),
        sigma=float(s["sigma"]),
    )
    kps, desc = sift.detectAndCompute(img8, None)
    pts = np.array([k.pt for k in kps], dtype=float).reshape(-1, 2)
    # resize maps pixel centres x_up + 0.5 = up (x + 0.5) (OpenCV's half-pixel alignment)
    pts = (pts + 0.5) / up - 0.5
    return pts, np.deg2rad([k.angle for k in kps]), desc


@timed("sift")
def register_sift(
    fixed: np.ndarray,
    moving: np.ndarray,
    preset: str = "comir",
    matcher: str | None = None,
    ratio: float | None = None,
    candidates: int | None = None,
    n_features: int | None = None,
    contrast_threshold: float | None = None,
    sigma: float | None = None,
    upsample: int | None = None,
    threshold: float | None = None,
    iterations: int | None = None,
    orientation: bool | None = None,
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
    matcher : {"knn", "ratio", "cross_check"}, optional
        The ``candidates`` nearest neighbours, nearest neighbour with Lowe's ratio test,
        or mutual nearest neighbours.
    ratio : float, optional
        Ratio test threshold (``matcher="ratio"``; 0.75 when not given).
    candidates : int, optional
        Fixed descriptors per moving one (``matcher="knn"``).
    n_features : int, optional
        Keypoints kept per image, the strongest first (0 = all).
    contrast_threshold, sigma : float, optional
        OpenCV SIFT's ``contrastThreshold`` and base blur ``sigma``.
    upsample : {1, 2, 3, 4}, optional
        Cubic upsampling before detection (``comir``: 2 below 512 px, else 1).
    threshold : float, optional
        RANSAC inlier distance in pixels (``comir``: 1 % of the larger side, at least 3).
    iterations : int, optional
        RANSAC two-point hypotheses.
    orientation : bool, optional
        Also score one hypothesis per match from the keypoints' SIFT orientations.
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
        inlier counts and the upsampling factor.
    """
    s = _settings(
        preset,
        {"matcher": matcher, "ratio": ratio, "candidates": candidates, "n_features": n_features,
         "contrast_threshold": contrast_threshold, "sigma": sigma, "upsample": upsample,
         "threshold": threshold, "iterations": iterations, "orientation": orientation,
         "min_inliers": min_inliers, "gray": gray},
    )  # fmt: skip
    f8, m8 = (
        _to_uint8(img, name, s["gray"]) for img, name in ((fixed, "fixed"), (moving, "moving"))
    )
    return _sift_rigid(f8, m8, s, seed, preset)


def _sift_rigid(f8: np.ndarray, m8: np.ndarray, s: dict, seed: int, preset: str):
    """Keypoints, matches and the RANSAC rigid fit of two 8-bit images (settings ``s``)."""
    thr = s["threshold"]
    if thr is None:
        thr = max(3.0, 0.01 * max(f8.shape + m8.shape))
    up = _upsampling(s, f8, m8)
    pf, af, df = _keypoints(f8, s, up)
    pm, am, dm = _keypoints(m8, s, up)
    if df is None or dm is None or len(pf) < 2 or len(pm) < 2:
        return failed("sift", f"too few keypoints ({len(pm)} moving, {len(pf)} fixed)")
    good = _match(dm, df, s)
    if len(good) < s["min_inliers"]:
        return failed("sift", f"only {len(good)} matches ({s['matcher']})")
    # Moving keypoints are the source, so the fit maps moving -> fixed.
    qi, ti = np.array(good, dtype=int).T
    extra = {"angles": af[ti] - am[qi]} if s["orientation"] else {}
    mat, inliers = ransac_rigid(
        pm[qi], pf[ti], thr, int(s["iterations"]), seed, s["refits"], **extra
    )
    k = int(inliers.sum())
    if k < s["min_inliers"]:
        return failed("sift", f"only {k} inliers")
    res = RegistrationResult(RigidTransform(mat), float(k), 0.0, "ok", "sift")
    res.details = {
        "preset": preset,
        "keypoints": (len(pm), len(pf)),
        "matches": len(good),
        "inliers": k,
        "upsample": up,
    }
    return res
