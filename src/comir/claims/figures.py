"""Figures of the claims report (matplotlib, PNG, via :func:`comir.plot.save_figure`).

Every figure carries a footer naming the command that made it and its seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from comir.plot import plt, save_figure

LEVELS = ("1", "2", "3", "4", "all")


def _footer(fig, footer: str) -> None:
    fig.text(0.01, -0.02, footer, fontsize=7, color="#555", ha="left", va="top", wrap=True)


def _bars(ax, rows: dict, title: str, levels=LEVELS) -> None:
    """Grouped bars: one group per level, one bar per row, bootstrap 95 % error bars."""
    n = len(rows)
    width = 0.8 / max(n, 1)
    x = np.arange(len(levels))
    for i, (name, rates) in enumerate(rows.items()):
        mean = np.array([rates[lv][0] for lv in levels])
        low = np.array([rates[lv][1] for lv in levels])
        high = np.array([rates[lv][2] for lv in levels])
        ax.bar(x + (i - (n - 1) / 2) * width, mean, width, label=name, color=f"C{i}",
               yerr=np.vstack([mean - low, high - mean]), capsize=2, error_kw={"lw": 0.8})  # fmt: skip
    ax.set_xticks(x, [f"level {lv}" if lv != "all" else "all" for lv in levels])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (error ≤ 2 % of w)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def equivariance_figure(res: dict, path: Path, footer: str) -> Path:
    """2 × 2 panels of equivariance curves (A and B) and a success panel per method."""
    angles = np.asarray(res["angles"])
    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 1.25])
    names = list(res["variants"])
    for k, name in enumerate(names):
        ax = fig.add_subplot(grid[k // 2, k % 2])
        v = res["variants"][name]
        for m, label in (("a", "A (RGB)"), ("b", "B (NIR)")):
            ax.plot(angles, v["curves"][m], label=label, lw=1.5)
        for q in range(0, 361, 90):
            ax.axvline(q, color="grey", lw=0.6, ls=":")
        ax.set_ylim(min(0.0, np.nanmin([np.nanmin(v["curves"][m]) for m in "ab"])), 1.02)
        ax.set_xticks(range(0, 361, 90))
        ax.set_title(f"{name}", fontsize=10)
        ax.set_xlabel("rotation θ (°)")
        ax.set_ylabel("corr(f(rot θ x), rot θ f(x))")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    for row, method in enumerate(("fft", "sift")):
        ax = fig.add_subplot(grid[row, 2])
        rows = {n: res["variants"][n]["success"][method] for n in names}
        _bars(ax, rows, f"CoMIR + {method} success per level")
        _legend_above(ax, ncol=2)
    fig.suptitle("C4 constraint × rotation augmentation (Sentinel-2, held-out half)", fontsize=12)
    fig.tight_layout()
    _footer(fig, footer)
    return save_figure(fig, path)


def _legend_above(ax, ncol: int, fontsize: int = 7) -> None:
    """The legend of a success-rate panel in a band above the bars (rates stay 0–1)."""
    ax.set_ylim(0, 1.36)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(fontsize=fontsize, loc="upper center", ncol=ncol)


def seeds_figure(res: dict, path: Path, footer: str) -> Path:
    """Correlations between runs (raw and best permutation/sign) and success per run."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{p['runs'][0]} vs {p['runs'][1]}\n" + p["what"].replace(", ", ",\n")
              for p in res["pairs"]]  # fmt: skip
    x = np.arange(len(labels))
    for i, (m, kind) in enumerate((m, k) for m in "ab" for k in ("raw", "best")):
        vals = [p[m][kind] for p in res["pairs"]]
        name = f"{'A (RGB)' if m == 'a' else 'B (NIR)'}, {'raw' if kind == 'raw' else 'best perm./sign'}"
        ax1.bar(x + (i - 1.5) * 0.2, vals, 0.2, label=name, color=f"C{i}", zorder=2)
    ax1.axhspan(0.70, 0.96, color="gold", alpha=0.3, label="paper: 70–96 %", zorder=0)
    ax1.axhline(0, color="k", lw=0.6)
    ax1.set_xticks(x, labels, fontsize=7)
    ax1.set_ylim(-1.05, 1.05)
    ax1.set_ylabel("Pearson correlation of CoMIRs")
    ax1.set_title("CoMIRs of the held-out half from two runs", fontsize=10)
    ax1.legend(fontsize=7, loc="lower left")
    ax1.grid(axis="y", alpha=0.3)
    rows = {}
    for run, by_method in res["success"].items():
        for method, rates in by_method.items():
            rows[f"{run} + {method}"] = rates
    _bars(ax2, rows, "success per run")
    _legend_above(ax2, ncol=3)
    fig.tight_layout()
    _footer(fig, footer)
    return save_figure(fig, path)


