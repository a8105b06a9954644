"""Synthetic aligned multimodal image pairs for tests, demos and stress tests.

One random scene of shared structures — fields (Voronoi polygons), roads (lines), fibres
(iso-contours of a smooth random field) and cells (blobs) — is rendered twice:

* each modality maps the structures' shared latent value ``m ∈ [0, 1]`` to intensity with
  its own random, smooth, **non-monotonic** curve (a short random cosine series), so the
  intensity relation between A and B is not a function, let alone a monotonic one;
* the same structure looks different: cells are filled nuclei in A, membranes (bright rim,
  faint interior) in B; a fraction of fields and cells has no contrast in one modality;
* each modality shows structures the other lacks: granules (small dots) only in A, a
  second fibre family only in B;
* noise (additive Gaussian in A, signal-dependent Poisson-like in B), blur, texture
  (isotropic grain in A, streaks in B) and a smooth intensity bias (B) differ.

This mimics what makes multimodal registration hard (Pielawski et al., NeurIPS 2020;
Lu et al., PLOS ONE 2022): non-linear, non-monotonic and partly missing intensity relations.
Everything is vectorised with NumPy / ``scipy.ndimage`` (Euclidean distance transforms for
nearest-seed geometry); a 256 × 256 pair takes a few milliseconds.

Examples
--------
>>> a, b = synth_pair(128, "medium", seed=0)
>>> a.shape, b.dtype, float(a.min()) >= 0.0
((128, 128), dtype('float32'), True)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from comir.errors import ComirError

DIFFICULTIES = ("easy", "medium", "hard")
FORMATS = ("png", "tif", "npy")

__all__ = ["DIFFICULTIES", "FORMATS", "SynthScene", "synth_pair", "synth_scene", "write_synth"]


@dataclass(frozen=True)
class _Level:
    """Rendering parameters of one difficulty level."""

    noise_a: float  # std of additive Gaussian noise in A
    noise_b: float  # std of Poisson-like noise in B at intensity 1
    blur_a: float  # Gaussian blur sigma (px)
    blur_b: float
    texture: float  # relative amplitude of the texture
    bias: float  # relative amplitude of B's smooth intensity inhomogeneity
    missing: float  # fraction of fields / cells without contrast in a modality
    exclusive: float  # density multiplier of the modality-exclusive structures
    warp: float  # boundary irregularity (px)
    harmonics: int  # highest frequency of the intensity curves


_LEVELS = {
    "easy": _Level(0.02, 0.03, 0.5, 0.8, 0.03, 0.0, 0.0, 0.5, 1.5, 2),
    "medium": _Level(0.05, 0.07, 0.8, 1.4, 0.08, 0.15, 0.2, 1.0, 2.5, 3),
    "hard": _Level(0.10, 0.12, 1.2, 2.2, 0.15, 0.3, 0.4, 1.6, 3.5, 4),
}


@dataclass(frozen=True)
class SynthScene:
    """A rendered synthetic pair and the masks of its structures.

    Attributes
    ----------
    a, b : ndarray
        float32 images in [0, 1], ``(H, W)`` or ``(H, W, C)``.
    masks : dict of str -> ndarray
        bool ``(H, W)``: ``cells``, ``roads``, ``fibres`` (shared structures), ``shared``
        (their union), ``a_only`` (granules), ``b_only`` (the second fibre family).
    field_id : ndarray
        int ``(H, W)``: the field (polygon) each pixel belongs to.
    """

    a: np.ndarray
    b: np.ndarray
    masks: dict[str, np.ndarray]
    field_id: np.ndarray


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    h, w = int(h), int(w)
    if h < 16 or w < 16:
        raise ComirError(f"synthetic image size {h}x{w} is too small; use at least 16x16")
    return h, w


def _bspline_matrix(n_out: int, n_in: int, step: float) -> np.ndarray:
    """``(n_out, n_in)`` weights of cubic B-spline upsampling by ``step`` (rows sum to 1)."""
    u = np.arange(n_out) / step + 1.0
    i0 = np.floor(u).astype(int)
    t = (u - i0)[:, None]
    w = (
        np.concatenate(
            [(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=1
        )
        / 6.0
    )
    m = np.zeros((n_out, n_in), np.float32)
    np.put_along_axis(m, i0[:, None] - 1 + np.arange(4), w, axis=1)
    return m


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale`` px, ``(H, W)`` float32.

    Separable cubic B-spline upsampling of a coarse white-noise grid (two small matrix
    products), so the cost does not grow with ``scale``.
    """
    h, w = shape
    step = max(float(scale), 1.0)
    ch, cw = math.ceil(h / step) + 4, math.ceil(w / step) + 4
    coarse = rng.standard_normal((ch, cw)).astype(np.float32)
    f = _bspline_matrix(h, ch, step) @ coarse @ _bspline_matrix(w, cw, step).T
    f -= f.mean()
    return f / max(float(f.std()), 1e-6)


