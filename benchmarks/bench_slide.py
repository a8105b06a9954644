"""Whole-slide registration end to end: pyramidal OME-TIFF in, pyramidal OME-TIFF out.

A synthetic pair of ``--size`` × ``--size`` px (default 20 000) is built from the bundled
``ihc`` sample (haematoxylin / DAB, uint16, 2 channels) by :func:`comir.slide.synth.make_slide_pair`:
dihedral copies of the sample tiled under a smooth tissue mask, the moving slide sampled
under a known rigid motion (4°, (310, −170) px at 20 000 px), both written as tiled zlib
OME-TIFF pyramids in bounded memory. Then ``comir register FIXED MOVING --out DIR`` runs
in a child process (import time included), which dispatches to
:func:`comir.slide.register_slides` and writes ``moving_registered.ome.tif``. Figures,
one JSON line each: wall time, CPU time and peak RSS of the registration process tree
(psutil, sampled every 0.1 s), the full-resolution corner error (mean distance of the four moving
corners under the recovered vs the known motion) and landmark error (25 points on a
grid; also over those of them that land in tissue), the load average during the run; the
written pyramid's levels, tile and compression are in the notes. The goal on a 2-core CPU
is rigid ≤ 60 s and ≤ 2 GB.

``--transform deformable`` deforms the pair smoothly (``--deform-px``, default 40 px at
20 000 px, :func:`comir.slide.synth.slide_truth`) and also reports the landmark error of
the affine stage of the same run (the first transform of the stored composite), the
baseline the region-by-region deformable stage has to beat.

Run: ``python benchmarks/bench_slide.py [--size 20000] [--model sample:ihc] [--max-size PX]
[--transform rigid|affine|deformable] [--deform-px PX] [--refine KEY=VALUE]
[--overview docs/slide_overview.png]
[--compression zstd] [--dir DIR --keep --reuse]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            total += p.memory_info().rss
    except psutil.Error:
        pass
    return total


def run_measured(cmd: list[str]) -> tuple[float, int, int, str]:
    """Run ``cmd``; return (wall seconds, peak tree RSS bytes, exit code, stderr tail)."""
    import psutil

    t0 = time.perf_counter()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(ps))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    th.join()
    return wall, peak[0], proc.returncode, (out + err)[-600:]


def pyramid_info(path: Path) -> dict:
    """Levels, tile size and compression of a written pyramid (tifffile)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        s = tif.series[0]
        page = s.levels[0].keyframe
        return {
            "levels": [list(lv.shape) for lv in s.levels],
            "tile": [page.tilelength, page.tilewidth],
            "compression": page.compression.name,
            "dtype": str(page.dtype),
            "ome": tif.is_ome,
        }


def grid_points(size: int) -> np.ndarray:
    """25 moving level-0 points on a 5 × 5 grid over the central 60 % of the slide."""
    g = np.linspace(0.2, 0.8, 5) * (size - 1)
    return np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)


def errors(t, truth, size: int) -> tuple[float, float]:
    """Mean corner error and mean error of the 25 grid points (px, full resolution):
    distances between the recovered and the true fixed positions of moving points."""
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float)
    grid = grid_points(size)
    ce = np.linalg.norm(t.apply(corners) - truth.apply(corners), axis=1).mean()
    le = np.linalg.norm(t.apply(grid) - truth.apply(grid), axis=1).mean()
    return float(ce), float(le)


def tissue_error(t, truth, size: int, seed: int = 0) -> tuple[float, int]:
    """Mean grid-point error over the points whose true fixed position lies in tissue
    (synthetic mask > 0.5: elsewhere both slides are empty and nothing can be measured)."""
    from comir import samples
    from comir.io import read_image
    from comir.slide.synth import SlideTexture

    base = np.asarray(read_image(samples.sample_path("ihc")))
    grid = grid_points(size)
    q = truth.apply(grid)
    keep = SlideTexture(base, (size, size), seed).mask(q.astype(np.float32)) > 0.5
    err = np.linalg.norm(t.apply(grid[keep]) - q[keep], axis=1)
    return float(err.mean()), int(keep.sum())


