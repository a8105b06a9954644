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