def methods_figure(res: dict, path: Path, footer: str) -> Path:
    """Per-level success of every method on both samples, bootstrap 95 % intervals."""
    fig, axes = plt.subplots(1, len(res), figsize=(7 * len(res), 4.8), squeeze=False)
    for ax, (sample, rows) in zip(axes[0], res.items(), strict=True):
        n = next(iter(rows.values()))["n"]
        _bars(ax, rows, f"{sample}: {n['1']} pairs per level, {n['all']} in all")
        _legend_above(ax, ncol=3)
    fig.tight_layout()
    _footer(fig, footer)
    return save_figure(fig, path)


def sift_figure(res: dict, path: Path, footer: str) -> Path:
    """SIFT on CoMIRs: success before/after per sample, keypoint/match/inlier counts and the
    ablation of the new preset."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    rows = {f"{s}: {k}": v["success"] for s in ("sentinel2", "ihc")
            for k, v in res[s]["settings"].items()}  # fmt: skip
    _bars(axes[0], rows, "CoMIR + SIFT (shipped sample models)")
    _legend_above(axes[0], ncol=2, fontsize=6)
    settings = list(res["sentinel2"]["settings"])
    keys = ("keypoints_moving", "matches", "inliers")
    x = np.arange(len(keys))
    for i, name in enumerate(settings):
        vals = [res["sentinel2"]["settings"][name][k] for k in keys]
        axes[1].bar(x + (i - 1) * 0.27, vals, 0.27, label=name, color=f"C{i}")
    axes[1].set_xticks(x, ["keypoints (moving)", "matches", "RANSAC inliers"])
    axes[1].set_yscale("log")
    axes[1].set_ylabel("median over pairs with a result")
    axes[1].set_title("sentinel2 CoMIRs: what SIFT finds", fontsize=10)
    axes[1].legend(fontsize=7)
    axes[1].grid(axis="y", alpha=0.3)
    abl = {"new preset": res["sentinel2"]["settings"]["after (comir preset)"]["success"]["all"]}
    abl |= res["ablation"]
    names = list(abl)
    mean = np.array([abl[n][0] for n in names])
    err = np.vstack([mean - [abl[n][1] for n in names], [abl[n][2] for n in names] - mean])
    axes[2].barh(np.arange(len(names)), mean, xerr=err, color="C2", capsize=2)
    axes[2].set_yticks(np.arange(len(names)), names, fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xlim(0, 1.05)
    axes[2].set_xlabel("success, all levels (sentinel2)")
    axes[2].set_title("one setting of the new preset set back", fontsize=10)
    axes[2].grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _footer(fig, footer)
    return save_figure(fig, path)


def defaults_figure(res: dict, path: Path, footer: str) -> Path:
    """Success (all levels, bootstrap 95 %) of each training variant with fft and SIFT."""
    names = list(res)
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(names) + 1.5))
    y = np.arange(len(names))
    for i, method in enumerate(("fft", "sift")):
        r = [res[n]["success"][method]["all"] for n in names]
        mean = np.array([v[0] for v in r])
        err = np.vstack([mean - [v[1] for v in r], [v[2] for v in r] - mean])
        ax.barh(y + (i - 0.5) * 0.38, mean, 0.38, xerr=err, capsize=2, label=f"CoMIR + {method}",
                color=f"C{i}")  # fmt: skip
        for yy, v in zip(y + (i - 0.5) * 0.38, mean, strict=True):
            ax.text(0.01, yy, f"{v:.2f}", va="center", fontsize=7, color="k")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("success rate, all levels (error ≤ 2 % of w)")
    ax.set_title("training settings, one changed at a time (Sentinel-2)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _footer(fig, footer)
    return save_figure(fig, path)
