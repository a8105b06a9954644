"""Batched augmentation of aligned patches: intensity changes per modality
(:func:`augment_batch`) and the flip + rotation sampling grid (:func:`rotation_grid`,
:func:`rotate_crop`).

The geometry follows :mod:`comir.transform` (x = column, y = row, origin at the centre of
the top-left pixel; a positive angle turns clockwise on screen). The augmentations are
those of CoMIR training (Pielawski, Wetzer et al., NeurIPS 2020: random crops, flips and
rotations of aligned patches); the pipeline is described in ``docs/architecture.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from comir.transform import functional as geom


@dataclass
class AugmentConfig:
    """Augmentation settings.

    ``flip`` and ``rotate`` act on both modalities together (horizontal flip with
    probability 1/2, rotation by a uniform angle in [-180°, 180°]); the rest acts on each
    modality independently. ``noise_*`` is the standard deviation of added Gaussian noise;
    ``blur_*`` the largest Gaussian blur sigma in pixels (each sample draws one in
    ``[0, blur]``); ``contrast_*`` = s draws a gamma and a contrast gain in
    ``[exp(-s), exp(s)]`` per sample. ``scale_min``, ``scale_max``: each sample shows its
    content at a scale drawn log-uniformly in that range (0.25: a patch covers 4× the
    side, as a 4× coarser pyramid level shows it; area-averaged, both modalities alike),
    so that one model serves several pyramid levels; 1, 1 (default) leaves scale alone.
    """

    flip: bool = True
    rotate: bool = True
    scale_min: float = 1.0
    scale_max: float = 1.0
    noise_a: float = 0.0
    noise_b: float = 0.0
    blur_a: float = 0.0
    blur_b: float = 0.0
    contrast_a: float = 0.0
    contrast_b: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = float(self.scale_min), float(self.scale_max)
        if not (0.0 < lo <= hi <= 4.0):
            raise ValueError(f"scale range {lo}:{hi} must satisfy 0 < min <= max <= 4")

    @property
    def scaled(self) -> bool:
        """Whether samples are rescaled (a scale range other than 1:1)."""
        return (self.scale_min, self.scale_max) != (1.0, 1.0)

    @property
    def supersample(self) -> int:
        """Sub-samples per output pixel and axis: enough to area-average the finest scale."""
        return max(1, math.ceil(1.0 / self.scale_min - 1e-9))

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- intensity
def _rand(shape: Sequence[int], g: torch.Generator, like: Tensor) -> Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, moved next to ``like``."""
    return torch.rand(tuple(shape), generator=g, device=g.device).to(like.device, like.dtype)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each sample with its own Gaussian, separably, with mirror padding.

    Parameters
    ----------
    x : Tensor, ``(B, C, H, W)``
    sigma : Tensor, ``(B,)``
        Standard deviation in pixels per sample (0 leaves the sample unchanged).
        The kernel radius is ``ceil(3 · max(sigma))`` for the whole batch.

    Returns
    -------
    Tensor, ``(B, C, H, W)``
    """
    b, c, h, w = x.shape
    radius = min(max(1, math.ceil(3.0 * float(sigma.max()))), h - 1, w - 1)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype).clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / s) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)


def _contrast(x: Tensor, strength: float, g: torch.Generator) -> Tensor:
    """Random gamma on the per-sample range, then a random contrast gain about the mean."""
    b = x.shape[0]
    gamma = torch.exp((2 * _rand((b, 1, 1, 1), g, x) - 1) * strength)
    gain = torch.exp((2 * _rand((b, 1, 1, 1), g, x) - 1) * strength)
    lo = x.amin(dim=(2, 3), keepdim=True)
    span = (x.amax(dim=(2, 3), keepdim=True) - lo).clamp_min(1e-12)
    y = lo + span * ((x - lo) / span).clamp(0, 1) ** gamma
    mean = y.mean(dim=(2, 3), keepdim=True)
    return mean + gain * (y - mean)


def _intensity(x: Tensor, contrast: float, blur: float, noise: float, g: torch.Generator) -> Tensor:
    if contrast > 0:
        x = _contrast(x, contrast, g)
    if blur > 0:
        x = gaussian_blur(x, _rand((x.shape[0],), g, x) * blur)
    if noise > 0:
        eps = torch.randn(tuple(x.shape), generator=g, device=g.device).to(x.device, x.dtype)
        x = x + noise * eps
    return x


def augment_batch(
    xa: Tensor, xb: Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Per-modality intensity augmentation of a batch: contrast, then blur, then noise.

    Parameters
    ----------
    xa : Tensor, ``(B, Ca, P, P)``
    xb : Tensor, ``(B, Cb, P, P)``
    cfg : AugmentConfig
        Only the ``*_a`` / ``*_b`` intensity settings are used here.
    generator : torch.Generator
        Source of randomness (numbers are drawn on its device).

    Returns
    -------
    (Tensor, Tensor)
        Same shapes; inputs are not modified.
    """
    xa = _intensity(xa, cfg.contrast_a, cfg.blur_a, cfg.noise_a, generator)
    xb = _intensity(xb, cfg.contrast_b, cfg.blur_b, cfg.noise_b, generator)
    return xa, xb


