"""Intensity statistics of the training inputs, and the out-of-distribution warning.

A model only works on inputs that look like its training data *after* input preparation
(channel selection and normalisation, :meth:`comir.data.DataSpec.prepare`). A Sentinel-2
model trained with ``bits:13`` (reflectance × 10000 in 13-bit range) applied to 8-bit
RGB/NIR images of another satellite sees values about ten times darker than anything it
was trained on and registers nothing. So :func:`comir.train.train` records, per modality and
channel, the statistics of the prepared training inputs in the run's ``config.json``
(key :data:`STATS_KEY`)::

    "input_stats": {"a": {"mean": [...], "std": [...], "p1": [...], "p50": [...],
                          "p99": [...], "pixels": N}, "b": {...}}

and inference (:class:`comir.embed.ComirModel`) checks every input image against them.

Rule (per channel; an input is flagged when any channel is): with ``p1``, ``p99`` the
training 1st and 99th percentiles and ``m``, ``q`` the input's median and 99th percentile,

* location: ``m < p1 − |p1|/2`` or ``m > p99 + |p99|/2``, i.e. more than half of the
  input's values lie outside the central 98 % of the training values widened by half their
  magnitude (for non-negative intensities: below half the training 1st percentile, or
  above 1.5 × its 99th percentile);
* scale: ``q < p99 / 64`` or ``q > 64 · p99`` (when ``p99 > 0``): even the brightest
  values are off by more than 64 ×, which catches a wrong bit depth where the training
  data reach down to 0 (so the location rule has no lower bound).

Median and 99th percentile are robust to a few saturated or dead pixels. Measured on the
bundled samples: no 32–128 px patch of the held-out halves is flagged (their medians stay
above the training ``p1`` and below ``p99``; the sparsest, DAB, has patches whose ``q`` is
23 × below the training ``p99``), while the same held-out scenes stored as 8-bit are
flagged in every modality (the Sentinel-2 8-bit medians lie 2–12 × below the training
``p1``). Runs without statistics (older ``config.json``) are not checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from comir.errors import warn

__all__ = [
    "MAX_STAT_PIXELS",
    "STATS_KEY",
    "channel_stats",
    "check_input",
    "deviation",
    "training_stats",
]

#: Key of the statistics in a run's ``config.json``.
STATS_KEY = "input_stats"
#: Pixels per modality used for the statistics; larger sets are subsampled with a uniform
#: stride (the bundled samples, 45 000 and 131 072 px, are used whole).
MAX_STAT_PIXELS = 2**22
#: Pixels of an inference input used for its check (strided subsample of larger images).
CHECK_PIXELS = 2**18
#: Factor of the scale rule (module docstring).
SCALE_FACTOR = 64.0


def _flat_sample(images: Sequence[np.ndarray], max_pixels: int) -> np.ndarray:
    """``(N, C)`` float32 pixels of ``images`` ``(H_i, W_i, C)``, every ``s``-th pixel so
    that ``N <= max_pixels``."""
    total = sum(im.shape[0] * im.shape[1] for im in images)
    stride = max(1, math.ceil(total / max_pixels))
    return np.concatenate([im.reshape(-1, im.shape[2])[::stride] for im in images])


def channel_stats(images: Sequence[np.ndarray], max_pixels: int = MAX_STAT_PIXELS) -> dict:
    """Per-channel ``mean``, ``std``, ``p1``, ``p50``, ``p99`` of prepared images.

    Parameters
    ----------
    images : sequence of ndarray, each ``(H_i, W_i, C)``
        Network inputs of one modality (equal ``C``).
    max_pixels : int
        At most this many pixels enter the statistics (uniform stride over all images).

    Returns
    -------
    dict
        Lists of ``C`` floats (6 significant digits) and ``pixels``, the count used.
    """
    x = _flat_sample(images, max_pixels)
    pct = np.percentile(x, [1, 50, 99], axis=0)
    stats = {
        "mean": x.mean(0, dtype=np.float64),
        "std": x.std(0, dtype=np.float64),
        "p1": pct[0],
        "p50": pct[1],
        "p99": pct[2],
    }
    out: dict = {k: [float(f"{v:.6g}") for v in vals] for k, vals in stats.items()}
    out["pixels"] = int(x.shape[0])
    return out


def training_stats(pairs) -> dict:
    """``{"a": channel_stats(A images), "b": channel_stats(B images)}`` of a
    :class:`comir.data.PairSet` (prepared training images)."""
    return {"a": channel_stats(pairs.images_a), "b": channel_stats(pairs.images_b)}


def deviation(x: np.ndarray, stats: dict) -> str | None:
    """Describe how a prepared input leaves the training range, or ``None`` if it does not.

    Parameters
    ----------
    x : ndarray, ``(H, W, C)``
        Prepared network input of one modality.
    stats : dict
        That modality's :func:`channel_stats`.

    Returns
    -------
    str or None
        ``"channel c: median m, 99th percentile q; training 1–99 % range p1–p99"`` for the
        first channel breaking the rule of the module docstring.
    """
    s = max(1, math.ceil(math.sqrt(x.shape[0] * x.shape[1] / CHECK_PIXELS)))
    flat = np.asarray(x[::s, ::s], dtype=np.float32).reshape(-1, x.shape[2])
    m, q = np.percentile(flat, [50, 99], axis=0)
    p1, p99 = np.asarray(stats["p1"], float), np.asarray(stats["p99"], float)
    if p1.shape != m.shape:
        return None  # statistics of another channel count: nothing to compare
    location = (m < p1 - 0.5 * np.abs(p1)) | (m > p99 + 0.5 * np.abs(p99))
    pos = p99 > 0
    scale = pos & ((q * SCALE_FACTOR < p99) | (q > SCALE_FACTOR * np.where(pos, p99, 0.0)))
    bad = np.flatnonzero(location | scale)
    if bad.size == 0:
        return None
    c = int(bad[0])
    return (
        f"channel {c}: median {m[c]:.3g}, 99th percentile {q[c]:.3g}; training 1–99 % range "
        f"{p1[c]:.3g}–{p99[c]:.3g}"
    )


def _norm_hint(norm: str) -> str:
    if norm.startswith("bits:"):
        bits = int(norm.split(":", 1)[1])
        return f"{norm}, i.e. stored value / {2**bits - 1}"
    return norm or "an unknown normalisation"


def check_input(
    x: np.ndarray, stats: dict | None, modality: str, where: str = "", norm: str = ""
) -> bool:
    """Warn (one line, :func:`comir.errors.warn`) when ``x`` lies outside the training data.

    Parameters
    ----------
    x : ndarray, ``(H, W, C)``
        Prepared input of ``modality``.
    stats : dict or None
        The run's ``input_stats`` (both modalities); ``None``: no check.
    modality : {"a", "b"}
    where : str
        Name of the input (file) in the warning.
    norm : str
        The model's normalisation of this modality, named in the suggested fix.

    Returns
    -------
    bool
        Whether a warning was issued.
    """
    if not stats or modality not in stats:
        return False
    what = deviation(x, stats[modality])
    if what is None:
        return False
    warn(
        f"{where or 'input image'}: modality {modality.upper()} intensities are far outside "
        f"the model's training data ({what}); check --norm (the model was trained with "
        f"{_norm_hint(norm)}) or train on this data"
    )
    return True
