"""The CoMIR paper's claims, measured with this code: ``scripts/paper_claims.py``.

:func:`run_claims` trains what it needs on the bundled samples (short trainings of the
shipped models' recipe, :data:`~comir.claims.runs.FULL`, or tiny ones with ``quick``),
measures five things (:mod:`comir.claims.sections`) and writes ``OUT/claims.md`` with
figures in ``OUT/claims/`` and every number in ``OUT/claims/results.json``:

1. equivariance, C4 constraint × rotation augmentation (Pielawski et al. 2020, §3);
2. seed stability of the representations (the paper's 70–96 % correlation);
3. CoMIR vs MI vs SIFT per level on both samples, bootstrap 95 % intervals;
4. SIFT on CoMIRs, before/after this project's change of the ``comir`` SIFT preset;
5. the training defaults (critic, τ, L2 activation decay), one changed at a time.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from comir.claims import figures, report, sections
from comir.claims.runs import FULL, QUICK, Budget, Workspace, train_seconds, write_json
from comir.claims.stats import best_match_correlation, bootstrap_ci, channel_correlations

__all__ = [
    "FULL",
    "QUICK",
    "Budget",
    "best_match_correlation",
    "bootstrap_ci",
    "channel_correlations",
    "rewrite",
    "run_claims",
]

SECTIONS = ("equivariance", "seeds", "methods", "sift", "defaults")


def _command(quick: bool, out: Path) -> str:
    return f"python scripts/paper_claims.py{' --quick' if quick else ''} --out {out}"


def run_claims(
    out: str | os.PathLike = "docs",
    quick: bool = False,
    work: str | os.PathLike | None = None,
    progress: bool = False,
) -> Path:
    """Measure the claims and write ``out/claims.md``; returns its path.

    Parameters
    ----------
    out : path
        Folder of ``claims.md``; figures and ``results.json`` go to ``out/claims/``.
    quick : bool
        Tiny models and a few pairs (:data:`QUICK`, well under a minute), for the tests.
    work : path, optional
        Keep the trained runs and evaluation sets there (a re-run reuses finished runs);
        default: a temporary folder.
    progress : bool
        Training progress bars.
    """
    out = Path(out)
    budget = QUICK if quick else FULL
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="comir-claims-") as tmp:
        ws = Workspace(Path(work) if work is not None else Path(tmp), budget, progress)
        results, seconds = {}, {}
        for name in SECTIONS:
            t = time.perf_counter()
            results[name] = getattr(sections, name)(ws)
            seconds[name] = round(time.perf_counter() - t, 1)
            print(f"claims: {name} done ({seconds[name]:.0f} s)", flush=True)
        trained = train_seconds(ws.root)
    meta = {
        "command": _command(quick, out),
        "budget": budget.describe(),
        "seconds": round(time.perf_counter() - t0, 1),
        "section_seconds": seconds,
        "train_seconds": trained,
        "cpus": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    return _write(out, results, meta)


def rewrite(out: str | os.PathLike = "docs", work: str | os.PathLike | None = None) -> Path:
    """Write ``out/claims.md`` and the figures again from ``out/claims/results.json`` (a
    change of layout or wording without re-measuring); with the run's ``work`` folder, the
    training times are read again from its runs' ``metrics.csv``."""
    import json

    out = Path(out)
    data = json.loads((out / "claims" / "results.json").read_text())
    meta = data.pop("meta")
    if work is not None:
        meta["train_seconds"] = train_seconds(Path(work))
    return _write(out, data, meta)


def _write(out: Path, results: dict, meta: dict) -> Path:
    from comir.io import write_text

    figdir = out / "claims"
    footer = (
        f"{meta['command']} — every training: weight seed 0 and patch-stream seed 0 unless "
        f"named; evaluation sets seed 0; bootstrap seed 0. {meta['budget']}."
    )
    makers = {
        "equivariance": figures.equivariance_figure,
        "seeds": figures.seeds_figure,
        "methods": figures.methods_figure,
        "sift": figures.sift_figure,
        "defaults": figures.defaults_figure,
    }
    md = {
        "equivariance": report.equivariance_md,
        "seeds": report.seeds_md,
        "methods": report.methods_md,
        "sift": report.sift_md,
        "defaults": report.defaults_md,
    }
    parts = [_header(meta)]
    for name in SECTIONS:
        makers[name](results[name], figdir / f"{name}.png", footer)
        parts.append(md[name](results[name], f"claims/{name}.png"))
    write_json(figdir / "results.json", {"meta": meta, **results})
    path = out / "claims.md"
    write_text(path, "\n\n".join(parts) + "\n")
    return path


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _threads(meta: dict) -> str:
    n = meta.get("torch_threads")
    return "" if n is None else f", {n} torch thread{'s' if n != 1 else ''}"


def _header(meta: dict) -> str:
    trains = ", ".join(f"{k} {v:.0f} s" for k, v in meta["train_seconds"].items())
    return "\n\n".join([
        "# The CoMIR paper's claims, measured",
        "<!-- written by scripts/paper_claims.py; do not edit by hand -->",
        f"Written by `{meta['command']}` in {meta['seconds']:.0f} s on {meta['cpus']} CPU "
        f"cores{_threads(meta)} (load average {', '.join(map(str, meta['load_average']))} "
        "at the end). "
        f"Trainings: {meta['budget']}; Sentinel-2 RGB (A) / NIR (B) left half for training, "
        "evaluation pairs (levels 1–4, public protocol of Lu et al. 2022, success = corner "
        "error ≤ 2 % of the patch width, moving B onto fixed A) from the right half. "
        "Sections 3 and 4 use the shipped sample models (`sample:sentinel2`, `sample:ihc`; "
        "640 steps of 16 × 64², `scripts/train_sample_model.py`). Intervals: percentile "
        "bootstrap 95 % over pairs; n is small (see each table), so intervals are wide.",
        f"Training times: {trains}. Raw numbers: `claims/results.json`.",
    ])  # fmt: skip
