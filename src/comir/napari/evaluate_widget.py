"""The Evaluate dock widget: ``comir evaluate`` on a set, its table and success curves.

:func:`comir.evaluate.evaluate` runs in a napari worker (it cannot be interrupted
between pairs; Cancel discards its result). The widget then shows the success rate
per transformation level (public protocol of Lu et al. 2022: success = corner error
≤ 2 % of the patch width) and the success-vs-threshold curves computed from the
``results.csv`` it wrote (:func:`comir.evaluate.score.curves`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox, Table

from comir.napari import common


def run_evaluation(eval_dir: str, method: str, model, direction: str, out, workers: int):
    """Worker body: the summary of :func:`comir.evaluate.evaluate` and its result folder."""
    from comir.evaluate import evaluate

    summary = evaluate(eval_dir, method=method, model=model, direction=direction, out=out,
                       workers=workers, progress=False)  # fmt: skip
    tag = f"{method}{'_comir' if model is not None else ''}_{direction}"
    folder = Path(out) if out is not None else Path(eval_dir) / "results" / tag
    return summary, folder


def read_curves(results_csv: Path, width: float, n: int = 101) -> tuple[np.ndarray, dict]:
    """Thresholds (px, 0 … 0.1 w) and the success curve per level and of all pairs."""
    from comir.evaluate.score import curves

    with open(results_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [r["level"] for r in rows]
    errors = np.array([float(r["Error"]) if r["Error"] not in ("", "nan") else math.nan
                       for r in rows])  # fmt: skip
    thresholds = np.linspace(0.0, 0.1 * width, n)
    return thresholds, curves(labels, errors, thresholds)


class EvaluateWidget(Container):
    """Dock widget: evaluate a registration method on an evaluation set (docs/napari.md)."""

    def __init__(self, napari_viewer):
        from comir.evaluate.protocol import DIRECTIONS
        from comir.register import available_methods

        self.viewer = napari_viewer
        self.eval_dir = FileEdit(label="evaluation set", mode="d", value="")
        self.method = ComboBox(label="method", choices=available_methods(), value="fft")
        self.model = ComboBox(label="model", choices=common.model_choices)
        self.direction = ComboBox(label="direction", choices=list(DIRECTIONS), value="b2a")
        self.workers = SpinBox(label="workers", value=1, min=1, max=64)
        self.out = FileEdit(label="results to", mode="d", value="")
        self.run_button = PushButton(text="Evaluate")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.table = Table(columns=["success", "pairs"])
        super().__init__(
            widgets=[self.eval_dir, self.method, self.model, self.direction, self.workers,
                     self.out,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                               labels=False),
                     self.status, self.table],
        )  # fmt: skip
        self.canvas, self.ax = common.figure_canvas(height=2.6)
        self.native.layout().addWidget(self.canvas)
        self.summary: dict | None = None
        self.job = common.Job(self._set_status, self._set_busy)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.job.cancel)
        common.watch_runs(self)

    def run(self):
        """Start the evaluation worker; returns it (None without a set)."""
        eval_dir = str(self.eval_dir.value)
        if eval_dir in ("", "."):
            self._set_status("choose an evaluation set folder (comir make-eval)")
            return None
        out = str(self.out.value) if str(self.out.value) not in ("", ".") else None
        self._set_status("evaluating ...")
        return self.job.start(
            run_evaluation, eval_dir, self.method.value, common.model_arg(self.model.value),
            self.direction.value, out, int(self.workers.value), desc="comir evaluate",
            on_return=self._show,
        )  # fmt: skip

    def _show(self, value) -> None:
        if self.job.cancel_requested:
            self._set_status("cancelled")
            return
        summary, folder = value
        self.summary = summary
        rates = summary["success_rate"]
        counts = _level_counts(folder / "results.csv")
        self.table.value = {
            "data": [[round(r, 3), counts.get(lv, 0)] for lv, r in rates.items()],
            "index": [lv if lv == "all" else f"level {lv}" for lv in rates],
            "columns": ["success", "pairs"],
        }
        width = summary["width"] if np.isscalar(summary["width"]) else max(summary["width"])
        thresholds, curves = read_curves(folder / "results.csv", float(width))
        self._plot(thresholds, curves, summary["threshold_px"])
        med = summary["median_error"]
        self._set_status(
            f"success {rates['all']:.3f} of {summary['n_pairs']} pairs, median error "
            f"{'inf' if med is None else f'{med:.2f}'} px; {folder}"
        )

    def _plot(self, thresholds, curves: dict, threshold_px: float) -> None:
        ax = self.ax
        ax.clear()
        common.style_axes(ax)
        for name, curve in curves.items():
            ax.plot(thresholds, curve, lw=2.0 if name == "all" else 1.0, label=name)
        ax.axvline(threshold_px, color="#a0a0a0", ls=":", lw=1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("corner error threshold (px)", fontsize=8)
        ax.set_ylabel("success rate", fontsize=8)
        ax.legend(fontsize=6, frameon=False, labelcolor="#d0d0d0")
        self.canvas.draw_idle()

    def _set_status(self, text: str) -> None:
        self.status.value = str(text)[:200]

    def _set_busy(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy


def _level_counts(results_csv: Path) -> dict[str, int]:
    """Pairs per level (and ``all``) in ``results.csv``."""
    with open(results_csv, newline="") as fh:
        labels = [r["level"] for r in csv.DictReader(fh)]
    counts = {lv: labels.count(lv) for lv in dict.fromkeys(labels)}
    counts["all"] = len(labels)
    return counts
