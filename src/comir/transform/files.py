"""Transform files and other libraries' transforms: comir JSON, ITK ``.tfm``, SimpleITK,
elastix parameter maps.

ITK, SimpleITK and elastix transforms map *fixed* physical points to *moving* ones (the
direction a resampler needs), so every conversion here inverts. Images are taken with
origin 0 and spacing 1, where ITK's physical coordinates equal comir's pixel coordinates
(the centre of the top-left pixel is ``(0, 0)`` in both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.transform import functional as F
from comir.transform.base import Transform
from comir.transform.linear import (
    MATRIX_KINDS,
    AffineTransform,
    MatrixTransform,
    RigidTransform,
    SimilarityTransform,
    as_kind,
)

#: ``format`` key of comir transform JSON files.
FILE_FORMAT = "comir-transform/1"


def transform_from_dict(d: Mapping) -> Transform:
    """Rebuild a transform from :meth:`Transform.to_dict` output (files without a
    ``type`` key are rigid, as written before there were other kinds)."""
    from comir.transform.composite import CompositeTransform, InverseTransform

    kind = d.get("type", "rigid")
    if kind in MATRIX_KINDS:
        return MATRIX_KINDS[kind].from_dict(dict(d))
    others = {"composite": CompositeTransform, "inverse": InverseTransform}
    if kind not in others:
        raise ValueError(f"unknown transform type {kind!r}")
    return others[kind].from_dict(dict(d))


def save_transform(
    transform: Transform, path: str | os.PathLike, center=(0.0, 0.0), **extra
) -> None:
    """Atomically write ``transform`` as comir JSON (plus ``extra`` keys, e.g. method).

    Matrix transforms also record their translation about ``center`` (and angle/scale
    where defined) for people reading the file; the matrix is what is read back.
    """
    from comir.io import write_text

    d = transform.to_dict(center) if isinstance(transform, MatrixTransform) else transform.to_dict()
    write_text(path, json.dumps({"format": FILE_FORMAT, **d, **extra}, indent=2) + "\n")


def load_transform(path: str | os.PathLike) -> Transform:
    """Read a comir transform JSON file (any kind).

    Raises
    ------
    ComirError
        Missing file, invalid JSON, or content that is not a valid transform.
    """
    path = Path(path)
    if not path.is_file():
        raise ComirError(f"{path}: transform file not found; check the path")
    try:
        return transform_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ComirError(
            f"{path}: not a comir transform JSON ({exc}); write it with comir register"
        ) from None


# ----------------------------------------------------------------------------- ITK
def _itk_parameters(transform: MatrixTransform, center) -> tuple[str, list[float]]:
    """ITK class name and parameters of the fixed → moving inverse of ``transform``."""
    inv = transform.inverse()
    t = inv.translation_about(center)
    if isinstance(inv, RigidTransform):
        return "Euler2DTransform_double_2_2", [inv.angle_rad, *t]
    if isinstance(inv, SimilarityTransform):
        return "Similarity2DTransform_double_2_2", [inv.scale, inv.angle_rad, *t]
    return "AffineTransform_double_2_2", [*inv.linear.ravel(), *t]


def itk_tfm_text(transform: MatrixTransform, center=(0.0, 0.0)) -> str:
    """Text of an ITK ``.tfm`` file holding ``transform`` (Euler2D, Similarity2D or Affine).

    The file holds the fixed → moving inverse, centred at ``center`` (e.g. the moving
    image centre), so ``sitk.ReadTransform`` + ``sitk.Resample(moving, fixed, t)`` gives
    the registered image.
    """
    name, params = _itk_parameters(transform, np.asarray(center, dtype=float))
    return (
        "#Insight Transform File V1.0\n#Transform 0\n"
        f"Transform: {name}\n"
        f"Parameters: {' '.join(repr(float(p)) for p in params)}\n"
        f"FixedParameters: {float(center[0])!r} {float(center[1])!r}\n"
    )


def save_itk_tfm(transform: MatrixTransform, path: str | os.PathLike, center=(0.0, 0.0)) -> None:
    """Atomically write :func:`itk_tfm_text`."""
    from comir.io import write_text

    write_text(path, itk_tfm_text(transform, center))


def from_sitk(transform) -> MatrixTransform:
    """A SimpleITK 2-D matrix transform (fixed → moving) as a comir moving → fixed one.

    Euler2D, Similarity2D, Affine and one-element composites of them; the result is the
    most specific comir kind that holds the matrix.
    """
    import SimpleITK as sitk

    tx = transform
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0)
    for cast in (sitk.Euler2DTransform, sitk.Similarity2DTransform, sitk.AffineTransform):
        try:
            tx = cast(tx)
            break
        except (RuntimeError, TypeError):
            continue
    a = np.asarray(tx.GetMatrix(), dtype=float).reshape(2, 2)
    m = F.about_center(a, tx.GetTranslation(), tx.GetCenter())
    return as_kind(np.linalg.inv(m))


def to_sitk(transform: MatrixTransform, center=(0.0, 0.0)):
    """The SimpleITK transform (fixed → moving) of ``transform``, centred at ``center``."""
    import SimpleITK as sitk

    name, params = _itk_parameters(transform, np.asarray(center, dtype=float))
    cls = {
        "Euler2DTransform_double_2_2": sitk.Euler2DTransform,
        "Similarity2DTransform_double_2_2": sitk.Similarity2DTransform,
        "AffineTransform_double_2_2": lambda: sitk.AffineTransform(2),
    }[name]
    out = cls()
    out.SetFixedParameters([float(center[0]), float(center[1])])
    out.SetParameters([float(p) for p in params])
    return out


def _floats(value: object) -> list[float]:
    if isinstance(value, str):
        return [float(v) for v in value.split()]
    if isinstance(value, Sequence):
        return [float(v) for v in value]
    return [float(value)]  # type: ignore[arg-type]


def from_elastix_params(params: Mapping[str, object]) -> MatrixTransform:
    """An elastix 2-D ``EulerTransform``, ``SimilarityTransform`` or ``AffineTransform``
    parameter map (fixed → moving) as a comir moving → fixed transform.

    Parameters
    ----------
    params : mapping
        ``Transform`` (default Euler), ``TransformParameters`` and
        ``CenterOfRotationPoint``, as numbers or elastix's strings.
    """
    try:
        kind = _floats_or_name(params.get("Transform", "EulerTransform"))
        p = _floats(params["TransformParameters"])
        c = _floats(params.get("CenterOfRotationPoint", (0.0, 0.0)))
        if kind == "EulerTransform":
            m = F.rigid_matrices(p[0], p[1:3], c)
        elif kind == "SimilarityTransform":
            m = F.similarity_matrices(p[1], p[0], p[2:4], c)
        elif kind == "AffineTransform":
            m = F.about_center(np.reshape(p[:4], (2, 2)), p[4:6], c)
        else:
            raise ValueError(f"unsupported transform {kind}")
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise ComirError(f"elastix parameters: not a 2-D matrix transform map ({exc})") from None
    return as_kind(np.linalg.inv(m))


def _floats_or_name(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value:
        return str(value[0])
    return str(value)


__all__ = [
    "AffineTransform",
    "FILE_FORMAT",
    "from_elastix_params",
    "from_sitk",
    "itk_tfm_text",
    "load_transform",
    "save_itk_tfm",
    "save_transform",
    "to_sitk",
    "transform_from_dict",
]
