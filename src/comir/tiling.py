"""Tile layout of tiled inference: the network's exact context, tile origins and weights.

Large images are split into equal tiles of at most ``tile × tile`` px whose origins lie
on the network's pooling grid (multiples of ``2 ** len(down_layers)``) of the image
reflect-padded at the bottom/right exactly as the encoder pads a whole image, so every
tile sees the same pixels and pooling cells as the whole-image pass. Along each axis the
fewest tiles that keep the overlap are used, all of one size (:func:`_layout`; 2048 px
with ``tile`` 1024 and the ``small`` preset's 136 px: 3 tiles of 776 px, 1.29× the image
pixels computed instead of 2.25× with the earlier fixed stride). Tile outputs are
blended with separable weights that are zero within the network's context
(:func:`receptive_halo`) of a tile edge that lies inside the image and rise with a
raised cosine over the rest of the overlap, normalised to sum to 1 (:func:`plan_tiles`).
:func:`comir.infer.run_tiles` runs the plan; the exactness argument is in
:mod:`comir.embed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from comir.errors import ComirError

__all__ = [
    "TilePlan",
    "exact_overlap",
    "pad_index",
    "plan_tiles",
    "receptive_halo",
    "receptive_radius",
]


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


def receptive_halo(config) -> tuple[int, int]:
    """Exact context (px) a :class:`~comir.model.Tiramisu` output pixel needs: ``(before,
    after)`` along either axis, the largest over the positions within a pooling cell.

    Follows the dependency interval of one output pixel back through the network (Jégou
    et al. 2017, Sec. 3: 3×3 convs widen it by one cell of their level, a 2×2 max-pool
    maps level cells ``[a, b]`` to ``[2a, 2b + 1]`` of the finer level, a nearest ×2
    upsample maps ``[a, b]`` to ``[⌊a/2⌋, ⌊b/2⌋]`` of the coarser one; skips and dense
    blocks take the hull of their paths). Output pixel ``p`` depends on input pixels
    ``p − before … p + after`` at most, so tiles on the pooling grid that overlap by
    ``before + after`` reproduce the whole-image output (measured: ``small`` preset, a
    perturbed input row changes output rows exactly 67 px away, as computed).
    """
    down, up = tuple(config.down_layers), tuple(config.resolved_up_layers)
    depth = len(down)

    def down_out(j: int, lo: int, hi: int) -> tuple[int, int]:  # output of down block j
        lo, hi = lo - down[j], hi + down[j]
        if j == 0:
            return lo - 1, hi + 1  # first 3×3 conv
        return down_out(j - 1, 2 * lo, 2 * hi + 1)  # max-pool of transition down j − 1

    def up_out(j: int, lo: int, hi: int) -> tuple[int, int]:  # output of up block at level j
        lo, hi = lo - up[depth - 1 - j], hi + up[depth - 1 - j]
        skip = down_out(j, lo, hi)
        lo, hi = (lo - 1) // 2, (hi + 1) // 2  # 3×3 conv of transition up, then upsample
        if j + 1 == depth:
            n = config.bottleneck_layers
            deep = down_out(depth - 1, 2 * (lo - n), 2 * (hi + n) + 1)
        else:
            deep = up_out(j + 1, lo, hi)
        return min(skip[0], deep[0]), max(skip[1], deep[1])

    before = after = 0
    for p in range(2**depth):
        lo, hi = up_out(0, p, p)
        before, after = max(before, p - lo), max(after, hi - p)
    return int(before), int(after)


def exact_overlap(config) -> int:
    """Smallest tile overlap on the pooling grid with tiled == whole-image output:
    ``before + after`` of :func:`receptive_halo` rounded up to ``2 ** len(down_layers)``
    (136 px for the ``small`` preset, 1792 px for ``paper``)."""
    mult = 2 ** len(config.down_layers)
    return -(-sum(receptive_halo(config)) // mult) * mult


def _window(n: int, lead: bool, trail: bool, ramp: int, margins: tuple[int, int]) -> np.ndarray:
    """1-D blending weights ``(n,)`` of a tile; ``lead``/``trail``: that edge is interior.

    Zero within ``margins[0]`` px of an interior leading edge and ``margins[1]`` px of an
    interior trailing edge, then a raised cosine over ``ramp`` px.
    """
    d = np.arange(n, dtype=np.float64)

    def rise(dist: np.ndarray, margin: int) -> np.ndarray:
        t = np.clip((dist - margin + 0.5) / ramp, 0.0, 1.0)
        return np.sin(0.5 * math.pi * t) ** 2

    w = np.ones(n)
    if lead:
        w *= rise(d, margins[0])
    if trail:
        w *= rise(n - 1 - d, margins[1])
    return w


def _layout(size: int, tile: int, overlap: int, mult: int) -> tuple[int, list[int]]:
    """Balanced tiles along one padded axis: ``(tile size, origins)``.

    The fewest tiles of at most ``tile`` px that overlap by at least ``overlap``, all of
    one size (one batch shape) and on the pooling grid; the spare pixels are spread over
    every tile instead of piling up in a last tile that overlaps its neighbour by most of
    its size.
    """
    if size <= tile:
        return size, [0]
    n = -(-(size - overlap) // (tile - overlap))
    stride = -(-(size - overlap) // (n * mult)) * mult
    t = min(stride + overlap, size)
    return t, sorted({min(k * stride, size - t) for k in range(n)})


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
    overlap : int
        Smallest overlap of neighbouring tiles.
    margin : int
        Widest zero-weight band at an interior tile edge (``max(margins)``).
    margins : (int, int)
        Zero-weight bands at interior leading / trailing tile edges.
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
    margins: tuple[int, int] = (0, 0)

    @property
    def pixels(self) -> int:
        """Pixels the network computes for this plan (tiles × tile area)."""
        return len(self.ys) * len(self.xs) * self.th * self.tw


def _normalised_windows(
    starts: list[int], n: int, size: int, ramp: int, margins: tuple[int, int]
) -> list[np.ndarray]:
    ws = [_window(n, s > 0, s + n < size, ramp, margins) for s in starts]
    total = np.zeros(size)
    for s, w in zip(starts, ws):
        total[s : s + n] += w
    return [(w / total[s : s + n]).astype(np.float32) for s, w in zip(starts, ws)]


def plan_tiles(
    height: int, width: int, tile: int, overlap: int, multiple: int, halo: int | tuple[int, int]
) -> TilePlan:
    """Lay out tiles for an ``height × width`` image (see the module docstring).

    ``tile`` (the largest tile side) and ``overlap`` are rounded up to ``multiple``; tiles
    are balanced along each axis (:func:`_layout`). ``halo``: the network's ``(before,
    after)`` context (:func:`receptive_halo`; an int for both). ``overlap ≥ before +
    after`` gives an exact result (zero weight within the halo of interior edges),
    smaller overlaps an approximate one (a smooth ramp over a quarter of the overlap).
    """
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ComirError(f"invalid tiling tile={tile}, overlap={overlap}; need tile > overlap >= 0")
    mult = int(multiple)
    tile = -(-tile // mult) * mult
    overlap = min(-(-overlap // mult) * mult, tile - mult)
    before, after = (halo, halo) if isinstance(halo, int | np.integer) else halo
    if overlap >= before + after:
        margins, ramp = (int(before), int(after)), max(overlap - before - after, 1)
    else:  # approximate: keep a smooth ramp over a quarter of the overlap
        ramp = max(overlap // 4, 1)
        margin = max((overlap - ramp) // 2, 0)
        margins = (margin, margin)
    hp, wp = height + (-height) % mult, width + (-width) % mult
    th, ys = _layout(hp, tile, overlap, mult)
    tw, xs = _layout(wp, tile, overlap, mult)
    return TilePlan(
        ys=ys,
        xs=xs,
        th=th,
        tw=tw,
        hp=hp,
        wp=wp,
        wy=_normalised_windows(ys, th, hp, ramp, margins),
        wx=_normalised_windows(xs, tw, wp, ramp, margins),
        overlap=overlap,
        margin=max(margins),
        margins=margins,
    )
