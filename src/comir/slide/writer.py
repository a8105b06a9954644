"""Pyramidal OME-TIFF / OME-Zarr writing in bounded memory, and tile-by-tile warping.

:func:`write_pyramid` pulls level 0 from a ``read_rows(r0, r1)`` callable one tile row at
a time; each band is compressed tile by tile and halved (2 × 2 block mean) into the next
level, whose rows wait in an uncompressed spool file next to the output (plain
``pwrite``/``pread``, no memory map) until tifffile writes that level as a SubIFD. Memory
holds one band per level, never the image. The file appears under its final name only
when complete (:func:`comir.io.atomic_path`; an OME-Zarr folder is written under a
temporary name and renamed).

:func:`warp_slide` is the one interpolation from the original pixels: for each output
tile it maps the tile's corners (matrix transforms) or every pixel (any other transform;
:func:`pullback_map`, a checked lattice interpolation for smooth maps) back into the moving
slide, reads only that bounding region of level 0 and resamples it
(OpenCV ``warpAffine`` / ``remap``, bilinear). :func:`write_comir_slide` writes the CoMIR of
a big slide level the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.io import atomic_path
from comir.transform import AffineTransform, MatrixTransform, Transform
from comir.transform import functional as F

PathLike = str | os.PathLike
TILE = 512
COMPRESSIONS = ("zlib", "zstd", "jpeg", "none")


def _halve(band: np.ndarray) -> np.ndarray:
    """2 × 2 block mean (edge pixels replicated for odd sizes): ``(h, w, ...)`` → ceil/2."""
    import cv2

    h, w = band.shape[:2]
    if h % 2 or w % 2:
        pad = ((0, h % 2), (0, w % 2)) + ((0, 0),) * (band.ndim - 2)
        band = np.pad(band, pad, mode="edge")
    work = band if band.dtype in (np.uint8, np.uint16, np.float32) else band.astype(np.float32)
    out = cv2.resize(work, (band.shape[1] // 2, band.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return out.reshape(band.shape[0] // 2, band.shape[1] // 2, *band.shape[2:]).astype(band.dtype)


def level_shapes(shape: tuple[int, ...], tile: int = TILE) -> list[tuple[int, ...]]:
    """Shapes of the written pyramid: halvings (rounded up) until the long side ≤ ``tile``."""
    out = [tuple(int(v) for v in shape)]
    while max(out[-1][:2]) > tile:
        h, w = (-(-n // 2) for n in out[-1][:2])
        out.append((h, w, *shape[2:]))
    return out


class _Spool:
    """An uncompressed raw image file written and read by rows (``pwrite``/``pread``)."""

    def __init__(self, folder: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        fd, name = tempfile.mkstemp(prefix=".comir-spool.", suffix=".raw", dir=folder)
        self.fd, self.path, self.shape, self.dtype = fd, Path(name), shape, np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:])) * self.dtype.itemsize

    def write_rows(self, r0: int, rows: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(rows, self.dtype)).cast("B")
        pos = r0 * self.row_bytes
        while data:
            n = os.pwrite(self.fd, data, pos)
            data, pos = data[n:], pos + n

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        n = (r1 - r0) * self.row_bytes
        buf = os.pread(self.fd, n, r0 * self.row_bytes)
        return np.frombuffer(buf, self.dtype).reshape(r1 - r0, *self.shape[1:])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _tiles(band: np.ndarray, tile: int):
    """The ``tile × tile`` tiles of one band, left to right, zero-padded at the edges."""
    h, w = band.shape[:2]
    for x0 in range(0, w, tile):
        t = np.zeros((tile, tile, *band.shape[2:]), band.dtype)
        t[:h, : min(tile, w - x0)] = band[:, x0 : x0 + tile]
        yield t


def _prefetch(read_rows, shape, tile: int, depth: int = 2):
    """Level-0 bands of ``tile`` rows, computed one or two ahead in a worker thread, so
    that producing them (decoding, warping: GIL-free OpenCV / codec calls) overlaps
    tifffile's compression of the previous ones."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for r0 in range(0, shape[0], tile):
                band = np.asarray(read_rows(r0, min(shape[0], r0 + tile)))
                while not stop.is_set():
                    try:
                        q.put((r0, band, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((None, None, exc))

    th = threading.Thread(target=work, daemon=True)
    th.start()
    try:
        for _ in range(0, shape[0], tile):
            r0, band, exc = q.get()
            if exc is not None:
                raise exc
            yield r0, band
    finally:
        stop.set()
        th.join()


def _bands(read_rows, shape, tile: int, spools: list[_Spool], progress):
    """Level-0 bands of ``tile`` rows; each halved into the spools of the coarser levels."""
    for r0, band in _prefetch(read_rows, shape, tile):
        down, rk = band, r0
        for sp in spools:  # before the yield: the consumer stops after the last tile
            down, rk = _halve(down), rk // 2
            sp.write_rows(rk, down)
        if progress is not None:
            progress.update(1)
        yield band


def _tiff_options(shape, dtype, compression: str, pixel_size: float | None, tile: int) -> dict:
    n_ch = shape[2] if len(shape) == 3 else 1
    if compression not in COMPRESSIONS:
        raise ComirError(f"compression={compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    if compression == "jpeg" and (np.dtype(dtype) != np.uint8 or n_ch not in (1, 3)):
        raise ComirError("compression='jpeg' needs 8-bit grey or RGB images; use zlib")
    rgb = n_ch == 3 and np.dtype(dtype).kind == "u"
    meta: dict = {"axes": "YX" if n_ch == 1 else "YXS"}
    if pixel_size is not None:
        meta.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size,
                    PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")  # fmt: skip
    comp = {"zlib": ("zlib", {"level": 1}), "zstd": ("zstd", {"level": 1}),
            "jpeg": ("jpeg", {"level": 90}), "none": (None, None)}  # fmt: skip
    c, args = comp[compression]
    return dict(
        tile=(tile, tile), compression=c, compressionargs=args, metadata=meta,
        photometric="rgb" if rgb else "minisblack",
        planarconfig="contig" if n_ch > 1 else None, maxworkers=2, buffersize=32 * 2**20,
    )  # fmt: skip


def write_pyramid(
    path: PathLike,
    shape: tuple[int, ...],
    dtype,
    read_rows: Callable[[int, int], np.ndarray],
    *,
    tile: int = TILE,
    compression: str = "zlib",
    pixel_size: float | None = None,
    progress=None,
) -> Path:
    """Write a pyramidal image pulled row band by row band, atomically.

    Parameters
    ----------
    path : path
        ``.ome.tif`` / ``.tif``: BigTIFF, OME-XML, level 0 tiled and compressed, the
        sub-resolutions as SubIFDs; ``.zarr``: OME-Zarr (NGFF 0.4, zarr format 2).
    shape : tuple
        ``(H, W)`` or ``(H, W, C)`` of level 0.
    dtype : numpy dtype
    read_rows : callable
        ``read_rows(r0, r1) -> (r1 - r0, W[, C])`` level-0 rows, called top to bottom.
    tile : int
        Tile (chunk) side, a multiple of 16.
    compression : {"zlib", "zstd", "jpeg", "none"}
        ``zlib`` (deflate level 1, what every TIFF reader decodes) and ``zstd`` (level 1,
        about 3× faster; libtiff ≥ 4.0.10, tifffile, QuPath) are lossless; ``jpeg``
        (quality 90) is for 8-bit grey / RGB only.
    pixel_size : float, optional
        Level-0 pixel size in µm, written to the OME metadata.
    progress : object, optional
        Gets ``update(1)`` per level-0 band.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    shape = tuple(int(v) for v in shape)
    if len(shape) == 3 and shape[2] == 1:  # one channel: store (H, W)
        shape, rows3 = shape[:2], read_rows
        read_rows = lambda r0, r1: np.asarray(rows3(r0, r1)).reshape(r1 - r0, shape[1])  # noqa: E731
    if tile % 16:
        raise ComirError(f"tile={tile}: TIFF tiles must be a multiple of 16 px (e.g. 512)")
    if path.suffix.lower() == ".zarr":
        return _write_zarr(path, shape, np.dtype(dtype), read_rows, tile, pixel_size, progress)
    opts = _tiff_options(shape, dtype, compression, pixel_size, tile)
    import tifffile

    shapes = level_shapes(shape, tile)
    spools: list[_Spool] = []
    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
            spools = [_Spool(path.parent, s, dtype) for s in shapes[1:]]
            bands = _bands(read_rows, shape, tile, spools, progress)
            tiles = (t for band in bands for t in _tiles(band, tile))
            tw.write(tiles, shape=shape, dtype=dtype, subifds=len(spools), **opts)
            opts.pop("metadata")
            for sp in spools:
                rows = (
                    sp.read_rows(r, min(sp.shape[0], r + tile)) for r in range(0, sp.shape[0], tile)
                )
                tiles = (t for band in rows for t in _tiles(band, tile))
                tw.write(tiles, shape=sp.shape, dtype=dtype, subfiletype=1, **opts)
    finally:
        for sp in spools:
            sp.close()
    return path


def _write_zarr(path: Path, shape, dtype, read_rows, tile: int, pixel_size, progress) -> Path:
    """OME-Zarr (NGFF 0.4, zarr format 2) written under a temporary name, then renamed."""
    try:
        import zarr
    except ImportError:
        raise ComirError(
            f"{path}: writing OME-Zarr needs zarr; pip install 'comir[slide]'"
        ) from None
    shapes = level_shapes(shape, tile)
    n_ch = shape[2] if len(shape) == 3 else 1
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".zarr.part", dir=path.parent))
    try:
        v3 = int(zarr.__version__.split(".")[0]) >= 3
        root = zarr.open_group(str(tmp), mode="w", **({"zarr_format": 2} if v3 else {}))
        create = root.create_array if v3 else root.create_dataset  # zarr 3 / zarr 2 spelling
        arrays = []
        for k, s in enumerate(shapes):
            zshape = s[:2] if n_ch == 1 else (n_ch, *s[:2])
            chunks = (tile, tile) if n_ch == 1 else (n_ch, tile, tile)
            arrays.append(create(str(k), shape=zshape, chunks=chunks, dtype=dtype))
        for r0 in range(0, shape[0], tile):
            band, rk = np.asarray(read_rows(r0, min(shape[0], r0 + tile))), r0
            for k, arr in enumerate(arrays):
                if k:
                    band, rk = _halve(band), rk // 2
                arr[..., rk : rk + band.shape[0], :] = (
                    band if n_ch == 1 else np.moveaxis(band, -1, 0)
                )
            if progress is not None:
                progress.update(1)
        root.attrs["multiscales"] = [_ngff_multiscales(len(shapes), n_ch, pixel_size)]
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def _ngff_multiscales(n_levels: int, n_ch: int, pixel_size: float | None) -> dict:
    unit = {"unit": "micrometer"} if pixel_size is not None else {}
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    if n_ch > 1:
        axes.insert(0, {"name": "c", "type": "channel"})
    p = 1.0 if pixel_size is None else float(pixel_size)
    datasets = []
    for k in range(n_levels):
        scale = [p * 2**k, p * 2**k] if n_ch == 1 else [1.0, p * 2**k, p * 2**k]
        datasets.append(
            {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    return {"version": "0.4", "axes": axes, "datasets": datasets, "name": "comir"}


# ---------------------------------------------------------------------------- warping
def _tile_warp(slide, transform: Transform, r0: int, c0: int, th: int, tw: int) -> np.ndarray:
    """Output tile ``[r0, r0 + th) × [c0, c0 + tw)`` of the fixed frame: moving level 0
    sampled at ``transform⁻¹`` of each pixel, from the bounding region only."""
    out_shape = (th, tw, *slide.shape[2:])
    matrix = isinstance(transform, MatrixTransform)
    if matrix:
        ys, xs = np.array([r0 - 0.5, r0 + th - 0.5]), np.array([c0 - 0.5, c0 + tw - 0.5])
        src = transform.apply_inverse(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2))
    else:
        src = pullback_map(transform, r0, c0, th, tw)
    ok = np.isfinite(src).all(axis=-1)
    h, w = slide.shape[:2]
    if not ok.any():
        return np.zeros(out_shape, slide.dtype)
    lo = np.floor(src[ok].min(axis=0)).astype(int) - 2
    hi = np.ceil(src[ok].max(axis=0)).astype(int) + 3
    lo, hi = np.maximum(lo, (-2, -2)), np.minimum(hi, (w + 2, h + 2))
    if (hi <= lo).any():
        return np.zeros(out_shape, slide.dtype)
    region = slide.read_region(0, int(lo[1]), int(lo[0]), int(hi[1] - lo[1]), int(hi[0] - lo[0]))
    if matrix:  # region pixels → tile pixels, one affine resampling
        local = F.translation_matrix((-c0, -r0)) @ transform.matrix @ F.translation_matrix(lo)
        return AffineTransform(local).warp(region, (th, tw))
    return _remap(region, src - lo, ok, slide.dtype)


def _lattice(n: int, step: int) -> np.ndarray:
    """Evenly spaced positions ``0 … n − 1`` at most ``step`` apart (both ends included)."""
    return np.linspace(0.0, n - 1.0, max(2, -(-(n - 1) // step) + 1))


def pullback_map(
    transform: Transform, r0: int, c0: int, th: int, tw: int, step: int = 8, tol: float = 0.05
) -> np.ndarray:
    """``transform.apply_inverse`` of every pixel of a tile, ``(th, tw, 2)`` (x, y).

    A smooth map (an affine part and a displacement field on a grid of tens of pixels) is
    evaluated on a lattice at most ``step`` px apart and interpolated linearly in between
    (separably). The lattice is checked on the cell centres, the
    worst place for linear interpolation: where any of them is off by more than ``tol`` px,
    or not finite, every pixel is mapped exactly.
    """
    ky, kx = _lattice(th, step), _lattice(tw, step)
    if len(ky) * len(kx) * 4 >= th * tw:  # a tiny tile: exact is as cheap
        return _exact_map(transform, r0, c0, th, tw)
    knots = transform.apply_inverse(np.stack(np.meshgrid(c0 + kx, r0 + ky), -1))
    my, mx = (ky[1:] + ky[:-1]) / 2, (kx[1:] + kx[:-1]) / 2
    mids = transform.apply_inverse(np.stack(np.meshgrid(c0 + mx, r0 + my), -1))
    err = np.abs(_interpolate(knots, ky, kx, my, mx) - mids)
    if not (np.isfinite(knots).all() and np.isfinite(err).all() and err.max() <= tol):
        return _exact_map(transform, r0, c0, th, tw)
    return _interpolate(knots, ky, kx, np.arange(th, dtype=float), np.arange(tw, dtype=float))


def _interpolate(knots: np.ndarray, ky, kx, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Lattice values ``knots`` ``(Ky, Kx, C)`` at rows ``ky`` / columns ``kx``, linearly
    interpolated at rows ``y`` × columns ``x`` -> ``(len(y), len(x), C)``."""
    i, fy = _cell(ky, y)
    rows = knots[i] * (1.0 - fy)[:, None, None] + knots[i + 1] * fy[:, None, None]
    j, fx = _cell(kx, x)
    return rows[:, j] * (1.0 - fx)[None, :, None] + rows[:, j + 1] * fx[None, :, None]


def _cell(knots: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the knot interval holding each ``x`` and the fraction across it."""
    k = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, len(knots) - 2)
    return k, (x - knots[k]) / (knots[k + 1] - knots[k])


def _exact_map(transform: Transform, r0: int, c0: int, th: int, tw: int) -> np.ndarray:
    yy, xx = np.mgrid[r0 : r0 + th, c0 : c0 + tw].astype(float)
    return transform.apply_inverse(np.stack([xx, yy], -1))


def _remap(region: np.ndarray, coords: np.ndarray, ok: np.ndarray, dtype) -> np.ndarray:
    """Bilinear samples of ``region`` at ``coords`` ``(th, tw, 2)`` (x, y); zeros where not ok."""
    import cv2

    from comir.transform.base import _cast_like

    mx = np.where(ok, coords[..., 0], -1e4).astype(np.float32)
    my = np.where(ok, coords[..., 1], -1e4).astype(np.float32)
    work = (
        region if region.dtype in (np.uint8, np.uint16, np.float32) else region.astype(np.float32)
    )
    planes = work[..., None] if work.ndim == 2 else work
    parts = [
        cv2.remap(planes[..., c : c + 4], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        for c in range(0, planes.shape[2], 4)
    ]
    out = np.concatenate([p.reshape(*mx.shape, -1) for p in parts], axis=-1)
    out = out[..., 0] if region.ndim == 2 else out
    return _cast_like(out, np.empty(0, dtype))


def warp_slide(
    moving,
    transform: Transform,
    fixed_shape: tuple[int, int],
    out_path: PathLike,
    *,
    tile: int = TILE,
    compression: str = "zlib",
    pixel_size: float | None = None,
    progress: bool = False,
) -> Path:
    """Warp a moving :class:`~comir.slide.Slide` into the fixed frame at full resolution.

    Parameters
    ----------
    moving : Slide
    transform : Transform
        Moving → fixed, in level-0 pixels of both slides.
    fixed_shape : (int, int)
        ``(H, W)`` of the fixed slide's level 0.
    out_path : path
        ``.ome.tif`` or ``.zarr`` (:func:`write_pyramid`); dtype and channels of ``moving``.
    tile, compression, pixel_size
        As for :func:`write_pyramid` (``pixel_size``: the fixed slide's).
    progress : bool
        A tqdm bar over output tile rows.
    """
    from comir.batch import progress_bar

    h, w = (int(v) for v in fixed_shape[:2])
    shape = (h, w, *moving.shape[2:])

    def read_rows(r0: int, r1: int) -> np.ndarray:
        tiles = [
            _tile_warp(moving, transform, r0, c0, r1 - r0, min(tile, w - c0))
            for c0 in range(0, w, tile)
        ]
        return np.concatenate(tiles, axis=1)

    bar = progress_bar(-(-h // tile), "warp", progress, unit="row")
    try:
        return write_pyramid(out_path, shape, moving.dtype, read_rows, tile=tile,
                             compression=compression, pixel_size=pixel_size, progress=bar)  # fmt: skip
    finally:
        bar.close()


def write_comir_slide(
    model,
    slide,
    modality: str,
    out_path: PathLike,
    *,
    level: int = 0,
    tile: int = 1024,
    pyramid_tile: int = TILE,
    progress: bool = False,
) -> Path:
    """Write the CoMIR of one slide level as a float32 pyramid (OME-TIFF or OME-Zarr).

    The level is embedded band by band (:meth:`comir.embed.ComirModel.embed_rows`, exact
    tiling), its rows spooled uncompressed next to the output, then written as a
    pyramid: memory holds one band of tiles, never the image. The model's normalisation
    is applied per band, so it must be pointwise (``bits:N`` or ``none``).
    """
    from comir.batch import progress_bar

    lv = slide.levels[level]
    h, w = lv.shape[:2]
    norms = (str(getattr(model.data, f"norm_{modality}", "none")),)
    if any(n.startswith("percentile") for n in norms):
        raise ComirError(f"{slide.path}: percentile normalisation needs the whole image; "
                         "write CoMIRs of slides with a bits:N model")  # fmt: skip
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    spool = _Spool(out_path.parent, (h, w, model.latent_channels), np.float32)

    def read_rows(r0: int, r1: int) -> np.ndarray:
        raw = slide.read_region(level, r0, 0, r1 - r0, w)
        return model.data.prepare(raw, modality, where=str(slide.path))

    bar = progress_bar(1, "embed", progress, unit="tile")
    try:
        model.embed_rows(read_rows, (h, w), modality, spool.write_rows, tile=tile, progress=bar)
        return write_pyramid(out_path, spool.shape, np.float32, spool.read_rows, tile=pyramid_tile)
    finally:
        bar.close()
        spool.close()
