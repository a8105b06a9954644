"""Deformable refinement on top of an affine registration (torch gradient descent).

:func:`refine_deformable` optimises a smooth pull-back displacement ``v`` in the fixed
frame: the fixed → moving map is ``q ↦ A⁻¹(q + v(q))`` with ``A`` the initial moving →
fixed matrix. ``v`` lives on a coarse control grid (one node every ``grid_spacing`` fixed
pixels, spanning the pixel centres) and is upsampled bicubically
(``torch.nn.functional.grid_sample``, ``align_corners=True``) to the pixels of each level
of a block-mean pyramid. The loss is the masked MSE or ``1 − NCC`` of
:mod:`comir.register.affine` plus ``smoothness`` times the diffusion penalty: the mean
squared finite-difference gradient of ``v`` between control nodes (dimensionless, pixels
per pixel). The result is ``CompositeTransform([A, DisplacementField.from_inverse(v)])``
with ``v`` sampled at every fixed pixel, so warping reproduces the optimised map.
"""

from __future__ import annotations

import math

import numpy as np

from comir.errors import ComirError
from comir.register.affine import _level_matrix, _pixel_grid, descend, prepare, warp_loss
from comir.transform import CompositeTransform, DisplacementField, MatrixTransform
from comir.transform import functional as F

#: Default weight of the diffusion penalty (mean squared gradient of ``v``).
SMOOTHNESS = 1.0


def _control_shape(shape: tuple[int, int], spacing: float) -> tuple[int, int]:
    """``(Gy, Gx)`` nodes, at least 2 per axis, spanning pixel centres ``0 … side − 1``."""
    return tuple(max(2, math.ceil((n - 1) / spacing) + 1) for n in shape)


def _diffusion(ctrl, shape: tuple[int, int], torch):
    """Mean squared gradient of the control displacements ``(1, 2, Gy, Gx)``."""
    gy, gx = ctrl.shape[2:]
    sy, sx = (shape[0] - 1) / (gy - 1), (shape[1] - 1) / (gx - 1)
    dy = (ctrl[:, :, 1:] - ctrl[:, :, :-1]) / sy
    dx = (ctrl[:, :, :, 1:] - ctrl[:, :, :, :-1]) / sx
    return (dy * dy).mean() + (dx * dx).mean()


#: Coefficient of Keys' cubic convolution kernel, as ``grid_sample(mode="bicubic")``.
CUBIC_A = -0.75


def cubic_weights(u: np.ndarray, nodes: int) -> np.ndarray:
    """Row ``i`` interpolates node values at position ``u[i]`` (in node units), ``(N, G)``.

    Keys' cubic convolution (``a = −0.75``) over the four nearest nodes, indices clamped
    to the grid: the weights of ``torch.nn.functional.grid_sample(mode="bicubic",
    padding_mode="border", align_corners=True)`` along one axis, so that the upsampled
    field is ``Wy @ ctrl @ Wxᵀ`` (two small matmuls instead of a sampler per step).
    """
    a = CUBIC_A
    base = np.floor(u)
    t = u - base
    out = np.zeros((len(u), nodes))
    rows = np.arange(len(u))
    for k, d in zip((-1, 0, 1, 2), (t + 1, t, 1 - t, 2 - t)):
        d = np.abs(d)
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        np.add.at(
            out, (rows, np.clip(base + k, 0, nodes - 1).astype(int)), np.where(d <= 1, near, far)
        )
    return out


