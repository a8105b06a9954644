"""napari reader and writer: the image files comir reads, and CoMIRs out.

The reader opens what :func:`comir.io.read_image` opens (TIFF, PNG, JPEG, ``.npy``) with
comir's channel convention (channels last). A TIFF whose first series holds several
resolution levels (a pyramidal OME-TIFF, tifffile ``series[0].levels``) becomes one
multiscale layer, largest level first. Three- or four-channel 8-bit images are shown as
RGB(A); other multichannel images as one layer per channel (``channel_axis``).

The writer stores an image layer, e.g. a CoMIR added by the Register widget, as float32
TIFF or ``.npy`` (:func:`comir.io.write_image`, atomic), channels last, as
``comir embed`` writes CoMIRs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
WRITE_SUFFIXES = (".tif", ".tiff", ".npy")


def get_reader(path: str | os.PathLike | list):
    """napari reader hook: a function reading ``path`` when comir reads it, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if Path(str(path)).suffix.lower() not in SUFFIXES:
        return None
    return read_layers


def read_layers(path: str | os.PathLike | list) -> list[tuple]:
    """napari layer data ``[(data, meta, "image")]`` of one image file.

    ``data`` is a list of arrays (largest first) for a pyramidal TIFF, else one array.
    """
    path = Path(str(path[0] if isinstance(path, list) else path))
    levels = _tiff_levels(path) if path.suffix.lower() in (".tif", ".tiff") else None
    if levels is None:
        from comir.io import read_image

        levels = [read_image(path)]
    meta = _meta(levels[0], path.stem)
    if len(levels) > 1:
        meta["multiscale"] = True
        return [(levels, meta, "image")]
    return [(levels[0], meta, "image")]


def _tiff_levels(path: Path) -> list[np.ndarray] | None:
    """Resolution levels of the first series as ``(H, W[, C])`` arrays; None for a
    single-level TIFF (read by :func:`comir.io.read_image` then)."""
    import tifffile

    from comir.errors import ComirError

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            if len(series.levels) < 2:
                return None
            return [_channels_last(lv.asarray(), lv.axes) for lv in series.levels]
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        raise ComirError(f"{path}: unreadable TIFF ({exc}); check the file") from None


def _channels_last(arr: np.ndarray, axes: str) -> np.ndarray:
    """``(H, W[, C])`` of a tifffile level with axes like ``YX``, ``YXS``, ``CYX``."""
    axes = axes.upper()
    keep = [i for i, a in enumerate(axes) if a in "YX"]
    other = [i for i, a in enumerate(axes) if a not in "YX" and arr.shape[i] > 1]
    squeeze = tuple(i for i, a in enumerate(axes) if a not in "YX" and arr.shape[i] == 1)
    if len(other) > 1:
        from comir.errors import ComirError

        raise ComirError(
            f"image with axes {axes} {arr.shape}: comir reads 2-D images with channels"
        )
    arr = np.transpose(arr, keep + other + list(squeeze))
    return arr.reshape(arr.shape[:3] if other else arr.shape[:2])


def _meta(img: np.ndarray, name: str) -> dict:
    """Layer options: RGB for 8-bit 3/4-channel data, one layer per channel otherwise."""
    if img.ndim == 2 or img.shape[2] == 1:
        return {"name": name}
    if img.shape[2] in (3, 4) and img.dtype == np.uint8:
        return {"name": name, "rgb": True}
    return {"name": [f"{name} [{i}]" for i in range(img.shape[2])], "channel_axis": 2}


def write_comir(path: str, data, meta: dict) -> list[str]:
    """napari single-layer writer: ``data`` as float32 ``.tif``/``.npy``; returns ``[path]``.

    Layers of a multichannel CoMIR added by the Register widget are ``(L, H, W)`` and are
    written back as ``(H, W, L)``; multiscale layers write their largest level.
    """
    from comir.errors import ComirError
    from comir.io import write_image

    if Path(path).suffix.lower() not in WRITE_SUFFIXES:
        raise ComirError(f"{path}: CoMIRs are written as {', '.join(WRITE_SUFFIXES)}")
    arr = np.asarray(data[0] if meta.get("multiscale") else data)
    if arr.ndim == 3 and not meta.get("rgb") and arr.shape[0] < min(arr.shape[1:]):
        arr = np.moveaxis(arr, 0, 2)
    out = write_image(path, arr.astype(np.float32, copy=False))
    return [str(out)]
