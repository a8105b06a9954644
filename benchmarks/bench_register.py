"""Time (and check) each registration back-end on 300×300 pairs.

Synthetic pairs with a known rigid transform (level-3 size of the public protocol:
θ = 12.5°, t = (−17, 15) px): a raw-looking textured pair (fine texture + noise), a
smooth CoMIR-like pair and a 3-channel CoMIR-like pair. Every back-end runs with its
defaults; SIFT also with ``preset="public"`` (the study's baseline) as ``sift_public``.
Prints one JSON line per figure with MI as the baseline:
``{"name", "value", "unit", "baseline", "ratio"}``.

Run: ``.venv/bin/python benchmarks/bench_register.py [--repeats 5] [--threads N]``
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import ndimage as ndi

from comir.register import available_methods, register, set_library_threads
from comir.transform import RigidTransform, corner_error, image_center, patch_corners

SIZE = 300


def make_pair(
    smooth: float, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray, RigidTransform]:
    """Fixed crop of a random scene and the moving image sampled under a known transform."""
    rng = np.random.default_rng(seed)
    n = 2 * SIZE
    scene = ndi.gaussian_filter(rng.standard_normal((n, n)), smooth)
    scene /= scene.std()
    scene += 0.5 * ndi.gaussian_filter(rng.standard_normal((n, n)), 4 * smooth) / 0.05
    true = RigidTransform.from_params(12.5, (-17.0, 15.0), image_center((SIZE, SIZE)))
    off = np.array([150.0, 150.0])
    fixed = scene[150 : 150 + SIZE, 150 : 150 + SIZE]
    ys, xs = np.mgrid[:SIZE, :SIZE]
    q = true.apply(np.stack([xs.ravel(), ys.ravel()], 1).astype(float)) + off
    moving = ndi.map_coordinates(scene, [q[:, 1], q[:, 0]], order=3).reshape(SIZE, SIZE)
    fixed = fixed + noise * rng.standard_normal(fixed.shape)
    moving = moving + noise * rng.standard_normal(moving.shape)
    return fixed.astype(np.float32), moving.astype(np.float32), true


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        set_library_threads(args.threads)
    pairs = {"raw": make_pair(1.2, 0.3, 0), "comir": make_pair(5.0, 0.05, 1)}
    three = [make_pair(5.0, 0.05, seed) for seed in (1, 2, 3)]  # same transform, 3 channels
    pairs["comir3ch"] = (
        np.stack([p[0] for p in three], -1),
        np.stack([p[1] for p in three], -1),
        three[0][2],
    )
    # (label, method, options)
    runs = [(m, m, {}) for m in available_methods()]
    runs.insert(2, ("sift_public", "sift", {"preset": "public"}))
    corners = patch_corners(SIZE)
    for pname, (fixed, moving, true) in pairs.items():
        register(fixed, moving, "fft")  # warm-up: imports, FFT plans
        ms, err = {}, {}
        for label, method, options in runs:
            times = []
            for _ in range(args.repeats):
                res = register(fixed, moving, method, **options)
                times.append(res.seconds * 1e3)
            ms[label] = float(np.median(times))
            err[label] = corner_error(res.transform, corners, true.apply(corners))
        for label, _, _ in runs:
            for figure, unit, values in (("ms_per_pair", "ms", ms), ("corner_error", "px", err)):
                value, base = values[label], values["mi"]
                print(
                    json.dumps(
                        {
                            "name": f"register.{label}.{pname}_300.{figure}",
                            "value": round(value, 3),
                            "unit": unit,
                            "baseline": round(base, 3),
                            "ratio": round(value / base, 4) if base else None,
                        }
                    )
                )


if __name__ == "__main__":
    main()
