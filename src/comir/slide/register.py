"""Whole-slide registration: a working level for the global search, finer levels to refine.

:func:`register_slides` never loads a slide whole:

1. **working level** — for each slide the level whose pixel size matches the target
   (the model's training pixel size when known, else the fixed slide's finest level
   whose long side is at most ``max_size``); a level off the target by more than
   ``pixel_tolerance`` is resampled (block mean) to it exactly;
2. **global rigid** — the chosen back-end (``fft``: rotation sweep × FFT NCC) on the two
   working images, or on their CoMIRs with a model;
3. **refinement** — region by region on each finer level down to level 0
   (:func:`comir.slide.refine.refine_by_patches`: phase correlation of patches, rigid
   fits; with ``transform="affine"|"deformable"`` affine fits on the finest two levels);
   **deformable** — :func:`comir.slide.deform.refine_regions`: the fixed level of long
   side ≤ ``refine_size`` cut into overlapping regions of bounded size, each refined by
   :func:`comir.register.refine_deformable` from that affine map, the displacements
   blended (partition of unity) into one field on level-0 fixed pixels;
4. **full resolution** — every level image carries the matrix of its pixels to level-0
   pixels (:meth:`Slide.level_matrix`, :func:`comir.transform.functional.scale_matrix`),
   so a level result ``T`` becomes ``L_fixed ∘ T ∘ L_moving⁻¹`` in level-0 pixels; a
   region's displacement is rescaled by the level's downsample onto a level-0 node grid;
5. **outputs** — ``transform.json`` (full-resolution pixels; ``pixel_size_um`` and the
   translation in µm when the pixel size is known), ``transform.tfm`` and
   ``transform_ngff.json`` (matrix transforms), ``overlay.png`` at the working level and
   ``<moving stem>_registered.ome.tif``: the moving slide warped tile by tile at full
   resolution (:func:`comir.slide.warp_slide`). All are written to a temporary folder
   and moved into ``out_dir`` only when everything succeeded (:mod:`comir.slide.outputs`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comir.errors import ComirError, warn
from comir.slide.pyramid import Slide, open_slide
from comir.transform import AffineTransform, Transform
from comir.transform import functional as F
from comir.transform.linear import RigidTransform, as_kind

PathLike = str | os.PathLike
#: Default long side (px) of the working level of the global search (``fft`` costs about
#: 1 s at 512², 7 s at 1000² on a loaded 2-core CPU).
MAX_SIZE = 1024
#: Options of :func:`register_slides` that ``register_files`` hands over (slide mode).
SLIDE_OPTIONS = ("max_size", "refine_size", "pixel_size", "model_pixel_size", "pixel_tolerance",
                 "compression", "write_registered", "progress")  # fmt: skip
#: Default ``refine_size`` in units of ``max_size``: a 20 000² slide with the default
#: ``max_size`` deforms at its 2 500² level.
DEFORM_FACTOR = 4
#: Relative pixel-size difference accepted between a level and its target.
PIXEL_TOLERANCE = 0.1
#: Working images above this many pixels are embedded in tiles (the default tile of
#: :meth:`comir.embed.ComirModel.embed`), which bounds the memory of inference.
EMBED_MAX_PIXELS = 2**19


@dataclass
class WorkImage:
    """A slide at one working resolution.

    ``image`` ``(h, w[, C])`` in the slide's dtype; ``matrix`` ``(3, 3)`` maps its pixels to
    level-0 pixels; ``level`` is the slide level it was read from.
    """

    image: np.ndarray
    matrix: np.ndarray
    level: int

    @property
    def downsample(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))


def read_at(slide: Slide, downsample: float, tol: float = PIXEL_TOLERANCE) -> WorkImage:
    """``slide`` at ``downsample`` level-0 pixels per pixel: the matching level, or the
    next finer one resampled (block mean, :func:`cv2.resize` ``INTER_AREA``) to it."""
    import cv2

    ds = [float(np.mean(lv.downsample)) for lv in slide.levels]
    fine = [i for i, d in enumerate(ds) if d <= downsample * (1 + tol)]
    i = fine[-1] if fine else 0
    img, mat = slide.read_level(i), slide.level_matrix(i)
    ratio = downsample / ds[i]
    if abs(ratio - 1) > tol:
        h, w = img.shape[:2]
        size = (max(8, round(w / ratio)), max(8, round(h / ratio)))
        work = img if img.dtype in (np.uint8, np.uint16, np.float32) else img.astype(np.float32)
        small = cv2.resize(work, size, interpolation=cv2.INTER_AREA).astype(img.dtype)
        img = small.reshape(size[1], size[0], *img.shape[2:])
        half = np.array([0.5, 0.5])
        resample = F.translation_matrix(-half) @ F.scale_matrix(w / size[0], h / size[1])
        mat = mat @ resample @ F.translation_matrix(half)
    return WorkImage(img, mat, i)


def _model_pixel_size(model, given: float | None) -> float | None:
    if given is not None or model is None:
        return given
    cfg = getattr(model, "config", None) or {}
    value = next((d["pixel_size_um"] for d in (cfg, cfg.get("train") or {}, cfg.get("data") or {})
                  if d.get("pixel_size_um") is not None), None)  # fmt: skip
    return None if value is None else float(value)


def working_downsamples(
    fixed: Slide, moving: Slide, max_size: int, model_px: float | None, tol: float
) -> tuple[float, float]:
    """Level-0 pixels per working pixel of each slide (see the module docstring).

    Raises
    ------
    ComirError
        A model pixel size with a slide of unknown pixel size, or a slide whose level 0
        is coarser than the model's pixels beyond ``tol``.
    """
    f_px, m_px = fixed.pixel_size, moving.pixel_size
    if model_px is not None:
        for s in (fixed, moving):
            if s.pixel_size is None:
                raise ComirError(
                    f"{s.path}: pixel size unknown but the model works at {model_px:g} µm; "
                    "give --pixel-size (µm per pixel of level 0)"
                )
            if s.pixel_size > model_px * (1 + tol):
                raise ComirError(
                    f"{s.path}: level 0 has {s.pixel_size:g} µm pixels, coarser than the "
                    f"model's {model_px:g} µm beyond {tol:.0%}; use a model trained at this "
                    "pixel size (comir train --scale-range) or check --pixel-size"
                )
        d_f, d_m = model_px / f_px, model_px / m_px
        if max(fixed.shape[:2]) / d_f > 2 * max_size:
            warn(f"{fixed.path}: the model's pixel size puts the global search at "
                 f"{max(fixed.shape[:2]) / d_f:.0f} px, above --max-size {max_size}: expect it to be slow")  # fmt: skip
        return d_f, d_m
    lv = fixed.levels[fixed.level_for(max_size)]
    d_f = float(np.mean(lv.downsample))
    if max(lv.shape[:2]) > max_size:  # coarsest stored and derived level still too big
        d_f *= max(lv.shape[:2]) / max_size
    d_m = d_f if f_px is None or m_px is None else d_f * f_px / m_px
    return d_f, d_m


def _to_full(t_level: np.ndarray, fixed: WorkImage, moving: WorkImage) -> np.ndarray:
    """A level matrix (moving work px → fixed work px) in level-0 pixels of both slides."""
    return fixed.matrix @ t_level @ np.linalg.inv(moving.matrix)


def _embedder(model, fixed_modality: str, device: str):
    """``(model, embed, embed_patches)``: raw [0, 1] floats without a model, else CoMIRs."""
    if model is None:
        from comir.io import to_unit_float

        return None, lambda img, which, where: to_unit_float(img), None
    if isinstance(model, str | os.PathLike):
        from comir.embed import load_model

        model = load_model(model, device=device)
    other = "b" if fixed_modality == "a" else "a"

    def embed(img: np.ndarray, which: str, where: str) -> np.ndarray:
        mod = fixed_modality if which == "fixed" else other
        return model.embed(img, mod, where=where, max_pixels=EMBED_MAX_PIXELS)

    def embed_patches(patches: list, which: str) -> list:
        mod = fixed_modality if which == "fixed" else other
        per = max(1, EMBED_MAX_PIXELS // _pixels(patches[0]))  # bounded activations
        out = []
        for k in range(0, len(patches), per):
            out += model.embed_batch(patches[k : k + per], mod, check=False)
        return out

    return model, embed, embed_patches


def _pixels(img: np.ndarray) -> int:
    return int(img.shape[0] * img.shape[1])


def refine_levels(slide: Slide, d_work: float, step: int, finest: float) -> list[int]:
    """Levels of ``slide`` about ``d_work / step``, ``/ step²``, ... down to ``finest``."""
    ds = np.array([float(np.mean(lv.downsample)) for lv in slide.levels])
    out: list[int] = []
    d = d_work / step
    while d >= finest * 0.99:
        i = int(np.argmin(np.abs(np.log(ds / d))))
        if ds[i] < d_work * 0.99 and i not in out:
            out.append(i)
        d /= step
    if finest <= 1 and 0 not in out and d_work > 1.01:
        out.append(0)
    return out


def wants_slides(fixed: PathLike, moving: PathLike, options: dict) -> bool:
    """Whether ``register_files`` should hand over to :func:`register_slides`: an input is
    a pyramid or OME-Zarr (:func:`comir.slide.is_slide`), or a slide option is set.
    Slide options that are None are dropped from ``options``."""
    from comir.slide.pyramid import is_slide

    for k in SLIDE_OPTIONS:
        if k in options and options[k] is None:
            del options[k]
    return any(k in options for k in SLIDE_OPTIONS) or is_slide(fixed) or is_slide(moving)


def deform_level(
    fixed: Slide,
    max_size: int,
    refine_size: int | None,
    model_px: float | None = None,
    tol: float = PIXEL_TOLERANCE,
) -> int:
    """The fixed level of the deformable stage: with a model of known pixel size (and no
    ``refine_size``) the level of that pixel size, else the finest level whose long side is
    at most ``refine_size`` (default :data:`DEFORM_FACTOR` × ``max_size``). A level whose
    pixel size is off the model's beyond ``tol`` gets a one-line warning."""
    matched = None  # long side of the fixed slide at the model's pixel size
    if model_px is not None and fixed.pixel_size:
        matched = max(fixed.shape[:2]) * fixed.pixel_size / model_px
    if refine_size is None and matched is not None:
        level = fixed.level_for(int(matched * (1 + tol)))
    else:
        level = fixed.level_for(int(refine_size or DEFORM_FACTOR * max_size))
    got = fixed.level_pixel_size(level)
    if matched is not None and got is not None and abs(got / model_px - 1) > tol:
        warn(f"{fixed.path}: the deformable stage embeds level {level} ({got:g} µm pixels), "
             f"not the model's {model_px:g} µm; --option refine_size={round(matched)} "
             "picks the matching level")  # fmt: skip
    return level


