"""Rigid registration back-ends with one interface.

``register(fixed, moving, method)`` returns a :class:`RegistrationResult` whose transform
maps moving → fixed in the convention of :mod:`comir.transform`. Back-ends:

* ``fft`` — global rotation sweep × FFT masked NCC (no initial guess), for CoMIRs;
* ``sift`` — SIFT + RANSAC rigid fit (OpenCV); ``preset="public"`` is the study's baseline;
* ``mi`` — Mattes mutual information, multi-resolution (SimpleITK);
* ``elastix`` — Mattes MI with elastix (optional extra ``comir[elastix]``).

``transform="affine"`` and ``"deformable"`` refine the rigid result: on CoMIRs (``fft``,
``sift``) by NCC in torch, on raw images (``mi``) by Mattes MI in SimpleITK (affine, then
a cubic B-spline: :mod:`comir.register.bspline`); ``elastix`` runs its own rigid → affine
→ B-spline chain.

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
    refine: dict | None = None,
    **options,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` rigidly (or affinely, or deformably).

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
        Any numeric dtype; sizes may differ.
    method : {"fft", "sift", "mi", "elastix"}
    transform : {"rigid", "affine", "deformable"}
        ``affine``: the method's rigid result initialises an affine refinement;
        ``deformable``: that affine result then initialises a smooth displacement field.
        For ``fft`` and ``sift`` (CoMIRs: one modality) the refinements descend on NCC in
        torch (:func:`refine_affine`, :func:`refine_deformable`); for ``mi`` (raw
        multimodal images) on Mattes MI in SimpleITK
        (:func:`~comir.register.bspline.refine_affine_mi`, then a B-spline:
        :func:`~comir.register.bspline.refine_bspline_mi`); ``elastix`` runs elastix's own
        rigid → affine → B-spline chain
        (:func:`~comir.register.elastix.register_elastix_chain`). The result then carries an
        :class:`~comir.transform.AffineTransform` or
        ``CompositeTransform([affine, field])``; ``score`` is the final NCC (or MI) and
        ``details`` holds ``rigid_score``, ``rigid_matrix``, ``affine_score`` and
        ``affine_matrix``, and for ``deformable`` the ``folded_fraction`` of the field
        (Jacobian determinant ≤ 0).
    refine : dict, optional
        Keyword options of the deformable refinement (e.g. ``grid_spacing``,
        ``smoothness``, ``similarity``, ``iterations``).
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
    refine = dict(refine or {})
    if refine and transform != "deformable":
        raise ComirError(f"refine options {sorted(refine)} need transform='deformable'")
    if method == "elastix" and transform != "rigid":
        from comir.register.elastix import register_elastix_chain

        grid = _refine_options(register_elastix_chain, refine).get("grid_spacing", 64.0)
        chain = {k: v for k, v in options.items() if k in ("resolutions", "iterations", "bins",
                                                          "threads")}  # fmt: skip
        return register_elastix_chain(fixed, moving, transform == "deformable", grid, **chain)
    res = fn(fixed, moving, **options)
    if transform != "rigid" and res.ok:
        res = _refine(fixed, moving, res, transform == "deformable", refine)
    return res


def _refine_options(fn, refine: dict) -> dict:
    allowed = list(inspect.signature(fn).parameters)[3:]
    unknown = sorted(set(refine) - set(allowed))
    if unknown:
        raise ComirError(
            f"{fn.__name__}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return refine


def _refine(fixed, moving, rigid: RegistrationResult, deformable: bool, refine: dict):
    """Affine (then deformable) refinement of a successful rigid result (times added)."""
    import time

    from comir.register.bspline import MIFailure, refine_affine_mi, refine_bspline_mi

    t0 = time.perf_counter()
    f, m = np.asarray(fixed), np.asarray(moving)
    raw = rigid.method == "mi"
    if raw or (f.shape[2] if f.ndim == 3 else 1) != (m.shape[2] if m.ndim == 3 else 1):
        f, m = to_gray(f), to_gray(m)  # e.g. raw RGB vs NIR: compare first principal parts
    f, m = f.astype(np.float32), m.astype(np.float32)
    affine_fn, local_fn = (
        (refine_affine_mi, refine_bspline_mi) if raw else (refine_affine, refine_deformable)
    )
    sim = {} if raw else {"similarity": "ncc"}
    local_opts = _refine_options(local_fn, {**sim, **refine}) if deformable else {}
    try:
        affine, score = affine_fn(f, m, rigid.transform, **sim)
        details = {
            **rigid.details,
            "rigid_score": rigid.score,
            "rigid_matrix": rigid.transform.matrix.tolist(),
            "affine_score": score,
            "affine_matrix": affine.matrix.tolist(),
        }
        out = affine
        if deformable:
            out, score = local_fn(f, m, affine, **local_opts)
            details["folded_fraction"] = out.transforms[-1].folded_fraction()
    except MIFailure as exc:
        return RegistrationResult(rigid.transform, rigid.score, rigid.seconds,
                                  f"failed: {exc}", rigid.method, rigid.details)  # fmt: skip
    seconds = rigid.seconds + time.perf_counter() - t0
    return RegistrationResult(out, score, seconds, "ok", rigid.method, details)


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
