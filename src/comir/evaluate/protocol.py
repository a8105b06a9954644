"""Geometry of the public evaluation protocol (Lu et al., PLOS ONE 2022; MultiRegEval).

Everything a set generator and a scorer must agree on: the transformation levels, the
published translation steps and patch offsets, the ground-truth transform of a pair, the
corner frame, the error and the success threshold, and the CSV columns. All matrices go
through :mod:`comir.transform.functional`; see ``docs/reproduce.md`` for the facts read
from the MultiRegEval repository (``utils/make_*_patches.py``, ``evaluate.py``).

The ground truth of a pair is ``T(q) = R(θ) (q + t − c) + c`` ("first translation, then
rotation" about the patch centre ``c = ((w − 1)/2, (w − 1)/2)``): it takes a pixel ``q``
of the transformed patch ``<id>_T`` to the reference-patch point whose content it shows,
so it is the moving → fixed transform of :mod:`comir.transform`. The corners of the
reference patch are written as ``0`` and ``w`` (upper-left, lower-left, lower-right,
upper-right), the ``*_Trans`` corners are ``T`` of them, and the error of a recovered
moving → fixed ``M`` is the mean distance of ``M⁻¹(Trans)`` to the reference corners
(:func:`comir.transform.functional.corner_errors`); success is ``error ≤ 0.02 w``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from comir.errors import ComirError
from comir.transform import functional as F
from comir.transform import patch_corners

#: Rotation step per level in degrees (level k: ±[5(k−1), 5k)).
ROT_STEP_DEG = 5.0
#: Translation step per level in px for a 300 px patch (scaled by w / 300 by default).
TRANS_STEP_300 = 7.0
#: Success threshold as a fraction of the patch width.
SUCCESS_FRACTION = 0.02
#: Registration directions: moving modality, "2", fixed modality.
DIRECTIONS = ("b2a", "a2b", "a2a", "b2b")
#: Ways of placing patches in an image (see :func:`comir.evaluate.make_eval`).
TILINGS = ("context", "public")


@dataclass(frozen=True)
class Published:
    """Settings of a released MultiRegEval set for one patch width.

    Attributes
    ----------
    trans_step : float
        Translation step per level in px (level k: ±[s(k−1), sk)).
    offset : int or None
        Fixed top-left ``(o, o)`` of the one patch per image, or None (grid regions).
    sets : str
        The released sets that use these values.
    """

    trans_step: float
    offset: int | None
    sets: str


#: Published steps and offsets per patch width (``utils/make_zurich_patches.py``,
#: ``make_balvan_patches.py``: w = 300, 7 px; ``make_eliceiri_patches.py``: w = 834,
#: 20 px, one patch at offset 608 px of each image).
PUBLISHED: dict[int, Published] = {
    300: Published(7.0, None, "Zurich, cytological"),
    834: Published(20.0, 608, "histological"),
}

REF_COLUMNS = [f"{a}{i}_Ref" for i in range(1, 5) for a in "XY"]
TRANS_COLUMNS = [f"{a}{i}_Trans" for i in range(1, 5) for a in "XY"]
RECOVER_COLUMNS = [f"{a}{i}_Recover" for i in range(1, 5) for a in "XY"]
INFO_COLUMNS = [
    "Filename",
    *REF_COLUMNS,
    *TRANS_COLUMNS,
    "Displacement",
    "RelativeDisplacement",
    "Tx",
    "Ty",
    "AngleDegree",
    "AngleRad",
    "Reflected",
    "Source",
    "X0",
    "Y0",
]
RESULT_COLUMNS = [
    "Filename",
    "level",
    *RECOVER_COLUMNS,
    "Error",
    "Success",
    "Displacement",
    "Seconds",
    "Status",
]


def translation_step(width: int, override: float | None = None) -> float:
    """Translation step per level in px: ``override``, the published step for ``width``
    (:data:`PUBLISHED`: 7 px at 300, 20 px at 834), else ``7 w / 300``."""
    if override is not None:
        if not float(override) > 0:
            raise ComirError(f"--trans-step {override} is invalid; use a positive number of px")
        return float(override)
    if int(width) in PUBLISHED:
        return PUBLISHED[int(width)].trans_step
    return TRANS_STEP_300 * width / 300.0


def published_offset(width: int) -> int | None:
    """The released set's fixed patch offset for ``width`` (608 at 834), or None."""
    entry = PUBLISHED.get(int(width))
    return None if entry is None else entry.offset