def _refine(fixed, moving, full, f_work, transform, embed, patch_embed):
    """Patch refinement on finer levels (rigid, then affine)."""
    from comir.slide.refine import N_PATCHES, patch_centres, refine_by_patches

    step = 2 if patch_embed is None else 4  # CoMIR patches cost a forward pass each
    n = N_PATCHES if patch_embed is None else N_PATCHES // 2
    levels = refine_levels(fixed, f_work.downsample, step, 1.0)
    centres = patch_centres(f_work, n)
    affine = transform != "rigid"
    cut = max(0, len(levels) - 2) if affine else len(levels)  # affine on the finest two
    full, log = refine_by_patches(fixed, moving, full, centres, levels[:cut], patch_embed)
    full, log2 = refine_by_patches(fixed, moving, full, centres, levels[cut:], patch_embed, affine)
    details = {"refinement": log + log2}
    final: Transform = as_kind(full, AffineTransform if affine else RigidTransform)
    return final, details


def _deform(fixed, moving, full: np.ndarray, level: int, embed, refine: dict, progress: bool):
    """The region-by-region deformable stage (:func:`comir.slide.deform.refine_regions`):
    ``(transform, score, details)``; the score is the area-weighted NCC of the regions."""
    from comir.slide.deform import refine_regions

    final, info = refine_regions(fixed, moving, full, level, embed, progress=progress, **refine)
    done = [
        e
        for e in info["per_region"]
        if e.get("ncc") is not None and e.get("ncc_affine") is not None
    ]
    area = np.array([e["box"][2] * e["box"][3] for e in done], float)
    ncc = [max(e["ncc"], e["ncc_affine"]) for e in done]
    score = float(np.average(ncc, weights=area)) if done else float("nan")
    return final, score, {"deformable": info}


