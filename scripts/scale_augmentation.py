"""Does scale augmentation let one model serve coarser pyramid levels? (IHC sample)

Trains the shipped IHC recipe (:func:`comir.demo.sample_train_config`) once per
``--low`` value with ``--scale-range LOW:1`` and compares each such model with the
shipped one-scale ``sample:ihc`` on evaluation sets cut from the held-out half exactly
as ``comir demo`` cuts its set (levels 1–4, 12 patches per level, seed 0): one set per
``--factors`` value f, on the f× coarser block-mean level of the same images (the level
:func:`comir.slide.open_slide` derives, i.e. what ``comir register`` sees on a whole
slide) with patch width w = 128 / f. CoMIR + ``fft``; success per level
(corner error ≤ 0.02 w, the public protocol) and the median corner error.

Trained runs are kept in ``--work`` (``run-scale-<low>``) and reused by later calls.
The held-out half is 512 × 256 px, so the 4× level is 128 × 64 and its 12 patches per
level (w = 32) overlap heavily: pairs within a set are correlated and n is small.

Run: ``.venv/bin/python scripts/scale_augmentation.py --factors 1,2,4 --low 0.25 --low 0.5
--work DIR`` (prints a markdown table, writes ``DIR/scale_augmentation.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

FULL_WIDTH = 128  # patch width of the demo's evaluation set at full resolution


def number_list(values: list[str], kind=float) -> list:
    """``["0.25", "0.5,1"]`` (an option given several times or as a list) → ``[0.25, 0.5, 1]``."""
    return [kind(v) for item in values for v in item.split(",") if v.strip()]


def block_mean_level(image: Path, factor: int) -> np.ndarray:
    """The ``factor``× coarser block-mean level of ``image`` as the slide reader derives it.

    Parameters
    ----------
    image : path
        A plain TIFF ``(H, W[, C])``.
    factor : int
        A power of two (1 returns the image itself).

    Returns
    -------
    ndarray
        ``(⌈H / factor⌉, ⌈W / factor⌉[, C])``, the dtype of the file.
    """
    from comir.slide import open_slide

    with open_slide(image) as slide:
        for i, level in enumerate(slide.levels):
            if tuple(level.downsample) == (factor, factor):
                return slide.read_level(i)
    raise SystemExit(f"{image}: no {factor}x block-mean level (use a power of two)")


def coarser(src: Path, dst: Path, factor: int) -> Path:
    """Every TIFF of ``src`` as its ``factor``× block-mean level in ``dst``."""
    from comir.io import write_image

    for path in sorted(src.glob("*.tif")):
        write_image(dst / path.name, block_mean_level(path, factor))
    return dst


def trained(work: Path, low: float, train_dir: Path, hold: Path) -> tuple[Path, float]:
    """The IHC recipe trained with scale range ``low:1`` (reused if ``work`` has it).

    Returns the run folder and its training time in s (from its ``metrics.csv``).
    """
    from comir.demo import sample_train_config
    from comir.train import train

    run = work / f"run-scale-{low:g}"
    if not (run / "model.safetensors").is_file():
        config = sample_train_config("ihc", train_dir, hold)
        config.augment = {**config.augment, "scale_min": low, "scale_max": 1.0}
        t0 = time.perf_counter()
        train(config, run, progress=False)
        print(f"trained {run.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    with open(run / "metrics.csv", newline="") as f:
        seconds = float(list(csv.DictReader(f))[-1]["seconds"])
    return run, seconds


def eval_sets(hold: Path, work: Path, factors: list[int]) -> dict[str, Path]:
    """One demo-style evaluation set per factor, ``{label: set folder}``."""
    from comir import samples
    from comir.evaluate import make_eval

    info = samples.sample("ihc")
    sets = {}
    for f in factors:
        width = FULL_WIDTH // f
        folder = hold if f == 1 else coarser(hold, work / f"holdout-{f}x", f)
        label = "full resolution" if f == 1 else f"{f}x coarser level"
        sets[f"{label}, w = {width}"] = make_eval(
            folder, layout=info["layout"], a=info["a_spec"], b=info["b_spec"],
            out=work / f"eval-{f}x", width=width, per_image=12, seed=0, norm=info["norm"],
        )  # fmt: skip
    return sets


def measure(sets: dict[str, Path], models: dict[str, str], work: Path) -> list[dict]:
    """CoMIR + fft success per level of every model on every set."""
    from comir.evaluate import evaluate

    rows = []
    for i, (label, ev) in enumerate(sets.items()):
        for j, (name, model) in enumerate(models.items()):
            s = evaluate(ev, method="fft", model=model, out=work / f"res-{i}-{j}", progress=False)
            rows.append({"set": label, "model": name, "success": s["success_rate"],
                         "median_error": s["median_error"]})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table set × model: success on L1–L4 and all, median corner error (px)."""
    head = "| set | model | L1 | L2 | L3 | L4 | all | median error (px) |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['success'][k]:.2f}" for k in ("1", "2", "3", "4", "all")]
        cells.append(f"{r['median_error']:.2f}")
        lines.append(f"| {r['set']} | {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from comir import samples

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--low", action="append", default=None, help="LO of --scale-range LO:1")
    ap.add_argument("--factors", default="1,2", help="coarsening factors, e.g. 1,2,4")
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    lows = number_list(args.low or ["0.5"])
    factors = number_list([args.factors], int)
    work = args.work or Path(tempfile.mkdtemp(prefix="comir-scale-"))
    train_dir = samples.export_sample("ihc", work / "train", split="train")
    hold = samples.export_sample("ihc", work / "holdout", split="holdout")
    models, seconds = {"sample:ihc (one scale)": "sample:ihc"}, {}
    for low in lows:
        run, seconds[f"{low:g}:1"] = trained(work, low, train_dir, hold)
        models[f"scale-augmented {low:g}:1"] = str(run)
    print("training time (s):", seconds, flush=True)
    rows = measure(eval_sets(hold, work, factors), models, work)
    print(table(rows))
    out = {"factors": factors, "lows": lows, "train_seconds": seconds, "rows": rows}
    (work / "scale_augmentation.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
