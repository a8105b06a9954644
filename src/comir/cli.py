"""Command-line interface: ``comir <command> ...``.

A thin shell over the Python API: every command parses its options, calls one library
function and prints a short summary. Input problems surface as :class:`ComirError`, are
printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from comir.errors import ComirError

# name -> (help, add_arguments, run)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> int | None`` as ``comir <name>``."""

    def deco(run: Callable) -> Callable:
        _COMMANDS[name] = (help, add_arguments, run)
        return run

    return deco


# ---------------------------------------------------------------------------- train / embed
# (commands are added below, one block per command)

# flag -> TrainConfig key, for options whose value is taken as given
_TRAIN_FLAGS = (
    "layout", "a", "b", "val", "val_fraction", "preset", "steps", "epochs", "steps_per_epoch",
    "batch_size", "patch_size", "critic", "tau", "optimizer", "lr", "weight_decay", "l1", "l2",
    "latent_channels", "seed", "device", "workers", "norm", "norm_b", "log_a", "log_b",
    "equivariance", "precision", "sync_bn",
)  # fmt: skip


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from comir.losses import CRITICS, DEFAULT_TAU
    from comir.runtime import DEVICES, TRAIN_PRECISIONS
    from comir.train_config import OPTIMIZERS

    # Defaults are None so that flags given explicitly can override --config / a resumed run.
    p.add_argument("data", nargs="?", metavar="DATA", help="training data folder")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create")
    p.add_argument("--layout", help="folders (default) | suffix | channels")
    p.add_argument("--a", metavar="SPEC", help="modality A: sub-folder, suffix or channels")
    p.add_argument("--b", metavar="SPEC", help="modality B: sub-folder, suffix or channels")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", metavar="DATA", help="validation data folder (same layout)")
    val.add_argument("--val-fraction", type=float, metavar="F", help="hold out this fraction")
    p.add_argument("--preset", choices=("small", "paper"), help="network size (default small)")
    p.add_argument("--steps", type=int, metavar="N", help="total steps (overrides --epochs)")
    p.add_argument("--epochs", type=int, metavar="E", help="epochs (default 10)")
    p.add_argument("--steps-per-epoch", type=int, metavar="S", help="steps per epoch (32)")
    p.add_argument(
        "--batch-size", type=int, help="pairs per batch, per process under torchrun/--nproc (16)"
    )
    p.add_argument("--patch-size", type=int, help="patch side in pixels (128)")
    p.add_argument("--critic", choices=CRITICS, help="(mse; cosine needs --latent-channels 3)")
    p.add_argument("--tau", type=float, help=f"InfoNCE temperature ({DEFAULT_TAU})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="(adam)")
    p.add_argument("--lr", type=float, help="learning rate (1e-3)")
    p.add_argument("--weight-decay", type=float, help="(1e-4)")
    p.add_argument("--l1", type=float, help="L1 activation decay (1e-4)")
    p.add_argument("--l2", type=float, help="L2 activation decay (0.1)")
    p.add_argument("--latent-channels", type=int, metavar="L", help="representation channels (1)")
    p.add_argument("--seed", type=int, help="weight and data seed (0)")
    p.add_argument("--device", choices=DEVICES, help="(auto)")
    p.add_argument("--workers", type=int, help="data loading processes (0)")
    p.add_argument(
        "--precision", choices=TRAIN_PRECISIONS,
        help="auto: fp16 autocast on CUDA, fp32 on CPU; bf16: autocast (~2x faster steps on "
        "CPUs with AMX/AVX512-BF16) (auto)",
    )  # fmt: skip
    p.add_argument(
        "--norm",
        help="auto (bits from the data maximum) | dtype (bits of the file type) | none | percentile | bits:N (auto)",
    )
    p.add_argument("--norm-b", help="normalisation of modality B (default: --norm)")
    p.add_argument("--log-a", action="store_const", const=True, help="log(1+x) on modality A")
    p.add_argument("--log-b", action="store_const", const=True, help="log(1+x) on modality B")
    p.add_argument(
        "--no-equivariance", dest="equivariance", action="store_const", const=False,
        help="train without the C4 rotation wrapper",
    )  # fmt: skip
    p.add_argument(
        "--nproc", type=int, metavar="N",
        help="train data-parallel in N local processes (PyTorch elastic launcher; gloo on CPU, "
        "nccl on CUDA); or run `torchrun --nproc-per-node N -m comir train ...` (1)",
    )  # fmt: skip
    p.add_argument(
        "--sync-bn", action="store_const", const=True,
        help="synchronise batch norm across processes (CUDA only)",
    )  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="TOML (or run config.json) of options")
    p.add_argument("--resume", action="store_true", help="continue RUN from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _read_config_file(path: str) -> dict:
    import json
    from pathlib import Path

    f = Path(path)
    if not f.is_file():
        raise ComirError(f"{f}: config file not found; check the --config path")
    try:
        if f.suffix.lower() == ".json":
            d = json.loads(f.read_text())
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            d = tomllib.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ComirError(f"{f}: cannot be parsed ({exc}); fix the syntax") from None
    if isinstance(d.get("train"), dict):  # a run's config.json or a [train] table
        d = d["train"]
    return d


@command("train", "Train a CoMIR model pair on aligned image pairs.", _train_arguments)
def _train_command(args: argparse.Namespace) -> int:
    import json
    import math
    import time
    from pathlib import Path

    from comir.run_files import read_metrics
    from comir.train import TrainConfig, train

    opts: dict = {}
    stored = Path(args.out) / "config.json"
    if args.resume and stored.is_file():
        try:
            opts.update(json.loads(stored.read_text())["train"])
        except (ValueError, KeyError, TypeError):
            raise ComirError(f"{stored}: corrupt run configuration; cannot resume") from None
    if args.config:
        opts.update(_read_config_file(args.config))
    given = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None}
    if ("epochs" in given or "steps_per_epoch" in given) and "steps" not in given:
        opts["steps"] = None
    if "val" in given:
        opts["val_fraction"] = 0.0
    if "val_fraction" in given:
        opts["val"] = None
    opts.update(given)
    if args.data is not None:
        opts["data"] = args.data
    if "data" not in opts:
        raise ComirError("no training data given; pass DATA (or --config with a 'data' key)")
    where = args.config or "options"
    config = TrainConfig.from_dict(opts, where=where)
    t0 = time.perf_counter()
    if args.nproc is not None and args.nproc > 1:
        from comir.distributed import World, check_sync_bn, launch
        from comir.runtime import resolve_device

        check_sync_bn(config.sync_bn, World(size=args.nproc, device=resolve_device(config.device)))
        opts = (config.to_dict(), str(args.out), args.resume, not args.quiet)
        run = Path(launch(args.nproc, _train_worker, *opts))
    else:
        run = train(config, args.out, resume=args.resume, progress=not args.quiet)
    from comir.distributed import is_main

    if not is_main():  # under torchrun only rank 0 reports
        return 0
    rows = read_metrics(run / "metrics.csv")
    vals = [r["val_loss"] for r in rows if not math.isnan(r["val_loss"])]
    last = rows[-1] if rows else {}
    print(
        f"trained {int(last.get('step', 0))} steps in {time.perf_counter() - t0:.1f} s: "
        f"last-step loss {last.get('loss', math.nan):.4f}"
        + (f", val_loss {vals[-1]:.4f}" if vals else "")
        + f", representation std {last.get('out_std', math.nan):.3g}"
    )
    print(f"model: {run / 'model.safetensors'}  (metrics.csv, loss.png, config.json in {run})")
    return 0