class _Stages:
    """One tqdm bar over the stages of :func:`register_slides` and the seconds of each."""

    NAMES = ("read", "embed", "global", "refine", "deform", "write")

    def __init__(self, progress: bool, t0: float, deform: bool = False) -> None:
        from comir.batch import progress_bar

        self.t0, self.seconds = t0, {}
        n = len(self.NAMES) - (not deform)
        self.bar = progress_bar(n, "register slides", progress, unit="stage")

    def __call__(self, name: str) -> None:
        spent = time.perf_counter() - self.t0 - sum(self.seconds.values())
        self.seconds[name] = round(spent, 3)
        self.bar.set_postfix_str(name)
        self.bar.update(1)


def _working_details(f_work, m_work) -> dict:
    """The working levels, shapes and downsamples of both slides (for ``details``)."""
    return {
        "working_level": [f_work.level, m_work.level],
        "working_shape": [list(f_work.image.shape[:2]), list(m_work.image.shape[:2])],
        "working_downsample": [f_work.downsample, m_work.downsample],
    }


def _checked(transform: str, max_size: int | None, options: dict) -> tuple[int, dict]:
    """Validated ``max_size`` (default :data:`MAX_SIZE`) and the ``refine`` options popped
    from ``options``."""
    from comir.register import TRANSFORMS

    if transform not in TRANSFORMS:
        raise ComirError(f"transform={transform!r}: choose one of {', '.join(TRANSFORMS)}")
    max_size = MAX_SIZE if max_size is None else max_size
    if not int(max_size) >= 64:
        raise ComirError(f"--max-size {max_size}: give at least 64 px")
    refine = dict(options.pop("refine", None) or {})
    if refine and transform != "deformable":
        raise ComirError(f"refine options {sorted(refine)} need transform='deformable'")
    return int(max_size), refine


