"""Lazy readers of whole-slide images: pyramidal (OME-)TIFF, OME-Zarr, plain big images.

:func:`open_slide` returns a :class:`Slide`: a list of :class:`Level` (shape, downsample
with respect to level 0) whose regions are decoded on demand. TIFF levels are the
series levels tifffile finds (OME SubIFDs or separate pages); each level is read tile by
tile (or strip by strip) through ordinary file reads, decoded segments kept in a small
LRU cache so that neighbouring regions do not decode a tile twice (:mod:`comir.slide.tiff`).
OME-Zarr (NGFF 0.4 ``multiscales`` in ``.zattrs``, or 0.5 under ``attrs["ome"]``) levels are
zarr arrays (:mod:`comir.slide.ngff`).
Below the coarsest stored level, power-of-two levels are derived on the fly by block
means (:func:`cv2.resize` ``INTER_AREA``), so a plain single-page TIFF of any size has a
pyramid too; deriving a level reads its source in row bands (bounded memory).

Coordinates follow :mod:`comir.transform`: :meth:`Slide.level_matrix` maps level pixels
to level-0 pixels (a block mean of ``d × d`` pixels sits at ``(k + ½) d − ½``), built from
:func:`comir.transform.functional.scale_matrix` and ``translation_matrix``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.slide.ngff import is_zarr, open_zarr
from comir.slide.tiff import open_tiff
from comir.transform import functional as F

PathLike = str | os.PathLike
#: Source bytes one band of a derived level (or of :meth:`Slide.read_level`) reads at once.
BAND_BYTES = 32 * 2**20
#: Derived levels stop once the long side is at most this.
SMALLEST_SIDE = 128


@dataclass
class Level:
    """One resolution of a slide.

    Attributes
    ----------
    shape : tuple
        ``(H, W)`` or ``(H, W, C)``.
    downsample : (float, float)
        ``(dx, dy)``: level-0 pixels per level pixel along x and y.
    stored : bool
        True for a level stored in the file, False for one derived on the fly.
    """

    shape: tuple[int, ...]
    downsample: tuple[float, float]
    stored: bool
    read: Callable[[int, int, int, int], np.ndarray] = field(repr=False)


class Slide:
    """A lazily read multi-resolution image (see the module docstring).

    Attributes
    ----------
    path : Path
    kind : str
        ``"tiff"``, ``"ome-zarr"`` or ``"image"`` (read through :func:`comir.batch.open_image`).
    levels : list of Level
        Finest first; level 0 is full resolution.
    dtype : numpy.dtype
    pixel_size : float or None
        Level-0 pixel size in µm (OME metadata, or given to :func:`open_slide`).
    """

    def __init__(self, path: Path, kind: str, levels: list[Level], dtype, pixel_size, closer):
        self.path, self.kind, self.levels = path, kind, levels
        self.dtype = np.dtype(dtype)
        self.pixel_size = pixel_size
        self._closer = closer

    # -- geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Level-0 shape ``(H, W[, C])``."""
        return self.levels[0].shape

    @property
    def n_stored(self) -> int:
        """Levels stored in the file (the rest are derived)."""
        return sum(lv.stored for lv in self.levels)

    @property
    def pyramidal(self) -> bool:
        return self.n_stored > 1

    def level_matrix(self, level: int) -> np.ndarray:
        """``(3, 3)`` map of level pixel coordinates to level-0 pixel coordinates."""
        dx, dy = self.levels[level].downsample
        half = np.array([0.5, 0.5])
        return F.translation_matrix(-half) @ F.scale_matrix(dx, dy) @ F.translation_matrix(half)

    def level_pixel_size(self, level: int) -> float | None:
        """Pixel size (µm) of ``level`` (mean of x and y), None when unknown."""
        if self.pixel_size is None:
            return None
        return self.pixel_size * float(np.mean(self.levels[level].downsample))

    def level_for(self, max_size: int) -> int:
        """The finest level whose long side is at most ``max_size`` (else the coarsest)."""
        for i, lv in enumerate(self.levels):
            if max(lv.shape[:2]) <= max_size:
                return i
        return len(self.levels) - 1

    # -- pixels ---------------------------------------------------------------------
    def read_region(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y0, y0 + h) × [x0, x0 + w)`` of ``level`` as ``(h, w[, C])``.

        Parts outside the image are zeros.
        """
        lv = self.levels[level]
        out = np.zeros((h, w, *lv.shape[2:]), dtype=self.dtype)
        a0, a1 = max(0, y0), min(lv.shape[0], y0 + h)
        b0, b1 = max(0, x0), min(lv.shape[1], x0 + w)
        if a1 > a0 and b1 > b0:
            out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = lv.read(a0, a1, b0, b1)
        return out

    def read_level(self, level: int) -> np.ndarray:
        """The whole of ``level`` (``(H, W[, C])``), read in row bands."""
        lv = self.levels[level]
        h, w = lv.shape[:2]
        out = np.empty(lv.shape, dtype=self.dtype)
        src_row = self.levels[0].shape[1] * self.dtype.itemsize * _channels(lv.shape)
        rows = max(1, int(BAND_BYTES // max(1, src_row * lv.downsample[1])))
        for r0 in range(0, h, rows):
            out[r0 : r0 + rows] = lv.read(r0, min(h, r0 + rows), 0, w)
        return out

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """One line: kind, level shapes, pixel size."""
        shapes = ", ".join(
            f"{lv.shape[1]}x{lv.shape[0]}{'' if lv.stored else '*'}" for lv in self.levels
        )
        px = "unknown" if self.pixel_size is None else f"{self.pixel_size:.4g} µm"
        return f"{self.path.name}: {self.kind}, levels {shapes} (* derived), pixel size {px}"


def _channels(shape: tuple[int, ...]) -> int:
    return int(shape[2]) if len(shape) == 3 else 1


# ---------------------------------------------------------------------------- level checks
def _downsample(path: Path, s0: tuple[int, ...], s: tuple[int, ...], i: int):
    """``(dx, dy)`` of a stored level of shape ``s`` against level 0 ``s0``; ComirError when
    the two axes disagree beyond rounding."""
    (h0, w0), (h, w) = s0[:2], s[:2]
    dx, dy = w0 / w, h0 / h
    if abs(h0 / dx - h) > 1.5 or abs(w0 / dy - w) > 1.5:
        raise ComirError(
            f"level {i} ({w}x{h}) does not have the aspect ratio of level 0 ({w0}x{h0}); "
            "the pyramid is inconsistent: rebuild its sub-resolutions"
        )
    k = round(math.log2(max(dx, 1.0)))
    if all(abs(n / 2**k - m) < 1 for n, m in ((h0, h), (w0, w))):
        return float(2**k), float(2**k)  # rounded halvings: the exact power of two
    return dx, dy


def check_levels(path: PathLike, shapes: list[tuple[int, ...]]) -> list[tuple[float, float]]:
    """Validate stored level shapes (finest first); return each level's ``(dx, dy)``.

    Raises
    ------
    ComirError
        Channel counts differ, a level is not smaller than the one before it, or its
        aspect ratio differs from level 0's beyond rounding (naming ``path`` and the fix).
    """
    out = [(1.0, 1.0)]
    for i in range(1, len(shapes)):
        prev, s = shapes[i - 1], shapes[i]
        where = f"{path}: "
        if s[2:] != shapes[0][2:]:
            raise ComirError(
                f"{where}level {i} has shape {s} but level 0 has {shapes[0]}; all levels need "
                "the same channels: rebuild the pyramid"
            )
        if s[0] > prev[0] or s[1] > prev[1] or s[:2] == prev[:2]:
            raise ComirError(
                f"{where}level {i} ({s[1]}x{s[0]}) is not smaller than level {i - 1} "
                f"({prev[1]}x{prev[0]}); levels must shrink: rebuild the pyramid"
            )
        try:
            out.append(_downsample(Path(path), shapes[0], s, i))
        except ComirError as exc:
            raise ComirError(f"{where}{exc}") from None
    return out


def _derive_levels(base: Level, dtype: np.dtype) -> list[Level]:
    """Power-of-two block-mean levels below ``base`` down to :data:`SMALLEST_SIDE`."""
    out: list[Level] = []
    f = 2
    while max(base.shape[:2]) / (f // 2) > SMALLEST_SIDE:
        h, w = (-(-n // f) for n in base.shape[:2])
        shape = (h, w, *base.shape[2:])
        ds = (base.downsample[0] * f, base.downsample[1] * f)
        out.append(Level(shape, ds, False, _block_mean_reader(base, f, dtype)))
        f *= 2
    return out


def _block_mean_reader(base: Level, f: int, dtype: np.dtype):
    """``read(y0, y1, x0, x1)`` of the level ``f`` times coarser than ``base``."""
    import cv2

    bh, bw = base.shape[:2]
    src_row = bw * np.dtype(dtype).itemsize * _channels(base.shape)
    rows = max(1, int(BAND_BYTES // max(1, src_row * f)))  # output rows per source band

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        parts = []
        for r0 in range(y0, y1, rows):
            r1 = min(y1, r0 + rows)
            src = base.read(r0 * f, min(bh, r1 * f), x0 * f, min(bw, x1 * f))
            ph, pw = (r1 - r0) * f - src.shape[0], (x1 - x0) * f - src.shape[1]
            if ph or pw:  # the last block of a row/column: replicate the edge pixels
                pad = ((0, ph), (0, pw)) + ((0, 0),) * (src.ndim - 2)
                src = np.pad(src, pad, mode="edge")
            work = src if src.dtype in (np.uint8, np.uint16, np.float32) else src.astype(np.float32)
            small = cv2.resize(work, (x1 - x0, r1 - r0), interpolation=cv2.INTER_AREA)
            parts.append(small.reshape(r1 - r0, x1 - x0, *base.shape[2:]).astype(dtype, copy=False))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return read


# ---------------------------------------------------------------------------- TIFF# ---------------------------------------------------------------------------- open
def is_slide(path: PathLike) -> bool:
    """True for an OME-Zarr folder or a TIFF with more than one resolution level."""
    path = Path(path)
    if is_zarr(path):
        return True
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.series[0].levels) > 1
    except Exception:
        return False


def open_slide(path: PathLike, pixel_size: float | None = None) -> Slide:
    """Open a slide for lazy level and region reads.

    Parameters
    ----------
    path : path
        Pyramidal or plain TIFF (OME or not), an OME-Zarr folder, or any image
        :func:`comir.batch.open_image` reads.
    pixel_size : float, optional
        Level-0 pixel size in µm; overrides the file's metadata.

    Returns
    -------
    Slide
        Stored levels followed by derived power-of-two levels.

    Raises
    ------
    ComirError
        Missing or unreadable file, inconsistent levels, OME-Zarr without ``multiscales``.
    """
    path = Path(path)
    if not path.exists():
        raise ComirError(f"{path}: file not found; check the path")
    if pixel_size is not None and not pixel_size > 0:
        raise ComirError(f"--pixel-size {pixel_size}: give a positive size in µm")
    if is_zarr(path) or path.suffix.lower() == ".zarr":
        kind, (stored, dtype, meta_px, closer) = "ome-zarr", open_zarr(path)
    elif path.suffix.lower() in (".tif", ".tiff"):
        kind, (stored, dtype, meta_px, closer) = "tiff", open_tiff(path)
    else:
        from comir.batch import open_image

        src = open_image(path)
        stored = [(src.shape, lambda y0, y1, x0, x1: src.read_rows(y0, y1)[:, x0:x1])]
        kind, dtype, meta_px, closer = "image", src.dtype, None, src.close
    try:
        factors = check_levels(path, [s for s, _ in stored])
        levels = [Level(s, d, True, r) for (s, r), d in zip(stored, factors)]
        levels += _derive_levels(levels[-1], np.dtype(dtype))
    except Exception:
        if closer is not None:
            closer()
        raise
    return Slide(path, kind, levels, dtype, pixel_size or meta_px, closer)
