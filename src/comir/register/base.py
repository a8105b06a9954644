"""Shared pieces of the registration back-ends: result type, input checks, PCA to grey.

Every back-end returns a :class:`RegistrationResult` whose transform follows
:mod:`comir.transform` (moving → fixed, x = column, y = row, origin at the centre of the
top-left pixel).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from comir.errors import ComirError
from comir.transform import RigidTransform

#: Smallest image side any back-end accepts.
MIN_SIDE = 8

# Thread cap used by the numpy/scipy parts (FFT workers); set by set_library_threads.
_THREADS: int | None = None


@dataclass
class RegistrationResult:
    """Outcome of one registration.

    Attributes
    ----------
    transform : comir.transform.Transform
        Moving → fixed map (identity when ``status`` is a failure): a ``RigidTransform``
        from every back-end, an ``AffineTransform`` with ``transform="affine"``, a
        ``CompositeTransform`` (affine ∘ displacement field) with ``"deformable"``.
    score : float
        Back-end specific similarity at the solution (higher = better; NaN on failure).
    seconds : float
        Wall-clock time of the registration.
    status : str
        ``"ok"`` or ``"failed: <why>"``.
    method : str
        Back-end name.
    """

    transform: RigidTransform
    score: float
    seconds: float
    status: str
    method: str
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def failed(method: str, why: str, seconds: float = 0.0) -> RegistrationResult:
    """A failed result carrying the identity transform."""
    return RegistrationResult(
        RigidTransform.identity(), float("nan"), seconds, f"failed: {why}", method
    )


def timed(method: str) -> Callable:
    """Decorator: fill ``seconds`` of the returned result with the call's wall time."""

    def deco(fn: Callable[..., RegistrationResult]) -> Callable[..., RegistrationResult]:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs) -> RegistrationResult:
            t0 = time.perf_counter()
            res = fn(*args, **kwargs)
            res.seconds = time.perf_counter() - t0
            res.method = method
            return res

        return wrapper

    return deco


def check_image(image: np.ndarray, name: str) -> np.ndarray:
    """Validate a registration input and return it as ``(H, W, C)`` float32.

    Raises
    ------
    ComirError
        Not a 2-D image, too small, no channels, non-numeric or non-finite values.
    """
    arr = np.asarray(image)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise ComirError(f"{name} image: unsupported pixel type {arr.dtype}; pass a numeric array")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] < 1:
        raise ComirError(f"{name} image: expected shape (H, W) or (H, W, C), got {arr.shape}")
    if min(arr.shape[:2]) < MIN_SIDE:
        raise ComirError(
            f"{name} image: {arr.shape[0]}x{arr.shape[1]} is too small; need at least "
            f"{MIN_SIDE} pixels per side"
        )
    out = arr.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise ComirError(f"{name} image: contains NaN or Inf values; clean or mask them first")
    return out


def no_contrast(fixed: np.ndarray, moving: np.ndarray) -> str | None:
    """Failure reason when either ``(H, W, C)`` image is constant, else None."""
    for name, img in (("fixed", fixed), ("moving", moving)):
        if float(img.max() - img.min()) == 0.0:
            return f"{name} image is constant (no contrast)"
    return None


def to_gray(image: np.ndarray) -> np.ndarray:
    """Reduce an image to one channel by PCA of its channels.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)

    Returns
    -------
    ndarray, shape (H, W), float32
        ``(H, W)`` inputs unchanged (as float32). Otherwise the projection of the centred
        pixels on the first principal component of the ``C × C`` channel covariance, with
        its sign chosen so that it correlates positively with the channel mean.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr.astype(np.float32, copy=False)
    if arr.ndim != 3:
        raise ComirError(f"to_gray: expected shape (H, W) or (H, W, C), got {arr.shape}")
    if arr.shape[2] == 1:
        return arr[..., 0].astype(np.float32, copy=False)
    x = arr.reshape(-1, arr.shape[2]).astype(np.float64)
    x -= x.mean(axis=0)
    cov = x.T @ x / max(len(x) - 1, 1)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    w = vecs[:, -1]
    # corr(x @ w, x @ 1/C) has the sign of w · (cov @ 1).
    if w @ cov.sum(axis=1) < 0:
        w = -w
    return (x @ w).reshape(arr.shape[:2]).astype(np.float32)


def fft_workers() -> int:
    """Worker count for ``scipy.fft`` (the cap from :func:`set_library_threads`)."""
    return _THREADS if _THREADS is not None else (os.cpu_count() or 1)


def set_library_threads(n: int) -> None:
    """Cap the threads of every numeric library a back-end uses (call in pool workers).

    Sets OpenCV (``cv2.setNumThreads``), SimpleITK's global default, the
    ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` environment variable (read by itk-elastix
    when it is imported), torch intra-op threads and the scipy FFT workers.
    """
    global _THREADS
    n = int(n)
    if n < 1:
        raise ComirError(f"threads must be at least 1, got {n}")
    _THREADS = n
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n)
    import cv2
    import SimpleITK as sitk
    import torch

    cv2.setNumThreads(n)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    torch.set_num_threads(n)
