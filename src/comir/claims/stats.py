"""Statistics of the claims report: bootstrap intervals and CoMIR-to-CoMIR correlations.

CoMIRs of two training runs need not use the same channel order or sign: InfoNCE with
the MSE, L1 or cosine critic is unchanged when every output channel of both encoders is
permuted or negated together. :func:`best_match_correlation` therefore reports the
correlation after the best channel permutation and signs, next to the raw per-channel one
(:func:`channel_correlations`).
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["best_match_correlation", "bootstrap_ci", "channel_correlations", "pearson"]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two arrays of the same size (NaN when either is constant)."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def _channels(z: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, L)`` → ``(L, H·W)`` float64."""
    z = np.asarray(z, np.float64)
    z = z[..., None] if z.ndim == 2 else z
    return z.reshape(-1, z.shape[-1]).T


def channel_correlations(z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
    """Correlation matrix ``C[i, j] = corr(z1[..., i], z2[..., j])`` over all pixels.

    Parameters
    ----------
    z1, z2 : ndarray, shape (H, W) or (H, W, L)
        CoMIRs of the same image by two models with the same channel count L.

    Returns
    -------
    ndarray, shape (L, L)
        The raw per-channel correlations are its diagonal.
    """
    a, b = _channels(z1), _channels(z2)
    if a.shape != b.shape:
        raise ValueError(f"CoMIRs differ in shape: {a.shape} vs {b.shape}")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    na = np.sqrt((a * a).sum(axis=1))
    nb = np.sqrt((b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a @ b.T) / np.outer(na, nb)


def best_match_correlation(z1: np.ndarray, z2: np.ndarray) -> tuple[float, tuple, tuple]:
    """Mean channel correlation after the best permutation and signs of ``z2``'s channels.

    Parameters
    ----------
    z1, z2 : ndarray, shape (H, W) or (H, W, L), L ≤ 6
        All ``L!`` permutations are tried (each channel's sign is then the better one).

    Returns
    -------
    corr : float
        ``mean_i |C[i, perm[i]]|``, i.e. the correlation of ``z1`` with ``z2`` reordered
        by ``perm`` and channel ``i`` multiplied by ``signs[i]``.
    perm : tuple of int
    signs : tuple of int (±1)
    """
    c = channel_correlations(z1, z2)
    n = c.shape[0]
    if n > 6:
        raise ValueError(f"best_match_correlation tries all L! permutations; L = {n} is too many")
    best, best_perm = -np.inf, tuple(range(n))
    for perm in itertools.permutations(range(n)):
        score = np.abs(c[np.arange(n), list(perm)]).mean()
        if score > best:
            best, best_perm = score, perm
    signs = tuple(int(np.sign(c[i, j]) or 1) for i, j in enumerate(best_perm))
    return float(best), best_perm, signs


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap interval (resampling the values).

    Parameters
    ----------
    values : ndarray, shape (N,)
        Per-pair outcomes, e.g. success as 0/1.
    n_boot : int
        Bootstrap resamples, drawn with ``seed``.
    level : float
        Coverage of the interval.

    Returns
    -------
    mean, low, high : float
        NaN for an empty input. A constant input gives ``low == high == mean``.
    """
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(low), float(high)
