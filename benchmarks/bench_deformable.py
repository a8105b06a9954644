"""Deformable registration on the bundled samples: raw MI B-spline vs CoMIR rigid/affine/deformable.

For each bundled sample, the deformable evaluation protocol (``comir make-eval --deform``,
:mod:`comir.evaluate.deform`) is cut from the held-out half exactly as ``comir demo`` cuts
its rigid set (same widths, 12 patches per level, levels 1–4, seed 0), with a smooth field
of ``SIGMA_FRACTION · w`` px per component at the default length scale ``0.2 w``. Then, on
the same pairs and in one shared 2-process pool (one library thread per process):

* ``mi-bspline``: SimpleITK Mattes MI on the raw images, rigid → affine → cubic B-spline;
* ``comir-rigid``, ``comir-affine``, ``comir-deformable``: the shipped sample model's
  CoMIRs, ``fft`` → NCC affine → NCC displacement field (torch).

One JSON line per figure: median (over pairs) of the per-pair mean TRE in px, success
(mean TRE ≤ 0.02 w), registration seconds per pair (CoMIR rows: plus embedding), and the
mean folded fraction. The baseline of every figure is ``mi-bspline`` on the same sample;
``ratio`` is baseline / value for TRE and time (above 1: better, faster than the baseline)
and value / baseline for success.

Run: ``.venv/bin/python benchmarks/bench_deformable.py [--per-image 12] [--workers 2]``;
``--table LINES.jsonl`` prints the README table of such output instead.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

SIGMA_FRACTION = 0.025
CONFIGS = (
    ("mi-bspline", "mi", False, "deformable"),
    ("comir-rigid", "fft", True, "rigid"),
    ("comir-affine", "fft", True, "affine"),
    ("comir-deformable", "fft", True, "deformable"),
)


def _eval_set(sample: str, work: Path, per_image: int) -> Path:
    from comir import samples
    from comir.demo import DEMOS
    from comir.evaluate import make_eval

    info, width = samples.sample(sample), DEMOS[sample][2]
    hold = samples.export_sample(sample, work / "holdout", split="holdout")
    return make_eval(
        hold, layout=info["layout"], a=info["a_spec"], b=info["b_spec"], out=work / "eval",
        width=width, levels=(1, 2, 3, 4), per_image=per_image, seed=0, norm=info["norm"],
        deform=SIGMA_FRACTION * width,
    )  # fmt: skip


def run_sample(sample: str, per_image: int, pool, work: Path) -> dict:
    """``config → summary`` of every configuration on one sample's deformable set."""
    from comir.embed import load_model
    from comir.evaluate import evaluate

    eval_dir = _eval_set(sample, work / sample, per_image)
    model = load_model(f"sample:{sample}")
    out = {}
    for name, method, comir, transform in CONFIGS:
        out[name] = evaluate(
            eval_dir, method=method, model=model if comir else None, pool=pool,
            out=work / sample / "results" / name, progress=False, transform=transform,
        )  # fmt: skip
    return out


def figures(sample: str, runs: dict) -> list[dict]:
    base = runs["mi-bspline"]
    rows = []

    def per_pair(s: dict) -> float:
        return s["seconds_per_pair"] + (s["embed_seconds_per_pair"] or 0.0)

    metrics = (
        ("median TRE", "px", lambda s: s["tre"]["all"]["median"]),
        ("success (mean TRE <= 2% w)", "fraction", lambda s: s["tre"]["all"]["success"]),
        ("time per pair", "s", per_pair),
        ("folded fraction", "fraction", lambda s: s["folded_fraction"]),
    )
    for name, s in runs.items():
        for label, unit, get in metrics:
            value, ref = get(s), get(base)
            ratio = None
            if isinstance(value, float) and isinstance(ref, float) and ref and value:
                ratio = round(ref / value if unit in ("px", "s") else value / ref, 3)
            rows.append({"name": f"deformable {sample} {name}: {label}", "value": value,
                         "unit": unit, "baseline": ref, "ratio": ratio,
                         "n_pairs": s["n_pairs"], "baseline_name": "mi-bspline"})  # fmt: skip
    return rows


def markdown(lines: list[dict]) -> str:
    """The README table: one row per sample and configuration."""
    cells: dict[tuple[str, str], dict] = {}
    for d in lines:
        head, label = d["name"].split(": ", 1)
        _, sample, config = head.split(" ")
        cells.setdefault((sample, config), {})[label.split(" (")[0]] = d["value"]
    out = ["| sample | run | median TRE (px) | success | s/pair | folded |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for (sample, config), v in cells.items():
        folded = "–" if v["folded fraction"] is None else f"{100 * v['folded fraction']:.2f} %"
        out.append(f"| {sample} | {config} | {v['median TRE']:.2f} | {v['success']:.2f} | "
                   f"{v['time per pair']:.2f} | {folded} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, metavar="LINES.jsonl")
    ap.add_argument("--per-image", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", nargs="+", default=["sentinel2", "ihc"])
    args = ap.parse_args()
    if args.table:
        print(markdown([json.loads(x) for x in args.table.read_text().splitlines() if x.strip()]))
        return
    from comir.evaluate import registration_pool

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, registration_pool(args.workers) as pool:
        for sample in args.samples:
            runs = run_sample(sample, args.per_image, pool, Path(tmp))
            for row in figures(sample, runs):
                print(json.dumps({**row, "load_before": round(load, 2)}), flush=True)


if __name__ == "__main__":
    main()
