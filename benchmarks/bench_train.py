"""Training throughput on CPU: steps/s and patches/s per preset and precision.

One optimisation step of :func:`comir.train.train_step` (both encoders, C4 wrapper,
InfoNCE over 2B maps, activation decay, clipping, Adam) on random 128×128 patches,
batch 8 pairs (16 patches through the networks per step, counted as 8 patch pairs), RGB
(3 channels) vs grey (1 channel) like RGB/NIR. Variants, each a row with the fp32
channels_last default (what ``comir train`` does on CPU) as baseline:

* ``channels_last off``: ``Tiramisu.cpu_channels_last = False`` (NCHW convolutions);
* ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` (``--precision bf16``).

Warm-up steps first, then the median of the timed steps; the machine is a shared 2-core
CPU (other jobs may run concurrently), hence medians.

``--quality``: trains the shipped sample model's recipe for a few epochs in fp32 and in
bf16 from the same seed and reports both validation losses (validation in fp32), to judge
whether bf16 training is as good; slow, recorded in notes.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from comir.losses.infonce import InfoNCELoss
from comir.model import EncoderPair, Tiramisu, tiramisu_config
from comir.train import train_step

PATCH = 128
BATCH = 8


def step_times(preset: str, precision: str, channels_last: bool, warmup: int, steps: int):
    """Seconds of each timed step."""
    torch.manual_seed(0)
    Tiramisu.cpu_channels_last = channels_last
    try:
        model = EncoderPair(tiramisu_config(preset, 3, 1), tiramisu_config(preset, 1, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        loss_fn = InfoNCELoss("mse", 0.5)
        gen = torch.Generator().manual_seed(1)
        xa = torch.rand(BATCH, 3, PATCH, PATCH)
        xb = torch.rand(BATCH, 1, PATCH, PATCH)
        times = []
        for k in range(warmup + steps):
            t0 = time.perf_counter()
            train_step(
                model, (xa, xb), loss_fn, opt, scaler, l1=1e-4, l2=0.1, grad_clip=1.0,
                equivariance=True, generator=gen, amp=precision == "bf16",
                amp_dtype=torch.bfloat16,
            )  # fmt: skip
            if k >= warmup:
                times.append(time.perf_counter() - t0)
        return times
    finally:
        Tiramisu.cpu_channels_last = True


def emit(name: str, value: float, unit: str, baseline: float | None, notes: str) -> None:
    ratio = round(value / baseline, 3) if baseline else None
    row = {"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}
    print(json.dumps({**row, "notes": notes}), flush=True)


def speed(presets: list[str], steps: int) -> None:
    for preset in presets:
        warmup = 3 if preset == "small" else 2
        base = statistics.median(step_times(preset, "fp32", True, warmup, steps))
        variants = {
            "fp32 channels_last (default)": None,
            "fp32 channels_last off": ("fp32", False),
            "bf16 autocast channels_last": ("bf16", True),
        }
        for label, spec in variants.items():
            med = (
                base
                if spec is None
                else statistics.median(step_times(preset, *spec, warmup, steps))
            )
            note = (
                f"batch {BATCH} pairs of {PATCH}x{PATCH}, C4 on, Adam; median of {steps} steps "
                f"after {warmup} warm-up; {torch.get_num_threads()} threads"
            )
            emit(f"train {preset} {label} steps/s", round(1 / med, 4), "steps/s",
                 round(1 / base, 4), f"baseline fp32 channels_last; {note}")  # fmt: skip
            emit(f"train {preset} {label} patch pairs/s", round(BATCH / med, 3), "pairs/s",
                 round(BATCH / base, 3), "baseline fp32 channels_last")  # fmt: skip


def quality(epochs: int) -> None:
    """Validation loss after the same steps, fp32 vs bf16 training (sample-model recipe)."""
    import math
    import tempfile
    from pathlib import Path

    from comir import samples
    from comir.run_files import read_metrics
    from comir.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        # the shipped sentinel2 sample model's recipe: left half trains, right half validates
        train_dir = samples.export_sample("sentinel2", Path(tmp) / "train", split="train")
        val_dir = samples.export_sample("sentinel2", Path(tmp) / "holdout", split="holdout")
        out = {}
        for precision in ("fp32", "bf16"):
            cfg = TrainConfig(
                data=str(train_dir), layout="channels", a="0:3", b="3",
                norm=samples.sample("sentinel2")["norm"], val=str(val_dir), preset="small",
                epochs=epochs, steps_per_epoch=32, batch_size=16, patch_size=64,
                critic="mse", tau=0.5, l2=0.1, seed=0, device="cpu", precision=precision,
            )  # fmt: skip
            t0 = time.perf_counter()
            run = train(cfg, Path(tmp) / precision, progress=False)
            sec = time.perf_counter() - t0
            vals = [r["val_loss"] for r in read_metrics(run / "metrics.csv")]
            out[precision] = ([v for v in vals if not math.isnan(v)][-1], sec)
        (v32, s32), (v16, s16) = out["fp32"], out["bf16"]
        emit(
            f"train small bf16 val_loss after {epochs}x32 steps",
            round(v16, 4),
            "loss",
            round(v32, 4),
            f"baseline fp32, same seed and data (Sentinel-2 sample recipe); wall {s16:.0f} s "
            f"bf16 vs {s32:.0f} s fp32",
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--quality", type=int, metavar="EPOCHS", help="fp32 vs bf16 val loss")
    args = ap.parse_args()
    if args.quality:
        quality(args.quality)
        return
    speed(args.presets, args.steps)


if __name__ == "__main__":
    main()
