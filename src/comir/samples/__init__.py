"""Bundled real multimodal sample data and the shipped sample models.

Two small scenes ship inside the package (see ``PROVENANCE.md`` next to this file; rebuilt
by ``scripts/prepare_samples.py``), each one multichannel uint16 TIFF in the ``channels``
layout, where modality A and B are channel selections of the same file:

* ``sentinel2``: Sentinel-2 10 m scene, 300 × 300, channels R, G, B, NIR (reflectance ×
  10000, from PyPI ``spyndex``); A = RGB (``"0:3"``), B = NIR (``"3"``), the same task and
  layout as the Zurich Summer data used in the CoMIR paper (Pielawski et al. 2020).
* ``ihc``: immunohistochemistry of colonic glands, 512 × 512, channels haematoxylin and DAB
  separated by colour deconvolution (Ruifrok & Johnston 2001) from scikit-image's
  ``immunohistochemistry`` image; A = haematoxylin (``"0"``), B = DAB (``"1"``).

Examples
--------
>>> from comir import samples
>>> s = samples.sample("sentinel2")
>>> s["a"].shape, s["b"].shape, s["norm"]
((300, 300, 3), (300, 300, 1), 'bits:13')
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import numpy as np

from comir.errors import ComirError

_HERE = Path(__file__).resolve().parent
DATA_DIR = _HERE / "data"
MODELS_DIR = _HERE / "models"
#: ``split`` values of :func:`export_sample` -> half of the scene (columns).
SPLITS = {"left": "left", "right": "right", "train": "left", "holdout": "right"}

__all__ = ["SPLITS", "export_sample", "list_samples", "model_dir", "sample", "sample_path"]


@cache
def _manifest() -> dict[str, dict]:
    path = DATA_DIR / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ComirError(
            f"{path}: bundled sample manifest unreadable ({exc}); reinstall comir or run "
            "scripts/prepare_samples.py"
        ) from None


def list_samples() -> list[str]:
    """Names of the bundled samples, sorted (``["ihc", "sentinel2"]``)."""
    return sorted(_manifest())


def _entry(name: str) -> dict:
    m = _manifest()
    if name not in m:
        raise ComirError(f"unknown sample {name!r}; available samples: {', '.join(sorted(m))}")
    return m[name]


def sample_path(name: str) -> Path:
    """Path of the stored multichannel TIFF of sample ``name``."""
    path = DATA_DIR / _entry(name)["file"]
    if not path.is_file():
        raise ComirError(
            f"{path}: bundled sample file missing; reinstall comir or run scripts/prepare_samples.py"
        )
    return path


def sample(name: str) -> dict:
    """Load a bundled sample.

    Parameters
    ----------
    name : str
        One of :func:`list_samples`.

    Returns
    -------
    dict
        ``a``: modality A, ``(H, W, Ca)`` uint16; ``b``: modality B, ``(H, W, Cb)`` uint16;
        ``raw``: the stored ``(H, W, C)`` array; ``layout`` (``"channels"``), ``a_spec``,
        ``b_spec`` (channel selections of ``raw``), ``norm`` (the :func:`comir.io.normalize`
        spec that maps the data to about [0, 1]), ``description``, ``channels`` (channel
        names), ``path`` (the stored file).
    """
    from comir.io import parse_channels, read_image, select_channels

    entry = _entry(name)
    path = sample_path(name)
    raw = read_image(path)
    n_ch = raw.shape[2] if raw.ndim == 3 else 1
    a = select_channels(raw, parse_channels(entry["a_spec"], n_ch, str(path)))
    b = select_channels(raw, parse_channels(entry["b_spec"], n_ch, str(path)))
    return {
        "a": np.ascontiguousarray(a),
        "b": np.ascontiguousarray(b),
        "raw": raw,
        "layout": entry["layout"],
        "a_spec": entry["a_spec"],
        "b_spec": entry["b_spec"],
        "norm": entry["norm"],
        "description": entry["description"],
        "channels": list(entry["channels"]),
        "path": path,
    }


def split_columns(width: int, split: str | None) -> slice:
    """Column range of ``split`` (``None``: all; ``left``/``train``: ``[0, W//2)``; else the rest)."""
    if split is None:
        return slice(0, width)
    if split not in SPLITS:
        raise ComirError(
            f"unknown split {split!r}; use one of {', '.join(SPLITS)} (or none for the whole scene)"
        )
    half = width // 2
    return slice(0, half) if SPLITS[split] == "left" else slice(half, width)


def export_sample(name: str, out_dir: str | os.PathLike, split: str | None = None) -> Path:
    """Write sample ``name`` as a training folder for ``comir train --layout channels``.

    Parameters
    ----------
    name : str
        One of :func:`list_samples`.
    out_dir : path
        Folder to write ``<name>.tif`` (or ``<name>_<split>.tif``) into; created if needed.
    split : {None, "left", "right", "train", "holdout"}
        ``None`` writes the whole scene; ``left``/``train`` the columns ``[0, W//2)`` and
        ``right``/``holdout`` the columns ``[W//2, W)``, so one can train on one half and
        validate or evaluate on the other (the two never overlap).

    Returns
    -------
    Path
        ``out_dir``; use it with the sample's ``layout``, ``a_spec``, ``b_spec`` and ``norm``.
    """
    from comir.io import write_image

    raw = sample(name)["raw"]
    cols = split_columns(raw.shape[1], split)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ComirError(f"{out_dir}: exists and is not a folder; choose another output folder")
    fname = f"{name}.tif" if split is None else f"{name}_{split}.tif"
    write_image(out_dir / fname, np.ascontiguousarray(raw[:, cols]))
    return out_dir


def model_dir(name: str) -> Path:
    """Folder of the model shipped for sample ``name`` (``config.json`` + ``model.safetensors``).

    Raises
    ------
    ComirError
        Unknown sample, or no model shipped for it.
    """
    _entry(name)
    path = MODELS_DIR / name
    missing = [f for f in ("config.json", "model.safetensors") if not (path / f).is_file()]
    if missing:
        raise ComirError(
            f"{path}: no shipped model for sample {name!r} ({', '.join(missing)} missing); "
            f"train one with `comir train` on `comir.samples.export_sample({name!r}, DIR)`"
        )
    return path
