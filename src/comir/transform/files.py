"""Transform files and other libraries' transforms: comir JSON, ITK ``.tfm``, SimpleITK,
elastix parameter maps, ITK displacement field images, OME-NGFF coordinate transformations.

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
    from comir.transform.field import DisplacementField

    if not isinstance(d, Mapping):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    kind = d.get("type", "rigid")
    if kind in MATRIX_KINDS:
        return MATRIX_KINDS[kind].from_dict(dict(d))
    others = {
        "composite": CompositeTransform,
        "inverse": InverseTransform,
        DisplacementField.kind: DisplacementField,
    }
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
    if path.suffix.lower() in (".tfm", ".txt", ".nii", ".gz", ".mha", ".nrrd"):
        raise ComirError(
            f"{path}: an ITK/elastix file, not a comir transform JSON; pass the transform.json "
            "written next to it (or convert with comir.transform.from_sitk / "
            "from_sitk_displacement)"
        )
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ComirError(f"{path}: not a JSON file ({exc}); write it with comir register") from None
    fmt = d.get("format", FILE_FORMAT) if isinstance(d, Mapping) else FILE_FORMAT
    if fmt != FILE_FORMAT:
        raise ComirError(
            f"{path}: transform format {fmt!r}, this comir reads {FILE_FORMAT!r}; "
            "upgrade comir or re-write the file with this version"
        )
    try:
        return transform_from_dict(d)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
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


# ----------------------------------------------------------------- displacement images
#: Displacement written where the fixed → moving map is undefined (failed inversion):
#: far outside any image, so resamplers fill those pixels.
_UNDEFINED_DISPLACEMENT = 1e9


def displacement_image_array(transform: Transform, fixed_shape: tuple[int, ...]) -> np.ndarray:
    """``T⁻¹(x) − x`` at every fixed pixel ``x``, ``(H, W, 2)`` float64 of ``(dx, dy)``.

    This is what ITK's ``DisplacementFieldTransform`` holds (fixed → moving offsets);
    one evaluation of the whole chain per pixel, so any transform can be written.
    """
    h, w = int(fixed_shape[0]), int(fixed_shape[1])
    yy, xx = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    x = np.stack([xx, yy], axis=-1)
    d = transform.apply_inverse(x) - x
    d[~np.isfinite(d)] = _UNDEFINED_DISPLACEMENT
    return d


def _write_sitk(image, path: Path) -> None:
    """``sitk.WriteImage`` through a temporary folder next to ``path`` (the suffix picks
    the writer, so the temporary file keeps the name) and an atomic rename."""
    import shutil
    import tempfile

    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        sitk.WriteImage(image, str(tmp / path.name))
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_sitk_displacement(
    transform: Transform, path: str | os.PathLike, fixed_shape: tuple[int, ...]
) -> Path:
    """Atomically write ``transform`` as an ITK displacement field image on the fixed grid.

    ``path`` ends in ``.nii.gz``, ``.nii``, ``.mha`` or ``.nrrd``; the image is a 2-D
    float64 vector image (origin 0, spacing 1, identity direction) of
    :func:`displacement_image_array`. ``sitk.DisplacementFieldTransform(
    sitk.ReadImage(path, sitk.sitkVectorFloat64))`` + ``sitk.Resample(moving, fixed, tx)``
    gives comir's :meth:`Transform.warp`.
    """
    import SimpleITK as sitk

    path = Path(path)
    arr = displacement_image_array(transform, fixed_shape)
    _write_sitk(sitk.GetImageFromArray(arr, isVector=True), path)
    return path


def from_sitk_displacement(image) -> Transform:
    """A SimpleITK displacement field image (or its file) as a comir transform.

    The image holds fixed → moving offsets on the fixed grid, so the result is
    :meth:`DisplacementField.from_inverse` (exact ``apply_inverse``).

    Raises
    ------
    ComirError
        Unreadable file, not a 2-D image of 2-vectors, or a rotated (non-identity
        direction) grid.
    """
    import SimpleITK as sitk

    from comir.transform.field import DisplacementField

    is_file = isinstance(image, str | os.PathLike)
    where = str(image) if is_file else "displacement image"
    try:
        if is_file:
            img = sitk.ReadImage(str(image), sitk.sitkVectorFloat64)
        else:
            img = sitk.Cast(image, sitk.sitkVectorFloat64)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[:120]
        raise ComirError(f"{where}: cannot read a displacement image ({msg})") from None
    if img.GetDimension() != 2 or img.GetNumberOfComponentsPerPixel() != 2:
        raise ComirError(
            f"{where}: expected a 2-D image of 2-vectors (dx, dy), got "
            f"{img.GetDimension()}-D with {img.GetNumberOfComponentsPerPixel()} components"
        )
    if not np.allclose(img.GetDirection(), (1.0, 0.0, 0.0, 1.0)):
        raise ComirError(f"{where}: rotated field grids are not supported; resample it first")
    arr = sitk.GetArrayFromImage(img)
    return DisplacementField.from_inverse(arr, img.GetOrigin(), img.GetSpacing())


# ----------------------------------------------------------------------------- NGFF
#: Version of the OME-NGFF coordinate transformations written (RFC 5).
NGFF_VERSION = "0.6"


def _ngff_space(name: str) -> dict:
    axes = [{"name": a, "type": "space", "unit": "pixel"} for a in ("y", "x")]
    return {"name": name, "axes": axes}


def _ngff_matrix(m: np.ndarray, source: str, target: str) -> dict:
    """One NGFF transform of a comir 3×3 matrix, in NGFF's (y, x) axis order."""
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    yx = swap @ m @ swap
    if np.allclose(yx[:2, :2], np.eye(2), atol=1e-12):
        return {"type": "translation", "translation": yx[:2, 2].tolist(),
                "input": source, "output": target}  # fmt: skip
    return {"type": "affine", "affine": yx[:2].tolist(), "input": source, "output": target}


