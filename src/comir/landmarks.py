"""Landmark files, warping points, and the target registration error (TRE).

Point CSVs hold one landmark per row with columns ``x`` and ``y`` (or ``X`` and ``Y``,
as in the ANHIR challenge files) in pixels of the image they were placed on, in comir's
convention (:mod:`comir.transform`: x = column, y = row, origin at the centre of the
top-left pixel). Other columns (an index column, names, ...) are kept when a file is
rewritten with warped coordinates.

Errors follow ANHIR (Borovec et al., "ANHIR: Automatic Non-rigid Histological Image
Registration Challenge", IEEE TMI 2020, section III-B; ISBI 2019): the TRE of a landmark
is the Euclidean distance between the fixed (target) landmark and the moving (source)
landmark mapped by the moving → fixed transform, in fixed-image pixels; the relative TRE
is TRE / √(w² + h²) of the fixed image; a pair is summarised by the median and maximum
rTRE, and robustness is the fraction of landmarks whose TRE is smaller after
registration than before (identity).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comir.errors import ComirError, warn

PathLike = str | os.PathLike


@dataclass
class PointTable:
    """Landmarks read from a CSV: the points and the whole table they came from.

    ``points`` is ``(N, 2)`` float64 (x, y); ``rows`` holds every column as text and
    ``x_col``/``y_col`` name the coordinate columns.
    """

    points: np.ndarray
    header: list[str] = field(default_factory=lambda: ["x", "y"])
    rows: list[list[str]] = field(default_factory=list)
    x_col: str = "x"
    y_col: str = "y"

    def with_points(self, points: np.ndarray) -> PointTable:
        """The same table with the coordinates replaced by ``points`` ``(N, 2)``."""
        pts = np.asarray(points, dtype=float)
        ix, iy = self.header.index(self.x_col), self.header.index(self.y_col)
        rows = [list(r) for r in self.rows] or [["", ""] for _ in pts]
        for r, (x, y) in zip(rows, pts, strict=True):
            r[ix], r[iy] = repr(float(x)), repr(float(y))
        return PointTable(pts, list(self.header), rows, self.x_col, self.y_col)


def _column(header: list[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in header), None)


def read_points(path: PathLike) -> PointTable:
    """Read a landmark CSV (columns ``x``, ``y`` or ``X``, ``Y``; others kept).

    Raises
    ------
    ComirError
        Missing file, no x/y columns, no rows, non-numeric, NaN or infinite coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise ComirError(f"{path}: landmark file not found; check the path")
    try:
        table = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ComirError(f"{path}: cannot read as CSV ({exc})") from None
    table = [r for r in table if any(c.strip() for c in r)]
    header = [c.strip() for c in table[0]] if table else []
    xc, yc = _column(header, ("x", "X")), _column(header, ("y", "Y"))
    if xc is None or yc is None:
        raise ComirError(
            f"{path}: no x/y columns (header {header}); name the coordinate columns x,y or X,Y"
        )
    rows = table[1:]
    if not rows:
        raise ComirError(f"{path}: no landmarks (header only); add one row per point")
    ix, iy = header.index(xc), header.index(yc)
    try:
        pts = np.array([[float(r[ix]), float(r[iy])] for r in rows], dtype=float)
    except (ValueError, IndexError) as exc:
        raise ComirError(f"{path}: a coordinate is not a number ({exc}); fix the row") from None
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise ComirError(
            f"{path}: {int(bad.sum())} landmark(s) with NaN/Inf coordinates (first: row "
            f"{int(np.argmax(bad)) + 1}); remove them or give both pixel coordinates"
        )
    rows = [r + [""] * (len(header) - len(r)) for r in rows]
    return PointTable(pts, header, rows, xc, yc)


def write_points(path: PathLike, table: PointTable | np.ndarray) -> Path:
    """Atomically write a landmark CSV (a :class:`PointTable`, or ``(N, 2)`` points as
    columns ``x``, ``y``)."""
    from comir.io import write_text

    if not isinstance(table, PointTable):
        table = PointTable(np.zeros((0, 2))).with_points(table)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.header)
    writer.writerows(table.rows)
    write_text(path, buf.getvalue())
    return Path(path)