def _nearest_seed(
    rng: np.random.Generator, shape: tuple[int, int], n: int, coords: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Random seeds; for every (warped) pixel the nearest seed's id (0..n-1) and its distance.

    Parameters
    ----------
    coords : ndarray, shape (2, H, W)
        Row/column positions at which the seed geometry is sampled (a warped grid).

    Returns
    -------
    ids : ndarray, (H, W) int
    dist : ndarray, (H, W) float32
        Distance from the warped position to that seed.
    """
    h, w = shape
    seeds = np.zeros(shape, dtype=np.int32)
    flat = rng.choice(h * w, size=min(n, h * w), replace=False)
    seeds.flat[flat] = np.arange(1, flat.size + 1)
    # nearest seed of every grid pixel, looked up at the rounded warped position
    iy, ix = ndimage.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    ry = np.clip(np.rint(coords[0]).astype(np.intp), 0, h - 1)
    rx = np.clip(np.rint(coords[1]).astype(np.intp), 0, w - 1)
    sy, sx = iy[ry, rx], ix[ry, rx]
    dist = np.hypot(coords[0] - sy, coords[1] - sx).astype(np.float32)
    return seeds[sy, sx] - 1, dist


def _contours(
    rng: np.random.Generator, shape: tuple[int, int], scale: float, coverage: float, width: float
) -> np.ndarray:
    """Soft mask ``(H, W)`` of curvy fibres: gated iso-lines of a smooth random field."""
    g = _smooth_noise(rng, shape, scale)
    gy, gx = np.gradient(g)
    levels = np.array([-0.8, 0.0, 0.8], dtype=np.float32)[:, None, None]
    # distance to the nearest iso-line ≈ |g - level| / |∇g| (first-order Taylor)
    d = np.min(np.abs(g[None] - levels), axis=0) / (np.hypot(gy, gx) + 1e-3)
    # keep the fibres where a coarser field exceeds its (1 - coverage) normal quantile
    thresh = float(ndtri(min(max(1.0 - coverage, 1e-6), 1 - 1e-6)))
    gate = _smooth_noise(rng, shape, 3 * scale) > thresh
    return np.clip(width / 2 + 0.5 - d, 0.0, 1.0) * gate


def _curve(rng: np.random.Generator, harmonics: int, channels: int) -> np.ndarray:
    """Coefficients of random non-monotonic intensity curves, ``(channels, harmonics, 2)``.

    Channel curves share one base curve plus a smaller per-channel part, like colour bands.
    """
    amp = rng.standard_normal((1, harmonics)) / np.arange(1, harmonics + 1) ** 0.5
    amp = amp + 0.35 * rng.standard_normal((channels, harmonics))
    phase = rng.uniform(0, 2 * np.pi, (1, harmonics)) + 0.3 * rng.standard_normal(
        (channels, harmonics)
    )
    return np.stack([amp, phase], axis=-1)


def _apply_curve(coef: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Evaluate the curves at latent values ``m`` ``(K,)`` -> intensities ``(K, C)`` in [0.05, 0.85]."""
    k = np.arange(1, coef.shape[1] + 1)
    # (K, 1, 1) * (1, 1, J) -> sum over harmonics J
    arg = 2 * np.pi * m[:, None, None] * k[None, None, :] + coef[None, :, :, 1]
    v = np.sum(coef[None, :, :, 0] * np.cos(arg), axis=-1)  # (K, C)
    # rescale with the curve's range over a dense grid so all values stay inside [0.05, 0.85]
    # (headroom for the bias, texture and noise before clipping at 1)
    grid = np.linspace(0, 1, 257)
    ref = np.sum(
        coef[None, :, :, 0] * np.cos(2 * np.pi * grid[:, None, None] * k + coef[..., 1]), -1
    )
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    return 0.05 + 0.8 * (v - lo) / np.maximum(hi - lo, 1e-6)


def _over(img: np.ndarray, alpha: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Composite ``value`` ((H, W, C) or (C,)) over ``img`` (H, W, C) with ``alpha`` (H, W)."""
    a = alpha[..., None]
    return img * (1.0 - a) + value * a


@dataclass
class _Geometry:
    """The shared structures of one scene: ids and soft masks, each ``(H, W)``."""

    field_id: np.ndarray  # int: field (warped Voronoi polygon) of every pixel
    cell_id: np.ndarray  # int: nearest cell seed
    cell_in: np.ndarray  # float32 [0, 1]: anti-aliased cell discs
    cell_rim: np.ndarray  # float32 [0, 1]: their rims (membranes)
    roads: np.ndarray  # float32 [0, 1]: lines
    road_id: np.ndarray  # int: the road drawn on top at every pixel
    fibres: np.ndarray  # float32 [0, 1]: curvy fibres
    latent: dict[str, np.ndarray]  # shared latent value of every structure, in [0, 1]


def _geometry(
    g_geo: np.random.Generator,
    g_lat: np.random.Generator,
    shape: tuple[int, int],
    lv: _Level,
    density: float,
    scale: float,
) -> _Geometry:
    """Shared geometry on a smoothly warped grid (irregular boundaries) and its latents."""
    h, w = shape
    area = h * w / scale**2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = lv.warp * scale
    coords = np.stack(
        [
            yy + warp * _smooth_noise(g_geo, shape, 12 * scale),
            xx + warp * _smooth_noise(g_geo, shape, 12 * scale),
        ]
    )
    n_fields = max(3, round(density * area / 64**2))
    field_id, _ = _nearest_seed(g_geo, shape, n_fields, coords)

    n_cells = max(2, round(density * area / 30**2))
    cell_id, cell_d = _nearest_seed(g_geo, shape, n_cells, coords)
    radius = g_geo.uniform(3.0, 8.0, n_cells).astype(np.float32) * scale
    r = radius[cell_id]
    cell_in = np.clip(r + 0.5 - cell_d, 0.0, 1.0)  # anti-aliased disc
    cell_rim = cell_in * np.clip(cell_d - (r - 2.0 * scale) + 0.5, 0.0, 1.0)

    n_roads = max(1, round(density * (h + w) / scale / 220))
    p0 = g_geo.uniform([0, 0], [h, w], (n_roads, 2)).astype(np.float32)
    theta = g_geo.uniform(0, np.pi, n_roads).astype(np.float32)
    half = g_geo.uniform(1.0, 2.2, n_roads).astype(np.float32) * scale
    roads = np.zeros(shape, np.float32)
    road_id = np.zeros(shape, np.int32)
    for i in range(n_roads):  # a handful of lines, each one vectorised over the image
        d = np.abs(
            (coords[0] - p0[i, 0]) * np.cos(theta[i]) - (coords[1] - p0[i, 1]) * np.sin(theta[i])
        )
        a = np.clip(half[i] + 0.5 - d, 0.0, 1.0)
        road_id = np.where(a > roads, i, road_id)
        roads = np.maximum(roads, a)

    fibres = _contours(g_geo, shape, 22 * scale, 0.45 * density**0.5, 1.6 * scale)
    sizes = {"field": n_fields, "cell": n_cells, "road": n_roads, "fibre": 1, "gran": 1}
    latent = {k: g_lat.uniform(0, 1, n) for k, n in (*sizes.items(), ("fib_b", 1))}
    return _Geometry(field_id, cell_id, cell_in, cell_rim, roads, road_id, fibres, latent)


def _exclusive(
    g_xa: np.random.Generator,
    g_xb: np.random.Generator,
    shape: tuple[int, int],
    lv: _Level,
    density: float,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks ``(H, W)`` of the structures only A (granules) or only B (fibres) shows."""
    h, w = shape
    area = h * w / scale**2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n_gran = max(1, round(lv.exclusive * density * area / 24**2))
    _, gd = _nearest_seed(g_xa, shape, n_gran, np.stack([yy, xx]))
    gran = np.clip(1.2 * scale + 0.5 - gd, 0.0, 1.0)
    fib_b = _contours(
        g_xb, shape, 16 * scale, min(0.9, 0.3 * lv.exclusive * density**0.5), 1.2 * scale
    )
    return gran, fib_b


def _structures(
    g: np.random.Generator, channels: int, is_a: bool, lv: _Level, geo: _Geometry, only: np.ndarray
) -> np.ndarray:
    """The noise-free structures of one modality, ``(H, W, C)``; ``only``: its own mask."""
    lat = geo.latent
    coef = _curve(g, lv.harmonics, channels)
    f_vals = _apply_curve(coef, lat["field"])  # (n_fields, C)
    c_vals = _apply_curve(coef, lat["cell"])
    hidden_f = g.random(len(lat["field"])) < lv.missing
    f_vals[hidden_f] = f_vals[0]  # these fields merge with field 0: no edge between them
    hidden_c = (g.random(len(lat["cell"])) < lv.missing).astype(np.float32)
    img = f_vals[geo.field_id].astype(np.float32)  # (H, W, C)
    img = _over(img, geo.fibres, _apply_curve(coef, lat["fibre"])[0])
    img = _over(img, geo.roads, _apply_curve(coef, lat["road"])[geo.road_id])
    vis = 1.0 - hidden_c[geo.cell_id]
    if is_a:  # filled nuclei
        img = _over(img, geo.cell_in * vis, c_vals[geo.cell_id])
        return _over(img, only, _apply_curve(coef, lat["gran"])[0])
    # membranes: bright rim, faint interior
    img = _over(img, 0.35 * geo.cell_in * vis, c_vals[geo.cell_id])
    img = _over(img, geo.cell_rim * vis, np.float32(0.85))
    return _over(img, only, _apply_curve(coef, lat["fib_b"])[0])


def _render(
    g: np.random.Generator, channels: int, is_a: bool, lv: _Level, geo: _Geometry, only: np.ndarray
) -> np.ndarray:
    """One modality: structures, then texture, bias (B), blur and noise; in [0, 1]."""
    shape = geo.field_id.shape
    img = _structures(g, channels, is_a, lv, geo, only)
    if is_a:  # isotropic grain
        tex = ndimage.gaussian_filter(g.standard_normal(shape, np.float32), 0.8)
    else:  # streaks and a smooth intensity bias
        tex = ndimage.gaussian_filter(g.standard_normal(shape, np.float32), (0.6, 3.0))
        bias = np.clip(_smooth_noise(g, shape, max(shape) / 3), -2, 2)
        img = img * (1.0 + lv.bias * bias)[..., None]
    img = img * (1.0 + lv.texture * tex / max(float(tex.std()), 1e-6))[..., None]
    sigma = lv.blur_a if is_a else lv.blur_b
    img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    noise = g.standard_normal(img.shape, np.float32)
    if is_a:
        img = img + lv.noise_a * noise
    else:  # signal-dependent, Poisson-like
        img = img + lv.noise_b * np.sqrt(np.maximum(img, 0.0)) * noise
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return img[..., 0] if channels == 1 else img


def synth_scene(
    size: int | tuple[int, int] = 256,
    difficulty: str = "medium",
    seed: int | np.random.Generator | None = None,
    channels_a: int = 1,
    channels_b: int = 1,
    *,
    density: float = 1.0,
    scale: float = 1.0,
    exclusive: bool = True,
) -> SynthScene:
    """Render one synthetic aligned multimodal pair together with its structure masks.

    Parameters
    ----------
    size : int or (int, int)
        ``H`` (= ``W``) or ``(H, W)``, at least 16.
    difficulty : {"easy", "medium", "hard"}
        Noise, blur, texture, bias, missing contrast and exclusive-structure density.
    seed : int, Generator or None
        Random seed; the same seed gives the same pair.
    channels_a, channels_b : int
        Channels of A and B (1 gives ``(H, W)`` arrays).
    density : float
        Multiplier of the number of structures per area.
    scale : float
        Multiplier of the structure sizes (cells about 3–8 px in radius at 1).
    exclusive : bool
        Draw the modality-exclusive structures (``False`` only to inspect their effect;
        every other pixel stays identical, as separate random streams are used).

    Returns
    -------
    SynthScene
    """
    if difficulty not in _LEVELS:
        raise ComirError(f"unknown difficulty {difficulty!r}; use one of {', '.join(DIFFICULTIES)}")
    if min(channels_a, channels_b) < 1:
        raise ComirError("channels_a and channels_b must be at least 1")
    if density <= 0 or scale <= 0:
        raise ComirError("density and scale must be positive")
    lv = _LEVELS[difficulty]
    shape = _shape(size)
    streams = np.random.default_rng(seed).integers(0, 2**63 - 1, size=6)
    g_geo, g_lat, g_xa, g_xb, g_ra, g_rb = (np.random.default_rng(int(s)) for s in streams)
    geo = _geometry(g_geo, g_lat, shape, lv, density, scale)
    if exclusive:  # own random streams: every other pixel is the same without them
        gran, fib_b = _exclusive(g_xa, g_xb, shape, lv, density, scale)
    else:
        gran = fib_b = np.zeros(shape, np.float32)
    a = _render(g_ra, channels_a, True, lv, geo, gran)
    b = _render(g_rb, channels_b, False, lv, geo, fib_b)
    masks = {
        "cells": geo.cell_in > 0.5,
        "roads": geo.roads > 0.5,
        "fibres": geo.fibres > 0.5,
        "a_only": gran > 0.5,
        "b_only": fib_b > 0.5,
    }
    masks["shared"] = masks["cells"] | masks["roads"] | masks["fibres"]
    return SynthScene(a=a, b=b, masks=masks, field_id=geo.field_id)


def synth_pair(
    size: int | tuple[int, int] = 256,
    difficulty: str = "medium",
    seed: int | np.random.Generator | None = None,
    channels_a: int = 1,
    channels_b: int = 1,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """An aligned synthetic multimodal pair ``(A, B)``, float32 in [0, 1].

    Shapes ``(H, W)`` (one channel) or ``(H, W, C)``. Same arguments as
    :func:`synth_scene` (``density``, ``scale`` as keywords).
    """
    s = synth_scene(size, difficulty, seed, channels_a, channels_b, **kwargs)
    return s.a, s.b


def _to_dtype(img: np.ndarray, fmt: str, bits: int) -> np.ndarray:
    """``npy`` keeps float32; PNG/TIFF store ``bits``-bit integers by the N-bit convention
    of :func:`comir.io.unit_max` (``round(x · (2**bits - 1))``)."""
    from comir.io import from_unit_float

    return img if fmt == "npy" else from_unit_float(img, bits)


def write_synth(
    out: str | os.PathLike,
    n: int,
    size: int | tuple[int, int] = 256,
    difficulty: str = "medium",
    seed: int = 0,
    fmt: str = "png",
    *,
    bits: int = 16,
    channels_a: int = 1,
    channels_b: int = 1,
    progress: bool = True,
) -> Path:
    """Write ``n`` synthetic pairs in the ``folders`` layout: ``out/A/<name>``, ``out/B/<name>``.

    Parameters
    ----------
    out : path
        Output folder (created); also gets ``synth.json`` with the parameters.
    n : int
        Number of pairs; pair ``i`` is ``synth_<i:05d>.<fmt>`` and only depends on
        ``(seed, i)`` and the other parameters.
    fmt : {"png", "tif", "npy"}
        PNG/TIFF store ``bits``-bit integers (8 or 16; a stored ``v`` means
        ``v / (2**bits - 1)``, read back with ``--norm dtype``), ``npy`` float32.

    Returns
    -------
    Path
        ``out``; read it with ``comir.data.find_pairs(out, "folders", "A", "B")``.
    """
    from tqdm import tqdm

    from comir.io import write_image, write_text

    if fmt not in FORMATS:
        raise ComirError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if bits not in (8, 16):
        raise ComirError(f"bits must be 8 or 16, got {bits}")
    if n < 1:
        raise ComirError(f"--n must be at least 1, got {n}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ComirError(f"{out}: exists and is not a folder; choose another output folder")
    shape = _shape(size)
    if difficulty not in _LEVELS:
        raise ComirError(f"unknown difficulty {difficulty!r}; use one of {', '.join(DIFFICULTIES)}")
    seeds = np.random.SeedSequence(seed).spawn(n)
    for i in tqdm(range(n), desc="synth", unit="pair", disable=not progress):
        a, b = synth_pair(
            shape, difficulty, np.random.default_rng(seeds[i]), channels_a, channels_b
        )
        name = f"synth_{i:05d}.{fmt}"
        write_image(out / "A" / name, _to_dtype(a, fmt, bits))
        write_image(out / "B" / name, _to_dtype(b, fmt, bits))
    params = {
        "n": n,
        "size": list(shape),
        "difficulty": difficulty,
        "seed": seed,
        "format": fmt,
        "bits": None if fmt == "npy" else bits,
        "channels_a": channels_a,
        "channels_b": channels_b,
        "layout": "folders",
    }
    write_text(out / "synth.json", json.dumps(params, indent=2) + "\n")
    return out
