"""Mutual-information registration with SimpleITK (the classical multimodal baseline).

Mattes et al., "PET-CT image registration in the chest using free-form deformations",
IEEE TMI 22(1), 2003 (the Mattes MI metric); multi-resolution rigid optimisation as in
the evaluation of Lu et al., PLOS ONE 2022.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from comir.errors import ComirError
from comir.register.base import (
    RegistrationResult,
    check_image,
    failed,
    no_contrast,
    timed,
    to_gray,
)
from comir.transform import RigidTransform, from_sitk, to_sitk


def _sitk_image(gray: np.ndarray):
    """(H, W) float32 → SimpleITK image with origin 0 and spacing 1 (pixel = physical)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(gray, dtype=np.float32))
    img.SetOrigin((0.0, 0.0))
    img.SetSpacing((1.0, 1.0))
    return img


@contextlib.contextmanager
def _sitk_threads(threads: int | None) -> Iterator[None]:
    """Set SimpleITK's global default thread count for a block (``None``: leave it)."""
    import SimpleITK as sitk

    if threads is None:
        yield
        return
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _method(f, m, start_deg: float, bins: int, schedule, optimiser, threads):
    """A SimpleITK registration method: Mattes MI over all pixels, regular-step gradient
    descent, multi-resolution ``schedule = (shrink factors, sigmas)``, started at the
    geometric centring rotated by ``start_deg`` about the fixed centre."""
    import SimpleITK as sitk

    init = sitk.CenteredTransformInitializer(
        f, m, sitk.Euler2DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    c_f = init.GetFixedParameters()
    init = to_sitk(RigidTransform.from_params(start_deg, center=c_f) @ from_sitk(init), c_f)
    learning_rate, min_step, iterations = optimiser
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    # Full sampling: random subsampling makes multimodal MI markedly less reliable.
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=min_step,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        # MI gradients are tiny; ITK's default tolerance (1e-4) stops it early.
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(schedule[0])
    reg.SetSmoothingSigmasPerLevel(schedule[1])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    if threads is not None:
        reg.SetNumberOfThreads(int(threads))
    return reg


@timed("mi")
def register_mi(
    fixed: np.ndarray,
    moving: np.ndarray,
    bins: int = 50,
    shrink_factors: tuple[int, ...] = (4, 2, 1),
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0),
    iterations: int = 300,
    learning_rate: float = 1.0,
    min_step: float = 1e-4,
    starts: list[float] | tuple[float, ...] | None = None,
    threads: int | None = 1,
) -> RegistrationResult:
    """Rigid registration maximising Mattes mutual information (SimpleITK).

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
        Multichannel inputs are reduced to grey by PCA (:func:`to_gray`).
    bins : int
        Histogram bins of the Mattes MI metric.
    shrink_factors, smoothing_sigmas : tuple
        Multi-resolution schedule (sigmas in pixels).
    iterations, learning_rate, min_step : float
        Regular-step gradient descent settings (scales from physical shifts).
    starts : sequence of float, optional
        Initial rotation angles in degrees, moving → fixed as everywhere in comir
        (multi-start); the run with the best final metric wins. Default: one start at 0°.
    threads : int or None
        Threads of the registration, metric included (SimpleITK's global default is set
        for the call and restored). ``1`` (default) is bit-for-bit repeatable: with more
        threads ITK's Mattes MI sums its joint histogram in a varying order. ``None``
        keeps the global default.

    The metric samples every pixel (no random sampling), so nothing else is random.

    Returns
    -------
    RegistrationResult
        ``score`` is the final mutual information (minus the metric SimpleITK minimises).
    """
    if threads is not None and int(threads) < 1:
        raise ComirError(f"mi: threads must be at least 1, got {threads}")
    if bins < 4:
        raise ComirError(f"mi: bins must be at least 4, got {bins}")
    if len(shrink_factors) != len(smoothing_sigmas):
        raise ComirError("mi: shrink_factors and smoothing_sigmas must have the same length")
    f_img, m_img = check_image(fixed, "fixed"), check_image(moving, "moving")
    why = no_contrast(f_img, m_img)
    if why:
        return failed("mi", why)
    f, m = _sitk_image(to_gray(f_img)), _sitk_image(to_gray(m_img))
    # Images smaller than the coarsest shrink cannot be registered at that level.
    min_side = min(f.GetSize() + m.GetSize())
    shrink = [int(max(1, min(s, min_side // 8))) for s in shrink_factors]
    schedule = (shrink, list(smoothing_sigmas))
    optimiser = (learning_rate, min_step, int(iterations))
    best: tuple[float, object] | None = None
    errors = []
    for start in starts if starts is not None else (0.0,):
        reg = _method(f, m, float(start), int(bins), schedule, optimiser, threads)
        try:
            with _sitk_threads(threads):
                out = reg.Execute(f, m)
            value = reg.GetMetricValue()
        except RuntimeError as exc:  # e.g. too few overlapping samples
            errors.append(str(exc).strip().splitlines()[-1][:120])
            continue
        if np.isfinite(value) and (best is None or value < best[0]):
            best = (value, out)
    if best is None:
        return failed("mi", errors[0] if errors else "metric is not finite")
    # SimpleITK transforms map fixed -> moving; from_sitk returns moving -> fixed.
    return RegistrationResult(from_sitk(best[1]), float(-best[0]), 0.0, "ok", "mi")
