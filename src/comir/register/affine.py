"""Affine refinement of an initial registration by gradient descent (torch).

:func:`refine_affine` starts from any moving → fixed :class:`MatrixTransform` (typically the
rigid result of ``fft``) and optimises a 6-parameter affine correction on a block-mean
pyramid of the two images. The moving image is resampled with
``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=False``); the loss is the
masked mean squared error or the global normalised cross-correlation over the overlap
(samples that fall inside the moving image).

Parameterisation: the fixed → moving map is ``M₀⁻¹ ∘ N⁻¹ (I + D) N`` where ``M₀`` is the
initial moving → fixed matrix, ``N`` maps fixed pixels to centred coordinates in units of
half the larger image side, and ``D`` holds the six parameters (2×2 linear, 2 translation).
A unit of every parameter then moves a corner of the fixed image by about one half-side,
so one learning rate suits the linear and the translation parts alike. Fixed iteration
counts and no randomness: bit-identical results on CPU.
"""

from __future__ import annotations

import numpy as np

from comir.errors import ComirError
from comir.io import standardize
from comir.register.base import check_image
from comir.transform import AffineTransform, MatrixTransform
from comir.transform import functional as F

SIMILARITIES: tuple[str, ...] = ("mse", "ncc")


def _level_matrix(factor: int) -> np.ndarray:
    """Level pixel → full-resolution pixel for a block-mean level of ``factor``, ``(3, 3)``."""
    f = float(factor)
    return F.translation_matrix(((f - 1) / 2, (f - 1) / 2)) @ F.scale_matrix(f)


def _normaliser(shape: tuple[int, int]) -> np.ndarray:
    """Fixed pixel → centred coordinates in units of half the larger side, ``(3, 3)``."""
    c = np.asarray(F.image_center(shape), float)
    s = max(shape) / 2.0
    return F.scale_matrix(1.0 / s) @ F.translation_matrix(-c)


def _pyramid(image: np.ndarray, levels, torch, device) -> list:
    """Per-channel standardised ``(1, C, H/f, W/f)`` block means, one per level factor."""
    x = torch.from_numpy(np.ascontiguousarray(standardize(image, axis=(0, 1)).transpose(2, 0, 1)))
    x = x[None].to(device)
    return [x if f == 1 else torch.nn.functional.avg_pool2d(x, f, f) for f in levels]


