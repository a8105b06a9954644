"""``comir register``, ``comir register-batch``, ``comir warp-points`` and ``comir warp``."""

from __future__ import annotations

import argparse
import sys

from comir.cli.base import command, parse_options
from comir.errors import ComirError


def _method_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``register`` and ``register-batch``."""
    from comir.runtime import DEVICES

    p.add_argument("--method", default="fft", help="fft | sift | mi | elastix (fft)")
    p.add_argument("--model", metavar="RUN", help="register CoMIRs of this run (or sample:NAME)")
    p.add_argument(
        "--fixed-modality", default="a", type=str.lower, choices=("a", "b"),
        help="modality of the fixed image(s) with --model; the moving one is the other (a)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--transform", choices=("rigid", "affine", "deformable"),
        help="rigid; affine: the rigid result refined (NCC on CoMIRs, MI on raw images); "
        "deformable: then a smooth displacement field (rigid)",
    )  # fmt: skip
    p.add_argument(
        "--refine", action="append", metavar="KEY=VALUE",
        help="deformable option, repeatable: grid_spacing=16 smoothness=1 similarity=ncc|mse",
    )  # fmt: skip
    p.add_argument(
        "--max-size", type=int, metavar="PX",
        help="whole slides: long side of the global-search level (1024; docs/slides.md)",
    )  # fmt: skip
    p.add_argument("--pixel-size", type=float, metavar="UM", help="slides: level-0 µm per pixel")
    p.add_argument(
        "--option", action="append", metavar="KEY=VALUE",
        help="back-end option, repeatable; e.g. preset=public (sift: the study's baseline)",
    )  # fmt: skip


def _options(args: argparse.Namespace) -> dict:
    """Back-end keyword options of ``_method_options``: ``--option`` items and ``--transform``."""
    opts = parse_options(args.option)
    if args.refine:
        if args.transform != "deformable":
            raise ComirError("--refine needs --transform deformable")
        opts["refine"] = parse_options(args.refine)
    if args.transform is not None:
        if opts.get("transform", args.transform) != args.transform:
            raise ComirError("--transform and --option transform=... disagree; give one of them")
        opts["transform"] = args.transform
    slide = {k: getattr(args, k, None) for k in ("max_size", "pixel_size")}
    return {**opts, **{k: v for k, v in slide.items() if v is not None}}


def _register_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", metavar="FIXED", help="fixed (reference) image file")
    p.add_argument("moving", metavar="MOVING", help="moving image file, warped onto FIXED")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _method_options(p)
    p.add_argument("--landmarks-fixed", metavar="CSV", help="landmarks (x, y) on FIXED")
    p.add_argument(
        "--landmarks-moving", metavar="CSV",
        help="the paired landmarks on MOVING; writes TRE/rTRE to DIR/landmarks.json",
    )  # fmt: skip


@command("register", "Register MOVING onto FIXED (or their CoMIRs).", _register_arguments)
def _register_command(args: argparse.Namespace) -> int:
    from comir.register import register_files
    from comir.register.files import describe

    pair = (args.landmarks_fixed, args.landmarks_moving)
    if (pair[0] is None) != (pair[1] is None):
        raise ComirError("--landmarks-fixed and --landmarks-moving go together; give both")
    out = register_files(
        args.fixed, args.moving, args.out, method=args.method, model=args.model,
        fixed_modality=args.fixed_modality, device=args.device,
        landmarks=None if pair[0] is None else pair, **_options(args),
    )  # fmt: skip
    res = out.result
    if not out.ok:
        print(f"comir register: registration failed: {res.status}", file=sys.stderr)
        return 1
    print(f"{args.method}: {describe(out.transform, out.center)}, score {res.score:.4g}, "
          f"{res.seconds:.2f} s")  # fmt: skip
    if out.landmarks is not None:
        s = out.landmarks.summary()
        print(
            f"landmarks: TRE median {s['median_tre_px']:.2f} px (before {s['median_initial_tre_px']:.2f}),"
            f" rTRE median {s['median_rtre']:.4f} max {s['max_rtre']:.4f}, robustness "
            f"{s['robustness']:.2f} ({s['n_landmarks']} points)"
        )
    names = ("transform_tfm", "transform_field", "transform_ngff", "registered", "overlay",
             "deformation", "landmarks_json")  # fmt: skip
    written = [getattr(out, n).name for n in names if getattr(out, n) is not None]
    print(f"wrote {out.transform_json}, {', '.join(written)}")
    return 0


# ---------------------------------------------------------------------------- register-batch
def _register_batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "pairs", metavar="PAIRS.csv",
        help="CSV with columns fixed,moving (optional name, landmarks_fixed, landmarks_moving)",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder, DIR/<name>/ each")
    _method_options(p)
    p.add_argument("--workers", type=int, metavar="N", help="processes (1: in-process)")
    p.add_argument(
        "--scheduler", metavar="local[:N]|ADDRESS",
        help="run one Dask future per pair (docs/dask.md) instead of a process pool",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shard", metavar="I/N", help="only the I-th of N parts of the pairs (by name)")


@command(
    "register-batch", "Register many pairs of a CSV, resumably (pool or Dask).",
    _register_batch_arguments,
)  # fmt: skip
def _register_batch_command(args: argparse.Namespace) -> int:
    from comir.register import register_pairs

    if args.workers is not None and args.workers < 1:
        raise ComirError(f"--workers {args.workers}: give N ≥ 1")
    rep = register_pairs(
        args.pairs, args.out, method=args.method, model=args.model,
        fixed_modality=args.fixed_modality, workers=args.workers, scheduler=args.scheduler,
        progress=not args.quiet, device=args.device, shard=args.shard, **_options(args),
    )  # fmt: skip
    print(
        f"{rep.n_ok} ok, {rep.n_failed} failed, {rep.n_skipped} skipped, {rep.seconds:.1f} s; "
        f"wrote {rep.summary}"
    )
    return 1 if rep.n_failed else 0


# ---------------------------------------------------------------------------- warp-points / warp
def _warp_points_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("transform", metavar="TRANSFORM", help="comir transform JSON (moving → fixed)")
    p.add_argument("points", metavar="POINTS", help="CSV with x,y (or X,Y) columns on MOVING")
    p.add_argument("--out", required=True, metavar="CSV", help="warped points (columns kept)")


@command(
    "warp-points", "Map landmark CSV points from the moving into the fixed image.",
    _warp_points_arguments,
)  # fmt: skip
def _warp_points_command(args: argparse.Namespace) -> int:
    import numpy as np

    from comir.landmarks import read_points, warp_points, write_points
    from comir.transform import load_transform

    transform = load_transform(args.transform)
    table = read_points(args.points)
    warped = warp_points(transform, table.points)
    n_bad = int((~np.isfinite(warped).all(axis=1)).sum())
    if n_bad:
        raise ComirError(
            f"{args.transform}: {n_bad} point(s) of {args.points} cannot be mapped (the field "
            "folds there); check the transform's folded_fraction()"
        )
    write_points(args.out, table.with_points(warped))
    print(f"wrote {len(warped)} points to {args.out}")
    return 0


def _warp_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("transform", metavar="TRANSFORM", help="comir transform JSON (moving → fixed)")
    p.add_argument("moving", metavar="MOVING", help="image file to warp")
    p.add_argument("--like", required=True, metavar="FIXED", help="image whose grid to fill")
    p.add_argument("--out", required=True, metavar="FILE", help="warped image (.tif keeps dtype)")
    p.add_argument("--order", type=int, default=1, choices=(0, 1, 3), help="interpolation (1)")


@command("warp", "Warp MOVING into the grid of FIXED with a saved transform.", _warp_arguments)
def _warp_command(args: argparse.Namespace) -> int:
    from comir.io import read_image, write_image
    from comir.transform import load_transform
    from comir.transform.field import check_grids

    transform = load_transform(args.transform)
    moving, fixed = read_image(args.moving), read_image(args.like)
    check_grids(transform, fixed.shape, moving.shape, args.transform)
    out = write_image(args.out, transform.warp(moving, fixed.shape[:2], order=args.order))
    print(f"wrote {out} ({fixed.shape[1]}x{fixed.shape[0]}, {moving.dtype})")
    return 0
