"""Success rates of raw ``mi`` and CoMIR + ``fft`` on both make-eval tilings (docs/reproduce.md).

The set of ``comir demo`` (Sentinel-2 sample, held-out half, w = 96, levels 1–4, 12 patches
per image, seed 0) is cut with ``--tiling context`` and ``--tiling public`` and evaluated
with the shipped model ``sample:sentinel2``. Prints one JSON line per run and a table.

Usage: ``python scripts/compare_tilings.py [--out DIR] [--sample sentinel2] [--workers N]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from comir import samples
from comir.demo import DEMOS
from comir.evaluate import evaluate, make_eval

RUNS = (("raw", "mi"), ("comir", "fft"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/comir-tilings"))
    ap.add_argument("--sample", default="sentinel2", choices=sorted(DEMOS))
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    info = samples.sample(args.sample)
    hold = samples.export_sample(args.sample, args.out / "holdout", split="holdout")
    width = DEMOS[args.sample][2]
    rows = []
    for tiling in ("context", "public"):
        ev = make_eval(
            hold, layout=info["layout"], a=info["a_spec"], b=info["b_spec"],
            out=args.out / f"eval-{tiling}", width=width, levels=(1, 2, 3, 4), per_image=12,
            seed=0, norm=info["norm"], tiling=tiling,
        )  # fmt: skip
        for kind, method in RUNS:
            model = f"sample:{args.sample}" if kind == "comir" else None
            s = evaluate(ev, method=method, model=model, out=args.out / f"res-{tiling}-{kind}-"
                         f"{method}", workers=args.workers, progress=False)  # fmt: skip
            rows.append((tiling, f"{kind} {method}", s["success_rate"], s["n_pairs"]))
            print(json.dumps({"tiling": tiling, "run": f"{kind}-{method}", **s["success_rate"]}))
    print("\n| tiling | run | L1 | L2 | L3 | L4 | all | pairs |\n|---|---|---|---|---|---|---|---|")
    for tiling, run, r, n in rows:
        cells = " | ".join(f"{r[k]:.2f}" for k in ("1", "2", "3", "4", "all"))
        print(f"| {tiling} | {run} | {cells} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
