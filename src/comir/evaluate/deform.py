"""The deformable evaluation protocol: known rigid motion ∘ smooth random field, landmarks.

``comir make-eval ... --deform SIGMA_PX`` builds each transformed patch from a public-level
rigid motion ``M`` (as without ``--deform``) composed with a smooth random displacement
``u`` of the transformed patch: its pixel ``p`` shows the reference at ``M(p + u(p))``,
so the ground-truth moving → fixed map is ``CompositeTransform([u, M])``.

The field: white noise on a node grid every :data:`NODE_SPACING` px over the patch,
smoothed by a Gaussian of standard deviation ``scale`` px (default :data:`SCALE_FRACTION`
× w), then scaled so that each component has standard deviation ``SIGMA_PX`` over the
nodes; interpolated bilinearly between nodes (:class:`comir.transform.DisplacementField`).
Seeded by ``(seed, level, pair)``: the same seed gives the same fields.

Per level, ``truth/<id>.json`` holds the ground-truth transform (comir JSON) and
``landmarks_test.csv`` a grid of :data:`GRID` × :data:`GRID` moving-patch points with their
true fixed positions, keeping those that land inside the reference patch. Evaluation maps
the moving points by the recovered transform and reports the target registration error
(TRE, px) and rTRE = TRE / diagonal of the fixed patch (the ANHIR convention: Borovec et
al., IEEE TMI 39(10), 2020).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from comir.errors import ComirError, warn
from comir.evaluate.sets import read_rows, write_csv
from comir.transform import CompositeTransform, DisplacementField, MatrixTransform

#: Node spacing (px) of the stored ground-truth field.
NODE_SPACING = 4.0
#: Default length scale of the field as a fraction of the patch width.
SCALE_FRACTION = 0.2
#: Landmarks per patch side.
GRID = 8
LANDMARK_COLUMNS = ["Filename", "Point", "X_Moving", "Y_Moving", "X_Fixed", "Y_Fixed"]


def check_deform(sigma: float | None, scale: float | None, width: int) -> float | None:
    """The length scale in px (None without ``--deform``); bad values raise."""
    if sigma is None:
        if scale is not None:
            raise ComirError("--deform-scale needs --deform SIGMA_PX")
        return None
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ComirError(f"--deform {sigma!r}: give a positive amplitude in px, e.g. 3")
    scale = SCALE_FRACTION * width if scale is None else float(scale)
    if not (scale >= 2 * NODE_SPACING and math.isfinite(scale)):
        raise ComirError(f"--deform-scale {scale!r}: give at least {2 * NODE_SPACING:g} px")
    return scale


def smooth_field(width: int, sigma: float, scale: float, rng) -> DisplacementField:
    """A forward field on a w×w patch: per-component std ``sigma`` px, length ``scale`` px."""
    from scipy.ndimage import gaussian_filter

    n = math.ceil((width - 1) / NODE_SPACING) + 1
    noise = rng.standard_normal((n, n, 2))
    smooth = gaussian_filter(noise, (scale / NODE_SPACING, scale / NODE_SPACING, 0), mode="reflect")
    smooth -= smooth.mean(axis=(0, 1))
    smooth *= sigma / smooth.std(axis=(0, 1))
    return DisplacementField(smooth.astype(np.float32), (0.0, 0.0), (NODE_SPACING,) * 2)


def truth_transforms(matrices: np.ndarray, width: int, sigma: float, scale: float,
                     seed: int, level: int) -> list[CompositeTransform]:  # fmt: skip
    """Ground-truth moving → fixed maps ``[u_j, M_j]`` of one level's pairs."""
    out, folded = [], 0
    for j, m in enumerate(matrices):
        field = smooth_field(width, sigma, scale, np.random.default_rng([seed, level, j, 7]))
        folded += field.folded_fraction() > 0
        out.append(CompositeTransform([field, MatrixTransform(m)]))
    if folded:
        warn(
            f"--deform {sigma:g} at scale {scale:g} px folds {folded} of {len(out)} fields of "
            f"level {level}; use a smaller amplitude or a larger --deform-scale"
        )
    return out


