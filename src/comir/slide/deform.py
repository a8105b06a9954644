"""The deformable stage of :func:`comir.slide.register_slides`, region by region.

A fine level does not fit the optimiser (:func:`comir.register.refine_deformable` holds a
few float copies of its input), so the fixed level is cut into overlapping regions
(:func:`plan_regions`: cores of at most ``region`` level pixels, each grown by ``margin``
on every side that is not the slide's edge). For each region only that part of the fixed
level and the bounding box of where the current affine map sends it in the moving slide
(plus ``margin``) are read (:meth:`Slide.read_region`), embedded when there is a model,
and refined, starting from the affine expressed in region pixels
(``R_f⁻¹ ∘ A ∘ R_m``, from :meth:`Slide.level_matrix` and
:func:`comir.transform.functional.translation_matrix`). Each region's pull-back
displacement ``v_r`` (region pixels) is a displacement of level-0 fixed points once scaled
by the level's downsample, because the fixed → moving map of the region,
``R_m ∘ init⁻¹(p + v_r(p))``, equals ``A⁻¹(q + D v_r(p))`` at ``q = R_f p``.

Stitching (:class:`FieldBlend`): every region contributes ``w_r v_r`` on ONE node grid over
level-0 fixed pixels, with ``w_r`` a product of per-axis weights that ramp from 0 to 1
(C¹ smoothstep) across the ``2 margin`` pixels shared with each neighbour. Neighbouring
ramps sum to exactly 1 (``s(t) + s(1 − t) = 1``), so the weights are a partition of unity
and the stitched field has no seam; a region left out (no texture, or no gain over the
affine map) contributes zero displacement with its weight, which keeps the blend smooth.
Inside a region the displacement is multiplied by a smooth :func:`confidence` map (local
texture energy of the fixed region): in empty background the data say nothing and the
optimiser drifts, so there the field falls back to the affine map.
Memory is bounded by one region (its two images and the optimiser's copies) plus the node
grid (``step`` level pixels apart).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from comir.transform import AffineTransform, CompositeTransform, DisplacementField
from comir.transform import functional as F

#: Default core side (level px) of a deformable region.
REGION = 1024
#: Default overlap (level px) added on each inner side of a region.
MARGIN = 64
#: Level pixels between nodes of the stitched field.
STEP = 4
#: Torch intra-op threads while regions are optimised: one region of ~1100² took 2.9 s
#: with one thread and 20 s with two on a loaded 2-core CPU (the small per-step tensors
#: gain nothing from splitting and lose much to contention).
THREADS = 1
#: Diffusion weight of :func:`comir.register.refine_deformable` in slide regions (its own
#: default is 1): on a 1128² region of the 8 000² benchmark pair (16 px deformation) 1 left
#: a local bubble 22.7 px off (NCC 0.984), 5 kept every point within 6.1 px (NCC 0.990).
SMOOTHNESS = 5.0
#: Regions whose fixed image is flatter than this (std of [0, 1] values) are left out.
MIN_STD = 1e-3


@dataclass(frozen=True)
class Region:
    """A box ``[y0, y1) × [x0, x1)`` of a level and its core ``[cy0, cy1) × [cx0, cx1)``."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def _cuts(n: int, region: int) -> np.ndarray:
    """Core boundaries ``0 = c_0 < … < c_k = n`` of ``ceil(n / region)`` near-equal cores."""
    k = max(1, math.ceil(n / region))
    return np.round(np.linspace(0, n, k + 1)).astype(int)


