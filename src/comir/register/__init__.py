"""Rigid registration back-ends with one interface.

``register(fixed, moving, method)`` returns a :class:`RegistrationResult` whose transform
maps moving → fixed in the convention of :mod:`comir.transform`. Back-ends:

* ``fft`` — global rotation sweep × FFT masked NCC (no initial guess), for CoMIRs;
* ``sift`` — SIFT + RANSAC rigid fit (OpenCV); ``preset="public"`` is the study's baseline;
* ``mi`` — Mattes mutual information, multi-resolution (SimpleITK);
* ``elastix`` — Mattes MI with elastix (optional extra ``comir[elastix]``).

Every back-end is deterministic: the same pair and options give a bit-identical matrix
(seeded RANSAC, full-sampling MI on one thread, elastix with a fixed ``RandomSeed``).
:func:`register_files` does what ``comir register`` does: files in, transform files, the
registered image and an overlay out; :func:`register_pairs` (``comir register-batch``) does
it for many pairs, resumably, in a process pool or on Dask.
"""

from __future__ import annotations

import inspect

import numpy as np

from comir.errors import ComirError
from comir.register.base import RegistrationResult, set_library_threads, to_gray
from comir.register.batch import BatchReport, register_pairs
from comir.register.elastix import (
    MISSING as _ELASTIX_MISSING,
)
from comir.register.elastix import elastix_available, register_elastix
from comir.register.fft import register_fft
from comir.register.files import FileRegistration, register_files
from comir.register.mi import register_mi
from comir.register.sift import register_sift

METHODS: tuple[str, ...] = ("fft", "sift", "mi", "elastix")

_BACKENDS = {
    "fft": register_fft,
    "sift": register_sift,
    "mi": register_mi,
    "elastix": register_elastix,
}


def available_methods() -> list[str]:
    """Back-ends usable here (``elastix`` only when itk-elastix is importable)."""
    return [m for m in METHODS if m != "elastix" or elastix_available()]


def register(
    fixed: np.ndarray, moving: np.ndarray, method: str = "fft", **options
) -> RegistrationResult:
    """Rigidly register ``moving`` onto ``fixed``.

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
        Any numeric dtype; sizes may differ.
    method : {"fft", "sift", "mi", "elastix"}
    **options
        Back-end keyword options (see ``register_<method>``).

    Returns
    -------
    RegistrationResult
        A registration that merely fails comes back with ``status`` ``"failed: ..."`` and
        the identity transform.

    Raises
    ------
    ComirError
        Unknown method or option, invalid images, elastix not installed.
    """
    if method not in _BACKENDS:
        raise ComirError(
            f"unknown registration method {method!r}; choose one of {', '.join(METHODS)}"
        )
    if method == "elastix" and not elastix_available():
        raise ComirError(_ELASTIX_MISSING)
    fn = _BACKENDS[method]
    allowed = list(inspect.signature(fn.__wrapped__).parameters)[2:]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ComirError(
            f"{method}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return fn(fixed, moving, **options)


__all__ = [
    "METHODS",
    "BatchReport",
    "FileRegistration",
    "RegistrationResult",
    "available_methods",
    "register",
    "register_elastix",
    "register_fft",
    "register_files",
    "register_mi",
    "register_pairs",
    "register_sift",
    "set_library_threads",
    "to_gray",
]
