"""Register two image files and write the results: what ``comir register`` does.

:func:`register_files` reads the fixed and moving files, optionally turns both into
CoMIRs with a trained model (each modality through its own encoder), registers them
with one back-end of :func:`comir.register.register`, and writes into ``out_dir``:

* ``transform.json`` — the moving → fixed transform (comir JSON, translation about the
  moving image centre, plus method, score, model and file names);
* ``transform.tfm`` — rigid and affine results: the same map as an ITK transform file
  (fixed → moving, centred at the moving image centre), for ``sitk.ReadTransform`` +
  ``sitk.Resample``;
* ``transform_field.nii.gz`` — deformable results: the whole fixed → moving map as an ITK
  displacement field image on the fixed grid
  (:func:`comir.transform.save_sitk_displacement`), for
  ``sitk.DisplacementFieldTransform`` + ``sitk.Resample``;
* ``transform_ngff.json`` — the same map as OME-NGFF 0.6 coordinate transformations
  (:func:`comir.transform.save_ngff`; deformable results point to the field image);
* ``deformation.png`` — deformable results: the deformed grid and the Jacobian map
  (:func:`comir.plot.plot_deformation`);
* ``landmarks.json`` — with ``landmarks=(fixed_csv, moving_csv)``: TRE / rTRE of the
  moving landmarks mapped onto the fixed ones (:mod:`comir.landmarks`);
* ``<moving stem>_registered<suffix>`` — the original moving image (not its CoMIR)
  warped into the fixed frame, in the moving file's dtype;
* ``overlay.png`` — fixed, moving and colour overlays before/after.

Examples
--------
>>> from comir.register import register_files
>>> out = register_files("rgb.png", "nir.tif", "out", method="fft",
...                      model="sample:sentinel2", fixed_modality="a")  # doctest: +SKIP
>>> out.ok, out.transform.angle_deg, out.transform_json  # doctest: +SKIP
(True, 12.4..., PosixPath('out/transform.json'))
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.landmarks import LandmarkErrors
from comir.register.base import RegistrationResult
from comir.transform import functional as F

PathLike = str | os.PathLike


@dataclass
class FileRegistration:
    """Outcome of :func:`register_files`: the registration and the files it wrote.

    ``center`` is the moving image centre, about which the files express the translation.
    The paths are None when the registration failed (nothing is written then).
    """

    result: RegistrationResult
    center: tuple[float, float]
    transform_json: Path | None = None
    transform_tfm: Path | None = None
    registered: Path | None = None
    overlay: Path | None = None
    transform_ngff: Path | None = None
    landmarks: LandmarkErrors | None = None
    landmarks_json: Path | None = None
    transform_field: Path | None = None
    deformation: Path | None = None

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def transform(self):
        """The moving → fixed transform (identity when the registration failed)."""
        return self.result.transform


def _inputs(fixed: np.ndarray, moving: np.ndarray, paths, model, fixed_modality, device):
    """What the back-end registers: [0, 1] floats of the files, or the CoMIRs of both."""
    from comir.io import to_unit_float

    if model is None:
        return to_unit_float(fixed), to_unit_float(moving)
    if isinstance(model, str | os.PathLike):
        from comir.embed import load_model

        model = load_model(model, device=device)
    other = "b" if fixed_modality == "a" else "a"
    return (
        model.embed(fixed, fixed_modality, where=str(paths[0])),
        model.embed(moving, other, where=str(paths[1])),
    )


def register_files(
    fixed_path: PathLike,
    moving_path: PathLike,
    out_dir: PathLike,
    method: str = "fft",
    model=None,
    fixed_modality: str = "a",
    device: str = "auto",
    landmarks: tuple[PathLike, PathLike] | None = None,
    **options,
) -> FileRegistration:
    """Register the image in ``moving_path`` onto ``fixed_path``; write the results.

    Parameters
    ----------
    fixed_path, moving_path : path
        Image files (any format :func:`comir.io.read_image` reads); sizes may differ.
    out_dir : path
        Output folder (created); see the module docstring for the files.
    method : {"fft", "sift", "mi", "elastix"}
        Back-end (:func:`comir.register.register`).
    model : run folder, ``"sample:<name>"`` or loaded model, optional
        Register the CoMIRs of both images instead of the images (scaled to [0, 1] by
        their dtype, :func:`comir.io.to_unit_float`).
    fixed_modality : {"a", "b"}
        Modality of the fixed image with ``model``; the moving image is the other one.
    device : str
        Device of the model (``auto``, ``cpu``, ``cuda``, ``mps``).
    landmarks : (fixed_csv, moving_csv), optional
        Paired landmark files (:func:`comir.landmarks.read_points`), read before
        registering; their TRE is returned and written to ``landmarks.json``.
    **options
        Options of :func:`comir.register.register`: ``transform`` (``rigid``, ``affine``,
        ``deformable``), ``refine`` and back-end options, e.g. ``preset="public"`` for
        ``sift``.

    Returns
    -------
    FileRegistration
        A failed registration writes nothing and comes back with ``ok`` False.

    Raises
    ------
    ComirError
        Unknown method or option, unreadable images or landmark files, unusable images.
    """
    from comir.io import read_image
    from comir.register import available_methods, register
    from comir.transform import image_center

    if method not in available_methods():
        raise ComirError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    if fixed_modality not in ("a", "b"):
        raise ComirError(f"fixed_modality must be 'a' or 'b', got {fixed_modality!r}")
    from comir.slide.register import register_slides, wants_slides

    if wants_slides(fixed_path, moving_path, options):  # pyramids, OME-Zarr or --max-size
        return register_slides(fixed_path, moving_path, out_dir, method, model, fixed_modality,
                               device, landmarks, **options)  # fmt: skip
    fixed, moving = read_image(fixed_path), read_image(moving_path)
    points = _read_landmarks(landmarks, fixed.shape, moving.shape)
    f_in, m_in = _inputs(fixed, moving, (fixed_path, moving_path), model, fixed_modality, device)
    res = register(f_in, m_in, method=method, **options)
    center = image_center(moving.shape)
    if not res.ok:
        return FileRegistration(res, center)
    paths = (Path(fixed_path), Path(moving_path), Path(out_dir))
    return _write_outputs(res, fixed, moving, paths, method, model, center, landmarks, points)


def global_part(transform):
    """The matrix transform a result starts with: itself (rigid, affine) or the first
    member of a ``CompositeTransform([affine, field])`` (deformable); None otherwise."""
    from comir.transform import CompositeTransform, MatrixTransform

    if isinstance(transform, CompositeTransform):
        transform = transform.transforms[0]
    return transform if isinstance(transform, MatrixTransform) else None


def describe(transform, center) -> str:
    """One line for people: rotation and translation about ``center`` (rigid), the
    linear part (affine), and for deformable results the field's largest displacement."""
    from comir.transform.field import fields_in

    fields = fields_in(transform)
    glob = global_part(transform)
    if glob is None:
        return type(transform).__name__
    m = np.asarray(glob.matrix)
    t = glob.translation_about(center)
    text = (
        f"rotation {np.degrees(F.matrix_angles(m)):.3f}°, translation ({t[0]:.2f}, {t[1]:.2f}) px"
        " about the moving centre"
    )
    if glob.kind not in ("rigid", "similarity") or fields:
        a = m[:2, :2]
        text += f", linear [[{a[0, 0]:.4f}, {a[0, 1]:.4f}], [{a[1, 0]:.4f}, {a[1, 1]:.4f}]]"
    for f in fields:
        size = np.linalg.norm(f.displacement, axis=-1)
        text += (
            f"; field {f.grid_shape[1]}x{f.grid_shape[0]}, |v| max {size.max():.2f} px, "
            f"folded {100 * f.folded_fraction():.2f} %"
        )
    return text


