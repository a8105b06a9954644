"""Does scale augmentation let one model serve a coarser pyramid level? (IHC sample)

Trains the shipped IHC recipe (:func:`comir.demo.sample_train_config`) once more with
``--scale-range LO:1`` and compares it with the shipped one-scale ``sample:ihc`` on two
evaluation sets cut from the held-out half exactly as ``comir demo`` cuts its set (levels
1–4, 12 patches per level, seed 0): at full resolution (w = 128) and at a 2× coarser,
block-mean level of the same images (w = 64). CoMIR + ``fft``; success per level.

Run: ``.venv/bin/python scripts/scale_augmentation.py [--low 0.5] [--work DIR]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def coarser(src: Path, dst: Path, factor: int) -> Path:
    """Every TIFF of ``src`` as its ``factor``× block mean (same dtype) in ``dst``."""
    from comir.io import read_image, write_image

    for path in sorted(src.glob("*.tif")):
        img = read_image(path).astype(np.float64)
        h, w = (s // factor * factor for s in img.shape[:2])
        img = img[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).mean((1, 3))
        write_image(dst / path.name, np.rint(img).astype(np.uint16))
    return dst


def main() -> None:
    from comir import samples
    from comir.demo import sample_train_config
    from comir.evaluate import evaluate, make_eval
    from comir.train import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--low", type=float, default=0.5)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="comir-scale-"))
    info = samples.sample("ihc")
    train_dir = samples.export_sample("ihc", work / "train", split="train")
    hold = samples.export_sample("ihc", work / "holdout", split="holdout")
    config = sample_train_config("ihc", train_dir, hold)
    config.augment = {**config.augment, "scale_min": args.low, "scale_max": 1.0}
    t0 = time.perf_counter()
    run = work / "run-scale"
    if not (run / "model.safetensors").is_file():
        train(config, run, progress=False)
    print(f"trained with scale range {args.low}:1 in {time.perf_counter() - t0:.0f} s")
    sets = {"full resolution, w = 128": (hold, 128),
            "2x coarser level, w = 64": (coarser(hold, work / "holdout-2x", 2), 64)}  # fmt: skip
    rows = []
    for label, (folder, width) in sets.items():
        ev = make_eval(folder, layout=info["layout"], a=info["a_spec"], b=info["b_spec"],
                       out=work / f"eval-{width}", width=width, per_image=12, seed=0,
                       norm=info["norm"])  # fmt: skip
        for name, model in (("sample:ihc (one scale)", "sample:ihc"),
                            (f"scale-augmented {args.low}:1", str(run))):  # fmt: skip
            s = evaluate(ev, method="fft", model=model, out=work / f"res-{width}-{len(rows)}",
                         progress=False)  # fmt: skip
            rows.append((label, name, s["success_rate"]))
    print("| set | model | L1 | L2 | L3 | L4 | all |\n|---|---|---|---|---|---|---|")
    for label, name, r in rows:
        print(f"| {label} | {name} | " + " | ".join(f"{r[k]:.2f}" for k in "1234") +
              f" | {r['all']:.2f} |")  # fmt: skip
    (work / "scale_augmentation.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
