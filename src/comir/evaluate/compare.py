"""Putting several evaluation runs side by side: a markdown table and a figure."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.evaluate.protocol import SUCCESS_FRACTION, success_curve
from comir.evaluate.sets import read_rows
from comir.io import write_text


def _load_run(res_dir: Path) -> dict:
    s_path, r_path = res_dir / "summary.json", res_dir / "results.csv"
    if not s_path.is_file() or not r_path.is_file():
        raise ComirError(
            f"{res_dir}: no summary.json/results.csv; pass folders written by comir evaluate"
        )
    try:
        summary = json.loads(s_path.read_text())
    except ValueError as exc:
        raise ComirError(f"{s_path}: not valid JSON ({exc})") from None
    _, rows = read_rows(r_path)
    errors = np.array([float(r["Error"]) if r.get("Error") else np.nan for r in rows])
    return {"dir": res_dir, "summary": summary, "errors": errors}


def _table(runs: list[dict], levels: list[str]) -> str:
    head = ["run", "method", "model", *[f"L{k}" for k in levels], "all", "median err (px)",
            "s/pair"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        s = r["summary"]
        rates, med = s["success_rate"], s.get("median_error")
        cells = [
            r["dir"].name,
            str(s.get("method")),
            Path(str(s["model"])).name if s.get("model") else "raw",
            *[f"{rates[k]:.3f}" if k in rates else "" for k in levels],
            f"{rates['all']:.3f}",
            f"{med:.2f}" if med is not None else "inf",
            f"{s.get('seconds_per_pair', float('nan')):.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _width(summary: dict) -> float:
    if "width" in summary:
        return float(np.max(summary["width"]))
    return summary["threshold_px"] / SUCCESS_FRACTION


def _plot(runs: list[dict], levels: list[str], path: Path) -> None:
    from comir.plot import plot_compare

    width = max(_width(r["summary"]) for r in runs)
    thresholds = np.linspace(0.0, 0.1 * width, 201)
    plot_compare(
        [r["dir"].name for r in runs],
        levels,
        [[r["summary"]["success_rate"].get(k, np.nan) for k in [*levels, "all"]] for r in runs],
        thresholds,
        [success_curve(r["errors"], thresholds) for r in runs],
        width,
        path,
    )


def compare(results_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> str:
    """Side-by-side table of evaluation runs (markdown), plus ``compare.md``/``compare.png``.

    Parameters
    ----------
    results_dirs : sequence of path
        Folders written by :func:`comir.evaluate.evaluate`.
    out : path, optional
        Where to write ``compare.md`` and ``compare.png``.

    Returns
    -------
    str
        The markdown table: run, method, model, success per level, all, median error (px),
        seconds per pair.
    """
    if not results_dirs:
        raise ComirError("no results folders given; pass one or more folders from comir evaluate")
    runs = [_load_run(Path(d)) for d in results_dirs]
    levels = list(
        dict.fromkeys(k for r in runs for k in r["summary"]["success_rate"] if k != "all")
    )
    table = _table(runs, levels)
    if out is not None:
        out = Path(out)
        write_text(out / "compare.md", table)
        _plot(runs, levels, out / "compare.png")
    return table
