"""``comir make-eval``, ``comir evaluate`` and ``comir compare``."""

from __future__ import annotations

import argparse

from comir.cli.base import command
from comir.errors import ComirError


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
    p.add_argument(
        "--deform", type=float, metavar="SIGMA_PX",
        help="compose each rigid motion with a smooth random field of this std per component "
        "(px); writes ground truth + landmarks, evaluate then reports TRE/rTRE",
    )  # fmt: skip
    p.add_argument(
        "--deform-scale", type=float, metavar="PX", help="length scale of that field (0.2·W)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("make-eval", "Cut a public-protocol evaluation set from pairs.", _make_eval_arguments)
def _make_eval_command(args: argparse.Namespace) -> int:
    import json

    from comir.evaluate import make_eval

    out = make_eval(
        args.data, layout=args.layout, a=args.a, b=args.b, out=args.out, width=args.width,
        levels=args.levels, per_image=args.per_image, seed=args.seed, norm=args.norm,
        norm_b=args.norm_b, log_a=args.log_a, log_b=args.log_b, bits=args.bits,
        tiling=args.tiling, trans_step=args.trans_step, deform=args.deform,
        deform_scale=args.deform_scale, progress=not args.quiet,
    )  # fmt: skip
    info = json.loads((out / "eval_info.json").read_text())
    print(
        f"wrote {info['n_per_level']} pairs × {len(info['levels'])} level(s) of "
        f"{info['width']} px patches ({info['tiling']} tiling, translation step "
        f"{info['trans_step_px']:g} px) to {out} "
        f"(patch_tlevel{{{','.join(map(str, info['levels']))}}})"
    )
    if "deform_px" in info:
        print(
            f"deformation: smooth field, {info['deform_px']:g} px std per component, length "
            f"scale {info['deform_scale_px']:g} px; ground truth in truth/, landmarks_test.csv"
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
    p.add_argument(
        "--transform", choices=("rigid", "affine", "deformable"),
        help="transform family registered (as comir register --transform; rigid)",
    )  # fmt: skip
    p.add_argument(
        "--refine", action="append", metavar="KEY=VALUE", help="deformable option, repeatable"
    )
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
            scheduler=args.scheduler, **_options(args),
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
    if s.get("tre"):
        t = s["tre"]["all"]
        print(
            f"landmarks: TRE mean {t['mean']:.2f}, median {t['median']:.2f}, max {t['max']:.2f} px;"
            f" rTRE median {t['rtre_median']:.4f}; success (mean TRE ≤ {s['threshold_px']:.2f}"
            f" px) {t['success']:.3f}; folded {100 * (s['folded_fraction'] or 0):.3f} %"
        )
    print(f"wrote {args.out}/results.csv, summary.json, success_vs_threshold.png")
    return 0


def _options(args: argparse.Namespace) -> dict:
    from comir.cli.registration import _options as registration_options

    return registration_options(args)


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