def landmark_grid(width: int, n: int = GRID) -> np.ndarray:
    """``(n·n, 2)`` moving-patch points, an inner grid ``w/(2n)`` px from the border."""
    t = np.linspace(width / (2 * n), width - 1 - width / (2 * n), n)
    xx, yy = np.meshgrid(t, t)
    return np.stack([xx.ravel(), yy.ravel()], axis=-1)


def landmark_rows(name: str, truth: CompositeTransform, width: int) -> list[dict]:
    """Rows of ``landmarks_test.csv`` for one pair: grid points visible in both patches."""
    moving = landmark_grid(width)
    fixed = truth.apply(moving)
    inside = ((fixed >= 0) & (fixed <= width - 1)).all(axis=1)
    return [
        {
            "Filename": name,
            "Point": k,
            "X_Moving": p[0],
            "Y_Moving": p[1],
            "X_Fixed": q[0],
            "Y_Fixed": q[1],
        }  # fmt: skip
        for k, (p, q, ok) in enumerate(zip(moving, fixed, inside))
        if ok
    ]


def write_truth(ldir: Path, names: list[str], truths: list[CompositeTransform], width: int) -> None:
    """``truth/<id>.json`` per pair and the level's ``landmarks_test.csv``."""
    rows = []
    for name, t in zip(names, truths, strict=True):
        t.save(ldir / "truth" / f"{name}.json", note="ground truth, moving → fixed")
        rows += landmark_rows(name, t, width)
    write_csv(ldir / "landmarks_test.csv", LANDMARK_COLUMNS, rows)


def read_landmarks(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """``Filename → (moving (N, 2), fixed (N, 2))`` of a level, None without landmarks."""
    path = Path(folder) / "landmarks_test.csv"
    if not path.is_file():
        return None
    header, rows = read_rows(path)
    missing = [c for c in LANDMARK_COLUMNS if c not in header]
    if missing:
        raise ComirError(f"{path}: lacks column(s) {', '.join(missing)}; rebuild with make-eval")
    out: dict[str, list] = {}
    try:
        for r in rows:
            xy = [float(r[c]) for c in LANDMARK_COLUMNS[2:]]
            out.setdefault(r["Filename"], []).append(xy)
    except ValueError as exc:
        raise ComirError(f"{path}: a coordinate is not a number ({exc})") from None
    table = {k: np.asarray(v, dtype=float) for k, v in out.items()}
    if any(not np.isfinite(v).all() for v in table.values()):
        raise ComirError(f"{path}: NaN or infinite coordinates; rebuild with make-eval")
    return {k: (v[:, :2], v[:, 2:]) for k, v in table.items()}


def tre_table(warped: list, fixed: list, widths: np.ndarray) -> dict:
    """Per-pair TRE statistics; ``warped[i]`` None (a failure) gives NaN.

    Returns ``tre_mean``, ``tre_median``, ``tre_max`` (px) and ``rtre_median``,
    ``rtre_max`` (TRE / diagonal ``w√2``), each ``(N,)``.
    """
    n = len(fixed)
    stats = {k: np.full(n, np.nan) for k in ("tre_mean", "tre_median", "tre_max")}
    for i, (w, f) in enumerate(zip(warped, fixed)):
        if w is None or f is None or not len(f):
            continue
        d = np.linalg.norm(np.asarray(w, float) - f, axis=1)
        d = np.where(np.isfinite(d), d, np.inf)
        stats["tre_mean"][i], stats["tre_median"][i] = d.mean(), np.median(d)
        stats["tre_max"][i] = d.max()
    diag = np.asarray(widths, float) * math.sqrt(2.0)
    stats["rtre_median"], stats["rtre_max"] = stats["tre_median"] / diag, stats["tre_max"] / diag
    return stats