def plan_regions(shape: tuple[int, int], region: int = REGION, margin: int = MARGIN) -> list:
    """Overlapping regions covering a level of ``shape`` ``(H, W)``, row-major.

    Each region is its core (≤ ``region`` px a side) plus ``margin`` on every inner side, so
    no region exceeds ``region + 2 margin`` px a side.

    Raises
    ------
    ValueError
        ``margin`` above ``region // 4`` (a core must hold two ramps of ``2 margin``).
    """
    if not 0 < margin <= region // 4:
        raise ValueError(f"margin={margin} must lie in 1 … region // 4 = {region // 4}")
    ys, xs = _cuts(int(shape[0]), region), _cuts(int(shape[1]), region)
    out = []
    for a, b in zip(ys[:-1], ys[1:]):
        for c, d in zip(xs[:-1], xs[1:]):
            y0, y1 = max(0, a - margin), min(int(shape[0]), b + margin)
            x0, x1 = max(0, c - margin), min(int(shape[1]), d + margin)
            out.append(Region(int(y0), int(y1), int(x0), int(x1), int(a), int(b), int(c), int(d)))
    return out


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def axis_weights(u: np.ndarray, lo: int, hi: int, n: int, margin: int) -> np.ndarray:
    """Blend weight along one axis at level coordinates ``u`` of a core ``[lo, hi)`` on an
    axis of ``n`` px: ramps ``lo − margin → lo + margin`` and ``hi + margin → hi − margin``
    (none at the slide's edges), zero outside."""
    w = np.ones_like(u, dtype=float)
    if lo > 0:
        w *= _smoothstep((u - (lo - 0.5 - margin)) / (2 * margin))
    if hi < n:
        w *= _smoothstep(((hi - 0.5 + margin) - u) / (2 * margin))
    return w


def _inside(u: np.ndarray, a: int, b: int, n: int) -> np.ndarray:
    """Nodes within the box ``[a, b)`` of an axis of ``n`` px (beyond it at the edges)."""
    return ((u > a - 0.5) | (a == 0)) & ((u < b - 0.5) | (b == n))


class FieldBlend:
    """Accumulates per-region displacements into one pull-back field on level-0 pixels.

    Parameters
    ----------
    level_matrix : ndarray, shape (3, 3)
        Level pixels → level-0 pixels (scale and translation only).
    level_shape : (int, int)
        ``(H, W)`` of the level the regions are cut from.
    full_shape : (int, int)
        ``(H, W)`` of level 0 (the nodes span its pixel centres).
    margin : int
        Of the regions (their ramp is ``2 margin`` wide).
    step : int
        Level pixels between nodes.
    """

    def __init__(self, level_matrix, level_shape, full_shape, margin: int, step: int = STEP):
        self.lm = np.asarray(level_matrix, float)
        self.scale = np.diag(self.lm)[:2]  # level-0 px per level px, (x, y)
        self.origin = F.apply_matrices(self.lm, np.zeros(2))
        self.spacing = self.scale * step
        # nodes from the first pixel centre to past the last one; their level coordinates
        n = [math.ceil((full_shape[1 - k] - 1 - self.origin[k]) / self.spacing[k]) + 1
             for k in (0, 1)]  # fmt: skip
        self.ux, self.uy = (step * np.arange(max(k, 2), dtype=float) for k in n)
        self.level_shape, self.margin = tuple(int(s) for s in level_shape[:2]), margin
        self.num = np.zeros((len(self.uy), len(self.ux), 2))
        self.den = np.zeros((len(self.uy), len(self.ux)))

    def add(self, r: Region, sample=None) -> None:
        """Add region ``r``: ``sample(points)`` maps region pixels ``(N, 2)`` to its
        displacement ``(N, 2)`` in level pixels; None adds zero displacement."""
        h, w = self.level_shape
        jx = np.nonzero(_inside(self.ux, r.x0, r.x1, w))[0]
        iy = np.nonzero(_inside(self.uy, r.y0, r.y1, h))[0]
        if not len(jx) or not len(iy):
            return
        wx = axis_weights(self.ux[jx], r.cx0, r.cx1, w, self.margin)
        wy = axis_weights(self.uy[iy], r.cy0, r.cy1, h, self.margin)
        wgt = wy[:, None] * wx[None, :]
        sl = (slice(iy[0], iy[-1] + 1), slice(jx[0], jx[-1] + 1))
        self.den[sl] += wgt
        if sample is not None:
            pts = np.stack(np.meshgrid(self.ux[jx] - r.x0, self.uy[iy] - r.y0), -1)
            v = np.asarray(sample(pts.reshape(-1, 2)), float).reshape(*wgt.shape, 2)
            self.num[sl] += wgt[..., None] * v

    def field(self) -> DisplacementField:
        """The blended field: ``q ↦ q + v(q)`` on level-0 fixed pixels (pull-back)."""
        v = self.num / np.maximum(self.den, 1e-12)[..., None] * self.scale
        return DisplacementField.from_inverse(v.astype(np.float32), tuple(self.origin),
                                              tuple(self.spacing))  # fmt: skip


