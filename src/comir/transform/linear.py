"""Matrix transforms: rigid ⊂ similarity ⊂ affine, one 3×3 homogeneous matrix each."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from comir.transform import functional as F
from comir.transform.base import Transform, _cast_like

#: Tolerance of the structural checks (orthonormal rotation part, uniform scale).
_TOL = 1e-6


class MatrixTransform(Transform):
    """A linear (affine) map ``p_fixed = matrix @ [x, y, 1]`` of moving points.

    Parameters
    ----------
    matrix : ndarray, shape (3, 3)
        Finite homogeneous matrix with last row ``(0, 0, 1)`` and an invertible 2×2 part.
    """

    kind: ClassVar[str] = "affine"
    #: Generality rank: composing two matrix transforms gives the more general class.
    _rank: ClassVar[int] = 2

    def __init__(self, matrix: np.ndarray) -> None:
        m = np.array(matrix, dtype=float)
        if m.shape != (3, 3):
            raise ValueError(f"matrix must be 3x3, got {m.shape}")
        if not np.isfinite(m).all():
            raise ValueError("matrix holds NaN or Inf")
        if not np.allclose(m[2], (0.0, 0.0, 1.0), atol=1e-9):
            raise ValueError(f"last row must be (0, 0, 1), got {m[2].tolist()}")
        if abs(np.linalg.det(m[:2, :2])) < 1e-12:
            raise ValueError("matrix is singular")
        m[2] = (0.0, 0.0, 1.0)
        m.setflags(write=False)
        self.matrix = m
        self._check()

    def _check(self) -> None:
        """Raise ``ValueError`` when the matrix is not of this class's kind."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.matrix.tolist()})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and np.array_equal(self.matrix, other.matrix)

    def __hash__(self) -> int:
        return hash((type(self), self.matrix.tobytes()))

    # -- construction ---------------------------------------------------------------
    @classmethod
    def identity(cls):
        return cls(np.eye(3))

    # -- parameters -----------------------------------------------------------------
    @property
    def linear(self) -> np.ndarray:
        """The 2×2 part."""
        return self.matrix[:2, :2]

    def translation_about(self, center: tuple[float, float]) -> np.ndarray:
        """Translation ``t`` such that this is ``A (p - center) + center + t``."""
        return F.translation_about(self.matrix, center)

    # -- algebra --------------------------------------------------------------------
    def apply(self, points: np.ndarray) -> np.ndarray:
        return F.apply_matrices(self.matrix, points)

    def apply_inverse(self, points: np.ndarray) -> np.ndarray:
        return F.apply_matrices(np.linalg.inv(self.matrix), points)

    def inverse(self):
        return type(self)(np.linalg.inv(self.matrix))

    def compose(self, other: Transform) -> Transform:
        """``self ∘ other``; two matrix transforms multiply into the more general kind."""
        if isinstance(other, MatrixTransform):
            cls = type(self) if self._rank >= other._rank else type(other)
            return as_kind(self.matrix @ other.matrix, cls)
        return super().compose(other)

    # -- images ---------------------------------------------------------------------
    def warp(
        self,
        moving: np.ndarray,
        output_shape: tuple[int, int],
        order: int = 1,
        border: str = "constant",
        fill: float = 0.0,
    ) -> np.ndarray:
        """Resample ``moving`` into the fixed frame (OpenCV ``warpAffine``, any channels).

        See :meth:`Transform.warp`. OpenCV rounds sample positions to 1/32 px; the
        evaluation sets are made with exact sampling instead
        (:func:`comir.evaluation.generate.make_eval`).
        """
        import cv2

        flags = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}[order]
        modes = {
            "constant": cv2.BORDER_CONSTANT,
            "reflect": cv2.BORDER_REFLECT_101,
            "replicate": cv2.BORDER_REPLICATE,
        }
        img = np.asarray(moving)
        ok_dtype = img.dtype in (np.uint8, np.uint16, np.float32)
        work = img if ok_dtype else img.astype(np.float32)
        planes = work[..., None] if work.ndim == 2 else work
        h, w = int(output_shape[0]), int(output_shape[1])
        m = self.matrix[:2].astype(np.float64)
        # OpenCV warps at most 4 channels at once
        parts = [
            cv2.warpAffine(
                np.ascontiguousarray(planes[..., k : k + 4]), m, (w, h), flags=flags,
                borderMode=modes[border], borderValue=fill,
            ).reshape(h, w, -1)
            for k in range(0, planes.shape[2], 4)
        ]  # fmt: skip
        out = np.concatenate(parts, axis=-1)
        out = out[..., 0] if img.ndim == 2 else out
        return _cast_like(out, img)

    # -- files ----------------------------------------------------------------------
    def to_dict(self, center: tuple[float, float] = (0.0, 0.0)) -> dict:
        """JSON-able description; the translation is expressed about ``center``."""
        return {
            "type": self.kind,
            "matrix": self.matrix.tolist(),
            "translation": self.translation_about(center).tolist(),
            "center": [float(center[0]), float(center[1])],
        }

    @classmethod
    def from_dict(cls, d: dict):
        return cls(np.asarray(d["matrix"], dtype=float))


