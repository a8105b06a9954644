"""Tiled inference engine: run a :class:`comir.tiling.TilePlan` over an image in row bands.

:meth:`comir.embed.ComirModel.embed_rows` builds the plan (exact overlap from the
network's halo, :func:`comir.tiling.receptive_halo`) and calls :func:`run_tiles` with its
forward pass. One row of tiles is in memory at a time: the prepared input band
``(th, W, C)``, the output accumulator ``(th, W, L)`` and the activations of the tiles of
one forward pass. All tiles of a plan have one size, so the tiles of a row go through the
network as one batch (up to ``batch_pixels`` pixels per pass) in ``channels_last``
layout, which the encoder uses on CPU anyway (no conversion copy); the batch buffer and
the accumulator are allocated once per image and reused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from comir.tiling import TilePlan, pad_index

__all__ = ["TILE_BATCH_PIXELS", "RowSample", "run_tiles"]

#: Pixels encoded per forward pass when tiling (several small tiles share one pass).
TILE_BATCH_PIXELS = 2**20


def _band(read_rows: Callable, rows: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
    """Input rows ``rows`` (padded indices into the image) and columns ``cols`` (None: all)
    as float32 ``(len(rows), W', C)``; a plain slice when no padding is involved."""
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    band = np.asarray(read_rows(r0, r1), dtype=np.float32)
    if not (r1 - r0 == len(rows) and rows[0] == r0 and np.all(np.diff(rows) == 1)):
        band = band[rows - r0]
    return band if cols is None else band[:, cols]


class _Accumulator:
    """Blended output rows ``(th, Wp, L)`` of the current tile row; finished rows are
    written top to bottom and the buffer is shifted in place (no reallocation)."""

    def __init__(self, plan: TilePlan, n_lat: int, height: int, width: int, write_rows) -> None:
        self.acc = np.zeros((plan.th, plan.wp, n_lat), dtype=np.float32)
        self.top, self.height, self.width, self.write_rows = 0, height, width, write_rows

    def flush(self, until: int) -> None:
        """Write rows ``top … until − 1`` (those inside the image) and drop them."""
        stop = min(until, self.height)
        if stop > self.top:
            self.write_rows(self.top, self.acc[: stop - self.top, : self.width])
        shift = until - self.top
        if shift >= self.acc.shape[0]:
            self.acc[:] = 0.0
        elif shift > 0:
            self.acc[:-shift] = self.acc[shift:]
            self.acc[-shift:] = 0.0
        self.top = until


def run_tiles(
    forward: Callable[[torch.Tensor], torch.Tensor],
    read_rows: Callable[[int, int], np.ndarray],
    shape: tuple[int, int],
    write_rows: Callable[[int, np.ndarray], None],
    plan: TilePlan,
    n_lat: int,
    progress=None,
    batch_pixels: int = TILE_BATCH_PIXELS,
) -> TilePlan:
    """Tiled inference of an ``H × W`` image with bounded memory.

    Parameters
    ----------
    forward : callable
        ``(B, C, th, tw)`` float32 tensor -> ``(B, L, th, tw)`` float32 tensor on CPU.
    read_rows : callable
        ``read_rows(r0, r1) -> (r1 - r0, W, C)`` prepared network input.
    shape : (int, int)
        ``(H, W)``.
    write_rows : callable
        ``write_rows(r0, rows)`` receives finished rows ``(n, W, L)`` float32, top to
        bottom, each row exactly once.
    plan : TilePlan
        From :func:`comir.tiling.plan_tiles` for this image.
    n_lat : int
        Output channels ``L``.
    progress : object, optional
        Gets ``update(1)`` per tile.
    batch_pixels : int
        Pixels per forward pass (at least one tile).

    Returns
    -------
    TilePlan
        ``plan``.
    """
    h, w = (int(v) for v in shape)
    # the encoder pads a whole image at the bottom/right the same way (model.Tiramisu)
    mode = "reflect" if plan.hp - h < h and plan.wp - w < w else "replicate"
    row_map = pad_index(plan.hp, h, mode)
    col_map = None if plan.wp == w else pad_index(plan.wp, w, mode)
    acc = _Accumulator(plan, n_lat, h, w, write_rows)
    per_pass = max(1, min(len(plan.xs), batch_pixels // (plan.th * plan.tw)))
    buf = None
    for i, y in enumerate(plan.ys):
        if y > acc.top:
            acc.flush(y)
        band = _band(read_rows, row_map[y : y + plan.th], col_map)  # (th, wp, C)
        if buf is None:
            buf = np.empty((per_pass, plan.th, plan.tw, band.shape[2]), np.float32)
        for k in range(0, len(plan.xs), per_pass):
            cols = plan.xs[k : k + per_pass]
            for j, c in enumerate(cols):
                buf[j] = band[:, c : c + plan.tw]
            # NHWC buffer viewed as NCHW: already channels_last, as the encoder wants it
            x = torch.from_numpy(buf[: len(cols)]).permute(0, 3, 1, 2)
            z = forward(x).permute(0, 2, 3, 1).numpy()  # (b, th, tw, L)
            for j, c in enumerate(cols):
                weight = np.outer(plan.wy[i], plan.wx[k + j])[..., None]
                acc.acc[:, c : c + plan.tw] += z[j] * weight
                if progress is not None:
                    progress.update(1)
    acc.flush(plan.hp)
    return plan


class RowSample:
    """A strided sample of the prepared rows of a streamed image, for its input check.

    Keeps every ``s``-th row and column (about 2**18 pixels of any image), each row once
    although tiles read overlapping bands.
    """

    def __init__(self, h: int, w: int) -> None:
        from comir.input_stats import CHECK_PIXELS

        self.step = max(1, math.ceil(math.sqrt(h * w / CHECK_PIXELS)))
        self.rows: dict[int, np.ndarray] = {}

    def add(self, r0: int, rows: np.ndarray) -> None:
        first = -(-r0 // self.step) * self.step
        for r in range(first, r0 + rows.shape[0], self.step):
            if r not in self.rows:
                self.rows[r] = rows[r - r0, :: self.step].copy()

    def image(self) -> np.ndarray:
        """``(n, m, C)`` sampled pixels in row order."""
        return np.stack([self.rows[r] for r in sorted(self.rows)])
