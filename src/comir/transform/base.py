"""The interface every comir transform follows, and warping by composed point maps."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np

#: Rows of output pixels mapped per chunk when a transform warps by point maps.
WARP_CHUNK_PIXELS = 2**20


class Transform(ABC):
    """A map from moving-image points to fixed-image points (see :mod:`comir.transform`).

    Subclasses implement :meth:`apply`, :meth:`apply_inverse`, :meth:`to_dict` and
    ``from_dict``; warping, composition and files come from here.
    """

    #: Name written to transform files (``"rigid"``, ``"affine"``, ...).
    kind: str = "transform"

    @abstractmethod
    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map moving points ``(..., 2)`` (x, y) to fixed points."""

    @abstractmethod
    def apply_inverse(self, points: np.ndarray) -> np.ndarray:
        """Map fixed points ``(..., 2)`` to moving points (what resampling needs)."""

    @abstractmethod
    def to_dict(self) -> dict:
        """JSON-able description with a ``"type"`` key."""

    def inverse(self) -> Transform:
        """The fixed → moving map as a transform of its own."""
        from comir.transform.composite import InverseTransform

        return InverseTransform(self)

    def compose(self, other: Transform) -> Transform:
        """``self ∘ other``: apply ``other`` first, then ``self``."""
        from comir.transform.composite import CompositeTransform

        return CompositeTransform([other, self])

    def __matmul__(self, other: Transform) -> Transform:
        return self.compose(other)

    def warp(
        self,
        moving: np.ndarray,
        output_shape: tuple[int, int],
        order: int = 1,
        border: str = "constant",
        fill: float = 0.0,
    ) -> np.ndarray:
        """Resample ``moving`` (``(H, W)`` or ``(H, W, C)``) into the fixed frame.

        Every fixed pixel ``p`` samples the moving image at ``apply_inverse(p)``: one
        interpolation whatever the transform is composed of.

        Parameters
        ----------
        output_shape : (int, int)
            ``(H, W)`` of the fixed image.
        order : {0, 1, 3}
            Nearest, bilinear or cubic interpolation.
        border : {"constant", "reflect", "replicate"}
            How points outside the moving image are filled.
        fill : float
            Value of the ``constant`` border.
        """
        from scipy.ndimage import map_coordinates

        modes = {"constant": "constant", "reflect": "mirror", "replicate": "nearest"}
        img = np.asarray(moving)
        planes = img[..., None] if img.ndim == 2 else img
        work = planes.astype(np.float32) if planes.dtype.kind not in "f" else planes
        h, w = int(output_shape[0]), int(output_shape[1])
        out = np.empty((h, w, planes.shape[2]), dtype=work.dtype)
        rows = max(1, WARP_CHUNK_PIXELS // max(w, 1))
        xs = np.arange(w, dtype=float)
        for r0 in range(0, h, rows):
            yy, xx = np.meshgrid(np.arange(r0, min(h, r0 + rows), dtype=float), xs, indexing="ij")
            src = self.apply_inverse(np.stack([xx, yy], axis=-1))
            coords = [src[..., 1], src[..., 0]]
            for c in range(planes.shape[2]):
                out[r0 : r0 + rows, :, c] = map_coordinates(
                    work[..., c], coords, order=order, mode=modes[border], cval=fill
                )
        out = out[..., 0] if img.ndim == 2 else out
        return _cast_like(out, img)

    def save(self, path: str | os.PathLike, **extra) -> None:
        """Atomically write :meth:`to_dict` plus ``extra`` keys as JSON."""
        from comir.transform.files import save_transform

        save_transform(self, path, **extra)


def _cast_like(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``out`` in the dtype of ``like`` (integers rounded and clipped to their range)."""
    if out.dtype == like.dtype:
        return out
    if like.dtype.kind in "ui":
        info = np.iinfo(like.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(like.dtype)
    return out.astype(like.dtype)