def overview(fixed: Path, registered: Path, path: Path, baseline=None) -> None:
    """Fixed and registered pyramids read back: colour overlay at a ~800 px level and at
    full resolution in a 400 px crop (green = fixed, magenta = registered, grey = agree);
    ``baseline=(moving_path, transform, label)`` adds the same crop of the moving slide
    warped by ``transform`` (e.g. the affine stage alone) with the writer's tile warp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from comir.plot import colour_overlay, save_figure
    from comir.slide import open_slide
    from comir.slide.writer import _tile_warp

    with open_slide(fixed) as f, open_slide(registered) as r:
        k = f.level_for(800)
        a, b = f.read_level(k)[..., 0], r.read_level(k)[..., 0]
        h, w = f.shape[:2]
        y0, x0 = int(h * 0.55), int(w * 0.45)
        ca, cb = (
            f.read_region(0, y0, x0, 400, 400)[..., 0],
            r.read_region(0, y0, x0, 400, 400)[..., 0],
        )
    panels = [(a, f"fixed, level {k} ({a.shape[1]}×{a.shape[0]})"),
              (colour_overlay(a, b), f"fixed vs registered, level {k}"),
              (colour_overlay(ca, cb), f"full resolution, 400 px at ({x0}, {y0})")]  # fmt: skip
    if baseline is not None:
        with open_slide(baseline[0]) as m:
            cm = _tile_warp(m, baseline[1], y0, x0, 400, 400)[..., 0]
        panels.append((colour_overlay(ca, cm), f"the same crop, {baseline[2]}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.8))
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    rect = plt.Rectangle((x0 / 2**k, y0 / 2**k), 400 / 2**k, 400 / 2**k, fill=False, ec="yellow")
    axes[1].add_patch(rect)
    fig.suptitle(f"{w}×{h} px pair registered by comir register (OME-TIFF → OME-TIFF)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def emit(name: str, value, unit: str, **extra) -> None:
    print(json.dumps({"name": name, "value": value, "unit": unit, "baseline": None,
                      "ratio": None, **extra}), flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--model", default=None, help="e.g. sample:ihc (default: raw intensities)")
    ap.add_argument("--max-size", type=int, default=None)
    ap.add_argument("--transform", default="rigid")
    ap.add_argument(
        "--deform-px",
        type=float,
        default=None,
        help="smooth deformation of the pair, px at level 0 (default: 40 × size / "
        "20000 with --transform deformable, else 0)",
    )
    ap.add_argument(
        "--refine",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="deformable options handed to comir register --refine",
    )
    ap.add_argument("--compression", default=None, help="zlib (default) | zstd | jpeg | none")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--overview", default=None, help="write an overview PNG of the result here")
    ap.add_argument("--keep", action="store_true", help="keep the generated slides")
    ap.add_argument("--reuse", action="store_true", help="reuse the slides in --dir")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from comir.slide.synth import make_slide_pair, slide_truth
    from comir.transform import load_transform

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_slide."))
    t0 = time.perf_counter()
    fixed, moving = work / "fixed.ome.tif", work / "moving.ome.tif"
    deform = args.deform_px
    if deform is None:
        deform = 40.0 * args.size / 20000 if args.transform == "deformable" else 0.0
    if args.reuse and fixed.exists() and moving.exists():
        truth = slide_truth(args.size, deform_px=deform)
    else:
        fixed, moving, truth = make_slide_pair(work, size=args.size, deform_px=deform)
    gen = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "comir", "register", str(fixed), str(moving), "--out",
           str(work / "out"), "--transform", args.transform]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model, "--fixed-modality", "a"]
    if args.max_size:
        cmd += ["--max-size", str(args.max_size)]
    if args.compression:
        cmd += ["--option", f"compression={args.compression}"]
    for item in args.refine:
        cmd += ["--refine", item]
    import resource

    load0 = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, rss, rc, tail = run_measured(cmd)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    load1 = os.getloadavg()[0]
    if rc != 0:
        raise SystemExit(f"comir register failed ({rc}): {tail}")
    t = load_transform(work / "out" / "transform.json")
    ce, le = errors(t, truth, args.size)
    te, n_in = tissue_error(t, truth, args.size)
    info = pyramid_info(work / "out" / "moving_registered.ome.tif")
    what = f"{args.size}² {args.transform} {'CoMIR ' + args.model if args.model else 'raw'}"
    what += f" {args.compression or 'zlib'}" + (f" deform {deform:g} px" if deform else "")
    load = f"load {load0:.1f}→{load1:.1f} on {os.cpu_count()} cores"
    emit(f"slide {what}: wall", round(wall, 2), "s", notes=f"goal ≤ 60 s (rigid); {load}; "
         f"generation {gen:.1f} s")  # fmt: skip
    emit(f"slide {what}: CPU time", round(cpu, 2), "s", notes="user + system of the "
         "registration process; on an idle machine the wall time lies between CPU/2 and CPU")  # fmt: skip
    emit(f"slide {what}: peak RSS", round(rss / 2**30, 3), "GiB", notes="goal ≤ 2 GB; process tree")
    emit(f"slide {what}: corner error", round(ce, 3), "px", notes="full resolution, mean of 4")
    emit(f"slide {what}: landmark error", round(le, 3), "px",
         notes=f"25 grid points through the true motion; {json.dumps(info)}")  # fmt: skip
    emit(f"slide {what}: tissue landmark error", round(te, 3), "px",
         notes=f"the {n_in} of 25 grid points that land in tissue")  # fmt: skip
    if args.transform == "deformable":
        affine = t.transforms[0]  # the affine stage of the same run: the baseline
        ca, la = errors(affine, truth, args.size)
        ta, _ = tissue_error(affine, truth, args.size)
        d = json.loads((work / "out" / "transform.json").read_text()).get("deformable", {})
        stage = {k: d.get(k) for k in ("level", "level_shape", "regions", "applied",
                                       "max_region_shape", "region_limit", "seconds")}  # fmt: skip
        emit(f"slide {what}: affine-only landmark error", round(la, 3), "px",
             notes=f"the affine stage of the same run; corner {ca:.3f} px, tissue {ta:.3f} px; "
             f"deformable stage {json.dumps(stage)}")  # fmt: skip
    if args.overview:
        base = None if args.transform != "deformable" else (moving, t.transforms[0],
                                                            "affine stage only")  # fmt: skip
        overview(fixed, work / "out" / "moving_registered.ome.tif", Path(args.overview), base)
    if not args.keep and args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
