"""``comir synth`` and ``comir demo``."""

from __future__ import annotations

import argparse

from comir.cli.base import command


# ---------------------------------------------------------------------------- synth
def _size_arg(text: str) -> tuple[int, int]:
    """``"256"`` -> (256, 256); ``"192x256"`` -> (H, W) = (192, 256)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}; use e.g. 256 or 192x256"
        ) from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use e.g. 256 or 192x256")
    return (parts[0], parts[-1])


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    from comir.synth import DIFFICULTIES, FORMATS

    p.add_argument("--out", required=True, metavar="DIR", help="output folder (A/ and B/)")
    p.add_argument("--n", required=True, type=int, metavar="N", help="number of pairs")
    p.add_argument("--size", type=_size_arg, default=(256, 256), metavar="S", help="S or HxW (256)")
    p.add_argument("--difficulty", default="medium", choices=DIFFICULTIES, help="(medium)")
    p.add_argument("--seed", type=int, default=0, help="(0)")
    p.add_argument("--format", default="png", choices=FORMATS, help="(png, 16-bit)")
    p.add_argument(
        "--bits", type=int, default=16, choices=(8, 16),
        help="PNG/TIFF bit depth (16); a stored v means v / (2^bits - 1), read by --norm dtype",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("synth", "Write synthetic aligned multimodal pairs (folders layout).", _synth_arguments)
def _synth_command(args: argparse.Namespace) -> int:
    import time

    from comir.synth import write_synth

    t0 = time.perf_counter()
    out = write_synth(
        args.out,
        args.n,
        size=args.size,
        difficulty=args.difficulty,
        seed=args.seed,
        fmt=args.format,
        bits=args.bits,
        progress=not args.quiet,
    )
    print(
        f"wrote {args.n} {args.difficulty} pair(s) of {args.size[0]}x{args.size[1]} to {out}/A and "
        f"{out}/B in {time.perf_counter() - t0:.1f} s; "
        f"train with `comir train {out} --norm dtype --out RUN`"
    )
    return 0


# ---------------------------------------------------------------------------- demo
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument(
        "--sample",
        default="sentinel2",
        choices=("sentinel2", "ihc"),
        help="bundled sample: Sentinel-2 RGB/NIR (default) or IHC haematoxylin/DAB",
    )
    p.add_argument(
        "--train", action="store_true", help="train a model instead of using the shipped one"
    )
    p.add_argument("--quick", action="store_true", help="smaller evaluation set, for a smoke test")
    p.add_argument("--workers", type=int, default=None, help="registration processes")


@command(
    "demo", "End-to-end demo on bundled sample data (Sentinel-2 RGB/NIR by default).", _demo_args
)
def _run_demo(args: argparse.Namespace) -> int:
    from comir.demo import run_demo

    run_demo(args.out, sample=args.sample, train=args.train, quick=args.quick, workers=args.workers)
    return 0
