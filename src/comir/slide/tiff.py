"""TIFF levels for :mod:`comir.slide.pyramid`: tile (or strip) reads through a shared cache.

Each tifffile series level is read segment by segment: only the tiles that intersect a
region are read (ordinary file reads, no memory map) and decoded; decoded segments of all
levels of one file share one LRU cache of :data:`TILE_CACHE_BYTES`, so neighbouring
regions do not decode a tile twice. A codec failure becomes a one-line
:class:`~comir.errors.ComirError` naming the file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from comir.batch import tiff_segments
from comir.errors import ComirError

#: Bytes of decoded tiles a TIFF slide keeps for reuse (all its levels together).
TILE_CACHE_BYTES = 192 * 2**20
#: Length units of OME / NGFF metadata in micrometres.
UNITS_UM = {
    "nm": 1e-3, "nanometer": 1e-3, "µm": 1.0, "um": 1.0, "μm": 1.0, "micrometer": 1.0,
    "micron": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6,
}  # fmt: skip


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
        self._pos, self._args = tiff_segments(page)

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


def open_tiff(path: Path) -> tuple[list, np.dtype, float | None, Callable]:
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
