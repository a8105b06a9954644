"""OME-Zarr levels for :mod:`comir.slide.pyramid` (NGFF 0.4 ``multiscales`` in ``.zattrs``,
0.5 under ``attrs["ome"]``), read chunk by chunk through zarr."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.slide.tiff import UNITS_UM


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


def open_zarr(path: Path) -> tuple[list, np.dtype, float | None, Callable]:
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


def is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in (".zattrs", ".zgroup", "zarr.json"))
