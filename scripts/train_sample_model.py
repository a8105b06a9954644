"""Train the shipped sample model ``sample:sentinel2`` and store it in the package.

Usage: ``python scripts/train_sample_model.py`` (about 5 minutes on a 2-core CPU).

It exports the bundled Sentinel-2 scene's left half (training) and right half
(validation loss) and runs the recipe of :func:`comir.demo.demo_train_config`, i.e. ::

    comir train TRAIN --layout channels --a 0:3 --b 3 --norm bits:13 --val HOLDOUT \\
        --preset small --epochs 20 --steps-per-epoch 32 --batch-size 16 --patch-size 64 \\
        --critic mse --tau 0.5 --l2 0.1 --seed 0 --out RUN

then copies ``model.safetensors``, ``config.json``, ``metrics.csv`` and ``loss.png`` into
``src/comir/samples/models/sentinel2/``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from comir import samples
from comir.demo import SAMPLE, demo_train_config
from comir.train import train

DEST = Path(__file__).resolve().parents[1] / "src" / "comir" / "samples" / "models" / SAMPLE


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_dir = samples.export_sample(SAMPLE, tmp / "train", split="train")
        hold_dir = samples.export_sample(SAMPLE, tmp / "holdout", split="holdout")
        config = demo_train_config(train_dir, hold_dir, samples.sample(SAMPLE)["norm"])
        run = train(config, tmp / "run")
        DEST.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "metrics.csv", "loss.png"):
            shutil.copyfile(run / name, DEST / name)
        cfg = json.loads((run / "config.json").read_text())
        # the temporary paths mean nothing to users: name the bundled halves instead
        cfg["train"]["data"] = f"sample:{SAMPLE} (left half, columns 0-149)"
        cfg["train"]["val"] = f"sample:{SAMPLE} (right half, columns 150-299)"
        (DEST / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"sample model written to {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
