"""Matplotlib figures, written atomically as PNG (Agg backend, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from comir.io import atomic_path, percentile_scale, standardize  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG via a temporary file and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- evaluation
def _threshold_axes(ax, thresholds, width: float, ylabel: str) -> None:
    """Success-vs-threshold axes: px below, % of the patch width on top, the 2 % line."""
    ax.axvline(0.02 * width, color="grey", ls="--", lw=1)
    ax.set_xlim(thresholds[0], thresholds[-1])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("error threshold (px)")
    ax.set_ylabel(ylabel)
    top = ax.secondary_xaxis(
        "top", functions=(lambda x: 100 * x / width, lambda p: p * width / 100)
    )
    top.set_xlabel("error threshold (% of patch width)")
    ax.grid(alpha=0.3)


def plot_success_curves(
    thresholds_px, curves: dict, width: float, path: str | os.PathLike, title: str = ""
) -> Path:
    """Success rate vs error threshold, one line per entry of ``curves``.

    Parameters
    ----------
    thresholds_px : array (T,)
        Thresholds in pixels.
    curves : dict of str -> array (T,)
        Success rate at each threshold (e.g. one per level and ``"all"``).
    width : float
        Patch width w; the top axis shows thresholds in % of w and the protocol's
        2 % success threshold is marked.
    """
    import numpy as np

    t = np.asarray(thresholds_px, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, rate) in enumerate(curves.items()):
        style = dict(color="k", lw=2.2) if label == "all" else dict(color=f"C{i}", lw=1.4)
        ax.plot(t, np.asarray(rate, dtype=float), label=label, **style)
    ax.text(0.02 * width, 0.02, " 2 % of w", color="grey", va="bottom")
    _threshold_axes(ax, t, width, "success rate")
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_compare(
    runs: list[str],
    levels: list[str],
    rates: list[list[float]],
    thresholds_px,
    curves: list,
    width: float,
    path: str | os.PathLike,
) -> Path:
    """Grouped bars of success per level (+ all) per run, and every run's success curve.

    Parameters
    ----------
    runs : list of str
        Run names (R).
    levels : list of str
        Level labels (K); bars are drawn for each level and ``all``.
    rates : list of R lists of K + 1 floats
        Success rates per level, then overall.
    thresholds_px : array (T,)
    curves : list of R arrays (T,)
        Overall success rate vs threshold of each run.
    width : float
        Patch width (marks the 2 % threshold).
    """
    import numpy as np

    groups = [f"L{k}" for k in levels] + ["all"]
    r = np.asarray(rates, dtype=float).reshape(len(runs), len(groups))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(groups))
    bw = 0.8 / max(len(runs), 1)
    for i, name in enumerate(runs):
        ax1.bar(x + (i - (len(runs) - 1) / 2) * bw, r[i], bw, label=name, color=f"C{i % 10}")
    ax1.set_xticks(x, groups)
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("success rate (error ≤ 2 % of w)")
    ax1.grid(axis="y", alpha=0.3)
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(len(runs), 3))
    t = np.asarray(thresholds_px, dtype=float)
    for i, (name, c) in enumerate(zip(runs, curves)):
        ax2.plot(t, np.asarray(c, dtype=float), label=name, color=f"C{i % 10}")
    _threshold_axes(ax2, t, width, "success rate (all levels)")
    ax2.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _display(image):
    """Any ``(H, W[, C])`` image → float ``(H, W)`` or ``(H, W, 3)`` in [0, 1] for display.

    The 0.5/99.5 percentiles over all shown channels map to 0/1
    (:func:`comir.io.percentile_scale`); beyond them values are clipped. More than three
    channels show the first three, two channels their mean.
    """
    import numpy as np

    x = np.asarray(image)
    if x.ndim == 3 and x.shape[2] not in (1, 3):
        x = x[..., :3] if x.shape[2] > 3 else x.mean(axis=2)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    return np.clip(percentile_scale(x, 0.5, 99.5, per_channel=False), 0.0, 1.0)


def _standardised(image, like=None):
    """Grey image, standardised by the mean/std of ``like`` (default: itself), in [0, 1].

    ±2.5 standard deviations span [0, 1] (:func:`comir.io.standardize`); ``like`` keeps a
    warped copy with empty borders on the scale of its original.
    """
    import numpy as np

    def grey(a):
        x = np.asarray(a, dtype=np.float64)
        return x.mean(axis=2) if x.ndim == 3 else x

    z = standardize(grey(image), reference=None if like is None else grey(like))
    return np.clip(0.5 + z / 5.0, 0.0, 1.0)


def colour_overlay(fixed, moving, moving_like=None):
    """Green = fixed, magenta = moving, grey where they agree; ``(H, W, 3)`` in [0, 1].

    Both are standardised first, so that the same content at another brightness or contrast
    still blends to grey. ``moving_like``: the image whose statistics scale ``moving``
    (e.g. the unwarped original of a warped ``moving``).
    """
    import numpy as np

    f, m = _standardised(fixed), _standardised(moving, moving_like)
    return np.stack([m, f, m], axis=-1)


def plot_registration_overlay(
    fixed, moving, registered, path: str | os.PathLike, title: str = ""
) -> Path:
    """2×2 figure: fixed, moving, colour overlay before and after registration.

    ``moving`` is shown in the fixed frame without transformation for "before" (cropped or
    zero-padded at the bottom/right to the fixed size); ``registered`` is the moving image
    warped into the fixed frame.
    """
    import numpy as np

    h, w = np.asarray(fixed).shape[:2]
    mv = np.asarray(moving)
    before = np.zeros((h, w) + mv.shape[2:], dtype=np.float64)
    hh, ww = min(h, mv.shape[0]), min(w, mv.shape[1])
    before[:hh, :ww] = mv[:hh, :ww]
    fig, axes = plt.subplots(2, 2, figsize=(9, 9))
    panels = [
        (_display(fixed), "fixed"),
        (_display(moving), "moving"),
        (colour_overlay(fixed, before, mv), "before (green = fixed, magenta = moving)"),
        (colour_overlay(fixed, registered, mv), "after registration"),
    ]
    for ax, (img, label) in zip(axes.ravel(), panels):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_loss(metrics_rows: list[dict], path: str | os.PathLike) -> Path:
    """Training loss per step (raw and smoothed) and validation loss per epoch.

    ``metrics_rows`` are rows of ``metrics.csv`` (keys ``step``, ``loss``, ``val_loss``;
    NaN where a value is missing).
    """
    import numpy as np

    step = np.array([float(r["step"]) for r in metrics_rows])
    loss = np.array([float(r["loss"]) for r in metrics_rows])
    val = np.array([float(r.get("val_loss", np.nan)) for r in metrics_rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if len(step):
        ax.plot(step, loss, color="C0", alpha=0.3, lw=0.8)
        k = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(step[k - 1 :], smooth, color="C0", label="train")
        has_val = np.isfinite(val)
        if has_val.any():
            ax.plot(step[has_val], val[has_val], "o-", color="C1", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def plot_modalities_and_comirs(image_a, image_b, comir_a, comir_b, path: str | os.PathLike) -> Path:
    """Both modalities of one scene (top) and their CoMIRs (bottom), ``(H, W[, C])`` each."""
    h, w = image_a.shape[:2]
    grid = (1, 4) if h > w else (2, 2)
    fig, axes = plt.subplots(*grid, figsize=(12, 12 * h / w / 4 + 0.5) if h > w else (8, 8.5))
    panels = [
        (image_a, "modality A"),
        (image_b, "modality B"),
        (comir_a, "CoMIR of A"),
        (comir_b, "CoMIR of B"),
    ]
    for ax, (img, label) in zip(axes.ravel(), panels):
        d = _display(img)
        ax.imshow(d, cmap="gray" if d.ndim == 2 else None, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_equivariance(angles_deg, curves: dict, path: str | os.PathLike) -> Path:
    """Correlation of f(rotate_θ(x)) with rotate_θ(f(x)) against θ, one line per label."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, corr in curves.items():
        ax.plot(angles_deg, corr, marker=".", label=label)
    for k in range(0, 361, 90):
        ax.axvline(k, color="0.85", lw=0.8, zorder=0)
    ax.set_xlim(0, 360)
    ax.set_xticks(range(0, 361, 45))
    ax.set_ylim(min(0.0, float(min(min(c) for c in curves.values()))), 1.02)
    ax.set_xlabel("rotation θ (degrees)")
    ax.set_ylabel("Pearson correlation")
    ax.set_title("Rotation equivariance of the representation", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


def plot_registration_rows(rows: list[dict], path: str | os.PathLike) -> Path:
    """One row per example: plain panels, then colour overlays.

    Each row is ``{"title": str, "panels": [(label, image)], "overlays": [(label, fixed,
    warped, original)]}``; ``warped`` is ``original`` resampled into the frame of ``fixed``.
    """
    import numpy as np

    n_cols = max(len(r["panels"]) + len(r["overlays"]) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.4 * n_cols, 2.5 * len(rows)))
    axes = np.atleast_2d(axes)
    for ax_row, r in zip(axes, rows):
        panels = [(label, _display(img)) for label, img in r["panels"]]
        panels += [(label, colour_overlay(f, w, o)) for label, f, w, o in r["overlays"]]
        for ax in ax_row:
            ax.axis("off")
        for ax, (label, img) in zip(ax_row, panels):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            ax.set_title(label, fontsize=8)
        ax_row[0].text(
            -0.08,
            0.5,
            r["title"],
            transform=ax_row[0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    fig.suptitle("overlays: green = fixed, magenta = moving, grey where they agree", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_deformation(
    transform, fixed, registered, path: str | os.PathLike, title: str = "", lines: int = 16
) -> Path:
    """Two panels: the registered image under the deformed grid, and the Jacobian map.

    Left: ``registered`` (the moving image in the fixed frame) with the lines of a regular
    grid of the *moving* image drawn where ``transform`` (moving → fixed) puts them.
    Right: the determinant of the Jacobian of the fixed → moving map at every fixed pixel
    (1: area kept; < 1 and > 1: local contraction and expansion; ≤ 0: folding, in black),
    from the finite differences of ``transform.apply_inverse`` on the fixed pixel grid.
    """
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    h, w = np.asarray(fixed).shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    q = transform.apply_inverse(np.stack([xx, yy], axis=-1))
    dxx, dxy = np.gradient(q[..., 0], axis=1), np.gradient(q[..., 0], axis=0)
    dyx, dyy = np.gradient(q[..., 1], axis=1), np.gradient(q[..., 1], axis=0)
    det = dxx * dyy - dxy * dyx
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    axes[0].imshow(_display(registered), cmap="gray", interpolation="nearest")
    t = np.linspace(0.0, 1.0, 200)
    for k in np.linspace(0.0, 1.0, lines + 1):
        for pts in (np.stack([t * (w - 1), np.full_like(t, k * (h - 1))], -1),
                    np.stack([np.full_like(t, k * (w - 1)), t * (h - 1)], -1)):  # fmt: skip
            p = transform.apply(pts)
            axes[0].plot(p[:, 0], p[:, 1], color="#ffb000", lw=0.7)
    axes[0].set_xlim(-0.5, w - 0.5), axes[0].set_ylim(h - 0.5, -0.5)
    axes[0].set_title("moving-image grid mapped into the fixed frame", fontsize=9)
    finite = det[np.isfinite(det)]
    spread = max(1e-3, float(np.abs(finite - 1).max()) if finite.size else 1.0)
    im = axes[1].imshow(np.ma.masked_less_equal(det, 0), cmap="RdBu_r", interpolation="nearest",
                        norm=TwoSlopeNorm(1.0, 1.0 - spread, 1.0 + spread))  # fmt: skip
    axes[1].set_facecolor("black")
    folded = float(np.mean(~(det > 0)))
    axes[1].set_title(f"Jacobian determinant (folded {100 * folded:.2f} %)", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
