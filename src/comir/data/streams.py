"""Seeded streams of augmented patch batches for training (:class:`PatchStream`,
:func:`make_loader`), their per-epoch, per-rank seeds (:func:`stream_seed`) and fixed
validation batches (:func:`fixed_batches`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from comir.data.augment import AugmentConfig, augment_batch, rotation_grid
from comir.data.loading import PairSet
from comir.errors import ComirError


def stream_seed(seed: int, step: int, purpose: int = 0, rank: int = 0) -> int:
    """Seed derived from ``(seed, purpose, step, rank)``.

    ``purpose`` 0 is the data stream of the epoch starting at ``step`` (so resuming
    replays it exactly), 1 the C4 rotations, 2 the global RNG (dropout). ``rank`` is the
    process of a data-parallel run (:mod:`comir.distributed`): every rank draws its own
    stream; rank 0 draws exactly the single-process stream.
    """
    entropy = [int(seed), int(purpose), int(step)] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _stream_seed(seed: int, worker: int) -> int:
    """Independent 63-bit seed per (seed, DataLoader worker)."""
    return int(np.random.SeedSequence([seed, worker]).generate_state(1, np.uint64)[0] >> 1)


def _check_sizes(pairs: PairSet, patch_size: int, footprint: int | None = None) -> None:
    """Every image holds a crop of ``footprint`` px (the patch at the smallest scale)."""
    if len(pairs) == 0:
        raise ComirError("no image pairs to draw patches from; check the data folder")
    if patch_size < 1:
        raise ComirError(f"patch size must be positive, got {patch_size}")
    need = footprint or patch_size
    for pair, img in zip(pairs.pairs, pairs.images_a):
        if min(img.shape[:2]) < need:
            fix = "lower --patch-size or remove the file" if need == patch_size else (
                f"a patch of {patch_size} px at the smallest scale spans {need} px: raise the "
                "lower end of --scale-range, lower --patch-size or remove the file")  # fmt: skip
            what = f"the patch size {need}" if need == patch_size else f"{need} px"
            raise ComirError(
                f"{pair.path_a}: image ({pair.name}) is {img.shape[0]}×{img.shape[1]}, smaller "
                f"than {what}; {fix}"
            )


@dataclass
class _Sampler:
    """Crop positions with images drawn in proportion to their area."""

    sizes: Tensor  # (N, 2) int64 (H, W)
    weights: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.weights = (self.sizes[:, 0] * self.sizes[:, 1]).to(torch.float64)

    def draw(
        self, n: int, patch_size: int | Tensor, g: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Image index, top row and left column of ``n`` crops, each ``(n,)`` int64.

        ``patch_size``: one crop side for all, or ``(n,)`` int64 sides, one per crop.
        """
        idx = torch.multinomial(self.weights, n, replacement=True, generator=g)
        side = patch_size[:, None] if isinstance(patch_size, Tensor) else patch_size
        room = self.sizes[idx] - side + 1  # (n, 2) number of valid offsets
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        off = torch.minimum((u * room).long(), room - 1)
        return idx, off[:, 0], off[:, 1]


def _atlas(pairs: PairSet, margin: int) -> tuple[Tensor, Tensor]:
    """All images, padded symmetrically by ``margin`` and stacked top to bottom.

    Returns the ``(1, Ca + Cb, sum of padded heights, widest)`` float32 tensor and the
    first row of each image in it, ``(N,)`` int64. One ``grid_sample`` call on it serves a
    whole batch without copying windows out first.
    """
    m = margin
    shapes = [(im.shape[0] + 2 * m, im.shape[1] + 2 * m) for im in pairs.images_a]
    channels = pairs.images_a[0].shape[2] + pairs.images_b[0].shape[2]
    atlas = np.zeros((sum(h for h, _ in shapes), max(w for _, w in shapes), channels), np.float32)
    row0 = torch.tensor(np.cumsum([0] + [h for h, _ in shapes[:-1]]), dtype=torch.int64)
    for r0, (h, w), ia, ib in zip(row0.tolist(), shapes, pairs.images_a, pairs.images_b):
        both = np.concatenate([ia, ib], axis=2)
        atlas[r0 : r0 + h, :w] = np.pad(both, ((m, m), (m, m), (0, 0)), "symmetric")
    return torch.from_numpy(atlas).permute(2, 0, 1)[None].contiguous(), row0


