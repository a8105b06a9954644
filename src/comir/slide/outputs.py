"""The files of a whole-slide registration (:func:`comir.slide.register_slides`), written
into a temporary folder and moved into the output folder only when all succeeded."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from comir.slide.pyramid import Slide
from comir.transform import AffineTransform, CompositeTransform, Transform
from comir.transform import functional as F


def stem(path: Path) -> str:
    """File name without ``.ome.tif`` / ``.tif`` / ``.zarr`` (and their variants)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def physical(transform: Transform, center, f_px: float | None, m_px: float | None) -> dict:
    """JSON extras: pixel sizes and, for matrix transforms, the translation in µm."""
    out: dict = {"units": "level-0 pixels", "pixel_size_um": {"fixed": f_px, "moving": m_px}}
    if f_px is not None and hasattr(transform, "matrix"):
        t = F.translation_about(transform.matrix, center)
        out["translation_um"] = [float(t[0] * f_px), float(t[1] * f_px)]
    return out


def write_outputs(result, fixed: Slide, moving: Slide, f_work, m_work, out: Path, o: dict):
    """All outputs into a temporary folder, moved into ``out`` once complete."""
    from comir.landmarks import landmark_errors
    from comir.plot import plot_registration_overlay
    from comir.register.files import FileRegistration
    from comir.slide.writer import warp_slide
    from comir.transform import save_itk_tfm, save_ngff

    t, center = result.transform, o["center"]
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".comir-slide.", dir=out))
    base = stem(moving.path)
    files: list[str] = []
    try:
        name = o["model"] if o["model"] is None or isinstance(o["model"], str | os.PathLike) else (
            getattr(o["model"], "name", None) or type(o["model"]).__name__)  # fmt: skip
        t.save(tmp / "transform.json", center=list(center), method=o["method"],
               score=float(result.score) if math.isfinite(result.score) else None,
               model=None if name is None else str(name), fixed=str(fixed.path),
               moving=str(moving.path), fixed_shape=list(fixed.shape[:2]),
               moving_shape=list(moving.shape[:2]),
               **physical(t, center, fixed.pixel_size, moving.pixel_size),
               levels=result.details.get("working_level"),
               **{k: result.details[k] for k in ("deformable",) if k in result.details})  # fmt: skip
        files = ["transform.json"]
        if hasattr(t, "matrix"):
            save_itk_tfm(t, tmp / "transform.tfm", center=center)
            save_ngff(t, tmp / "transform_ngff.json", fixed.shape[:2])
            files += ["transform.tfm", "transform_ngff.json"]
        level_t = _level_transform(t, f_work, m_work)
        warped = level_t.warp(m_work.image, f_work.image.shape[:2])
        angle = np.degrees(F.matrix_angles(t.matrix)) if hasattr(t, "matrix") else float("nan")
        plot_registration_overlay(f_work.image, m_work.image, warped, tmp / "overlay.png",
                                  title=f"{o['method']} ({t.kind}) at level {f_work.level}: "
                                  f"rotation {angle:.2f}°")  # fmt: skip
        files.append("overlay.png")
        errors = None
        if o["points"] is not None:
            errors = landmark_errors(t, *o["points"], fixed.shape)
            lm = {"fixed_landmarks": str(o["landmarks"][0]),
                  "moving_landmarks": str(o["landmarks"][1]), **errors.to_dict()}  # fmt: skip
            (tmp / "landmarks.json").write_text(json.dumps(lm, indent=2) + "\n")
            files.append("landmarks.json")
        if o["write_registered"]:
            reg = f"{base}_registered.ome.tif"
            warp_slide(moving, t, fixed.shape[:2], tmp / reg, compression=o["compression"],
                       pixel_size=fixed.pixel_size, progress=o["progress"])  # fmt: skip
            files.append(reg)
        for f in files:
            os.replace(tmp / f, out / f)
    except BaseException:
        if created:  # nothing of this run stays behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    p = {f: out / f for f in files}
    return FileRegistration(
        result, center, p["transform.json"], p.get("transform.tfm"),
        p.get(f"{base}_registered.ome.tif"), p["overlay.png"], p.get("transform_ngff.json"),
        errors, p.get("landmarks.json"),
    )  # fmt: skip


def _level_transform(t: Transform, f_work, m_work) -> Transform:
    """A full-resolution transform between the two working images (for the overlay)."""
    to_f = AffineTransform(np.linalg.inv(f_work.matrix))
    return CompositeTransform([AffineTransform(m_work.matrix), t, to_f]).simplified()
