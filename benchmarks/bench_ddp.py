"""Data-parallel training throughput on CPU: 1 rank vs N ranks (gloo), steps/s and pairs/s.

Each configuration runs in fresh processes joined by a file store (gloo): the ``small``
preset by default, random 64×64 patches, ``--batch`` pairs per rank (RGB vs grey), C4 on,
Adam, InfoNCE over the global batch (:class:`comir.distributed.DataParallelPair` and
``gather_distributed``, exactly what ``comir train --nproc N`` runs). The CPU's cores are
given as ``--threads`` per rank (default 1, so N ranks use N cores; ``0`` splits the cores
over the ranks: on a shared, loaded machine oversubscribed threads distort that variant). Median of the timed steps after warm-up; the
baseline is 1 rank in the same run. Patch pairs/s counts the global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PATCH = 64


def _worker(rank, world, init, preset, batch, steps, threads, out):  # noqa: ANN001
    from comir import distributed
    from comir.losses.infonce import InfoNCELoss
    from comir.model import EncoderPair, tiramisu_config
    from comir.train import train_step

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        w = distributed.setup(torch.device("cpu"))
        torch.manual_seed(0)
        model = EncoderPair(tiramisu_config(preset, 3, 1), tiramisu_config(preset, 1, 1))
        net = distributed.DataParallelPair(model, w) if world > 1 else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        loss_fn = InfoNCELoss("mse", 0.5, gather_distributed=world > 1)
        gen = torch.Generator().manual_seed(rank)
        xa, xb = torch.rand(batch, 3, PATCH, PATCH), torch.rand(batch, 1, PATCH, PATCH)
        times = []
        for k in range(2 + steps):
            t0 = time.perf_counter()
            train_step(
                net, (xa, xb), loss_fn, opt, scaler, l1=1e-4, l2=0.1, grad_clip=1.0,
                equivariance=True, generator=gen,
            )  # fmt: skip
            if k >= 2:
                times.append(time.perf_counter() - t0)
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        if world > 1:
            dist.destroy_process_group()


def step_seconds(world: int, preset: str, batch: int, steps: int, threads: int) -> float:
    """Median seconds of one step with ``world`` ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        mp.start_processes(
            _worker,
            args=(world, f"file://{tmp}/store", preset, batch, steps, threads, str(out)),
            nprocs=world,
            join=True,
        )
        return statistics.median(json.loads(out.read_text()))


def emit(name: str, value: float, unit: str, baseline: float | None, notes: str) -> None:
    ratio = round(value / baseline, 3) if baseline else None
    row = {"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}
    print(json.dumps({**row, "notes": notes}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=8, help="pairs per rank")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch threads per rank (0: the cores split over the ranks) (1)",
    )  # fmt: skip
    args = ap.parse_args()
    base = None
    for world in sorted(set(args.ranks)):
        sec = step_seconds(world, args.preset, args.batch, args.steps, args.threads)
        if base is None:
            base = sec
        note = (
            f"{args.preset} preset, {args.batch} pairs of {PATCH}x{PATCH} per rank, C4, Adam, "
            f"gloo; {args.threads or 'cores split over the ranks, '} thread(s) per rank on "
            f"{os.cpu_count()} cores; median of {args.steps} steps; "
            f"baseline {min(args.ranks)} rank(s)"
        )
        emit(f"ddp {world} rank(s) steps/s", round(1 / sec, 4), "steps/s", round(1 / base, 4), note)
        pairs, base_pairs = args.batch * world / sec, args.batch * min(args.ranks) / base
        emit(f"ddp {world} rank(s) patch pairs/s", round(pairs, 3), "pairs/s",
             round(base_pairs, 3), "global batch per second")  # fmt: skip


if __name__ == "__main__":
    main()
