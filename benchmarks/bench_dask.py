"""Evaluate on a Dask LocalCluster vs the process pool, and Dask's overhead per work item.

A synthetic evaluation set (smooth textures, :func:`comir.evaluate.make_eval`, 4 levels)
is registered with ``fft`` by ``evaluate(workers=N)`` (spawn process pool) and by
``evaluate(scheduler=...)`` on a LocalCluster of N single-thread worker processes, both
from a cold start (pool / cluster started inside the timing) and warm (a
:func:`registration_pool` / a running Client shared by repeats). The overhead per work
item is measured with a back-end that returns the identity at once: per pair through
evaluate (which still reads both patches) and per bare future (``comir.scale.map_items``
of a no-op) against the same loop in this process. Prints one JSON line per figure:
``{"name", "value", "unit", "baseline", "ratio", "notes"}``.

Run: ``.venv/bin/python benchmarks/bench_dask.py [--workers 2] [--images 4]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi


def noop_backend(fixed, moving, info=None, **_):
    """Identity 'registration' returned at once: what is left is the per-item cost."""
    from comir.register.base import RegistrationResult
    from comir.transform import RigidTransform

    return RegistrationResult(RigidTransform(np.eye(3)), 0.0, 0.0, "ok", "noop")


def noop(x):
    return x


def make_set(root: Path, n_images: int, per_image: int, size: int = 400, width: int = 96) -> Path:
    from comir.evaluate import make_eval
    from comir.io import write_image

    rng = np.random.default_rng(0)
    for m in ("A", "B"):
        (root / m).mkdir(parents=True, exist_ok=True)
    for k in range(n_images):
        a = ndi.gaussian_filter(rng.standard_normal((size, size)), 3.0)
        a = (a - a.min()) / (a.max() - a.min())
        for m, img in (("A", a), ("B", 1.0 - a**2)):
            write_image(root / m / f"img{k}.png", np.rint(img * 65535).astype(np.uint16))
    return make_eval(root, "folders", "A", "B", root / "eval", width=width, seed=1,
                     per_image=per_image)  # fmt: skip


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def line(name, value, unit, baseline=None, notes=""):
    ratio = None if baseline in (None, 0) else value / baseline
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit,
                      "baseline": None if baseline is None else round(baseline, 4),
                      "ratio": None if ratio is None else round(ratio, 3), "notes": notes}),
          flush=True)  # fmt: skip


def main() -> None:
    import distributed

    from comir.evaluate import evaluate, registration_pool
    from comir.scale import map_items

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--per-image", type=int, default=4, help="patches per image and level")
    ap.add_argument("--method", default="fft", help="fft | mi (evaluate back-end)")
    ap.add_argument("--items", type=int, default=400, help="bare no-op futures")
    args = ap.parse_args()
    n = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        ev = make_set(Path(tmp), args.images, args.per_image)
        out = Path(tmp) / "res"

        def run(tag, **kw):
            return evaluate(ev, kw.pop("method", args.method), out=out / tag, progress=False, **kw)

        n_pairs = run("warmup", workers=1)["n_pairs"]
        cold_pool = _timed(lambda: run("pool", workers=n))
        cold_dask = _timed(lambda: run("dask", scheduler=f"local:{n}"))
        note = f"{n_pairs} pairs {args.method}, {n} workers, start-up included"
        line("evaluate_cold_pool_pairs_per_s", n_pairs / cold_pool, "pairs/s", None, note)
        line("evaluate_cold_dask_pairs_per_s", n_pairs / cold_dask, "pairs/s",
             n_pairs / cold_pool, note + "; baseline: process pool")  # fmt: skip
        inproc_noop = _timed(lambda: run("noop1", method=noop_backend, workers=1))
        with registration_pool(n) as pool:
            run("pw", pool=pool)  # start the processes
            warm_pool = min(_timed(lambda: run("pool_w", pool=pool)) for _ in range(3))
        with (
            distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, dashboard_address=None
            ) as cluster,  # fmt: skip
            distributed.Client(cluster) as client,
        ):
            run("dw", scheduler=client)
            warm_dask = min(_timed(lambda: run("dask_w", scheduler=client)) for _ in range(3))
            dask_noop = _timed(lambda: run("noopd", method=noop_backend, scheduler=client))
            items = list(range(args.items))
            map_items(client, noop, items[:20], False, "warm", "it")
            bare = _timed(lambda: map_items(client, noop, items, False, "noop", "it"))
        local = _timed(lambda: [noop(i) for i in items])
    note = f"{n_pairs} pairs {args.method}, {n} workers, pool/cluster already running"
    line("evaluate_warm_pool_pairs_per_s", n_pairs / warm_pool, "pairs/s", None, note)
    line("evaluate_warm_dask_pairs_per_s", n_pairs / warm_dask, "pairs/s",
         n_pairs / warm_pool, note + "; baseline: process pool")  # fmt: skip
    line("evaluate_noop_dask_ms_per_pair", 1e3 * dask_noop / n_pairs, "ms",
         1e3 * inproc_noop / n_pairs,
         f"identity back-end (patches still read), {n} workers; baseline: in-process")  # fmt: skip
    note = f"{args.items} no-op futures via comir.scale.map_items; baseline: Python loop"
    line("dask_future_overhead_ms_per_item", 1e3 * bare / args.items, "ms",
         1e3 * local / args.items, note)  # fmt: skip
    print(json.dumps({"name": "load_average_1min", "value": os.getloadavg()[0], "unit": "",
                      "baseline": None, "ratio": None,
                      "notes": f"{os.cpu_count()} cores"}))  # fmt: skip


if __name__ == "__main__":
    main()
