"""C4 rotation equivariance: the training wrapper and the equivariance measurement.

CoMIR (Pielawski, Wetzer et al., NeurIPS 2020) makes its encoders approximately equivariant
to rotations without any hyper-parameter: during training every sample is rotated by an
independent random multiple of 90° before encoding and the output is rotated back, so the
loss is computed on ``rot_{-k}(f(rot_k(x)))``. This forces ``f(rot(x)) ≈ rot(f(x))`` for the
four exact rotations, which generalises to arbitrary angles in practice; the measurement
:func:`equivariance_correlation` checks that for any angle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from comir.transform import RigidTransform, image_center

__all__ = ["c4_encode", "equivariance_correlation", "rot90_batch", "rotate_image"]


def rot90_batch(x: Tensor, k: Tensor) -> Tensor:
    """Rotate each sample by its own multiple of 90° (as :func:`torch.rot90` on ``(H, W)``).

    Parameters
    ----------
    x : Tensor, shape (B, C, S, S)
        Square images (a rotation by 90° must keep the shape).
    k : Tensor, shape (B,)
        Integer quarter turns per sample; taken modulo 4, negative values rotate back.

    Returns
    -------
    Tensor, shape (B, C, S, S)
        ``out[i] = torch.rot90(x[i], k[i], dims=(1, 2))``; differentiable. At most four
        batched rotations (one per distinct ``k``), no per-sample loop.
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rot90_batch needs square images (B, C, S, S), got {tuple(x.shape)}")
    k = torch.as_tensor(k).reshape(-1)
    if k.shape[0] != x.shape[0]:
        raise ValueError(f"k must hold one value per sample ({x.shape[0]}), got {k.shape[0]}")
    kk = k.detach().to("cpu", torch.int64) % 4
    counts = torch.bincount(kk, minlength=4)
    for r in range(4):
        if counts[r] == x.shape[0]:  # all samples share one rotation: no gather/scatter
            return torch.rot90(x, r, dims=(2, 3))
    out = torch.empty_like(x)
    for r in range(4):
        if counts[r] == 0:
            continue
        idx = torch.nonzero(kk == r).squeeze(1).to(x.device)
        out.index_copy_(0, idx, torch.rot90(x.index_select(0, idx), r, dims=(2, 3)))
    return out


def c4_encode(
    encoder: Callable[[Tensor], Tensor], x: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Encode with a random per-sample quarter turn, then turn the output back.

    Parameters
    ----------
    encoder : callable
        ``(B, C, S, S) -> (B, L, S, S)``, called once on the whole rotated batch.
    x : Tensor, shape (B, C, S, S)
        Square input patches.
    generator : torch.Generator, optional
        Source of the rotations ``k ~ U{0, 1, 2, 3}`` (one per sample); its device is used
        for the draw.

    Returns
    -------
    Tensor, shape (B, L, S, S)
        ``rot_{-k_i}(encoder(rot_{k_i}(x_i)))`` for every sample ``i``.
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    k = torch.randint(0, 4, (x.shape[0],), generator=generator, device=dev)
    return rot90_batch(encoder(rot90_batch(x, k)), -k)


def rotate_image(image: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate ``image`` ``(H, W[, C])`` by ``angle_deg`` about its centre, bilinear.

    Uses :class:`comir.transform.RigidTransform` (positive angles turn clockwise on screen);
    pixels mapped from outside the image are 0. Same shape and dtype as the input.
    """
    image = np.asarray(image)
    t = RigidTransform.from_params(angle_deg, center=image_center(image.shape))
    return t.warp(image, image.shape[:2], order=1, border="constant", fill=0.0)


def _valid_mask(shape: tuple[int, int], angle_deg: float, margin: float) -> np.ndarray:
    """Pixels of the rotated frame whose pre-image lies ``margin`` px inside the image."""
    h, w = shape
    t = RigidTransform.from_params(angle_deg, center=image_center(shape)).inverse()
    ys, xs = np.mgrid[0:h, 0:w]
    src = t.apply(np.stack([xs, ys], axis=-1).astype(float))
    return (
        (src[..., 0] >= margin)
        & (src[..., 0] <= w - 1 - margin)
        & (src[..., 1] >= margin)
        & (src[..., 1] <= h - 1 - margin)
    )


def equivariance_correlation(
    embed: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    angles_deg: Sequence[float],
    margin: float = 2.0,
) -> np.ndarray:
    """Pearson correlation of ``embed(rotate(image))`` and ``rotate(embed(image))`` per angle.

    Parameters
    ----------
    embed : callable
        ``(H, W[, C]) -> (H, W[, L])`` array function, e.g. a CoMIR encoder.
    image : ndarray, shape (H, W[, C])
        Input image.
    angles_deg : sequence of float
        Rotation angles (any value, not only multiples of 90°).
    margin : float
        Only pixels whose pre-image lies at least ``margin`` px inside the original image are
        compared, so both maps are valid there and free of interpolation edge effects.

    Returns
    -------
    ndarray, shape (len(angles_deg),)
        Correlation over all channels of the valid pixels; 1 means perfectly equivariant.
        NaN where no pixel is valid or a map is constant there.
    """
    image = np.asarray(image)
    base = np.asarray(embed(image), dtype=np.float64)
    if base.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"embed must keep the image size {image.shape[:2]}, returned {base.shape[:2]}"
        )
    out = np.full(len(angles_deg), np.nan)
    for i, angle in enumerate(angles_deg):
        a = np.asarray(embed(rotate_image(image, float(angle))), dtype=np.float64)
        b = rotate_image(base, float(angle))
        mask = _valid_mask(image.shape[:2], float(angle), margin)
        x, y = a[mask].ravel(), b[mask].ravel()
        if x.size < 2:
            continue
        x, y = x - x.mean(), y - y.mean()
        denom = np.sqrt((x * x).sum() * (y * y).sum())
        if denom > 0:
            out[i] = float((x * y).sum() / denom)
    return out