def level_ranges(
    level: int, width: int, trans_step: float | None = None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Magnitude ranges ``((rot_lo, rot_hi), (t_lo, t_hi))`` of a level; signs are random.

    Parameters
    ----------
    level : int
        1, 2, 3, ... (level k: rotation ±[5(k−1), 5k) degrees).
    width : int
        Patch width w; translations are ±[s(k−1), sk) px with s = :func:`translation_step`.
    trans_step : float, optional
        Override s.
    """
    if level < 1:
        raise ComirError(f"transformation level {level} is invalid; use 1, 2, 3 or 4")
    s = translation_step(width, trans_step)
    return (
        (ROT_STEP_DEG * (level - 1), ROT_STEP_DEG * level),
        (s * (level - 1), s * level),
    )


def draw_level(
    level: int, n: int, width: int, seed: int, trans_step: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(angle_deg, tx, ty)``, each ``(n,)``: magnitudes uniform in the level's ranges,
    each sign + or − with probability 1/2; seeded by ``(seed, level)`` only, so a level's
    draws do not depend on the other levels asked for."""
    (r_lo, r_hi), (t_lo, t_hi) = level_ranges(level, width, trans_step)
    rng = np.random.default_rng([seed, 1000 + level])
    mag = rng.uniform(0.0, 1.0, size=(n, 3))
    sign = np.where(rng.random((n, 3)) < 0.5, -1.0, 1.0)
    angle = sign[:, 0] * (r_lo + mag[:, 0] * (r_hi - r_lo))
    tx = sign[:, 1] * (t_lo + mag[:, 1] * (t_hi - t_lo))
    ty = sign[:, 2] * (t_lo + mag[:, 2] * (t_hi - t_lo))
    return angle, tx, ty


def patch_center(width: int | np.ndarray) -> np.ndarray:
    """Rotation centre ``((w − 1)/2, (w − 1)/2)`` of w×w patches: ``(...) -> (..., 2)``."""
    c = (np.asarray(width, dtype=float) - 1.0) / 2.0
    return np.stack([c, c], axis=-1)


def ground_truth_matrices(
    tx: np.ndarray, ty: np.ndarray, angle_rad: np.ndarray, width: int | np.ndarray
) -> np.ndarray:
    """Moving (``_T`` patch) → fixed (``_R`` patch) matrices of the public generator.

    ``T(q) = R(θ) (q + t − c) + c = R(θ) (q − c) + c + R(θ) t``: a rigid map about ``c``
    whose translation is ``R(θ) t``.

    Parameters
    ----------
    tx, ty, angle_rad : ndarray, shape (N,)
        The ``Tx``, ``Ty``, ``AngleRad`` columns.
    width : int or ndarray (N,)
        Patch width(s).

    Returns
    -------
    ndarray, shape (N, 3, 3)
    """
    tx, ty, th = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (tx, ty, angle_rad))
    t = np.stack([tx, ty], axis=-1)
    rt = np.einsum("nij,nj->ni", F.rotation_matrices(th), t)
    c = patch_center(np.broadcast_to(np.asarray(width, dtype=float), th.shape))
    return F.rigid_matrices(th, rt, c)


def reference_corners(width: int) -> np.ndarray:
    """The ``*_Ref`` corners of a w×w patch as the public sets write them, ``(4, 2)``."""
    return patch_corners(width, origin="multiregeval")


def transformed_corners(matrices: np.ndarray, width: int) -> np.ndarray:
    """``*_Trans`` corners ``T(Ref)`` of each ground truth: ``(N, 3, 3) -> (N, 4, 2)``."""
    ref = reference_corners(width)
    return F.apply_matrices(matrices, np.broadcast_to(ref, (len(matrices), 4, 2)))


def recovered_corners(recovered: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """``*_Recover`` corners ``M⁻¹(Trans)`` for recovered moving → fixed ``M`` (NaN rows
    for failures): ``(N, 3, 3), (N, 4, 2) -> (N, 4, 2)``."""
    return F.apply_matrices(F.invert_matrices(recovered), trans)


def displacements(trans: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``Displacement``: mean distance of Trans to Ref corners, ``(N, 4, 2) -> (N,)``."""
    return np.linalg.norm(np.asarray(trans) - np.asarray(ref), axis=-1).mean(axis=-1)


def corner_widths(ref: np.ndarray) -> np.ndarray:
    """Patch width of each pair from its Ref corners (``X4 − X1``): ``(N, 4, 2) -> (N,)``."""
    ref = np.asarray(ref, dtype=float)
    return ref[:, 3, 0] - ref[:, 0, 0]


def success_curve(errors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of ``errors`` ≤ each threshold; NaN errors (failures) never succeed."""
    e = np.asarray(errors, dtype=float)
    if e.size == 0:
        return np.zeros(len(thresholds))
    e = np.sort(np.where(np.isfinite(e), e, np.inf))
    return np.searchsorted(e, np.asarray(thresholds, dtype=float), side="right") / e.size
