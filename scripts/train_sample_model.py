"""Train a shipped sample model (``sample:sentinel2``, ``sample:ihc``) into the package.

Usage: ``python scripts/train_sample_model.py [sentinel2|ihc]`` (about 5 minutes each on a
2-core CPU); ``python scripts/train_sample_model.py NAME --stats-only`` only (re)computes the
training input statistics (:mod:`comir.input_stats`) of the shipped model's ``config.json``
from its training half, without retraining or touching ``model.safetensors``.

It exports the bundled scene's left half (training) and right half (validation loss) and
runs the recipe of :func:`comir.demo.sample_train_config`; for Sentinel-2 that is ::

    comir train TRAIN --layout channels --a 0:3 --b 3 --norm bits:13 --val HOLDOUT \\
        --preset small --epochs 20 --steps-per-epoch 32 --batch-size 16 --patch-size 64 \\
        --critic mse --tau 0.5 --l2 0.1 --seed 0 --out RUN

(for ``ihc``: ``--a 0 --b 1 --norm bits:16``), then copies ``model.safetensors``,
``config.json``, ``metrics.csv`` and ``loss.png`` into ``src/comir/samples/models/<name>/``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from comir import samples
from comir.demo import sample_train_config
from comir.input_stats import STATS_KEY, training_stats
from comir.train import _load_data, train

MODELS = Path(__file__).resolve().parents[1] / "src" / "comir" / "samples" / "models"


def write_stats(name: str) -> Path:
    """Put the statistics of exactly the training data into the shipped ``config.json``.

    The data are loaded as :func:`comir.train.train` loads them for the recipe of
    :func:`comir.demo.sample_train_config` (the train split of the bundled scene).
    """
    path = MODELS / name / "config.json"
    cfg = json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        train_dir = samples.export_sample(name, Path(tmp) / "train", split="train")
        hold_dir = samples.export_sample(name, Path(tmp) / "holdout", split="holdout")
        pairs, _ = _load_data(sample_train_config(name, train_dir, hold_dir), None)
    stats = training_stats(pairs)
    # same key order as a fresh run: the statistics follow "data"
    out = {}
    for key, value in cfg.items():
        if key != STATS_KEY:
            out[key] = value
        if key == "data":
            out[STATS_KEY] = stats
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    name = args[0] if args else "sentinel2"
    if "--stats-only" in argv:
        print(f"training input statistics written to {write_stats(name)}")
        return 0
    dest = MODELS / name
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_dir = samples.export_sample(name, tmp / "train", split="train")
        hold_dir = samples.export_sample(name, tmp / "holdout", split="holdout")
        run = train(sample_train_config(name, train_dir, hold_dir), tmp / "run")
        dest.mkdir(parents=True, exist_ok=True)
        for file in ("model.safetensors", "metrics.csv", "loss.png"):
            shutil.copyfile(run / file, dest / file)
        cfg = json.loads((run / "config.json").read_text())
        # the temporary paths mean nothing to users: name the bundled halves instead
        cfg["train"]["data"] = f"sample:{name} (left half of the scene)"
        cfg["train"]["val"] = f"sample:{name} (right half of the scene)"
        (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"sample model written to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