class AffineTransform(MatrixTransform):
    """Any invertible affine map (6 parameters)."""


class SimilarityTransform(MatrixTransform):
    """Rotation, uniform scale and translation: ``p -> s R(θ) (p - c) + c + t``."""

    kind: ClassVar[str] = "similarity"
    _rank: ClassVar[int] = 1

    def _check(self) -> None:
        a = self.linear
        if not (
            abs(a[0, 0] - a[1, 1]) < _TOL * _norm(a) and abs(a[0, 1] + a[1, 0]) < _TOL * _norm(a)
        ):
            raise ValueError(f"not a similarity matrix (2x2 part {a.tolist()})")

    @classmethod
    def from_params(
        cls,
        angle_deg: float = 0.0,
        scale: float = 1.0,
        translation: tuple[float, float] = (0.0, 0.0),
        center: tuple[float, float] = (0.0, 0.0),
    ):
        """Rotation by ``angle_deg`` and scaling about ``center``, then ``translation``."""
        return cls(F.similarity_matrices(math.radians(angle_deg), scale, translation, center))

    @property
    def angle_rad(self) -> float:
        return float(F.matrix_angles(self.matrix))

    @property
    def angle_deg(self) -> float:
        return math.degrees(self.angle_rad)

    @property
    def scale(self) -> float:
        return float(math.sqrt(abs(np.linalg.det(self.linear))))

    def to_dict(self, center: tuple[float, float] = (0.0, 0.0)) -> dict:
        return {**super().to_dict(center), "angle_deg": self.angle_deg, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict):
        if "matrix" in d:
            return cls(np.asarray(d["matrix"], dtype=float))
        return cls.from_params(
            d["angle_deg"],
            d.get("scale", 1.0),
            tuple(d["translation"]),
            tuple(d.get("center", (0, 0))),
        )


class RigidTransform(SimilarityTransform):
    """Rotation and translation: ``p -> R(θ) (p - c) + c + t`` (3 parameters).

    Examples
    --------
    >>> t = RigidTransform.from_params(angle_deg=90.0, translation=(2.0, 0.0), center=(1.0, 1.0))
    >>> np.round(t.apply(np.array([[2.0, 1.0]])), 6)  # one pixel right of the centre
    array([[3., 2.]])
    """

    kind: ClassVar[str] = "rigid"
    _rank: ClassVar[int] = 0

    def _check(self) -> None:
        a = self.linear
        if not np.allclose(a.T @ a, np.eye(2), atol=_TOL) or np.linalg.det(a) < 0:
            raise ValueError(f"not a rigid matrix (2x2 part {a.tolist()})")

    @classmethod
    def from_params(
        cls,
        angle_deg: float = 0.0,
        translation: tuple[float, float] = (0.0, 0.0),
        center: tuple[float, float] = (0.0, 0.0),
    ) -> RigidTransform:
        """Rotation by ``angle_deg`` about ``center``, then translation ``(tx, ty)``."""
        return cls(F.rigid_matrices(math.radians(angle_deg), translation, center))

    def to_dict(self, center: tuple[float, float] = (0.0, 0.0)) -> dict:
        d = super().to_dict(center)
        d.pop("scale")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RigidTransform:
        if "matrix" in d:
            return cls(np.asarray(d["matrix"], dtype=float))
        return cls.from_params(
            d["angle_deg"], tuple(d["translation"]), tuple(d.get("center", (0, 0)))
        )


def _norm(a: np.ndarray) -> float:
    return max(1.0, float(np.abs(a).max()))


_KINDS: tuple[type[MatrixTransform], ...] = (RigidTransform, SimilarityTransform, AffineTransform)


def as_kind(matrix: np.ndarray, cls: type[MatrixTransform] | None = None) -> MatrixTransform:
    """``cls(matrix)``, or the most specific matrix class that holds ``matrix`` when the
    product left ``cls``'s kind (or ``cls`` is None)."""
    start = 0 if cls is None else _KINDS.index(cls)
    for kind in _KINDS[start:]:
        try:
            return kind(matrix)
        except ValueError:
            continue
    raise ValueError("not an invertible affine matrix")


MATRIX_KINDS = {c.kind: c for c in _KINDS}
