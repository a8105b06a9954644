"""Dense displacement fields: a non-linear member of the transform family.

A :class:`DisplacementField` holds one displacement ``d`` per node of a regular grid
(origin ``(x0, y0)``, spacing ``(sx, sy)`` in pixels of the image it is sampled on) and
maps points by ``p ↦ p + d(p)``, with ``d`` interpolated bilinearly between nodes and
held constant outside the grid (the nearest node's value, component-wise clamping).

Direction: the stored map is *either* the forward moving → fixed map ``T(p) = p + u(p)``
(``direction="forward"``, ``u`` sampled on the moving grid) *or* the pull-back
fixed → moving map ``T⁻¹(q) = q + v(q)`` (``direction="inverse"``, ``v`` sampled on the
fixed grid: what a registration optimiser and ITK's ``DisplacementFieldTransform``
hold; build it with :meth:`DisplacementField.from_inverse`). The stored direction is
evaluated exactly; the other one by fixed-point iteration (:func:`invert_displacement`).
Warping needs ``T⁻¹`` on the fixed grid, so the ``inverse`` direction warps without
iterating.
"""

from __future__ import annotations

import base64

import numpy as np

from comir.errors import ComirError, warn
from comir.transform.base import Transform

#: Stopping tolerance (pixels) of the fixed-point inversion.
INVERT_TOL = 1e-6
#: Iterations of the fixed-point inversion before points are declared failed.
INVERT_MAX_ITER = 200
DIRECTIONS = ("forward", "inverse")


