"""Mutual-information registration with elastix (itk-elastix, optional extra).

Klein et al., "elastix: a toolbox for intensity-based medical image registration",
IEEE TMI 29(1), 2010. Install with ``pip install 'comir[elastix]'``. Importing itk takes
seconds and elastix holds the GIL: run it in a process pool for many pairs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import numpy as np

from comir.errors import ComirError
from comir.register.base import RegistrationResult, check_image, failed, timed, to_gray
from comir.transform import from_elastix_params

MISSING = "itk-elastix is not installed; pip install 'comir[elastix]'"


def elastix_available() -> bool:
    """Whether itk-elastix is installed (checked without the slow ``import itk``)."""
    try:
        importlib.metadata.version("itk-elastix")
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("itk") is not None


def rigid_parameter_map(resolutions: int = 4, iterations: int = 500, bins: int = 32) -> dict:
    """The elastix parameter map used here: Euler rigid, advanced Mattes MI, multi-resolution."""
    return {
        "Registration": ["MultiResolutionRegistration"],
        "Transform": ["EulerTransform"],
        "AutomaticTransformInitialization": ["true"],
        "AutomaticTransformInitializationMethod": ["GeometricalCenter"],
        "AutomaticScalesEstimation": ["true"],
        "Metric": ["AdvancedMattesMutualInformation"],
        "NumberOfHistogramBins": [str(bins)],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "MaximumNumberOfIterations": [str(iterations)],
        "NumberOfResolutions": [str(resolutions)],
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"],
        "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "Interpolator": ["BSplineInterpolator"],
        "ResampleInterpolator": ["FinalBSplineInterpolator"],
        "ImageSampler": ["RandomCoordinate"],
        "NumberOfSpatialSamples": ["4096"],
        "NewSamplesEveryIteration": ["true"],
        "RandomSeed": ["121212"],
        "WriteResultImage": ["false"],
        "HowToCombineTransforms": ["Compose"],
    }


@timed("elastix")
def register_elastix(
    fixed: np.ndarray,
    moving: np.ndarray,
    resolutions: int = 4,
    iterations: int = 500,
    bins: int = 32,
    threads: int | None = 1,
) -> RegistrationResult:
    """Rigid registration with elastix (Euler transform, advanced Mattes MI, 4 resolutions).

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
        Multichannel inputs are reduced to grey by PCA (:func:`to_gray`).
    threads : int or None
        ITK's global default thread count for the call (restored afterwards); ``1``
        (default) keeps the multi-threaded metric sums in one order. ``None`` leaves it.
        The random sampler is seeded (``RandomSeed`` of :func:`rigid_parameter_map`).

    Returns
    -------
    RegistrationResult
        ``score`` is NaN (elastix does not report the final metric through its API).

    Raises
    ------
    ComirError
        When itk-elastix is not installed.
    """
    if not elastix_available():
        raise ComirError(MISSING)
    if threads is not None and int(threads) < 1:
        raise ComirError(f"elastix: threads must be at least 1, got {threads}")
    import itk

    f = itk.image_view_from_array(np.ascontiguousarray(to_gray(check_image(fixed, "fixed"))))
    m = itk.image_view_from_array(np.ascontiguousarray(to_gray(check_image(moving, "moving"))))
    po = itk.ParameterObject.New()
    po.AddParameterMap(rigid_parameter_map(resolutions, iterations, bins))
    before = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    if threads is not None:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        _, result = itk.elastix_registration_method(f, m, parameter_object=po, log_to_console=False)
    except RuntimeError as exc:
        return failed("elastix", str(exc).strip().splitlines()[-1][:120])
    finally:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(before)
    pmap = result.GetParameterMap(0)
    params = {k: pmap[k] for k in ("TransformParameters", "CenterOfRotationPoint")}
    # elastix maps fixed -> moving; comir.transform converts (and inverts) it
    return RegistrationResult(from_elastix_params(params), float("nan"), 0.0, "ok", "elastix")


def chain_parameter_maps(deformable: bool, resolutions: int = 4, iterations: int = 500,
                         bins: int = 32, grid_spacing: float = 64.0) -> list[dict]:  # fmt: skip
    """elastix's classical chain: the rigid map, then affine, then (``deformable``) a cubic
    B-spline with control points every ``grid_spacing`` px and a bending-energy penalty."""
    rigid = rigid_parameter_map(resolutions, iterations, bins)
    affine = {**rigid, "Transform": ["AffineTransform"]}
    maps = [rigid, affine]
    if deformable:
        maps.append({
            **rigid,
            "Registration": ["MultiMetricMultiResolutionRegistration"],
            "Transform": ["BSplineTransform"],
            "Metric": ["AdvancedMattesMutualInformation", "TransformBendingEnergyPenalty"],
            "Metric0Weight": ["1.0"],
            "Metric1Weight": ["0.01"],
            "FinalGridSpacingInPhysicalUnits": [str(float(grid_spacing))],
            "AutomaticTransformInitialization": ["false"],
        })  # fmt: skip
    return maps


def _fixed_to_moving(itk, moving, result, n_maps: int, shape) -> np.ndarray:
    """``x + d(x)`` at every fixed pixel for the first ``n_maps`` maps of ``result``
    (transformix), ``(H, W, 2)``; leaves elastix's composition rules to elastix."""
    po = itk.ParameterObject.New()
    for k in range(n_maps):
        po.AddParameterMap(result.GetParameterMap(k))
    field = np.asarray(itk.transformix_deformation_field(moving, po), dtype=float)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    return np.stack([xx, yy], axis=-1) + field.reshape(*shape, 2)