def ngff_dict(transform: Transform, field_path: str | None = None) -> dict:
    """OME-NGFF 0.6 ``coordinateSystems`` + ``coordinateTransformations`` of ``transform``.

    Matrix transforms map the ``moving`` system to the ``fixed`` one (``affine`` with a
    2×3 matrix, or ``translation``); chains become a ``sequence``. Axes are ``(y, x)``
    as in NGFF arrays. Transforms holding a displacement field are written as one
    ``displacements`` transform from ``fixed`` to ``moving`` pointing to ``field_path``
    (the image of :func:`save_sitk_displacement`, fixed → moving offsets).
    """
    from comir.transform.composite import CompositeTransform
    from comir.transform.field import fields_in

    if fields_in(transform):
        if field_path is None:
            raise ValueError("a transform with a displacement field needs field_path")
        tr = {"type": "displacements", "path": str(field_path), "interpolation": "linear",
              "input": "fixed", "output": "moving"}  # fmt: skip
    elif isinstance(transform, MatrixTransform):
        tr = _ngff_matrix(transform.matrix, "moving", "fixed")
    elif isinstance(transform, CompositeTransform):
        parts = [_ngff_matrix(t.matrix, "moving", "fixed") for t in transform.transforms]
        for p in parts:
            p.pop("input"), p.pop("output")
        tr = {"type": "sequence", "transformations": parts, "input": "moving", "output": "fixed"}
    else:
        tr = _ngff_matrix(np.asarray(_as_matrix(transform)), "moving", "fixed")
    return {
        "version": NGFF_VERSION,
        "coordinateSystems": [_ngff_space("moving"), _ngff_space("fixed")],
        "coordinateTransformations": [tr],
    }


def _as_matrix(transform: Transform) -> np.ndarray:
    """The 3×3 matrix of a transform that is linear (e.g. an inverted matrix transform)."""
    q = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = transform.apply(q)
    m = np.eye(3)
    m[:2, 0], m[:2, 1], m[:2, 2] = p[1] - p[0], p[2] - p[0], p[0]
    return m


def save_ngff(
    transform: Transform,
    path: str | os.PathLike,
    fixed_shape: tuple[int, ...] | None = None,
    field_name: str | None = None,
) -> Path:
    """Atomically write :func:`ngff_dict` as JSON (``transform_ngff.json``).

    A transform with a displacement field needs its field image next to the JSON:
    ``field_name`` names one already written there (:func:`save_sitk_displacement`);
    without it ``<stem>_field.nii.gz`` is written on ``fixed_shape`` first.
    """
    from comir.io import write_text
    from comir.transform.field import fields_in

    path = Path(path)
    if fields_in(transform) and field_name is None:
        if fixed_shape is None:
            raise ValueError("a transform with a displacement field needs fixed_shape")
        field_name = f"{path.stem}_field.nii.gz"
        save_sitk_displacement(transform, path.parent / field_name, fixed_shape)
    elif not fields_in(transform):
        field_name = None
    write_text(path, json.dumps(ngff_dict(transform, field_name), indent=2) + "\n")
    return path


__all__ = [
    "AffineTransform",
    "FILE_FORMAT",
    "NGFF_VERSION",
    "displacement_image_array",
    "from_elastix_params",
    "from_sitk",
    "from_sitk_displacement",
    "ngff_dict",
    "save_ngff",
    "save_sitk_displacement",
    "itk_tfm_text",
    "load_transform",
    "save_itk_tfm",
    "save_transform",
    "to_sitk",
    "transform_from_dict",
]