def warp_points(transform, points: np.ndarray) -> np.ndarray:
    """Moving-image points ``(N, 2)`` mapped into the fixed image (``transform.apply``)."""
    return np.asarray(transform.apply(np.asarray(points, dtype=float)), dtype=float)


def check_inside(points: np.ndarray, shape: tuple[int, ...], where: str) -> int:
    """Warn once when points lie outside an image of ``shape`` ``(H, W, ...)``; they are
    kept. Returns how many are outside."""
    h, w = shape[0], shape[1]
    p = np.asarray(points, dtype=float)
    out = (p[:, 0] < -0.5) | (p[:, 0] > w - 0.5) | (p[:, 1] < -0.5) | (p[:, 1] > h - 0.5)
    n = int(out.sum())
    if n:
        warn(
            f"{where}: {n} of {len(p)} landmark(s) lie outside the {w}x{h} image (kept); "
            "check that the CSV belongs to this image and holds pixel coordinates"
        )
    return n


@dataclass
class LandmarkErrors:
    """TRE of one registered pair (see the module docstring for the definitions).

    Arrays are ``(N,)`` in fixed-image pixels (``tre``, ``initial_tre``) or relative to
    the fixed image diagonal ``diagonal`` (``rtre``, ``initial_rtre``).
    """

    tre: np.ndarray
    initial_tre: np.ndarray
    diagonal: float

    @property
    def rtre(self) -> np.ndarray:
        return self.tre / self.diagonal

    @property
    def initial_rtre(self) -> np.ndarray:
        return self.initial_tre / self.diagonal

    @property
    def robustness(self) -> float:
        """Fraction of landmarks whose TRE decreased (NaN errors count as not improved)."""
        return float(np.mean(self.tre < self.initial_tre))

    def summary(self) -> dict:
        """Medians, means and maxima of TRE and rTRE, before and after, and robustness."""

        def stats(a: np.ndarray, name: str) -> dict:
            return {
                f"median_{name}": float(np.median(a)),
                f"mean_{name}": float(np.mean(a)),
                f"max_{name}": float(np.max(a)),
            }

        return {
            "n_landmarks": int(self.tre.size),
            "diagonal_px": self.diagonal,
            **stats(self.tre, "tre_px"),
            **stats(self.rtre, "rtre"),
            **stats(self.initial_tre, "initial_tre_px"),
            **stats(self.initial_rtre, "initial_rtre"),
            "robustness": self.robustness,
        }

    def to_dict(self) -> dict:
        """:meth:`summary` plus the per-landmark errors."""
        return {
            **self.summary(),
            "tre_px": self.tre.tolist(),
            "initial_tre_px": self.initial_tre.tolist(),
        }


def landmark_errors(
    transform, fixed_points: np.ndarray, moving_points: np.ndarray, fixed_shape: tuple[int, ...]
) -> LandmarkErrors:
    """TRE of ``transform`` (moving → fixed) on paired landmarks ``(N, 2)`` each.

    Raises
    ------
    ComirError
        The two sets hold different numbers of landmarks.
    """
    f = np.asarray(fixed_points, dtype=float)
    m = np.asarray(moving_points, dtype=float)
    if f.shape != m.shape:
        raise ComirError(
            f"landmarks: {len(f)} fixed but {len(m)} moving points; the files must pair row by row"
        )
    tre = np.linalg.norm(warp_points(transform, m) - f, axis=1)
    initial = np.linalg.norm(m - f, axis=1)
    return LandmarkErrors(tre, initial, math.hypot(fixed_shape[0], fixed_shape[1]))


def evaluate_landmarks(
    transform, fixed_csv: PathLike, moving_csv: PathLike, fixed_shape, moving_shape
) -> LandmarkErrors:
    """Read both CSVs, warn about points outside their images, and compute the TRE."""
    fixed, moving = read_points(fixed_csv), read_points(moving_csv)
    check_inside(fixed.points, fixed_shape, str(fixed_csv))
    check_inside(moving.points, moving_shape, str(moving_csv))
    return landmark_errors(transform, fixed.points, moving.points, fixed_shape)


__all__ = [
    "LandmarkErrors",
    "PointTable",
    "check_inside",
    "evaluate_landmarks",
    "landmark_errors",
    "read_points",
    "warp_points",
    "write_points",
]