def _title(res, method: str, model, center) -> str:
    return f"{method}{' on CoMIRs' if model is not None else ''}: {describe(res.transform, center)}"


def write_transform_files(res, fixed_shape, out: Path, center, meta: dict) -> dict:
    """Write transform.json (``meta`` keys added), transform.tfm (matrix transforms) or
    transform_field.nii.gz (with a field, on the fixed grid ``fixed_shape``) and
    transform_ngff.json into ``out``; returns ``{FileRegistration field: path}``."""
    from comir.transform import MatrixTransform, save_itk_tfm, save_ngff, save_sitk_displacement
    from comir.transform.field import fields_in

    res.transform.save(out / "transform.json", center=center, **meta)
    paths = {"transform_json": out / "transform.json"}
    if isinstance(res.transform, MatrixTransform):
        save_itk_tfm(res.transform, out / "transform.tfm", center=center)
        paths["transform_tfm"] = out / "transform.tfm"
    field_name = None
    if fields_in(res.transform):
        field_name = "transform_field.nii.gz"
        paths["transform_field"] = save_sitk_displacement(
            res.transform, out / field_name, fixed_shape[:2]
        )
    paths["transform_ngff"] = save_ngff(
        res.transform, out / "transform_ngff.json", fixed_shape[:2], field_name=field_name
    )
    return paths