def register_slides(
    fixed_path: PathLike,
    moving_path: PathLike,
    out_dir: PathLike,
    method: str = "fft",
    model=None,
    fixed_modality: str = "a",
    device: str = "auto",
    landmarks: tuple[PathLike, PathLike] | None = None,
    transform: str = "rigid",
    max_size: int | None = None,
    refine_size: int | None = None,
    pixel_size: float | tuple[float | None, float | None] | None = None,
    model_pixel_size: float | None = None,
    pixel_tolerance: float = PIXEL_TOLERANCE,
    compression: str = "zlib",
    write_registered: bool = True,
    progress: bool = True,
    **options,
):
    """Register two whole slides (module docstring); what ``comir register`` runs on them.

    Parameters
    ----------
    fixed_path, moving_path : path
        Pyramidal (OME-)TIFF, plain TIFF or OME-Zarr (:func:`comir.slide.open_slide`).
    out_dir : path
        Output folder (module docstring).
    method, model, fixed_modality, device, landmarks
        As for :func:`comir.register.register_files`; landmarks in level-0 pixels.
    transform : {"rigid", "affine", "deformable"}
    max_size : int, optional
        Long side (px) of the fixed working level of the global search (:data:`MAX_SIZE`).
    refine_size : int, optional
        ``transform="deformable"``: the deformable stage runs region by region on the
        finest fixed level whose long side is at most this (default
        :data:`DEFORM_FACTOR` × ``max_size``; :mod:`comir.slide.deform`).
    pixel_size : float or (float, float), optional
        Level-0 pixel size (µm) of both slides, or ``(fixed, moving)``; overrides metadata.
    model_pixel_size : float, optional
        Pixel size (µm) of the model's training data (default: ``pixel_size_um`` of its
        ``config.json``); the working level then matches it within ``pixel_tolerance``.
    compression : {"zlib", "jpeg", "none"}
        Of the registered pyramid.
    write_registered : bool
        Write ``<moving stem>_registered.ome.tif`` (the full-resolution warp).
    progress : bool
        tqdm bars per stage.
    **options
        Back-end options; ``refine`` (dict): options of
        :func:`comir.slide.deform.refine_regions` (``region``, ``margin``, ``step``) and of
        :func:`comir.register.refine_deformable` (``grid_spacing``, ``smoothness``, ...).

    Returns
    -------
    comir.register.files.FileRegistration
        ``result.details`` holds the levels, shapes, pixel sizes and seconds per stage.
    """
    max_size, refine = _checked(transform, max_size, options)
    px = pixel_size if isinstance(pixel_size, tuple | list) else (pixel_size, pixel_size)
    stage = _Stages(progress, time.perf_counter(), transform == "deformable")
    settings = dict(
        method=method, model=model, fixed_modality=fixed_modality, device=device,
        landmarks=landmarks, transform=transform, max_size=max_size,
        refine_size=refine_size, model_pixel_size=model_pixel_size, tol=pixel_tolerance,
        compression=compression, write_registered=write_registered, progress=progress,
        refine=refine, options=options,
    )  # fmt: skip
    try:
        with open_slide(fixed_path, px[0]) as fixed, open_slide(moving_path, px[1]) as moving:
            return _register_open(fixed, moving, Path(out_dir), stage, settings)
    finally:
        stage.bar.close()