def region_pair(fixed, moving, level: int, mlevel: int, r: Region, full: np.ndarray, pad: int):
    """The fixed region ``r`` of ``level`` and the moving box of ``mlevel`` it maps to.

    Returns ``(fixed_img, moving_img, init)`` with ``init`` ``(3, 3)`` mapping moving box
    pixels to fixed region pixels (the affine ``full``, moving → fixed level-0 px, in
    region coordinates); ``moving_img`` is None when the box misses the moving slide.
    """
    rf = fixed.level_matrix(level) @ F.translation_matrix((r.x0, r.y0))
    f_img = fixed.read_region(level, r.y0, r.x0, *r.shape)
    lm = moving.level_matrix(mlevel)
    g = np.linalg.inv(lm) @ np.linalg.inv(full) @ rf  # region px → moving level px
    h, w = r.shape
    q = F.apply_matrices(g, np.array([[-0.5, -0.5], [w, -0.5], [-0.5, h], [w, h]]))
    mh, mw = moving.levels[mlevel].shape[:2]
    lo = np.maximum(np.floor(q.min(0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(q.max(0)).astype(int) + pad, (mw, mh))
    if (hi - lo < 8).any():
        return f_img, None, None
    m_img = moving.read_region(
        mlevel, int(lo[1]), int(lo[0]), int(hi[1] - lo[1]), int(hi[0] - lo[0])
    )
    init = np.linalg.inv(rf) @ full @ lm @ F.translation_matrix(lo)
    return f_img, m_img, init


def _ncc(fixed: np.ndarray, moving: np.ndarray, transform) -> float:
    """NCC of ``fixed`` and ``moving`` warped by ``transform``, over the warped support."""
    from comir.register import to_gray

    f, m = to_gray(fixed), to_gray(moving)
    ok = transform.warp(np.ones(m.shape, np.float32), f.shape[:2], order=0) > 0.5
    a, b = f[ok], transform.warp(m, f.shape[:2])[ok]
    if a.size < 16 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def confidence(image: np.ndarray, sigma: float = 16.0) -> np.ndarray:
    """Where a region's displacement is backed by data: local texture energy, ``(h, w)``.

    The band-pass energy ``G_σ * (g − G_2 * g)²`` of the grey image, divided by a tenth of
    its 95th percentile, clipped to [0, 1] and smoothed again by ``G_σ`` (so it stays
    smooth): 1 in tissue, 0 in empty background, where the optimiser only sees its
    penalty (Adam moves such nodes at full step size) and the field is damped back to
    the affine map.
    """
    import cv2

    from comir.register import to_gray

    g = to_gray(image).astype(np.float32)
    hp = g - cv2.GaussianBlur(g, (0, 0), 2.0)
    e = cv2.GaussianBlur(hp * hp, (0, 0), sigma)
    ref = float(np.percentile(e, 95))
    c = np.clip(e / (0.1 * ref), 0.0, 1.0) if ref > 0 else np.zeros_like(e)
    return cv2.GaussianBlur(c, (0, 0), sigma)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _refine_region(fixed, moving, level, mlevel, r, full, embed, opts: dict):
    """One region: ``(sample or None, entry)`` (see :func:`refine_regions`)."""
    from comir.register import refine_deformable, to_gray

    t0 = time.perf_counter()
    f_img, m_img, init = region_pair(fixed, moving, level, mlevel, r, full, opts["margin"])
    entry = {"box": [r.y0, r.x0, *r.shape], "applied": False}
    if m_img is None:
        return None, {**entry, "skipped": "outside the moving slide"}
    f_in = embed(f_img, "fixed", str(fixed.path))
    m_in = embed(m_img, "moving", str(moving.path))
    if (f_in.shape[2] if f_in.ndim == 3 else 1) != (m_in.shape[2] if m_in.ndim == 3 else 1):
        f_in, m_in = to_gray(f_in), to_gray(m_in)
    if float(np.std(f_in)) < MIN_STD or float(np.std(m_in)) < MIN_STD:
        return None, {**entry, "skipped": "no texture"}
    comp, ncc = refine_deformable(f_in, m_in, AffineTransform(init), **opts["refine"])
    field = comp.transforms[-1]
    before = _ncc(f_in, m_in, AffineTransform(init))
    after = _ncc(f_in, m_in, comp)
    entry.update(seconds=round(time.perf_counter() - t0, 3), ncc_affine=_finite(before),
                 ncc=_finite(after), folded_fraction=field.folded_fraction())  # fmt: skip
    if not (after >= before) or entry["folded_fraction"] > 1e-3:  # keep the affine map there
        return None, {**entry, "skipped": "no gain over the affine map"}
    entry["applied"] = True
    c = confidence(f_in, opts["refine"].get("grid_spacing", 16.0))
    damped = DisplacementField.from_inverse(field.displacement * c[..., None])
    return damped.sample, entry


@contextmanager
def _torch_threads(n: int | None):
    """Torch intra-op threads set to ``n`` (None: unchanged) inside the block."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def refine_regions(fixed, moving, full: np.ndarray, level: int, embed, *, region: int = REGION,
                   margin: int = MARGIN, step: int = STEP, threads: int | None = THREADS,
                   progress: bool = False, **refine) -> tuple[CompositeTransform, dict]:  # fmt: skip
    """The deformable stage on fixed ``level`` region by region (module docstring).

    Parameters
    ----------
    fixed, moving : Slide
    full : ndarray, shape (3, 3)
        The affine moving → fixed map in level-0 pixels.
    level : int
        Fixed level to refine on (the moving level of the same pixel size is used).
    embed : callable
        ``embed(image, "fixed"|"moving", where)`` → float image (raw or CoMIR).
    region, margin : int
        Core side and overlap (level px); regions stay ≤ ``region + 2 margin`` a side.
    step : int
        Level pixels between nodes of the stitched field.
    threads : int or None
        Torch intra-op threads during the stage (:data:`THREADS`; None: unchanged).
    progress : bool
        A tqdm bar over regions.
    **refine
        Options of :func:`comir.register.refine_deformable` (``similarity`` defaults to
        ``"ncc"``, ``smoothness`` to :data:`SMOOTHNESS`).

    Returns
    -------
    transform : CompositeTransform
        ``[AffineTransform(full), DisplacementField]`` (pull-back field on level-0 fixed
        pixels).
    details : dict
        Level, region count and limit, largest region, per-region box / seconds / NCC
        before and after / folded fraction, and the stitched field's grid.
    """
    from comir.batch import progress_bar
    from comir.slide.refine import _moving_level

    t0 = time.perf_counter()
    shape = fixed.levels[level].shape[:2]
    regions = plan_regions(shape, region, margin)
    mlevel = _moving_level(fixed, moving, level)
    blend = FieldBlend(fixed.level_matrix(level), shape, fixed.shape[:2], margin, step)
    opts = {"margin": margin, "refine": {"similarity": "ncc", "smoothness": SMOOTHNESS, **refine}}
    entries = []
    bar = progress_bar(len(regions), "deformable", progress, unit="region")
    try:
        with _torch_threads(threads):
            for r in regions:
                sample, entry = _refine_region(fixed, moving, level, mlevel, r, full, embed, opts)
                blend.add(r, sample)
                entries.append(entry)
                bar.update(1)
    finally:
        bar.close()
    field = blend.field()
    details = {
        "level": level, "moving_level": mlevel, "level_shape": list(shape),
        "regions": len(regions), "applied": sum(e["applied"] for e in entries),
        "region_limit": region + 2 * margin,
        "max_region_shape": [max(r.shape[0] for r in regions), max(r.shape[1] for r in regions)],
        "field_grid": list(field.grid_shape), "field_spacing_px": list(field.spacing),
        "folded_fraction": field.folded_fraction(),
        "seconds": round(time.perf_counter() - t0, 3), "per_region": entries,
    }  # fmt: skip
    return CompositeTransform([AffineTransform(full), field]), details