class PatchStream(IterableDataset):
    """Endless stream of augmented, aligned patch batches.

    Each batch: images drawn with probability proportional to their area, the same
    random ``P×P`` crop for both modalities, then (per :class:`AugmentConfig`) horizontal
    flip and rotation by a uniform angle in [-180°, 180°], both done for the whole batch
    by one bilinear ``grid_sample`` call. The corners a rotated crop needs come from the
    real surroundings of the crop, and from symmetric (reflect) padding of the image
    where they leave it. With a scale range, each sample's scale s is drawn first and its
    crop is ``⌈P / s⌉`` px, placed uniformly in the image (so patches at every scale reach
    the whole image), then area-averaged to ``P×P``. Per-modality intensity changes
    follow (:func:`augment_batch`). This is the training input of CoMIR (Pielawski,
    Wetzer et al., NeurIPS 2020; see ``docs/architecture.md``).

    The stream is deterministic for a ``seed``; each DataLoader worker gets its own.
    All images are held once more, padded, in one float32 tensor.

    Parameters
    ----------
    pairs : PairSet
    patch_size : int
        ``P``; every image must be at least this large.
    batch_size : int
        ``B``.
    augment : AugmentConfig, optional
        ``None``: crops only (no flip, rotation or intensity changes).
    seed : int

    Yields
    ------
    (Tensor, Tensor)
        ``xa`` ``(B, Ca, P, P)`` and ``xb`` ``(B, Cb, P, P)`` float32.
    """

    def __init__(
        self,
        pairs: PairSet,
        patch_size: int,
        batch_size: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        scaled = augment is not None and augment.scaled
        # the largest crop, a patch at the smallest scale; images must hold it
        self.footprint = (
            math.ceil(patch_size / min(1.0, augment.scale_min)) if scaled else int(patch_size)
        )
        _check_sizes(pairs, patch_size, self.footprint)
        if batch_size < 1:
            raise ComirError(f"batch size must be positive, got {batch_size}")
        self.patch_size = int(patch_size)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.seed = int(seed)
        self.channels_a = pairs.images_a[0].shape[2]
        # Half the growth of a rotated patch's bounding box, plus one pixel for bilinear:
        # every sample point of any rotation then lies inside the padded image.
        self.margin = math.ceil((math.sqrt(2.0) - 1.0) * self.footprint / 2.0) + 1
        self._atlas, self._row0 = _atlas(pairs, self.margin)
        self._sampler = _Sampler(torch.tensor([im.shape[:2] for im in pairs.images_a]))

    def _scales(self, generator: torch.Generator) -> Tensor | None:
        """Log-uniform scale per sample ``(B,)`` float64, None without a scale range."""
        cfg = self.augment
        if cfg is None or not cfg.scaled:
            return None
        lo, hi = math.log(cfg.scale_min), math.log(cfg.scale_max)
        v = torch.rand(self.batch_size, generator=generator, dtype=torch.float64)
        return torch.exp(lo + (hi - lo) * v)

    def _footprints(self, scale: Tensor | None) -> int | Tensor:
        """Crop side each sample needs: ``P``, or ``⌈P / s⌉`` per sample ``(B,)`` int64."""
        if scale is None:
            return self.patch_size
        side = torch.ceil(self.patch_size / scale - 1e-9).to(torch.int64)
        return torch.clamp(side, self.patch_size, self.footprint)

    def _rotated(
        self,
        top: Tensor,
        left: Tensor,
        side: int | Tensor,
        scale: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Flipped / rotated (/ rescaled) crops whose footprint (``side`` px, one or
        ``(B,)``) has top-left ``(top, left)`` in the atlas, ``(B, C, P, P)``."""
        p, b, cfg = self.patch_size, self.batch_size, self.augment
        u = torch.rand(b, 2, generator=generator, dtype=torch.float64)
        angle = (2.0 * u[:, 0] - 1.0) * math.pi if cfg.rotate else torch.zeros(b)
        flip = u[:, 1] < 0.5 if cfg.flip else torch.zeros(b, dtype=torch.bool)
        half = (torch.as_tensor(side, dtype=torch.float64) - 1.0) / 2.0
        centre = torch.stack([left, top], 1).to(torch.float64) + half.reshape(-1, 1)
        _, c, h, w = self._atlas.shape
        k = 1
        if scale is not None:  # k×k sub-samples per pixel, averaged (area filter)
            k = cfg.supersample
            scale = scale * k
        grid = rotation_grid(centre, angle, flip, k * p, h, w, scale).reshape(
            1, b * k * p, k * p, 2
        )
        # Sample points stay inside the padded images, so the padding mode never acts.
        out = F.grid_sample(self._atlas, grid, "bilinear", "zeros", align_corners=False)
        out = out.reshape(c, b, k * p, k * p).transpose(0, 1)
        return F.avg_pool2d(out, k) if k > 1 else out

    def sample_batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw one batch ``(xa (B, Ca, P, P), xb (B, Cb, P, P))`` using ``generator``."""
        p, m, b = self.patch_size, self.margin, self.batch_size
        # Each crop is drawn for its own scale's footprint, so that at fine scales the
        # patch still reaches every part of the image (not only the centre of a crop
        # sized for the smallest scale).
        scale = self._scales(generator)
        side = self._footprints(scale)
        idx, rows, cols = self._sampler.draw(b, side, generator)
        top = self._row0[idx] + rows + m  # crop's top row and left column in the atlas
        left = cols + m
        cfg = self.augment
        if cfg is not None and (cfg.flip or cfg.rotate or cfg.scaled):
            out = self._rotated(top, left, side, scale, generator)
        else:
            crops = [
                self._atlas[0, :, y : y + p, x : x + p] for y, x in zip(top.tolist(), left.tolist())
            ]
            out = torch.stack(crops)
        xa, xb = out[:, : self.channels_a], out[:, self.channels_a :]
        if cfg is not None:
            xa, xb = augment_batch(xa, xb, cfg, generator)
        return xa.contiguous(), xb.contiguous()

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        info = get_worker_info()
        g = torch.Generator().manual_seed(_stream_seed(self.seed, 0 if info is None else info.id))
        while True:
            yield self.sample_batch(g)


def make_loader(
    pairs: PairSet,
    patch_size: int,
    batch_size: int,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless iterator of augmented batches from a :class:`PatchStream`.

    ``workers > 0`` prepares batches in that many persistent background processes (each
    with its own random stream); memory is pinned when CUDA is available.
    """
    stream = PatchStream(pairs, patch_size, batch_size, augment, seed)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)


def fixed_batches(
    pairs: PairSet, patch_size: int, n_batches: int, batch_size: int, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """Deterministic validation batches: random crops (area-weighted), no augmentation.

    Returns
    -------
    list of (Tensor, Tensor)
        ``n_batches`` pairs ``(B, Ca, P, P)``, ``(B, Cb, P, P)``; identical for equal
        arguments.
    """
    _check_sizes(pairs, patch_size)
    p = patch_size
    g = torch.Generator().manual_seed(_stream_seed(seed, 1 << 20))
    sampler = _Sampler(torch.tensor([im.shape[:2] for im in pairs.images_a]))
    out = []
    for _ in range(n_batches):
        idx, rows, cols = sampler.draw(batch_size, p, g)
        crops = [
            (pairs.images_a[i][r : r + p, c : c + p], pairs.images_b[i][r : r + p, c : c + p])
            for i, r, c in zip(idx.tolist(), rows.tolist(), cols.tolist())
        ]
        xa = torch.from_numpy(np.stack([ca for ca, _ in crops])).permute(0, 3, 1, 2)
        xb = torch.from_numpy(np.stack([cb for _, cb in crops])).permute(0, 3, 1, 2)
        out.append((xa.contiguous(), xb.contiguous()))
    return out
