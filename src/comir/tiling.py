"""Tile layout of tiled inference: receptive radius, tile origins and blending weights.

Large images are split into ``tile × tile`` windows whose origins lie on the network's
pooling grid (multiples of ``2 ** len(down_layers)``) of the image reflect-padded at the
bottom/right exactly as the encoder pads a whole image, so every tile sees the same
pixels and pooling cells as the whole-image pass. Tile outputs are blended with separable
weights that are zero within ``margin`` pixels of a tile edge that lies inside the image
and rise with a raised cosine over the rest of the overlap, normalised to sum to 1
(:func:`plan_tiles`). :meth:`comir.embed.ComirModel.embed_rows` runs the plan; the
exactness argument is in :mod:`comir.embed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from comir.errors import ComirError

__all__ = ["TilePlan", "pad_index", "plan_tiles", "receptive_radius"]


def receptive_radius(config) -> int:
    """Upper bound of the receptive-field radius (px) of a :class:`~comir.model.Tiramisu`.

    Follows the deepest path: each 3×3 conv at scale ``s`` adds ``s``, each 2×2 max-pool
    adds ``s`` and doubles the scale, each nearest ×2 upsample adds ``s/2`` and halves it.
    """
    r, s = 1, 1  # first 3×3 conv
    for n in config.down_layers:
        r += n * s + s
        s *= 2
    r += config.bottleneck_layers * s
    up = config.up_layers if config.up_layers is not None else tuple(reversed(config.down_layers))
    for n in up:
        s //= 2
        r += s + s + n * s  # upsample, 3×3 conv, dense block
    return int(r)


def _window(n: int, lead: bool, trail: bool, overlap: int, margin: int) -> np.ndarray:
    """1-D blending weights ``(n,)`` of a tile; ``lead``/``trail``: that edge is interior."""
    d = np.arange(n, dtype=np.float64)
    ramp = max(overlap - 2 * margin, 1)

    def rise(dist: np.ndarray) -> np.ndarray:
        t = np.clip((dist - margin + 0.5) / ramp, 0.0, 1.0)
        return np.sin(0.5 * math.pi * t) ** 2

    w = np.ones(n)
    if lead:
        w *= rise(d)
    if trail:
        w *= rise(n - 1 - d)
    return w


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def pad_index(n_out: int, n: int, mode: str) -> np.ndarray:
    """Source index of each of ``n_out >= n`` positions after bottom/right padding.

    Matches ``F.pad(..., mode="reflect" | "replicate")`` as used by the encoder.
    """
    i = np.arange(n_out)
    if mode == "reflect":
        return np.where(i < n, i, 2 * (n - 1) - i)
    return np.minimum(i, n - 1)


@dataclass
class TilePlan:
    """Tile layout of one axis pair: origins, sizes and normalised blending weights.

    Attributes
    ----------
    ys, xs : list of int
        Tile origins in the padded image (multiples of the pooling factor).
    th, tw : int
        Tile height and width.
    hp, wp : int
        Padded image size (multiples of the pooling factor).
    wy, wx : list of ndarray
        Per-tile 1-D weights ``(th,)``/``(tw,)``; ``Σ_i wy[i]`` is 1 on every row and
        ``Σ_j wx[j]`` on every column, so the 2-D weights ``wy ⊗ wx`` sum to 1.
    overlap, margin : int
        Effective overlap and the zero-weight band at interior tile edges.
    """

    ys: list[int]
    xs: list[int]
    th: int
    tw: int
    hp: int
    wp: int
    wy: list[np.ndarray]
    wx: list[np.ndarray]
    overlap: int
    margin: int


def _normalised_windows(
    starts: list[int], n: int, size: int, overlap: int, margin: int
) -> list[np.ndarray]:
    ws = [_window(n, s > 0, s + n < size, overlap, margin) for s in starts]
    total = np.zeros(size)
    for s, w in zip(starts, ws):
        total[s : s + n] += w
    return [(w / total[s : s + n]).astype(np.float32) for s, w in zip(starts, ws)]


def plan_tiles(
    height: int, width: int, tile: int, overlap: int, multiple: int, radius: int
) -> TilePlan:
    """Lay out tiles for an ``height × width`` image (see the module docstring).

    ``tile`` is rounded up to ``multiple``, the stride down to it; ``overlap > 2 * radius``
    gives an exact result (margin = radius), smaller overlaps an approximate one.
    """
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ComirError(f"invalid tiling tile={tile}, overlap={overlap}; need tile > overlap >= 0")
    mult = int(multiple)
    tile = -(-tile // mult) * mult
    stride = max(mult, (tile - overlap) // mult * mult)
    overlap = tile - stride
    if overlap > 2 * radius:
        margin = radius
    else:  # approximate: keep a smooth ramp over a quarter of the overlap
        ramp = max(overlap // 4, 1)
        margin = max((overlap - ramp) // 2, 0)
    hp, wp = height + (-height) % mult, width + (-width) % mult
    th, tw = min(tile, hp), min(tile, wp)
    ys, xs = _starts(hp, th, stride), _starts(wp, tw, stride)
    return TilePlan(
        ys=ys,
        xs=xs,
        th=th,
        tw=tw,
        hp=hp,
        wp=wp,
        wy=_normalised_windows(ys, th, hp, overlap, margin),
        wx=_normalised_windows(xs, tw, wp, overlap, margin),
        overlap=overlap,
        margin=margin,
    )