def _train_worker(config: dict, out: str, resume: bool, progress: bool) -> str:
    """One process of ``comir train --nproc N`` (started by the elastic launcher)."""
    from comir.train import TrainConfig, train

    return str(train(TrainConfig.from_dict(config), out, resume=resume, progress=progress))


def _embed_arguments(p: argparse.ArgumentParser) -> None:
    from comir.runtime import DEVICES, PRECISIONS

    p.add_argument("run", metavar="RUN", help="run folder of `comir train` or sample:<name>")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files")
    p.add_argument("--modality", required=True, type=str.lower, choices=("a", "b"))
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", default="tif", choices=("tif", "png", "npy"), help="(tif)")
    p.add_argument("--tile", type=int, metavar="T", help="tile size (default: whole image)")
    p.add_argument(
        "--overlap", type=int, metavar="O",
        help="tile overlap (default: exact for the model, 2×receptive radius + ramp)",
    )  # fmt: skip
    p.add_argument(
        "--max-pixels", type=float, default=4 * 2**20, metavar="P",
        help="tile images with more pixels than this automatically; 0: never (4194304 = "
        "2048²; whole-image inference of the small preset needs ~1.6 GB per megapixel)",
    )  # fmt: skip
    p.add_argument("--shard", metavar="I/N", help="embed only part I (0-based) of N of the inputs")
    p.add_argument(
        "--scheduler", metavar="local[:N]|ADDRESS",
        help="one Dask task per file: local:N starts N worker processes, tcp://host:8786 "
        "connects to a running scheduler (needs comir[dask]; docs/dask.md)",
    )  # fmt: skip
    p.add_argument(
        "--precision", default="fp32", choices=PRECISIONS,
        help="inference precision (fp32; bf16 is ~2.5x faster on CPUs with AMX/AVX512-BF16)",
    )  # fmt: skip
    p.add_argument(
        "--compile", action="store_true",
        help="torch.compile the encoder (slow start, faster for many equal tiles/patches)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("embed", "Turn images into CoMIRs with a trained model.", _embed_arguments)
def _embed_command(args: argparse.Namespace) -> int:
    import time

    from comir.embed import embed_files, load_model

    t0 = time.perf_counter()
    model = load_model(args.run, device=args.device, precision=args.precision)
    model.compile = args.compile
    outs = embed_files(
        model,
        args.inputs,
        args.modality,
        args.out,
        fmt=args.format,
        tile=args.tile,
        overlap=args.overlap,
        skip_existing=not args.overwrite,
        max_pixels=int(args.max_pixels) if args.max_pixels > 0 else None,
        shard=args.shard,
        progress=not args.quiet,
        scheduler=args.scheduler,
    )
    part = f" (shard {args.shard})" if args.shard else ""
    print(
        f"embedded {len(outs)} image(s){part} as modality {args.modality.upper()} into {args.out} "
        f"({args.format}, L={model.latent_channels}) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


# ---------------------------------------------------------------------------- register / evaluation
def _parse_options(items: list[str] | None) -> dict:
    """``["key=value", ...]`` -> dict; values parsed as JSON when possible (numbers, bools)."""
    import json

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ComirError(f"--option {item!r} is not KEY=VALUE; e.g. --option levels=4")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.strip().replace("-", "_")] = value
    return out


def _register_arguments(p: argparse.ArgumentParser) -> None:
    from comir.runtime import DEVICES

    p.add_argument("fixed", metavar="FIXED", help="fixed (reference) image file")
    p.add_argument("moving", metavar="MOVING", help="moving image file, warped onto FIXED")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", default="fft", help="fft | sift | mi | elastix (fft)")
    p.add_argument("--model", metavar="RUN", help="register CoMIRs of this run (or sample:NAME)")
    p.add_argument(
        "--fixed-modality", default="a", type=str.lower, choices=("a", "b"),
        help="modality of FIXED with --model; MOVING is the other one (a)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--option", action="append", metavar="KEY=VALUE",
        help="back-end option, repeatable; e.g. preset=public (sift: the study's baseline)",
    )  # fmt: skip
    p.add_argument("--landmarks-fixed", metavar="CSV", help="landmarks (x, y) on FIXED")
    p.add_argument(
        "--landmarks-moving", metavar="CSV",
        help="the paired landmarks on MOVING; writes TRE/rTRE to DIR/landmarks.json",
    )  # fmt: skip


@command("register", "Rigidly register MOVING onto FIXED (or their CoMIRs).", _register_arguments)
def _register_command(args: argparse.Namespace) -> int:
    from comir.register import register_files

    pair = (args.landmarks_fixed, args.landmarks_moving)
    if (pair[0] is None) != (pair[1] is None):
        raise ComirError("--landmarks-fixed and --landmarks-moving go together; give both")
    out = register_files(
        args.fixed, args.moving, args.out, method=args.method, model=args.model,
        fixed_modality=args.fixed_modality, device=args.device,
        landmarks=None if pair[0] is None else pair, **_parse_options(args.option),
    )  # fmt: skip
    res = out.result
    if not out.ok:
        print(f"comir register: registration failed: {res.status}", file=sys.stderr)
        return 1
    t = out.transform.translation_about(out.center)
    print(
        f"{args.method}: rotation {out.transform.angle_deg:.3f}°, translation "
        f"({t[0]:.2f}, {t[1]:.2f}) px about the moving centre, score {res.score:.4g}, "
        f"{res.seconds:.2f} s"
    )
    if out.landmarks is not None:
        s = out.landmarks.summary()
        print(
            f"landmarks: TRE median {s['median_tre_px']:.2f} px (before {s['median_initial_tre_px']:.2f}),"
            f" rTRE median {s['median_rtre']:.4f} max {s['max_rtre']:.4f}, robustness "
            f"{s['robustness']:.2f} ({s['n_landmarks']} points)"
        )
    extra = ", landmarks.json" if out.landmarks_json else ""
    print(
        f"wrote {out.transform_json}, transform.tfm, transform_ngff.json, "
        f"{out.registered.name}, overlay.png{extra}"
    )
    return 0


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


def _make_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="folder of aligned image pairs")
    p.add_argument("--layout", default="folders", help="folders | suffix | channels (folders)")
    p.add_argument("--a", default="A", metavar="SPEC", help="modality A: folder, suffix, channels")
    p.add_argument("--b", default="B", metavar="SPEC", help="modality B: folder, suffix, channels")
    p.add_argument("--out", required=True, metavar="EVAL", help="evaluation set folder")
    p.add_argument("--width", type=int, default=300, metavar="W", help="patch width (300)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4], metavar="K")
    p.add_argument("--per-image", type=int, metavar="K", help="patches per image (all regions)")
    p.add_argument("--seed", type=int, default=0, help="(0)")
    p.add_argument(
        "--norm",
        default="auto",
        help="auto (bits from the data maximum) | dtype (bits of the file type) | none | percentile | bits:N (auto)",
    )
    p.add_argument("--norm-b", help="normalisation of modality B (default: --norm)")
    p.add_argument("--log-a", action="store_true", help="log(1+x) on modality A")
    p.add_argument("--log-b", action="store_true", help="log(1+x) on modality B")
    p.add_argument("--bits", type=int, default=16, choices=(8, 16), help="image bit depth (16)")
    p.add_argument(
        "--tiling", default="context", choices=("context", "public"),
        help="context: regions inside a margin, transformed patches show the real "
        "surroundings; public: (H//w)×(W//w) tiles of the whole image, transformed patches "
        "reflect-padded, as the released sets (context)",
    )  # fmt: skip
    p.add_argument(
        "--trans-step", type=float, metavar="PX",
        help="translation step per level in px (published: 7 at W=300, 20 at W=834; "
        "else 7·W/300)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("make-eval", "Cut a public-protocol evaluation set from pairs.", _make_eval_arguments)
def _make_eval_command(args: argparse.Namespace) -> int:
    import json

    from comir.evaluate import make_eval

    out = make_eval(
        args.data, layout=args.layout, a=args.a, b=args.b, out=args.out, width=args.width,
        levels=args.levels, per_image=args.per_image, seed=args.seed, norm=args.norm,
        norm_b=args.norm_b, log_a=args.log_a, log_b=args.log_b, bits=args.bits,
        tiling=args.tiling, trans_step=args.trans_step, progress=not args.quiet,
    )  # fmt: skip
    info = json.loads((out / "eval_info.json").read_text())
    print(
        f"wrote {info['n_per_level']} pairs × {len(info['levels'])} level(s) of "
        f"{info['width']} px patches ({info['tiling']} tiling, translation step "
        f"{info['trans_step_px']:g} px) to {out} "
        f"(patch_tlevel{{{','.join(map(str, info['levels']))}}})"
    )
    return 0


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "eval_dir", nargs="?", metavar="EVAL", help="evaluation set (ours or MultiRegEval)"
    )
    p.add_argument("--method", default="fft", help="fft | sift | mi | elastix (fft)")
    p.add_argument("--model", metavar="RUN", help="register CoMIRs of this run (or sample:NAME)")
    p.add_argument("--direction", default="b2a", choices=("b2a", "a2b", "a2a", "b2b"))
    p.add_argument("--out", metavar="RES", help="results folder (required unless --merge)")
    p.add_argument("--workers", type=int, metavar="N", help="registration processes (≤ 4)")
    p.add_argument(
        "--scheduler", metavar="local[:N]|ADDRESS",
        help="one Dask task per pair: local:N starts N worker processes, tcp://host:8786 "
        "connects to a running scheduler (needs comir[dask]; docs/dask.md)",
    )  # fmt: skip
    p.add_argument(
        "--shard", metavar="I/N",
        help="register only part I (0-based) of N of the pairs into RES/shards/; the last "
        "shard to finish merges all of them",
    )  # fmt: skip
    p.add_argument(
        "--merge", metavar="RES", help="merge the finished shards of RES (no registration)"
    )
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="back-end option")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("evaluate", "Register and score every pair of an evaluation set.", _evaluate_arguments)
def _evaluate_command(args: argparse.Namespace) -> int:
    from comir.evaluate import evaluate, merge_shards

    if args.merge:
        s = merge_shards(args.merge)
        args.out = args.merge
    else:
        if args.eval_dir is None or args.out is None:
            raise ComirError("give EVAL and --out RES (or --merge RES to merge finished shards)")
        s = evaluate(
            args.eval_dir, method=args.method, model=args.model, direction=args.direction,
            out=args.out, workers=args.workers, progress=not args.quiet, shard=args.shard,
            scheduler=args.scheduler, **_parse_options(args.option),
        )  # fmt: skip
    if s.get("complete") is False:
        print(
            f"shard {args.shard}: registered {s['n_shard_pairs']} of {s['n_pairs']} pairs into "
            f"{s['shard_file']}; waiting for shard(s) {', '.join(map(str, s['missing_shards']))}"
            " (the last one to finish merges, or run comir evaluate --merge RES)"
        )
        return 0
    rates = ", ".join(
        f"{'all' if k == 'all' else 'L' + k} {v:.3f}" for k, v in s["success_rate"].items()
    )
    med = s["median_error"]
    print(
        f"{s['method']}{' on CoMIRs' if s['model'] else ''} ({s['direction']}), "
        f"{s['n_pairs']} pairs: success {rates}; median error "
        f"{'inf' if med is None else f'{med:.2f}'} px (threshold {s['threshold_px']:.2f} px), "
        f"{s['seconds_per_pair']:.3f} s/pair"
    )
    print(f"wrote {args.out}/results.csv, summary.json, success_vs_threshold.png")
    return 0


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", metavar="RES", help="folders from comir evaluate")
    p.add_argument("--out", metavar="DIR", help="write compare.md and compare.png here")


@command("compare", "Compare evaluation results side by side.", _compare_arguments)
def _compare_command(args: argparse.Namespace) -> int:
    from comir.evaluate import compare

    print(compare(args.results, out=args.out), end="")
    if args.out:
        print(f"wrote {args.out}/compare.md, compare.png")
    return 0


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


# ---------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from comir import __version__

    parser = argparse.ArgumentParser(
        prog="comir",
        description="Contrastive Multimodal Image Representations for multimodal registration.",
    )
    parser.add_argument("--version", action="version", version=f"comir {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, add_arguments, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def _one_line_warnings(command: str) -> Callable:
    """A ``warnings.showwarning`` that prints ``comir <command>: warning: <message>``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())  # one line, whatever the source wrote
        print(f"comir {command}: warning: {text}", file=sys.stderr if file is None else file)

    return show


def main(argv: list[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _one_line_warnings(args.command)
            return int(args._run(args) or 0)
    except ComirError as exc:
        print(f"comir {args.command}: error: {exc}", file=sys.stderr)
        return ComirError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