def _pixel_grid(h: int, w: int, torch, device):
    """Homogeneous pixel coordinates ``(H·W, 3)`` (x = column, y = row), float64."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=device),
        torch.arange(w, dtype=torch.float64, device=device),
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones_like(xs).reshape(-1)], 1)


def _loss(fixed, warped, mask, similarity: str):
    """Masked MSE, or ``1 − mean NCC`` over the mask; ``(1, C, H, W)`` images."""
    n = mask.sum().clamp_min(1.0)
    if similarity == "mse":
        return ((warped - fixed) ** 2 * mask).sum() / (n * fixed.shape[1])
    mf = (fixed * mask).sum((2, 3), keepdim=True) / n
    mw = (warped * mask).sum((2, 3), keepdim=True) / n
    a, b = (fixed - mf) * mask, (warped - mw) * mask
    ncc = (a * b).sum((2, 3)) / ((a * a).sum((2, 3)) * (b * b).sum((2, 3)) + 1e-12).sqrt()
    return 1.0 - ncc.mean()


def warp_loss(fixed, moving, grid, similarity: str):
    """Loss of ``moving`` sampled at ``grid`` (grid_sample units, ``(1, H, W, 2)``) against
    ``fixed`` ``(1, C, H, W)``, over the samples that fall inside the moving image."""
    import torch

    warped = torch.nn.functional.grid_sample(
        moving, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    inside = (grid.abs() <= 1.0).all(-1).to(torch.float32)[:, None]
    return _loss(fixed, warped, inside, similarity)


class _Level:
    """One pyramid level: the constant parts of the sampling matrix and the fixed grid."""

    def __init__(self, fixed, moving, factor: int, left: np.ndarray, norm: np.ndarray, torch):
        self.fixed, self.moving = fixed, moving
        h, w = fixed.shape[2:]
        hm, wm = moving.shape[2:]
        s = _level_matrix(factor)
        # grid_sample coords = L (I + D) R · fixed level pixel
        lm = F.grid_sample_matrix(hm, wm) @ np.linalg.inv(s) @ left
        self.left = torch.as_tensor(lm, dtype=torch.float64, device=fixed.device)
        self.right = torch.as_tensor(norm @ s, dtype=torch.float64, device=fixed.device)
        self.points = _pixel_grid(h, w, torch, fixed.device)
        self.shape = (h, w)

    def loss(self, params, similarity: str, torch):
        eye = torch.eye(3, dtype=torch.float64, device=params.device)
        zero = torch.zeros(1, 3, dtype=params.dtype, device=params.device)
        mat = self.left @ (eye + torch.cat([params.reshape(2, 3), zero], 0)) @ self.right
        g = (self.points @ mat.T)[:, :2].to(torch.float32).reshape(1, *self.shape, 2)
        return warp_loss(self.fixed, self.moving, g, similarity)


def torch_device(device: str):
    """``torch.device(device)``, or a ComirError naming the option."""
    import torch

    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ComirError(f"device={device!r}: not a torch device; e.g. cpu, cuda, cuda:1") from exc


def _check_options(similarity: str, levels, iterations, lr) -> None:
    if similarity not in SIMILARITIES:
        raise ComirError(f"similarity={similarity!r}: choose one of {', '.join(SIMILARITIES)}")
    if not levels or any(int(f) < 1 for f in levels):
        raise ComirError(f"levels={levels!r}: give integer pyramid factors >= 1, e.g. (4, 2, 1)")
    if len(iterations) != len(levels):
        raise ComirError(f"iterations={iterations!r}: give one count per level {levels!r}")
    if not lr > 0:
        raise ComirError(f"lr={lr!r}: the learning rate must be positive")


def prepare(fixed, moving, similarity: str, levels, iterations, lr, device):
    """Validated inputs of a refinement: ``(fixed, moving, levels, iterations, device,
    fixed pyramid, moving pyramid)``; images ``(H, W, C)`` float32 with equal channels."""
    import torch

    fixed, moving = check_image(fixed, "fixed"), check_image(moving, "moving")
    if fixed.shape[2] != moving.shape[2]:
        raise ComirError(
            f"fixed has {fixed.shape[2]} channels, moving {moving.shape[2]}; pass images with "
            "the same channels (e.g. two CoMIRs)"
        )
    levels, iterations = tuple(int(f) for f in levels), tuple(int(n) for n in iterations)
    _check_options(similarity, levels, iterations, lr)
    dev = torch_device(device)
    pf, pm = _pyramid(fixed, levels, torch, dev), _pyramid(moving, levels, torch, dev)
    return fixed, moving, levels, iterations, dev, pf, pm


def descend(param, pf, pm, levels, iterations, lr: float, level_loss) -> None:
    """Adam on ``param`` level by level, coarse to fine; the learning rate decays linearly
    to 10 % within a level. ``level_loss(k, factor)`` returns the loss function of level
    ``k``; levels too coarse for the image (< 4 px) are skipped."""
    import torch

    for k, f in enumerate(levels):
        if min(pf[k].shape[2:]) < 4 or min(pm[k].shape[2:]) < 4:
            continue
        loss_fn = level_loss(k, f)
        opt = torch.optim.Adam([param], lr=lr)
        n = iterations[k]
        for i in range(n):
            for group in opt.param_groups:
                group["lr"] = lr * (1.0 - 0.9 * i / max(n - 1, 1))
            opt.zero_grad()
            loss_fn().backward()
            opt.step()


def refine_affine(
    fixed: np.ndarray,
    moving: np.ndarray,
    init: MatrixTransform,
    similarity: str = "mse",
    levels: tuple[int, ...] = (4, 2, 1),
    iterations: tuple[int, ...] = (40, 25, 15),
    lr: float = 0.01,
    device: str = "cpu",
) -> tuple[AffineTransform, float]:
    """Refine ``init`` into the affine map that best aligns ``moving`` with ``fixed``.

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
        Same channel count (e.g. two CoMIRs); each channel is standardised.
    init : MatrixTransform
        Initial moving → fixed map (e.g. a rigid registration result).
    similarity : {"mse", "ncc"}
        Masked mean squared error (same modality or CoMIRs) or global NCC over the
        overlap, mean over channels (linear intensity relations).
    levels : tuple of int
        Block-mean pyramid factors, coarse to fine.
    iterations : tuple of int
        Adam steps per level; the learning rate decays linearly to 10 % within a level.
    lr : float
        Adam learning rate in normalised units (1 ≈ half the larger fixed side).
    device : str
        Torch device.

    Returns
    -------
    transform : AffineTransform
        Moving → fixed.
    similarity : float
        MSE (lower is better) or NCC (higher is better) on the finest level at the result.
    """
    import torch

    fixed, moving, levels, iterations, dev, pf, pm = prepare(
        fixed, moving, similarity, levels, iterations, lr, device
    )
    norm = _normaliser(fixed.shape[:2])
    left = np.linalg.inv(np.asarray(init.matrix, float)) @ np.linalg.inv(norm)
    params = torch.zeros(6, dtype=torch.float64, device=dev, requires_grad=True)

    def level_loss(k: int, f: int):
        level = _Level(pf[k], pm[k], f, left, norm, torch)
        return lambda: level.loss(params, similarity, torch)

    descend(params, pf, pm, levels, iterations, lr, level_loss)
    with torch.no_grad():
        final = _Level(pf[-1], pm[-1], levels[-1], left, norm, torch)
        loss = float(final.loss(params, similarity, torch))
    d = np.vstack([params.detach().cpu().numpy().reshape(2, 3), np.zeros(3)])
    fixed_to_moving = left @ (np.eye(3) + d) @ norm
    score = loss if similarity == "mse" else 1.0 - loss
    return AffineTransform(np.linalg.inv(fixed_to_moving)), score
