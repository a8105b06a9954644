"""Scoring by the public protocol: ``results.csv``, ``summary.json`` and success curves.

Per pair (Lu et al., PLOS ONE 2022; MultiRegEval ``evaluate.py``): the recovered corners
``M⁻¹(Trans)``, the error (mean corner distance to Ref, NaN for a failure), success
``error ≤ 0.02 w``. A failed, missing or unreadable pair stays in ``n_pairs`` and counts as
a failure. On deformable sets (:mod:`comir.evaluate.deform`) the corners score the global
part of the recovered transform, and the landmarks the whole of it: TRE / rTRE per pair
and per level, success ``mean TRE ≤ 0.02 w``, and the folded fraction of recovered fields.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from comir.errors import warn
from comir.evaluate import protocol as P
from comir.evaluate.run import PairResult
from comir.evaluate.sets import EvalLevel, write_csv
from comir.io import write_text
from comir.transform import functional as F


def score_pairs(levels: Sequence[EvalLevel], results: Sequence[PairResult]) -> dict:
    """Per-pair arrays of a set in (level, CSV) order.

    Returns
    -------
    dict
        ``labels``, ``names`` (N,), ``recovered`` (N, 4, 2), ``errors`` (N,; NaN for
        failures), ``success`` (N,) bool, ``widths``, ``displacement``, ``seconds`` (N,),
        ``status`` (N,), ``failed`` (N,) bool.
    """
    labels = [lv.label for lv in levels for _ in lv.names]
    names = [name for lv in levels for name in lv.names]
    ref = np.concatenate([lv.ref for lv in levels])
    trans = np.concatenate([lv.trans for lv in levels])
    n = len(names)
    matrices = np.full((n, 3, 3), np.nan)
    seconds, status = np.zeros(n), ["failed"] * n
    for r in results:
        if r.matrix is not None:
            matrices[r.index] = r.matrix
        seconds[r.index], status[r.index] = r.seconds, r.status
    widths = P.corner_widths(ref)
    errors = F.corner_errors(matrices, trans, ref)
    tre = _landmark_scores(levels, results, n, widths)
    return {
        **tre,
        "labels": labels,
        "names": names,
        "recovered": P.recovered_corners(matrices, trans),
        "errors": errors,
        "success": np.isfinite(errors) & (errors <= P.SUCCESS_FRACTION * widths),
        "widths": widths,
        "displacement": P.displacements(trans, ref),
        "seconds": seconds,
        "status": status,
        "failed": ~np.isfinite(matrices).all(axis=(1, 2)),
    }


#: Extra ``results.csv`` columns of deformable sets and the score keys they hold.
TRE_COLUMNS = {"TRE_Mean": "tre_mean", "TRE_Median": "tre_median", "TRE_Max": "tre_max",
               "rTRE_Median": "rtre_median", "rTRE_Max": "rtre_max", "Folded": "folded"}  # fmt: skip


def _landmark_scores(levels, results, n: int, widths: np.ndarray) -> dict:
    """TRE statistics (:func:`comir.evaluate.deform.tre_table`) when the set has landmarks."""
    from comir.evaluate.deform import tre_table

    if all(lv.landmarks is None for lv in levels):
        return {}
    fixed = [
        None if lv.landmarks is None or name not in lv.landmarks else lv.landmarks[name][1]
        for lv in levels
        for name in lv.names
    ]
    warped: list = [None] * n
    folded = np.full(n, np.nan)
    for r in results:
        warped[r.index] = r.landmarks
        folded[r.index] = np.nan if r.folded is None else r.folded
    return {**tre_table(warped, fixed, widths), "folded": folded}


def _tre_summary(s: dict) -> dict:
    """Per level and ``all``: mean / median / max of the per-pair mean TRE (failures
    infinite), median and max rTRE, success ``mean TRE ≤ 0.02 w``."""
    labels = np.array(s["labels"])
    out = {}
    for lb in [*dict.fromkeys(s["labels"]), "all"]:
        keep = np.ones(len(labels), bool) if lb == "all" else labels == lb
        t = np.where(np.isfinite(s["tre_mean"][keep]), s["tre_mean"][keep], np.inf)
        r = np.where(np.isfinite(s["rtre_median"][keep]), s["rtre_median"][keep], np.inf)
        rmax = np.where(np.isfinite(s["rtre_max"][keep]), s["rtre_max"][keep], np.inf)
        ok = t <= P.SUCCESS_FRACTION * s["widths"][keep]
        out[lb] = {k: (float(v) if np.isfinite(v) else None) for k, v in {
            "mean": t.mean(), "median": np.median(t), "max": t.max(),
            "rtre_median": np.median(r), "rtre_max": rmax.max()}.items()}  # fmt: skip
        out[lb]["success"] = float(ok.mean())
    return out


def _result_rows(s: dict) -> list[dict]:
    extra = TRE_COLUMNS if "tre_mean" in s else {}
    return [
        {
            "Filename": s["names"][i],
            "level": s["labels"][i],
            **dict(zip(P.RECOVER_COLUMNS, s["recovered"][i].ravel(), strict=True)),
            "Error": s["errors"][i],
            "Success": int(s["success"][i]),
            "Displacement": s["displacement"][i],
            "Seconds": s["seconds"][i],
            "Status": s["status"][i],
            **{col: s[key][i] for col, key in extra.items()},
        }
        for i in range(len(s["names"]))
    ]


def _missing(results: Sequence[PairResult]) -> list[str]:
    """Files named by ``missing:``/``unreadable:`` statuses, in pair order."""
    return [r.status.split(": ", 1)[1] for r in sorted(results, key=lambda r: r.index) if r.missing]


def _summary(s: dict, header: dict, missing: list[str], embed_seconds: float,
             wall_seconds: float, shard_walls: list[float] | None) -> dict:  # fmt: skip
    labels, success, widths = np.array(s["labels"]), s["success"], s["widths"]
    rates = {lb: float(success[labels == lb].mean()) for lb in dict.fromkeys(s["labels"])}
    rates["all"] = float(success.mean())
    median = float(np.median(np.where(np.isfinite(s["errors"]), s["errors"], np.inf)))
    n = len(labels)
    per_level = [float(widths[labels == lb][0]) for lb in rates if lb != "all"]
    out = {
        "method": header["method"],
        "model": header["model"],
        "direction": header["direction"],
        "eval_dir": header["eval_dir"],
        "width": float(widths[0]) if len(set(widths.tolist())) == 1 else per_level,
        "threshold_px": float(P.SUCCESS_FRACTION * widths[0]),
        "success_rate": rates,
        "median_error": median if np.isfinite(median) else None,
        "seconds_per_pair": float(s["seconds"].mean()),
        "embed_seconds_per_pair": embed_seconds / n if header["model"] is not None else None,
        "wall_seconds": round(wall_seconds, 3),
        "n_pairs": n,
        "n_failed": int(s["failed"].sum()),
        "n_missing": len(missing),
        "missing": missing,
        "method_options": header["method_options"],
    }
    if "tre_mean" in s:
        out["tre"] = _tre_summary(s)
        folded = s["folded"][np.isfinite(s["folded"])]
        out["folded_fraction"] = float(folded.mean()) if folded.size else None
        out["max_folded_fraction"] = float(folded.max()) if folded.size else None
    if shard_walls is not None:
        out["shard_wall_seconds"] = [round(w, 3) for w in shard_walls]
    return out


def finish(
    out: Path,
    levels: Sequence[EvalLevel],
    results: Sequence[PairResult],
    header: dict,
    embed_seconds: float,
    wall_seconds: float,
    shard_wall_seconds: list[float] | None = None,
) -> dict:
    """Score every pair and write ``results.csv``, ``summary.json`` and the success plot.

    Warns once when pairs had a missing or unreadable image. Returns the summary.
    """
    out = Path(out)
    s = score_pairs(levels, results)
    columns = P.RESULT_COLUMNS + (list(TRE_COLUMNS) if "tre_mean" in s else [])
    write_csv(out / "results.csv", columns, _result_rows(s))
    missing = _missing(results)
    if missing:
        warn(
            f"{len(missing)} of {len(s['names'])} pairs have a missing or unreadable image "
            f"(first: {missing[0]}); they count as failures"
        )
    summary = _summary(s, header, missing, embed_seconds, wall_seconds, shard_wall_seconds)
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot_curves(out, s["labels"], s["errors"], float(s["widths"].max()), summary)
    return summary


def curves(labels: Sequence[str], errors: np.ndarray, thresholds: np.ndarray) -> dict:
    """Success vs threshold per level (``"level <k>"``) and ``"all"``."""
    lab = np.asarray(labels)
    out = {
        f"level {lb}": P.success_curve(errors[lab == lb], thresholds)
        for lb in dict.fromkeys(labels)
    }
    out["all"] = P.success_curve(errors, thresholds)
    return out


def plot_curves(out: Path, labels, errors: np.ndarray, width: float, summary: dict) -> None:
    """``success_vs_threshold.png``: thresholds 0 … 0.1 w."""
    from comir.plot import plot_success_curves

    thresholds = np.linspace(0.0, 0.1 * width, 201)
    title = (
        f"{summary['method']}{' on CoMIRs' if summary['model'] else ''} ({summary['direction']})"
    )
    plot_success_curves(
        thresholds, curves(labels, errors, thresholds), width, out / "success_vs_threshold.png",
        title=title,
    )  # fmt: skip