@timed("elastix")
def register_elastix_chain(fixed: np.ndarray, moving: np.ndarray, deformable: bool,
                           grid_spacing: float = 64.0, threads: int | None = 1,
                           **maps) -> RegistrationResult:  # fmt: skip
    """Rigid → affine (→ B-spline) registration with elastix's own chain of parameter maps.

    The affine part is the least-squares affine fit of elastix's rigid + affine maps over
    the fixed pixels, the local part the remaining displacement, so the result has the
    form of :func:`comir.register.refine_deformable`'s:
    ``CompositeTransform([affine, DisplacementField.from_inverse(v)])`` (or the affine
    alone). ``maps``: ``resolutions``, ``iterations``, ``bins`` of :func:`chain_parameter_maps`.
    """
    from comir.transform import AffineTransform, CompositeTransform, DisplacementField
    from comir.transform import functional as F

    if not elastix_available():
        raise ComirError(MISSING)
    import itk

    f_np = np.ascontiguousarray(to_gray(check_image(fixed, "fixed")), dtype=np.float32)
    m_np = np.ascontiguousarray(to_gray(check_image(moving, "moving")), dtype=np.float32)
    f, m = itk.image_view_from_array(f_np), itk.image_view_from_array(m_np)
    po = itk.ParameterObject.New()
    for pm in chain_parameter_maps(deformable, grid_spacing=grid_spacing, **maps):
        po.AddParameterMap(pm)
    before = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    if threads is not None:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        _, result = itk.elastix_registration_method(f, m, parameter_object=po, log_to_console=False)
        linear = _fixed_to_moving(itk, m, result, 2, f_np.shape)
        full = _fixed_to_moving(itk, m, result, 3, f_np.shape) if deformable else None
    except RuntimeError as exc:
        return failed("elastix", str(exc).strip().splitlines()[-1][:120])
    finally:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(before)
    q = np.stack(np.meshgrid(np.arange(f_np.shape[1]), np.arange(f_np.shape[0])), -1)
    q = q.reshape(-1, 2).astype(float)
    affine = AffineTransform(np.linalg.inv(F.fit_affine(q, linear.reshape(-1, 2))))
    details = {"affine_matrix": affine.matrix.tolist()}
    if full is None:
        return RegistrationResult(affine, float("nan"), 0.0, "ok", "elastix", details)
    v = affine.apply(full) - q.reshape(*f_np.shape, 2)
    field = DisplacementField.from_inverse(v.astype(np.float32))
    details["folded_fraction"] = field.folded_fraction()
    out = CompositeTransform([affine, field])
    return RegistrationResult(out, float("nan"), 0.0, "ok", "elastix", details)
