"""Rigid registration back-ends with one interface.

``register(fixed, moving, method)`` returns a :class:`RegistrationResult` whose transform
maps moving → fixed in the convention of :mod:`comir.transform`. Back-ends:

* ``fft`` — global rotation sweep × FFT masked NCC (no initial guess), for CoMIRs;
* ``sift`` — SIFT + RANSAC rigid fit (OpenCV); ``preset="public"`` is the study's baseline;
* ``mi`` — Mattes mutual information, multi-resolution (SimpleITK);
* ``elastix`` — Mattes MI with elastix (optional extra ``comir[elastix]``).

``transform="affine"`` refines any back-end's rigid result into an affine map
(:func:`refine_affine`, gradient descent on the masked NCC in torch);
``transform="deformable"`` adds a smooth displacement field on top
(:func:`refine_deformable`).

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
from comir.register.affine import refine_affine
from comir.register.base import RegistrationResult, set_library_threads, to_gray
from comir.register.batch import BatchReport, register_pairs
from comir.register.deformable import refine_deformable
from comir.register.elastix import (
    MISSING as _ELASTIX_MISSING,
)
from comir.register.elastix import elastix_available, register_elastix
from comir.register.fft import register_fft
from comir.register.files import FileRegistration, register_files
from comir.register.mi import register_mi
from comir.register.sift import register_sift

METHODS: tuple[str, ...] = ("fft", "sift", "mi", "elastix")
#: Transform families ``register`` can return.
TRANSFORMS: tuple[str, ...] = ("rigid", "affine", "deformable")

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
    fixed: np.ndarray,
    moving: np.ndarray,
    method: str = "fft",
    transform: str = "rigid",
    **options,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` rigidly (or affinely, or deformably).

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
        Any numeric dtype; sizes may differ.
    method : {"fft", "sift", "mi", "elastix"}
    transform : {"rigid", "affine", "deformable"}
        ``affine``: the method's rigid result initialises :func:`refine_affine` (NCC);
        the result then carries an :class:`~comir.transform.AffineTransform`, its
        ``score`` is the final NCC and ``details`` holds ``rigid_score``,
        ``rigid_matrix`` and ``affine_loss`` (``1 − NCC``). ``deformable``: that affine
        result then initialises :func:`refine_deformable` (NCC, default grid and
        smoothness); the transform is ``CompositeTransform([affine, field])`` and
        ``details`` adds ``affine_matrix``, ``affine_score`` and ``folded_fraction``.
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
        Unknown method, transform or option, invalid images, elastix not installed.
    """
    if transform not in TRANSFORMS:
        raise ComirError(f"transform={transform!r}: choose one of {', '.join(TRANSFORMS)}")
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
    res = fn(fixed, moving, **options)
    if transform != "rigid" and res.ok:
        res = _refine(fixed, moving, res, deformable=transform == "deformable")
    return res


def _refine(fixed: np.ndarray, moving: np.ndarray, rigid: RegistrationResult, deformable: bool):
    """Affine (then deformable) refinement of a successful rigid result (times added)."""
    import time

    t0 = time.perf_counter()
    f, m = np.asarray(fixed), np.asarray(moving)
    if (f.shape[2] if f.ndim == 3 else 1) != (m.shape[2] if m.ndim == 3 else 1):
        f, m = to_gray(f), to_gray(m)  # e.g. raw RGB vs NIR: compare first principal parts
    affine, ncc = refine_affine(f, m, rigid.transform, similarity="ncc")
    details = {
        **rigid.details,
        "rigid_score": rigid.score,
        "rigid_matrix": rigid.transform.matrix.tolist(),
        "affine_loss": 1.0 - ncc,
    }
    out = affine
    if deformable:
        details.update(affine_matrix=affine.matrix.tolist(), affine_score=ncc)
        out, ncc = refine_deformable(f, m, affine, similarity="ncc")
        details["folded_fraction"] = out.transforms[-1].folded_fraction()
    seconds = rigid.seconds + time.perf_counter() - t0
    return RegistrationResult(out, ncc, seconds, "ok", rigid.method, details)


__all__ = [
    "METHODS",
    "TRANSFORMS",
    "BatchReport",
    "FileRegistration",
    "RegistrationResult",
    "available_methods",
    "register",
    "refine_affine",
    "refine_deformable",
    "register_elastix",
    "register_fft",
    "register_files",
    "register_mi",
    "register_pairs",
    "register_sift",
    "set_library_threads",
    "to_gray",
]
