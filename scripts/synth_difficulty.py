"""Raw baselines vs CoMIR on synthetic pairs at each difficulty (issue evidence, ~15 min on 2 cores).

For every difficulty: write synthetic aligned pairs (``comir synth``), train a small model
on the training pairs, cut a level 1–4 evaluation set from separate test pairs, and
evaluate raw ``mi`` / ``sift`` and CoMIR + ``fft`` / ``mi``. Prints one JSON line per
(difficulty, run) and a markdown table at the end.

Usage: ``python scripts/synth_difficulty.py [--out DIR] [--steps N]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from comir.evaluate import evaluate, make_eval
from comir.synth import DIFFICULTIES, write_synth
from comir.train import TrainConfig, train

RUNS = (("raw", "mi"), ("raw", "sift"), ("comir", "fft"), ("comir", "mi"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/comir-synth-difficulty"))
    ap.add_argument("--steps", type=int, default=320)
    ap.add_argument("--width", type=int, default=96)
    args = ap.parse_args(argv)
    table = []
    for diff in DIFFICULTIES:
        root = args.out / diff
        write_synth(root / "train", n=16, size=192, difficulty=diff, seed=1, progress=False)
        write_synth(root / "test", n=6, size=192, difficulty=diff, seed=1000, progress=False)
        cfg = TrainConfig(
            data=str(root / "train"),
            layout="folders",
            steps=args.steps,
            steps_per_epoch=32,
            val_fraction=0.2,
            batch_size=16,
            patch_size=64,
            tau=0.5,
            l2=0.1,
            seed=0,
        )
        run = train(cfg, root / "run", progress=False)
        ev = make_eval(
            root / "test", "folders", "A", "B", root / "eval", width=args.width, per_image=2
        )
        row = {"difficulty": diff}
        for kind, method in RUNS:
            s = evaluate(
                ev,
                method=method,
                model=run if kind == "comir" else None,
                out=root / f"res-{kind}-{method}",
                progress=False,
            )
            rate = s["success_rate"]["all"]
            row[f"{kind} {method}"] = rate
            print(json.dumps({"difficulty": diff, "run": f"{kind}-{method}", **s["success_rate"]}))
        table.append(row)
    cols = [f"{k} {m}" for k, m in RUNS]
    print("\n| difficulty | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for row in table:
        print(f"| {row['difficulty']} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