# ---------------------------------------------------------------------------- geometry
def sampling_matrices(
    centre: np.ndarray, angle_rad: np.ndarray, flip: np.ndarray, height: int, width: int,
    scale: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Patch offsets → ``grid_sample`` coordinates of the input, ``(B, 3, 3)`` float64.

    ``G · T(centre) · F · R(-angle) · S(1/scale)``: a patch offset ``p`` (from the patch
    centre) is divided by ``scale`` (default 1), rotated by ``-angle``, mirrored in x where
    ``flip`` is set (``F = diag(-1, 1)``), moved to ``centre`` and converted to the
    normalised units of ``grid_sample`` (:func:`comir.transform.functional.grid_sample_matrix`).

    Parameters
    ----------
    centre : ndarray, ``(B, 2)``
        Patch centres ``(x, y)`` in input pixels.
    angle_rad : ndarray, ``(B,)``
    flip : ndarray, ``(B,)`` bool
    height, width : int
        Input size.
    """
    mirror = np.zeros((len(flip), 2, 2))
    mirror[:, 0, 0] = np.where(flip, -1.0, 1.0)
    mirror[:, 1, 1] = 1.0
    patch_to_pixels = (
        geom.translation_matrix(centre)
        @ geom.from_linear(mirror, np.zeros(2))
        @ geom.rigid_matrices(-angle_rad)
    )
    if scale is not None:
        inv = 1.0 / np.asarray(scale, float)[:, None, None]
        patch_to_pixels = patch_to_pixels @ geom.from_linear(inv * np.eye(2), np.zeros(2))
    return geom.grid_sample_matrix(height, width) @ patch_to_pixels


def rotation_grid(
    centre: Tensor, angle_rad: Tensor, flip: Tensor, patch_size: int, height: int, width: int,
    scale: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Sampling grid of flipped, rotated ``P×P`` patches for ``F.grid_sample``.

    Output pixel ``p`` (relative to the patch centre, x = column, y = row) samples the
    input at ``centre + F R(-angle) p``: the patch shows the content flipped horizontally
    where ``flip`` is set, then rotated by ``angle`` (clockwise on screen for a positive
    angle, the convention of :mod:`comir.transform`). The per-sample matrices are built
    in float64 (:func:`sampling_matrices`); the grid itself is evaluated in float32.

    Parameters
    ----------
    centre : Tensor, ``(B, 2)``
        Patch centres ``(x, y)`` in input pixels (origin at the centre of pixel (0, 0)).
    angle_rad : Tensor, ``(B,)``
    flip : Tensor, ``(B,)`` bool
    patch_size : int
        ``P``.
    height, width : int
        Input size.
    scale : Tensor, ``(B,)``, optional
        Output pixels per input pixel (0.25: the patch spans 4 P input pixels).

    Returns
    -------
    Tensor, ``(B, P, P, 2)`` float32
        Normalised ``(x, y)`` for ``grid_sample(..., align_corners=False)``.
    """
    mats = sampling_matrices(
        centre.detach().cpu().to(torch.float64).numpy(),
        angle_rad.detach().cpu().to(torch.float64).numpy(),
        flip.detach().cpu().numpy().astype(bool),
        height,
        width,
        None if scale is None else scale.detach().cpu().to(torch.float64).numpy(),
    )
    # (B, 2, 3) float32 columns: offset, d/du, d/dv of the normalised (x, y)
    coef = torch.from_numpy(mats[:, :2, [2, 0, 1]].astype(np.float32))
    t = torch.arange(patch_size, dtype=torch.float32) - (patch_size - 1) / 2.0
    u = t[None, None, :, None]  # column offsets
    v = t[None, :, None, None]  # row offsets
    coef = coef[:, None, None]  # (B, 1, 1, 2, 3)
    return coef[..., 0] + coef[..., 1] * u + coef[..., 2] * v


def rotate_crop(
    windows: Tensor,
    angle_rad: Tensor,
    flip: Tensor,
    patch_size: int,
    padding_mode: str = "reflection",
) -> Tensor:
    """Flip and rotate every window about its centre and cut the central patch, batched.

    See :func:`rotation_grid` for the geometry; bilinear sampling.

    Parameters
    ----------
    windows : Tensor, ``(B, C, S, S)``
        Windows centred on the patches; ``S >= P·√2 + 2`` keeps every rotation inside,
        otherwise ``padding_mode`` fills the corners.
    angle_rad : Tensor, ``(B,)``
    flip : Tensor, ``(B,)`` bool
    patch_size : int
        ``P``.
    padding_mode : {"reflection", "border", "zeros"}

    Returns
    -------
    Tensor, ``(B, C, P, P)``
    """
    b, _, h, w = windows.shape
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64).expand(b, 2)
    grid = rotation_grid(centre, angle_rad, flip, patch_size, h, w).to(windows.device)
    return F.grid_sample(
        windows, grid.to(windows.dtype), "bilinear", padding_mode, align_corners=False
    )