def _bilinear(grid: np.ndarray, origin, spacing, points: np.ndarray) -> np.ndarray:
    """``grid`` ``(Gy, Gx, C)`` interpolated bilinearly at ``points`` ``(..., 2)``; points
    outside the grid take the value at the clamped position (constant extrapolation)."""
    gy, gx = grid.shape[:2]
    p = np.asarray(points, dtype=float)
    cx = np.clip((p[..., 0] - origin[0]) / spacing[0], 0.0, gx - 1)
    cy = np.clip((p[..., 1] - origin[1]) / spacing[1], 0.0, gy - 1)
    x0 = np.minimum(np.floor(cx).astype(np.intp), max(gx - 2, 0))
    y0 = np.minimum(np.floor(cy).astype(np.intp), max(gy - 2, 0))
    x1, y1 = np.minimum(x0 + 1, gx - 1), np.minimum(y0 + 1, gy - 1)
    fx, fy = (cx - x0)[..., None], (cy - y0)[..., None]
    g = grid.astype(float, copy=False)
    top = g[y0, x0] * (1 - fx) + g[y0, x1] * fx
    bottom = g[y1, x0] * (1 - fx) + g[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def invert_displacement(
    sample, points: np.ndarray, tol: float = INVERT_TOL, max_iter: int = INVERT_MAX_ITER
) -> np.ndarray:
    """Solve ``q + d(q) = y`` for every ``y`` in ``points`` by ``q ← y − d(q)``.

    The iteration contracts, and so converges, wherever ``d`` is Lipschitz with a
    constant below 1 (e.g. ``|∂d/∂x| + |∂d/∂y| < 1``), which also rules out folding.

    Parameters
    ----------
    sample : callable
        ``sample(q)`` → ``d(q)``, ``(..., 2)`` → ``(..., 2)``.
    points : ndarray, shape (..., 2)
    tol : float
        A point has converged when its update moves it by less than ``tol`` pixels.

    Returns
    -------
    ndarray, shape (..., 2)
        Points that have not converged after ``max_iter`` iterations (folded or too
        strongly compressed fields) are NaN, with one :class:`ComirWarning`.
    """
    y = np.asarray(points, dtype=float)
    q = y - sample(y)
    active = np.ones(y.shape[:-1], dtype=bool)
    for _ in range(max_iter):
        idx = np.nonzero(active)
        if not idx[0].size:
            break
        new = y[idx] - sample(q[idx])
        step = np.linalg.norm(new - q[idx], axis=-1)
        q[idx] = new
        active[idx] = step >= tol
    if active.any():
        warn(
            f"displacement field: inversion did not converge for {int(active.sum())} of "
            f"{active.size} points (folded or over-compressed field); they are NaN"
        )
        q[active] = np.nan
    return q


class DisplacementField(Transform):
    """Moving → fixed map given by a displacement sampled on a regular grid.

    Parameters
    ----------
    displacement : ndarray, shape (Gy, Gx, 2)
        ``(dx, dy)`` in pixels at node ``(i, j)``, which sits at
        ``(x0 + j·sx, y0 + i·sy)``; stored as float32 (what the files hold).
    origin : (float, float)
        ``(x0, y0)``: position of node ``(0, 0)``.
    spacing : (float, float)
        ``(sx, sy)``: node spacing in pixels (> 0).
    direction : {"forward", "inverse"}
        ``"forward"``: ``T(p) = p + d(p)`` on the moving grid, ``apply`` is exact and
        ``apply_inverse`` iterates. ``"inverse"``: ``T⁻¹(q) = q + d(q)`` on the fixed
        grid (the pull-back field an optimiser produces), ``apply_inverse`` is exact and
        ``apply`` iterates. Prefer :meth:`from_inverse` for the latter.

    Notes
    -----
    Interpolation is bilinear and outside the grid the nearest node's displacement is
    used (constant extrapolation; ITK's ``DisplacementFieldTransform`` uses zero
    instead, which only differs for grids that do not cover the image). The iterated
    direction follows :func:`invert_displacement` (tolerance :data:`INVERT_TOL` px;
    points that do not converge are NaN and warped to the fill value).
    """

    kind = "displacement"

    def __init__(self, displacement, origin=(0.0, 0.0), spacing=(1.0, 1.0), direction="forward"):
        d = np.array(displacement, dtype=np.float32)
        if d.ndim != 3 or d.shape[2] != 2 or min(d.shape[:2]) < 1:
            raise ValueError(f"displacement must be (Gy, Gx, 2), got {d.shape}")
        if not np.isfinite(d).all():
            raise ValueError("displacement holds NaN or Inf")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        sp = tuple(float(s) for s in spacing)
        if len(sp) != 2 or min(sp) <= 0:
            raise ValueError(f"spacing must be two positive numbers, got {spacing}")
        d.setflags(write=False)
        self.displacement = d
        self.origin = (float(origin[0]), float(origin[1]))
        self.spacing = sp
        self.direction = direction

    @classmethod
    def from_inverse(cls, displacement, origin=(0.0, 0.0), spacing=(1.0, 1.0)):
        """The field whose fixed → moving map is ``q ↦ q + d(q)``, ``d`` on the fixed grid."""
        return cls(displacement, origin, spacing, direction="inverse")

    def __repr__(self) -> str:
        gy, gx = self.displacement.shape[:2]
        return (
            f"DisplacementField({gy}x{gx}, origin={self.origin}, spacing={self.spacing}, "
            f"direction={self.direction!r})"
        )

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(Gy, Gx)``."""
        return self.displacement.shape[0], self.displacement.shape[1]

    def sample(self, points: np.ndarray) -> np.ndarray:
        """The stored displacement interpolated at ``points`` ``(..., 2)``."""
        return _bilinear(self.displacement, self.origin, self.spacing, points)

    def _exact(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=float)
        return p + self.sample(p)

    def _iterated(self, points: np.ndarray) -> np.ndarray:
        return invert_displacement(self.sample, points)

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self._exact(points) if self.direction == "forward" else self._iterated(points)

    def apply_inverse(self, points: np.ndarray) -> np.ndarray:
        return self._iterated(points) if self.direction == "forward" else self._exact(points)

    # -- regularity -----------------------------------------------------------------
    def jacobian_determinant(self) -> np.ndarray:
        """``det(I + ∇d)`` of the stored map at every node, ``(Gy, Gx)``.

        Central differences inside, one-sided at the edges (:func:`numpy.gradient`),
        divided by the spacing. The stored map is ``T`` (forward) or ``T⁻¹`` (inverse);
        either folds exactly where its determinant is ≤ 0.
        """
        d = self.displacement.astype(float)
        gy, gx = self.grid_shape

        def grad(a: np.ndarray, axis: int, step: float, n: int) -> np.ndarray:
            return np.gradient(a, step, axis=axis) if n > 1 else np.zeros_like(a)

        dux = grad(d[..., 0], 1, self.spacing[0], gx)
        duy = grad(d[..., 0], 0, self.spacing[1], gy)
        dvx = grad(d[..., 1], 1, self.spacing[0], gx)
        dvy = grad(d[..., 1], 0, self.spacing[1], gy)
        return (1 + dux) * (1 + dvy) - duy * dvx

    def folded_fraction(self) -> float:
        """Fraction of grid nodes where :meth:`jacobian_determinant` is ≤ 0."""
        return float(np.mean(self.jacobian_determinant() <= 0))

    # -- grids ----------------------------------------------------------------------
    def check_grid(self, shape: tuple[int, ...], where: str = "displacement field") -> None:
        """Raise :class:`ComirError` unless the grid spans an image of ``shape`` ``(H, W)``.

        The grid's first and last nodes must each lie within one spacing of the image's
        first and last pixel centres (the fixed image for ``inverse`` fields, the moving
        image for ``forward`` ones).
        """
        h, w = int(shape[0]), int(shape[1])
        gy, gx = self.grid_shape
        ends = [
            (self.origin[0], 0.0, self.spacing[0]),
            (self.origin[0] + (gx - 1) * self.spacing[0], w - 1.0, self.spacing[0]),
            (self.origin[1], 0.0, self.spacing[1]),
            (self.origin[1] + (gy - 1) * self.spacing[1], h - 1.0, self.spacing[1]),
        ]
        if any(abs(node - pix) > step + 1e-6 for node, pix, step in ends):
            ext = (gx - 1) * self.spacing[0] + 1, (gy - 1) * self.spacing[1] + 1
            raise ComirError(
                f"{where}: the field's grid spans {ext[0]:g}x{ext[1]:g} px at origin "
                f"{self.origin}, the {self.grid_image} image is {w}x{h}; use the field "
                f"computed for this image (or resample it)"
            )

    @property
    def grid_image(self) -> str:
        """Which image the grid is sampled on: ``"moving"`` or ``"fixed"``."""
        return "moving" if self.direction == "forward" else "fixed"

    # -- files ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able description; the array is base64 of little-endian float32, row-major
        ``(Gy, Gx, 2)``, so the JSON file is the whole transform (one atomic write)."""
        data = np.ascontiguousarray(self.displacement, dtype="<f4").tobytes()
        return {
            "type": self.kind,
            "direction": self.direction,
            "origin": list(self.origin),
            "spacing": list(self.spacing),
            "shape": list(self.displacement.shape),
            "dtype": "float32",
            "encoding": "base64",
            "data": base64.b64encode(data).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, d: dict) -> DisplacementField:
        if d.get("encoding", "base64") != "base64" or d.get("dtype", "float32") != "float32":
            raise ValueError("displacement data must be base64 float32")
        shape = tuple(int(s) for s in d["shape"])
        arr = np.frombuffer(base64.b64decode(d["data"], validate=True), dtype="<f4")
        if arr.size != int(np.prod(shape)):
            raise ValueError(f"displacement data holds {arr.size} values, shape says {shape}")
        return cls(arr.reshape(shape), d["origin"], d["spacing"], d.get("direction", "forward"))


def fields_in(transform: Transform) -> list[DisplacementField]:
    """The displacement fields a transform is made of (itself, its chain, its inverse)."""
    from comir.transform.composite import CompositeTransform, InverseTransform

    if isinstance(transform, DisplacementField):
        return [transform]
    if isinstance(transform, CompositeTransform):
        return [f for t in transform.transforms for f in fields_in(t)]
    if isinstance(transform, InverseTransform):
        return fields_in(transform.forward)
    return []


def check_grids(transform: Transform, fixed_shape, moving_shape, where: str) -> None:
    """:meth:`DisplacementField.check_grid` for the fields sampled on an image: a forward
    field applied first (moving grid) and an inverse field applied last (fixed grid).

    Raises
    ------
    ComirError
        A grid that does not span its image, naming ``where``.
    """
    from comir.transform.composite import CompositeTransform

    chain = transform.transforms if isinstance(transform, CompositeTransform) else [transform]
    first, last = chain[0], chain[-1]
    if isinstance(first, DisplacementField) and first.direction == "forward":
        first.check_grid(moving_shape, where)
    if isinstance(last, DisplacementField) and last.direction == "inverse":
        last.check_grid(fixed_shape, where)


__all__ = [
    "DIRECTIONS",
    "INVERT_TOL",
    "DisplacementField",
    "check_grids",
    "fields_in",
    "invert_displacement",
]