def _write_outputs(res, fixed, moving, paths, method, model, center, landmarks, points):
    """Write the files of a successful registration (module docstring)."""
    from comir.io import write_image, write_text
    from comir.landmarks import landmark_errors
    from comir.plot import plot_deformation, plot_registration_overlay
    from comir.transform.field import fields_in

    fixed_path, moving_path, out = paths
    name = model
    if model is not None and not isinstance(model, str | os.PathLike):  # a loaded ComirModel
        name = getattr(model, "name", None) or type(model).__name__
    meta = dict(
        method=method, score=float(res.score) if math.isfinite(res.score) else None,
        model=None if name is None else str(name), fixed=str(fixed_path), moving=str(moving_path),
    )  # fmt: skip
    if "folded_fraction" in res.details:
        meta["folded_fraction"] = res.details["folded_fraction"]
    files = write_transform_files(res, fixed.shape, out, center, meta)
    warped = res.transform.warp(moving, fixed.shape[:2])
    files["registered"] = write_image(
        out / f"{moving_path.stem}_registered{moving_path.suffix.lower()}", warped
    )
    title = _title(res, method, model, center)
    files["overlay"] = plot_registration_overlay(fixed, moving, warped, out / "overlay.png", title)
    if fields_in(res.transform):
        files["deformation"] = plot_deformation(
            res.transform, fixed, warped, out / "deformation.png", title=f"{method} deformable"
        )
    errors = None
    if points is not None:
        errors = landmark_errors(res.transform, *points, fixed.shape)
        files["landmarks_json"] = out / "landmarks.json"
        lm = {"fixed_landmarks": str(landmarks[0]), "moving_landmarks": str(landmarks[1])}
        write_text(files["landmarks_json"], json.dumps({**lm, **errors.to_dict()}, indent=2) + "\n")
    return FileRegistration(res, center, landmarks=errors, **files)


def _read_landmarks(landmarks, fixed_shape, moving_shape):
    """``(fixed_points, moving_points)`` ``(N, 2)`` of the two CSVs, or None."""
    from comir.landmarks import check_inside, read_points

    if landmarks is None:
        return None
    if len(landmarks) != 2 or any(p is None for p in landmarks):
        raise ComirError("landmarks: give both files, (fixed_csv, moving_csv)")
    fixed, moving = read_points(landmarks[0]), read_points(landmarks[1])
    if len(fixed.points) != len(moving.points):
        raise ComirError(
            f"{landmarks[1]}: {len(moving.points)} landmarks but {landmarks[0]} has "
            f"{len(fixed.points)}; the files must pair row by row"
        )
    check_inside(fixed.points, fixed_shape, str(landmarks[0]))
    check_inside(moving.points, moving_shape, str(landmarks[1]))
    return fixed.points, moving.points