def _register_open(fixed: Slide, moving: Slide, out_dir: Path, stage: _Stages, s: dict):
    """The stages of :func:`register_slides` on two open slides (``s``: its settings)."""
    from comir.register import register
    from comir.register.files import FileRegistration, _read_landmarks
    from comir.slide.outputs import write_outputs
    from comir.transform import image_center

    points = _read_landmarks(s["landmarks"], fixed.shape, moving.shape)
    mdl, embed, patch_embed = _embedder(s["model"], s["fixed_modality"], s["device"])
    model_px = _model_pixel_size(mdl, s["model_pixel_size"])
    d_f, d_m = working_downsamples(fixed, moving, s["max_size"], model_px, s["tol"])
    f_work, m_work = read_at(fixed, d_f, s["tol"]), read_at(moving, d_m, s["tol"])
    stage("read")
    f_in = embed(f_work.image, "fixed", str(fixed.path))
    m_in = embed(m_work.image, "moving", str(moving.path))
    stage("embed")
    res = register(f_in, m_in, method=s["method"], **s["options"])
    stage("global")
    center = image_center(moving.shape)
    if not res.ok:
        return FileRegistration(res, center)
    full = _to_full(res.transform.matrix, f_work, m_work)
    details = {**res.details, "rigid_score": res.score, **_working_details(f_work, m_work)}
    final, more = _refine(fixed, moving, full, f_work, s["transform"], embed, patch_embed)
    details.update(more)
    stage("refine")
    score = res.score
    if s["transform"] == "deformable":
        level = deform_level(fixed, s["max_size"], s["refine_size"], model_px, s["tol"])
        final, ncc, more = _deform(fixed, moving, final.matrix, level, embed, s["refine"],
                                   s["progress"])  # fmt: skip
        details.update(more)
        score = ncc if math.isfinite(ncc) else score
        stage("deform")
    seconds = time.perf_counter() - stage.t0
    result = type(res)(final, score, seconds, "ok", res.method, details)
    out = write_outputs(result, fixed, moving, f_work, m_work, out_dir, dict(
        method=s["method"], model=s["model"], center=center, compression=s["compression"],
        write_registered=s["write_registered"], progress=s["progress"],
        landmarks=s["landmarks"], points=points,
    ))  # fmt: skip
    stage("write")
    details["seconds"] = stage.seconds
    return out