class _Level:
    """One pyramid level: fixed points in full-resolution pixels and the sampling matrix."""

    def __init__(self, fixed, moving, factor: int, inv_init: np.ndarray, full_shape, ctrl_shape,
                 torch):  # fmt: skip
        self.fixed, self.moving = fixed, moving
        dev = fixed.device
        h, w = fixed.shape[2:]
        s = _level_matrix(factor)
        pts = (_pixel_grid(h, w, torch, dev) @ torch.as_tensor(s.T, device=dev))[:, :2]
        self.full = pts.to(torch.float32)
        # level pixel centres in control-node units along each axis (nodes span 0 … side − 1)
        ux = (factor * np.arange(w) + (factor - 1) / 2) * (ctrl_shape[1] - 1) / (full_shape[1] - 1)
        uy = (factor * np.arange(h) + (factor - 1) / 2) * (ctrl_shape[0] - 1) / (full_shape[0] - 1)
        self.wx = torch.as_tensor(cubic_weights(ux, ctrl_shape[1]), dtype=torch.float32).to(dev)
        self.wy = torch.as_tensor(cubic_weights(uy, ctrl_shape[0]), dtype=torch.float32).to(dev)
        hm, wm = moving.shape[2:]
        mat = F.grid_sample_matrix(hm, wm) @ np.linalg.inv(s) @ inv_init
        self.mat = torch.as_tensor(mat, dtype=torch.float32, device=dev)
        self.shape = (h, w)

    def displacement(self, ctrl, torch):
        """``v`` at this level's pixels, ``(H·W, 2)`` in full-resolution pixels."""
        v = self.wy @ ctrl[0] @ self.wx.T  # (2, H, W)
        return v.reshape(2, -1).T

    def data_loss(self, ctrl, similarity: str, torch):
        q = self.full + self.displacement(ctrl, torch)
        g = (q @ self.mat[:2, :2].T + self.mat[:2, 2]).reshape(1, *self.shape, 2)
        return warp_loss(self.fixed, self.moving, g, similarity)


def refine_deformable(
    fixed: np.ndarray,
    moving: np.ndarray,
    init: MatrixTransform,
    similarity: str = "mse",
    grid_spacing: float = 16.0,
    smoothness: float = SMOOTHNESS,
    levels: tuple[int, ...] = (4, 2, 1),
    iterations: tuple[int, ...] = (40, 30, 20),
    lr: float = 0.3,
    device: str = "cpu",
) -> tuple[CompositeTransform, float]:
    """Refine an affine ``init`` with a smooth displacement field.

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W) or (H, W, C)
        Same channel count; each channel is standardised.
    init : MatrixTransform
        Initial moving → fixed map (e.g. from :func:`~comir.register.affine.refine_affine`).
    similarity : {"mse", "ncc"}
    grid_spacing : float
        Control node spacing in fixed pixels (at least 2).
    smoothness : float
        Weight of the diffusion penalty (mean squared gradient of ``v``, dimensionless);
        0 disables it.
    levels, iterations : tuple of int
        Block-mean pyramid factors (coarse to fine) and Adam steps per level.
    lr : float
        Adam learning rate in pixels per step, decaying linearly to 10 % within a level.
    device : str
        Torch device.

    Returns
    -------
    transform : CompositeTransform
        ``[init, DisplacementField.from_inverse(v)]``: moving → fixed, with ``v``
        ``(H, W, 2)`` on the fixed pixels.
    similarity : float
        MSE (lower is better) or NCC (higher is better) on the finest level.
    """
    import torch

    fixed, moving, levels, iterations, dev, pf, pm = prepare(
        fixed, moving, similarity, levels, iterations, lr, device
    )
    if not grid_spacing >= 2 or not smoothness >= 0:
        raise ComirError(
            f"grid_spacing={grid_spacing!r}, smoothness={smoothness!r}: need spacing >= 2 "
            "pixels and a non-negative smoothness"
        )
    shape = fixed.shape[:2]
    inv_init = np.linalg.inv(np.asarray(init.matrix, float))
    nodes = _control_shape(shape, grid_spacing)
    ctrl = torch.zeros(1, 2, *nodes, device=dev, requires_grad=True)

    def level_loss(k: int, f: int):
        level = _Level(pf[k], pm[k], f, inv_init, shape, nodes, torch)
        penalty = lambda: smoothness * _diffusion(ctrl, shape, torch)  # noqa: E731
        return lambda: level.data_loss(ctrl, similarity, torch) + penalty()

    descend(ctrl, pf, pm, levels, iterations, lr, level_loss)
    with torch.no_grad():
        full = _Level(
            torch.from_numpy(np.zeros((1, 1, *shape), np.float32)).to(dev), pm[-1], 1,
            inv_init, shape, nodes, torch,
        )  # fmt: skip
        v = full.displacement(ctrl, torch).cpu().numpy().reshape(*shape, 2)
        final = _Level(pf[-1], pm[-1], levels[-1], inv_init, shape, nodes, torch)
        data = float(final.data_loss(ctrl, similarity, torch))
    field = DisplacementField.from_inverse(v.astype(np.float32), (0.0, 0.0), (1.0, 1.0))
    score = data if similarity == "mse" else 1.0 - data
    return CompositeTransform([init, field]), score
