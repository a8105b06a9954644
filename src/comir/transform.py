"""Rigid 2-D transforms and the one coordinate convention used everywhere in comir.

Convention
----------
* A point is ``(x, y)`` with **x = column, y = row**, in pixels.
* The origin ``(0, 0)`` is the **centre of the top-left pixel**; pixel ``(r, c)`` covers
  ``[c - 0.5, c + 0.5] × [r - 0.5, r + 0.5]``. (OpenCV uses the same convention; ITK
  uses it too for an image with origin 0 and spacing 1.)
* A transform is a 3×3 homogeneous matrix ``M`` that maps points of the **moving** image
  to points of the **fixed** image: ``p_fixed = M @ [x_moving, y_moving, 1]``.
* A rigid transform is a rotation by ``angle`` about a centre ``c`` followed by a
  translation ``t``: ``p_fixed = R(angle) (p_moving - c) + c + t`` with
  ``R = [[cos, -sin], [sin, cos]]``. Because y points down, a positive angle turns the
  image **clockwise** on screen.
* Warping the moving image into the fixed frame samples the moving image at
  ``M^{-1} p`` for every fixed pixel ``p``.

Library conventions are converted here and nowhere else: ITK/SimpleITK transforms map
fixed → moving points (:func:`to_itk_tfm`, :func:`from_sitk`); OpenCV's ``warpAffine``
takes the forward (moving → fixed) matrix and inverts it itself.

Examples
--------
>>> import numpy as np
>>> t = RigidTransform.from_params(angle_deg=90.0, translation=(2.0, 0.0), center=(1.0, 1.0))
>>> np.round(t.apply(np.array([[2.0, 1.0]])), 6)  # one pixel right of the centre
array([[3., 2.]])
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.io import write_text


def rotation_matrix(angle_rad: float) -> np.ndarray:
    """2×2 rotation ``[[cos, -sin], [sin, cos]]`` (clockwise on screen for angle > 0)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def rigid_matrix(
    angle_rad: float, translation: tuple[float, float], center: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """3×3 matrix of ``p -> R(angle) (p - center) + center + translation``."""
    r = rotation_matrix(angle_rad)
    c = np.asarray(center, dtype=float)
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = c + np.asarray(translation, dtype=float) - r @ c
    return m


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points ``(..., 2)`` (x, y) by a 3×3 matrix; returns ``(..., 2)``."""
    pts = np.asarray(points, dtype=float)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def image_center(shape: tuple[int, ...]) -> tuple[float, float]:
    """Geometric centre ``(x, y)`` of an image of shape ``(H, W, ...)``."""
    return ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)


def patch_corners(width: float, height: float | None = None, origin: str = "edges") -> np.ndarray:
    """Outer corners of a ``width × height`` patch, ``(4, 2)``.

    Order as in the public evaluation protocol: upper-left, lower-left, lower-right,
    upper-right, at the outer pixel edges (``-0.5`` and ``size - 0.5``).
    ``origin="multiregeval"`` gives the values the MultiRegEval ``info_test.csv`` files hold
    instead, ``0`` and ``size`` (half a pixel off the edges in this frame; see
    :mod:`comir.evaluate`).
    """
    h = width if height is None else height
    if origin not in ("edges", "multiregeval"):
        raise ValueError(f"origin must be 'edges' or 'multiregeval', got {origin!r}")
    off = 0.0 if origin == "multiregeval" else -0.5
    lo_x, hi_x, lo_y, hi_y = off, width + off, off, h + off
    return np.array([[lo_x, lo_y], [lo_x, hi_y], [hi_x, hi_y], [hi_x, lo_y]])


@dataclass(frozen=True)
class RigidTransform:
    """A rigid map from moving-image points to fixed-image points (see module docstring).

    Parameters
    ----------
    matrix : ndarray, shape (3, 3)
        Homogeneous matrix, ``p_fixed = matrix @ p_moving``.
    """

    matrix: np.ndarray

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=float)
        if m.shape != (3, 3):
            raise ValueError(f"matrix must be 3x3, got {m.shape}")
        object.__setattr__(self, "matrix", m)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def identity(cls) -> RigidTransform:
        return cls(np.eye(3))

    @classmethod
    def from_params(
        cls,
        angle_deg: float = 0.0,
        translation: tuple[float, float] = (0.0, 0.0),
        center: tuple[float, float] = (0.0, 0.0),
    ) -> RigidTransform:
        """Rotation by ``angle_deg`` about ``center``, then translation ``(tx, ty)``."""
        return cls(rigid_matrix(math.radians(angle_deg), translation, center))

    # -- parameters -----------------------------------------------------------------
    @property
    def angle_rad(self) -> float:
        return math.atan2(self.matrix[1, 0], self.matrix[0, 0])

    @property
    def angle_deg(self) -> float:
        return math.degrees(self.angle_rad)

    def translation_about(self, center: tuple[float, float]) -> np.ndarray:
        """Translation ``t`` such that this is a rotation about ``center`` followed by ``t``."""
        c = np.asarray(center, dtype=float)
        return self.matrix[:2, :2] @ c + self.matrix[:2, 2] - c

    # -- algebra --------------------------------------------------------------------
    def inverse(self) -> RigidTransform:
        return RigidTransform(np.linalg.inv(self.matrix))

    def compose(self, other: RigidTransform) -> RigidTransform:
        """``self ∘ other``: apply ``other`` first, then ``self``."""
        return RigidTransform(self.matrix @ other.matrix)

    def __matmul__(self, other: RigidTransform) -> RigidTransform:
        return self.compose(other)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map moving points ``(..., 2)`` (x, y) to fixed points."""
        return apply_matrix(self.matrix, points)

    # -- images ---------------------------------------------------------------------
    def warp(
        self,
        moving: np.ndarray,
        output_shape: tuple[int, int],
        order: int = 1,
        border: str = "constant",
        fill: float = 0.0,
    ) -> np.ndarray:
        """Resample ``moving`` (``(H, W)`` or ``(H, W, C)``) into the fixed frame.

        Parameters
        ----------
        output_shape : (int, int)
            ``(H, W)`` of the fixed image.
        order : {0, 1, 3}
            Nearest, bilinear or bicubic interpolation.
        border : {"constant", "reflect", "replicate"}
            How points outside the moving image are filled.
        """
        import cv2

        flags = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}[order]
        modes = {
            "constant": cv2.BORDER_CONSTANT,
            "reflect": cv2.BORDER_REFLECT_101,
            "replicate": cv2.BORDER_REPLICATE,
        }
        img = np.asarray(moving)
        work = (
            img.astype(np.float32) if img.dtype.kind not in "uf" or img.dtype == np.float64 else img
        )
        chans = work.shape[2] if work.ndim == 3 else 1
        h, w = int(output_shape[0]), int(output_shape[1])
        m = self.matrix[:2].astype(np.float64)
        if chans <= 4:
            out = cv2.warpAffine(
                work, m, (w, h), flags=flags, borderMode=modes[border], borderValue=fill
            )
        else:  # OpenCV warps at most 4 channels at once
            out = np.stack(
                [
                    cv2.warpAffine(
                        np.ascontiguousarray(work[..., i]),
                        m,
                        (w, h),
                        flags=flags,
                        borderMode=modes[border],
                        borderValue=fill,
                    )
                    for i in range(chans)
                ],
                axis=-1,
            )
        if img.ndim == 3 and out.ndim == 2:
            out = out[..., None]
        return out.astype(img.dtype, copy=False) if img.dtype != work.dtype else out

    # -- files ----------------------------------------------------------------------
    def to_dict(self, center: tuple[float, float] = (0.0, 0.0)) -> dict:
        """JSON-able description with the translation expressed about ``center``."""
        return {
            "matrix": self.matrix.tolist(),
            "angle_deg": self.angle_deg,
            "translation": self.translation_about(center).tolist(),
            "center": [float(center[0]), float(center[1])],
        }

    @classmethod
    def from_dict(cls, d: dict) -> RigidTransform:
        if "matrix" in d:
            return cls(np.asarray(d["matrix"], dtype=float))
        return cls.from_params(
            d["angle_deg"], tuple(d["translation"]), tuple(d.get("center", (0, 0)))
        )

    def save_json(self, path: str | os.PathLike, center=(0.0, 0.0), **extra) -> None:
        """Atomically write ``to_dict(center)`` plus ``extra`` keys as JSON."""
        write_text(path, json.dumps({**self.to_dict(center), **extra}, indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> RigidTransform:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise ComirError(f"{path}: not a comir transform JSON ({exc})") from None

    def to_itk_tfm(self, center: tuple[float, float] = (0.0, 0.0)) -> str:
        """Text of an ITK ``.tfm`` file holding this mapping as an ``Euler2DTransform``.

        ITK transforms map *fixed* physical points to *moving* ones (the direction a
        resampler needs), so the file holds the inverse of :attr:`matrix`. Images are
        assumed to have origin 0 and spacing 1, where physical = pixel coordinates.
        """
        inv = self.inverse()
        c = np.asarray(center, dtype=float)
        t = inv.translation_about(c)
        return (
            "#Insight Transform File V1.0\n#Transform 0\n"
            "Transform: Euler2DTransform_double_2_2\n"
            f"Parameters: {float(inv.angle_rad)!r} {float(t[0])!r} {float(t[1])!r}\n"
            f"FixedParameters: {float(c[0])!r} {float(c[1])!r}\n"
        )

    def save_tfm(self, path: str | os.PathLike, center=(0.0, 0.0)) -> None:
        write_text(path, self.to_itk_tfm(center))

    @classmethod
    def from_sitk(cls, transform) -> RigidTransform:
        """Convert a SimpleITK 2-D transform (fixed → moving) to moving → fixed.

        Works for any transform with a 2×2 matrix (Euler2D, Similarity2D, Affine) and
        pixel-unit images (origin 0, spacing 1).
        """
        import SimpleITK as sitk

        tx = transform
        if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
            tx = tx.GetNthTransform(0)
        for kind in (sitk.Euler2DTransform, sitk.Similarity2DTransform, sitk.AffineTransform):
            try:
                tx = kind(tx)
                break
            except (RuntimeError, TypeError):
                continue
        m = np.eye(3)
        a = np.asarray(tx.GetMatrix(), dtype=float).reshape(2, 2)
        c = np.asarray(tx.GetCenter(), dtype=float)
        t = np.asarray(tx.GetTranslation(), dtype=float)
        m[:2, :2] = a
        m[:2, 2] = t + c - a @ c
        return cls(np.linalg.inv(m))


def corner_error(
    transform: RigidTransform, moving_corners: np.ndarray, fixed_corners: np.ndarray
) -> float:
    """Mean Euclidean distance between mapped ``moving_corners`` and ``fixed_corners``.

    The registration error of the public evaluation protocol (Lu et al. 2022).
    """
    d = transform.apply(moving_corners) - np.asarray(fixed_corners, dtype=float)
    return float(np.mean(np.linalg.norm(d, axis=-1)))
