"""``comir train`` and ``comir embed``."""

from __future__ import annotations

import argparse

from comir.cli.base import command
from comir.errors import ComirError

# flag -> TrainConfig key, for options whose value is taken as given
_TRAIN_FLAGS = (
    "layout", "a", "b", "val", "val_fraction", "preset", "steps", "epochs", "steps_per_epoch",
    "batch_size", "patch_size", "critic", "tau", "optimizer", "lr", "weight_decay", "l1", "l2",
    "latent_channels", "seed", "weight_seed", "device", "workers", "norm", "norm_b", "log_a", "log_b",
    "equivariance", "precision", "sync_bn", "pixel_size_um",
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
    p.add_argument(
        "--seed", type=int, help="patch-stream seed, and weight seed unless --weight-seed (0)"
    )
    p.add_argument("--weight-seed", type=int, help="seed of the initial weights alone (--seed)")
    p.add_argument(
        "--pixel-size", dest="pixel_size_um", type=float, metavar="UM",
        help="µm per pixel of the training images, stored with the model: whole-slide "
        "registration then embeds slides at that pixel size (unset)",
    )  # fmt: skip
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
    p.add_argument(
        "--scale-range", metavar="LO:HI",
        help="scale augmentation: each patch shows its content at a scale drawn log-uniformly "
        "in LO:HI (e.g. 0.25:1, so one model serves 4x coarser pyramid levels) (1:1)",
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


def _scale_range(text: str) -> dict:
    """``"LO:HI"`` → the scale keys of ``AugmentConfig``."""
    lo, sep, hi = text.partition(":")
    try:
        values = (float(lo), float(hi if sep else lo))
    except ValueError:
        values = (float("nan"),) * 2
    if not (0 < values[0] <= values[1] <= 4):
        raise ComirError(f"--scale-range {text!r}: give LO:HI with 0 < LO <= HI <= 4, e.g. 0.25:1")
    return {"scale_min": values[0], "scale_max": values[1]}


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
    if args.scale_range is not None:
        opts["augment"] = {**opts.get("augment", {}), **_scale_range(args.scale_range)}
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
    p.add_argument(
        "--format", default="tif", choices=("tif", "png", "npy", "ome.tif", "zarr"),
        help="ome.tif / zarr: each input read as a slide (comir.slide.open_slide) and its CoMIR "
        "written as a tiled float32 pyramid in bounded memory (tif)",
    )  # fmt: skip
    p.add_argument(
        "--level", type=int, default=0, metavar="N",
        help="with --format ome.tif|zarr: the slide level to embed (0 = full resolution)",
    )  # fmt: skip
    p.add_argument("--tile", type=int, metavar="T", help="tile size (default: whole image)")
    p.add_argument(
        "--overlap", type=int, metavar="O",
        help="tile overlap (default: exact for the model, 2 × its receptive halo: 136 for small)",
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
    p.add_argument(
        "--runtime", default="torch", choices=("torch", "onnx"),
        help="onnx: tiles through ONNX Runtime (pip install onnxruntime onnx; ~1.9x on CPU)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("embed", "Turn images into CoMIRs with a trained model.", _embed_arguments)
def _embed_command(args: argparse.Namespace) -> int:
    import time

    from comir.embed import load_model

    t0 = time.perf_counter()
    model = load_model(args.run, args.device, args.precision, runtime=args.runtime)
    model.compile = args.compile
    if args.format in SLIDE_FORMATS:
        outs = _embed_slides(model, args)
    else:
        outs = _embed_images(model, args)
    part = f" (shard {args.shard})" if args.shard else ""
    print(
        f"embedded {len(outs)} image(s){part} as modality {args.modality.upper()} into {args.out} "
        f"({args.format}, L={model.latent_channels}) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


#: ``comir embed --format`` values written as pyramids by :func:`comir.slide.write_comir_slide`.
SLIDE_FORMATS = ("ome.tif", "zarr")


def _embed_slides(model, args: argparse.Namespace) -> list:
    """Each input as a slide: the CoMIR of ``--level`` written as ``OUT/<stem>.<format>``."""
    from pathlib import Path

    from comir.slide import open_slide, write_comir_slide

    if args.shard or args.scheduler:
        raise ComirError(
            f"--format {args.format} embeds slides one by one; drop --shard/--scheduler"
        )
    outs = []
    for src in map(Path, args.inputs):
        stem = src.name.split(".")[0]
        dst = Path(args.out) / f"{stem}.{args.format}"
        if dst.exists() and not args.overwrite:
            outs.append(dst)
            continue
        with open_slide(src) as slide:
            if not 0 <= args.level < len(slide.levels):
                raise ComirError(f"{src}: --level {args.level} does not exist; the slide has "
                                 f"levels 0–{len(slide.levels) - 1}")  # fmt: skip
            outs.append(write_comir_slide(model, slide, args.modality, dst, level=args.level,
                                          tile=args.tile or 1024, progress=not args.quiet))  # fmt: skip
    return outs


def _embed_images(model, args: argparse.Namespace) -> list:
    from comir.embed import embed_files

    return embed_files(
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
