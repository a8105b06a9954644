"""Big images and batch work: row-band image I/O, cluster shards, progress bars.

Images larger than memory
-------------------------
:func:`open_image` returns an :class:`ImageSource` whose :meth:`~ImageSource.read_rows`
decodes only the rows asked for: single-page TIFFs (strips or tiles, any compression
tifffile can decode, BigTIFF) read just the segments that intersect the band, through
ordinary file reads rather than a memory map (mapped pages would count towards the
process's resident memory); ``.npy`` files (C order) are read with ``pread``. Other files
are read whole by :func:`comir.io.read_image`. :class:`RowWriter` writes a float32 image
band by band into an uncompressed BigTIFF (layout created by ``tifffile.memmap``) or a
``.npy`` file, again with ``pwrite``; the file appears under its final name only when
complete (:func:`comir.io.atomic_path`).

Shards
------
``--shard I/N`` (``0 <= I < N``) gives the ``I``-th of ``N`` interleaved parts of the
*sorted* work items (:func:`shard_indices`), so the array jobs of a cluster split one job
without talking to each other; every item belongs to exactly one shard.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comir.errors import ComirError
from comir.io import atomic_path, read_image

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


# ---------------------------------------------------------------------------- shards
def parse_shard(spec: str | Sequence[int] | None) -> tuple[int, int] | None:
    """Parse ``"I/N"`` (``0 <= I < N``) into ``(I, N)``; ``None`` stays ``None``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        m = _SHARD.match(spec)
        if not m:
            raise ComirError(f"--shard {spec!r} is invalid; use I/N with 0 <= I < N, e.g. 0/4")
        i, n = int(m.group(1)), int(m.group(2))
    else:
        i, n = (int(v) for v in spec)
    if n < 1 or not 0 <= i < n:
        raise ComirError(f"--shard {i}/{n} is invalid; use I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def shard_indices(keys: Sequence[Hashable], shard: tuple[int, int] | None) -> list[int]:
    """Indices (in input order) of the items that shard ``(I, N)`` owns.

    Items are ranked by their sorted ``keys``; shard ``I`` takes ranks ``I, I + N, ...``
    (balanced within one item). ``None`` owns everything.
    """
    n_items = len(keys)
    if shard is None:
        return list(range(n_items))
    i, n = shard
    order = sorted(range(n_items), key=lambda k: keys[k])
    return sorted(order[i::n])


# ---------------------------------------------------------------------------- progress
def progress_bar(total: int, desc: str, enabled: bool, unit: str = "it"):
    """A tqdm bar, or a no-op object with the same ``update``/``close`` when disabled.

    The bar appears only once the work has taken a second, so quick jobs (and their
    one-line error messages) stay uncluttered.
    """
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, delay=1.0)
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def remove_stale_parts(path: str | os.PathLike) -> int:
    """Delete temporary files that an interrupted atomic write of ``path`` left behind.

    :func:`comir.io.atomic_path` writes ``.<stem>.<random><suffix>.part`` next to the
    target; such files never count as finished outputs. Returns the number removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    n = 0
    for p in path.parent.glob(f".{glob_escape(path.stem)}.*{glob_escape(path.suffix)}.part"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def glob_escape(s: str) -> str:
    """Escape glob metacharacters of a literal file-name part."""
    return re.sub(r"([*?\[])", r"[\1]", s)


# ---------------------------------------------------------------------------- reading
class ImageSource:
    """A raw image opened for band reads.

    Attributes
    ----------
    shape : tuple
        ``(H, W)`` or ``(H, W, C)``, as :func:`comir.io.read_image` would return.
    dtype : numpy.dtype
    streaming : bool
        True when bands are decoded from the file on demand (memory ~ band size).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    streaming: bool = False

    def __init__(self, path: Path, array: np.ndarray | None = None) -> None:
        self.path = path
        self._array = array
        if array is not None:
            self.shape, self.dtype = tuple(array.shape), array.dtype

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` as ``(r1 - r0, W[, C])`` in the stored dtype."""
        assert self._array is not None
        return self._array[r0:r1]

    def read(self) -> np.ndarray:
        """The whole image (``(H, W[, C])``)."""
        return self.read_rows(0, self.shape[0])

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_band(self, band: np.ndarray) -> np.ndarray:
        if band.dtype.kind == "b":
            band = band.astype(np.uint8)
        if band.dtype.kind == "f" and not np.isfinite(band).all():
            raise ComirError(
                f"{self.path}: image contains NaN or Inf values; clean or mask them first"
            )
        return band


def tiff_segments(page) -> tuple[np.ndarray, dict[str, Any]]:
    """Where each tile or strip of a tifffile page lies, ``(n, 5)`` int64 rows of
    (sample, y, x, height, width), and the keyword arguments ``page.decode`` needs for
    them (full-size tiles; JPEG tables)."""
    n_seg = len(page.dataoffsets)
    pos = np.empty((n_seg, 5), dtype=np.int64)
    for k in range(n_seg):  # per segment, not per pixel: tifffile's own layout lookup
        (si, _, y, x, _), (_, sh, sw, _) = page.decode(None, k)[1:]
        pos[k] = (si, y, x, sh, sw)
    args: dict[str, Any] = {"_fullsize": bool(page.is_tiled)}
    if page.compression in (6, 7, 34892, 33007):  # JPEG flavours
        args.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
    return pos, args


class _TiffSource(ImageSource):
    """Single-page TIFF read segment by segment (strips or tiles)."""

    streaming = True

    def __init__(self, path: Path, tif: Any) -> None:
        super().__init__(path)
        self._tif = tif
        page = tif.pages[0]
        self._page = page
        s, _, h, w, c = page.shaped
        self._norm_shape = (s, h, w, c)
        self.dtype = np.dtype(page.dtype)
        self.shape = (h, w) if s * c == 1 else (h, w, s * c)
        self._pos, self._decodeargs = tiff_segments(page)

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        s, h, w, c = self._norm_shape
        r0, r1 = max(0, r0), min(h, r1)
        out = np.zeros((s, r1 - r0, w, c), dtype=self.dtype)
        y, sh = self._pos[:, 1], self._pos[:, 3]
        sel = np.flatnonzero((y < r1) & (y + sh > r0))
        page = self._page
        offsets = [page.dataoffsets[k] for k in sel]
        counts = [page.databytecounts[k] for k in sel]
        try:
            for data, k in self._tif.filehandle.read_segments(
                offsets, counts, indices=sel.tolist(), sort=True
            ):
                seg, (si, _, sy, sx, _), _ = page.decode(data, k, **self._decodeargs)
                if seg is None:  # empty segment: zeros
                    continue
                seg = seg[0]  # (height, width, contig samples)
                a0, a1 = max(sy, r0), min(sy + seg.shape[0], r1)
                b1 = min(sx + seg.shape[1], w)
                out[si, a0 - r0 : a1 - r0, sx:b1] = seg[a0 - sy : a1 - sy, : b1 - sx]
        except ComirError:
            raise
        except Exception as exc:  # decoders raise many types for corrupt data
            raise ComirError(
                f"{self.path}: cannot be read ({type(exc).__name__}: {exc}); "
                "the file is corrupt or truncated"
            ) from None
        band = out[0] if s == 1 else np.moveaxis(out[..., 0], 0, -1)
        if band.ndim == 3 and band.shape[2] == 1:
            band = band[..., 0]
        return self._check_band(band)

    def close(self) -> None:
        self._tif.close()


class _NpySource(ImageSource):
    """C-ordered ``.npy`` read with ``pread`` (no memory map)."""

    streaming = True

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
        super().__init__(path)
        self.shape, self.dtype, self._offset = shape, dtype, offset
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        r0, r1 = max(0, r0), min(self.shape[0], r1)
        n = (r1 - r0) * self._row_bytes
        buf = os.pread(self._fd, n, self._offset + r0 * self._row_bytes)
        if len(buf) != n:
            raise ComirError(f"{self.path}: file is truncated; re-export it")
        band = np.frombuffer(buf, dtype=self.dtype).reshape((r1 - r0, *self.shape[1:]))
        return self._check_band(band.copy())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _open_tiff(path: Path) -> ImageSource | None:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception:
        return None  # let read_image produce the error message
    try:
        page = tif.pages[0]
        ok = (
            len(tif.pages) == 1
            and page.shaped[1] == 1  # no volumes
            and len(page.dataoffsets) > 0
            and page.dtype is not None
            and np.dtype(page.dtype).kind in "uifb"
            and tuple(tif.series[0].shape) in _tiff_shapes(page.shaped)
        )
        if ok:
            return _TiffSource(path, tif)
    except Exception:
        pass
    tif.close()
    return None


def _tiff_shapes(shaped: tuple[int, ...]) -> list[tuple[int, ...]]:
    s, _, h, w, c = shaped
    return [(h, w), (h, w, c), (s, h, w), (1, h, w), (h, w, 1)]


def _open_npy(path: Path) -> ImageSource | None:
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            offset = fh.tell()
    except Exception:
        return None
    dtype = np.dtype(dtype)
    planar = len(shape) == 3 and shape[0] <= 8 and shape[2] > 8
    if fortran or dtype.hasobject or dtype.kind not in "uifb" or len(shape) not in (2, 3) or planar:
        return None
    if os.path.getsize(path) < offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        return None
    return _NpySource(path, tuple(int(v) for v in shape), dtype, offset)


def open_image(path: str | os.PathLike) -> ImageSource:
    """Open an image for band reads (streaming for single-page TIFF and ``.npy``).

    Parameters
    ----------
    path : path
        Any file :func:`comir.io.read_image` reads.

    Returns
    -------
    ImageSource
        ``read_rows(r0, r1)`` gives what ``read_image(path)[r0:r1]`` would.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    src = None
    if path.is_file() and path.stat().st_size > 0:
        if suffix in (".tif", ".tiff"):
            src = _open_tiff(path)
        elif suffix == ".npy":
            src = _open_npy(path)
    if src is None:
        src = ImageSource(path, read_image(path))
    return src


# ---------------------------------------------------------------------------- writing
class RowWriter:
    """Write a float32 ``(H, W)`` / ``(H, W, L)`` image band by band, atomically.

    ``.tif``/``.tiff``: uncompressed BigTIFF (``photometric`` rgb for L = 3, as
    :func:`comir.io.write_image`); ``.npy``: C-ordered array. Use as a context manager;
    the final file appears only when the block exits without an exception.

    Examples
    --------
    >>> with RowWriter("out.tif", (4096, 4096)) as w:      # doctest: +SKIP
    ...     w.write_rows(0, band)                            # band: (rows, 4096) float32
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(np.float32)
        suffix = self.path.suffix.lower()
        if suffix not in (".tif", ".tiff", ".npy"):
            raise ComirError(f"{self.path}: streaming output must be .tif or .npy")
        self._suffix = suffix
        self._stack = contextlib.ExitStack()
        self._fd = -1
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __enter__(self) -> RowWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        if self._suffix == ".npy":
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=self.shape)
        else:
            import tifffile

            rgb = len(self.shape) == 3 and self.shape[2] == 3
            mm = tifffile.memmap(
                tmp,
                shape=self.shape,
                dtype=self.dtype,
                bigtiff=True,
                photometric="rgb" if rgb else "minisblack",
                planarconfig="contig" if len(self.shape) == 3 else None,
            )
        self._offset = int(mm.offset)
        del mm  # only the layout is needed; data goes through pwrite
        self._fd = os.open(tmp, os.O_WRONLY)
        return self

    def write_rows(self, r0: int, rows: np.ndarray) -> None:
        """Write ``rows`` (``(n, W[, L])``, cast to float32) at image rows ``r0:r0 + n``."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or r0 < 0 or r0 + rows.shape[0] > self.shape[0]:
            raise ValueError(f"band {rows.shape} at row {r0} does not fit image {self.shape}")
        data = memoryview(rows).cast("B")
        pos = self._offset + r0 * self._row_bytes
        while data:
            n = os.pwrite(self._fd, data, pos)
            data, pos = data[n:], pos + n

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        return bool(self._stack.__exit__(exc_type, exc, tb))
