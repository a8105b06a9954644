"""Lazy readers of whole-slide images: pyramidal (OME-)TIFF, OME-Zarr, plain big images.

:func:`open_slide` returns a :class:`Slide`: a list of :class:`Level` (shape, downsample
with respect to level 0) whose regions are decoded on demand. TIFF levels are the
series levels tifffile finds (OME SubIFDs or separate pages); each level is read tile by
tile (or strip by strip) through ordinary file reads, decoded segments kept in a small
LRU cache so that neighbouring regions do not decode a tile twice. OME-Zarr (NGFF 0.4
``multiscales`` in ``.zattrs``, or 0.5 under ``attrs["ome"]``) levels are zarr arrays.
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
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.transform import functional as F

PathLike = str | os.PathLike
#: Bytes of decoded tiles a TIFF slide keeps for reuse (all its levels together).
TILE_CACHE_BYTES = 192 * 2**20
#: Source bytes one band of a derived level (or of :meth:`Slide.read_level`) reads at once.
BAND_BYTES = 32 * 2**20
#: Derived levels stop once the long side is at most this.
SMALLEST_SIDE = 128
#: Length units of OME / NGFF metadata in micrometres.
UNITS_UM = {
    "nm": 1e-3, "nanometer": 1e-3, "µm": 1.0, "um": 1.0, "μm": 1.0, "micrometer": 1.0,
    "micron": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6,
}  # fmt: skip


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


# ---------------------------------------------------------------------------- TIFF
class _TileCache:
    """Decoded segments of all pages of one file, least recently used dropped first."""

    def __init__(self, budget: int = TILE_CACHE_BYTES) -> None:
        self.items: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self.bytes, self.budget = 0, budget

    def put(self, key: tuple[int, int], seg: np.ndarray | None, keep: int) -> None:
        self.items[key] = seg
        self.bytes += 0 if seg is None else seg.nbytes
        while self.bytes > self.budget and len(self.items) > keep:
            _, old = self.items.popitem(last=False)
            self.bytes -= 0 if old is None else old.nbytes


class _PageReader:
    """Region reads of one TIFF page, segment by segment, through a shared LRU cache."""

    def __init__(self, path: Path, tif, page, cache: _TileCache) -> None:
        self.path, self._tif, self._cache = path, tif, cache
        self._page = page = page.aspage() if hasattr(page, "aspage") else page
        s, d, h, w, c = page.shaped
        if d != 1:
            raise ComirError(f"{path}: volumes (depth {d}) are not slides; give a 2-D image")
        self.norm = (s, h, w, c)
        self.dtype = np.dtype(page.dtype)
        n = len(page.dataoffsets)
        pos = np.empty((n, 5), dtype=np.int64)  # sample, y, x, height, width
        for k in range(n):
            (si, _, y, x, _), (_, sh, sw, _) = page.decode(None, k)[1:]
            pos[k] = (si, y, x, sh, sw)
        self._pos = pos
        self._args: dict = {"_fullsize": bool(page.is_tiled)}
        if page.compression in (6, 7, 34892, 33007):  # JPEG flavours
            self._args.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)

    def _decode(self, keys: list[int]) -> None:
        page, fh = self._page, self._tif.filehandle
        items = self._cache.items
        missing = [k for k in keys if (id(self), k) not in items]
        for k in keys:  # touch the cached ones, so eviction keeps every segment of this read
            if (id(self), k) in items:
                items.move_to_end((id(self), k))
        if not missing:
            return
        offsets = [page.dataoffsets[k] for k in missing]
        counts = [page.databytecounts[k] for k in missing]
        try:
            for data, k in fh.read_segments(offsets, counts, indices=missing, sort=True):
                seg = page.decode(data, k, **self._args)[0]
                seg = None if seg is None else seg[0]  # (height, width, contig samples)
                self._cache.put((id(self), k), seg, keep=len(keys))
        except ComirError:
            raise
        except Exception as exc:  # codecs raise many types for corrupt data
            raise ComirError(
                f"{self.path}: a tile cannot be decoded ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:120]}); the file is corrupt: re-export it"
            ) from None

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``(y1 - y0, x1 - x0, S·C)`` (``S·C`` samples) of the page, in its dtype."""
        s, _, _, c = self.norm
        out = np.zeros((s, y1 - y0, x1 - x0, c), dtype=self.dtype)
        p = self._pos
        sel = np.flatnonzero(
            (p[:, 1] < y1) & (p[:, 1] + p[:, 3] > y0) & (p[:, 2] < x1) & (p[:, 2] + p[:, 4] > x0)
        ).tolist()
        self._decode(sel)
        for k in sel:
            seg = self._cache.items[(id(self), k)]
            self._cache.items.move_to_end((id(self), k))
            if seg is None:
                continue
            si, sy, sx = (int(v) for v in p[k, :3])
            a0, a1 = max(sy, y0), min(sy + seg.shape[0], y1)
            b0, b1 = max(sx, x0), min(sx + seg.shape[1], x1)
            if a1 > a0 and b1 > b0:
                out[si, a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = seg[
                    a0 - sy : a1 - sy, b0 - sx : b1 - sx
                ]
        return np.moveaxis(out, 0, -1).reshape(y1 - y0, x1 - x0, s * c)


def _tiff_level(path: Path, tif, series_level, cache) -> tuple[tuple[int, ...], Callable]:
    """Shape and reader of one tifffile series level (pages stacked as channels)."""
    pages = [_PageReader(path, tif, p, cache) for p in series_level.pages if p is not None]
    if not pages:
        raise ComirError(f"{path}: a level has no image data; the file is incomplete")
    h, w = pages[0].norm[1:3]
    if any(p.norm[1:3] != (h, w) for p in pages):
        raise ComirError(f"{path}: the pages of one level differ in size; rebuild the file")
    n_ch = sum(p.norm[0] * p.norm[3] for p in pages)

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        parts = [p.read(y0, y1, x0, x1) for p in pages]
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        return arr[..., 0] if n_ch == 1 else arr

    return ((h, w) if n_ch == 1 else (h, w, n_ch)), read


def ome_pixel_size(xml: str | None) -> float | None:
    """Level-0 pixel size (µm, mean of x and y) from OME-XML, None when absent."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        sizes = []
        for ax in ("X", "Y"):
            v = el.get(f"PhysicalSize{ax}")
            unit = el.get(f"PhysicalSize{ax}Unit", "µm")
            if v is not None and unit in UNITS_UM:
                sizes.append(float(v) * UNITS_UM[unit])
        return float(np.mean(sizes)) if sizes and all(s > 0 for s in sizes) else None
    return None


def _open_tiff(path: Path) -> tuple[list, np.dtype, float | None, Callable]:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        stored = list(series.levels)
    except Exception as exc:
        raise ComirError(
            f"{path}: cannot be read as TIFF ({type(exc).__name__}); the file is corrupt or "
            "not a TIFF"
        ) from None
    try:
        extra = [
            f"{ax}={n}" for ax, n in zip(series.axes, series.shape) if ax not in "YXSC" and n > 1
        ]
        if extra:
            raise ComirError(
                f"{path}: the TIFF holds a stack ({series.axes} {tuple(series.shape)}), not one "
                "2-D image; write it with samples last (planarconfig contig) or one plane"
            )
        cache = _TileCache()
        read = [_tiff_level(path, tif, lv, cache) for lv in stored]
        dtype = np.dtype(series.dtype)
        pixel = ome_pixel_size(tif.ome_metadata if tif.is_ome else None)
    except Exception:
        tif.close()
        raise
    return read, dtype, pixel, tif.close


# ---------------------------------------------------------------------------- OME-Zarr
def _ngff_multiscales(path: Path, group) -> dict:
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        raise ComirError(
            f"{path}: Zarr store has no OME-NGFF 'multiscales' metadata; write it as OME-Zarr "
            "(e.g. comir.slide.write_pyramid(..., format='zarr') or ome-zarr-py)"
        )
    return ms[0]


def _zarr_level(path: Path, arr, axes: list[str]) -> tuple[tuple[int, ...], Callable]:
    """Shape ``(H, W[, C])`` and reader of one NGFF array with axes like ``c, y, x``."""
    shape = dict(zip(axes, arr.shape))
    extra = [a for a in axes if a not in ("c", "y", "x")]
    if any(shape[a] != 1 for a in extra) or "y" not in axes or "x" not in axes:
        raise ComirError(
            f"{path}: axes {axes} with shape {arr.shape}: only 2-D images (c, y, x) are slides"
        )
    order = [axes.index(a) for a in ("y", "x", "c") if a in axes]
    n_ch = shape.get("c", 1)

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        idx = tuple(
            slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x" else slice(None) for a in axes
        )
        try:
            block = np.asarray(arr[idx])
        except Exception as exc:  # codecs raise many types for corrupt chunks
            raise ComirError(
                f"{path}: a chunk cannot be decoded ({type(exc).__name__}); the store is "
                "corrupt: re-export it"
            ) from None
        kept = [i for i, a in enumerate(axes) if a in ("y", "x", "c")]
        block = block.reshape([block.shape[i] for i in kept])
        block = np.transpose(block, [kept.index(i) for i in order])
        return block if n_ch > 1 else block.reshape(block.shape[:2])

    hw = (shape["y"], shape["x"])
    return (hw if n_ch == 1 else (*hw, n_ch)), read


def _open_zarr(path: Path) -> tuple[list, np.dtype, float | None, Callable]:
    try:
        import zarr
    except ImportError:
        raise ComirError(
            f"{path}: reading OME-Zarr needs zarr; pip install 'comir[slide]'"
        ) from None
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise ComirError(
            f"{path}: cannot be opened as Zarr ({type(exc).__name__}); give an OME-Zarr folder"
        ) from None
    ms = _ngff_multiscales(path, group)
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", ["y", "x"])]
    levels = []
    for ds in ms["datasets"]:
        try:
            arr = group[ds["path"]]
        except KeyError:
            raise ComirError(
                f"{path}: multiscales names dataset {ds['path']!r} but the store lacks it; "
                "rewrite the store"
            ) from None
        levels.append(_zarr_level(path, arr, axes))
    pixel = None
    scales = [t for t in ms["datasets"][0].get("coordinateTransformations", [])
              if t.get("type") == "scale"]  # fmt: skip
    if scales and "x" in axes:
        units = [a.get("unit") if isinstance(a, dict) else None for a in ms.get("axes", [])]
        unit = units[axes.index("x")] if units else None
        if unit in UNITS_UM:
            pixel = float(scales[0]["scale"][axes.index("x")]) * UNITS_UM[unit]
    return levels, np.dtype(group[ms["datasets"][0]["path"]].dtype), pixel, None


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in (".zattrs", ".zgroup", "zarr.json"))


# ---------------------------------------------------------------------------- open
def is_slide(path: PathLike) -> bool:
    """True for an OME-Zarr folder or a TIFF with more than one resolution level."""
    path = Path(path)
    if _is_zarr(path):
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
    if _is_zarr(path) or path.suffix.lower() == ".zarr":
        kind, (stored, dtype, meta_px, closer) = "ome-zarr", _open_zarr(path)
    elif path.suffix.lower() in (".tif", ".tiff"):
        kind, (stored, dtype, meta_px, closer) = "tiff", _open_tiff(path)
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
