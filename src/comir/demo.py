"""End-to-end demonstration on a bundled sample (Sentinel-2 RGB/NIR or IHC H/DAB).

:func:`run_demo` loads (or trains) a model on the left half of the scene, builds a public-
protocol evaluation set (levels 1–4) from the right half, which training never saw,
registers every pair with the raw baselines and with CoMIR + each back-end, prints the
comparison table and writes ``report.html`` with the figures.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from comir.errors import ComirError

#: Per bundled sample: names of modality A and B, and the evaluation patch width (the
#: held-out half is 300×150 px for Sentinel-2, 512×256 px for IHC).
DEMOS = {
    "sentinel2": ("RGB", "NIR", 96),
    "ihc": ("haematoxylin", "DAB", 128),
}
#: Back-end runs of the demo: run name suffix, method, options. ``sift-public`` is the
#: public study's SIFT (500 features, cross-check matching, RANSAC 2 px / 100 trials).
RUNS = (
    ("fft", "fft", {}),
    ("sift", "sift", {}),
    ("sift-public", "sift", {"preset": "public"}),
    ("mi", "mi", {}),
)
QUICK_RUNS = ("fft", "mi")


def sample_train_config(name: str, train_dir: Path, val_dir: Path, quick: bool = False):
    """The recipe of the shipped sample models (``scripts/train_sample_model.py``).

    Left half of a bundled scene for training, right half for the validation loss; small
    preset, 64² patches, MSE critic with τ = 0.5 and an L2 activation decay of 0.1 (with a
    weak decay the networks inflate the representation scale until the loss collapses;
    see docs/architecture.md, "Training defaults").
    """
    from comir import samples
    from comir.train import TrainConfig

    info = samples.sample(name)
    return TrainConfig(
        data=str(train_dir),
        layout=info["layout"],
        a=info["a_spec"],
        b=info["b_spec"],
        norm=info["norm"],
        val=str(val_dir),
        preset="small",
        epochs=3 if quick else 20,
        steps_per_epoch=32,
        batch_size=16,
        patch_size=64,
        critic="mse",
        tau=0.5,
        l2=0.1,
        seed=0,
    )


def run_demo(
    out: str | Path = "demo-out",
    sample: str = "sentinel2",
    train: bool = False,
    quick: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the demo and return its summary (also written to ``out/summary.json``).

    Parameters
    ----------
    out : path
        Output folder; ``report.html`` lands there.
    sample : {"sentinel2", "ihc"}
        Bundled sample and its shipped model ``sample:<name>``.
    train : bool
        Train a model on the training half instead of loading the shipped one.
    quick : bool
        A smaller evaluation set (and a shorter training with ``train``), for smoke tests.
    workers : int, optional
        Registration processes (default: up to 4).
    """
    from comir import samples
    from comir.evaluate import compare

    if sample not in DEMOS:
        raise ComirError(f"unknown demo sample {sample!r}; choose one of {', '.join(DEMOS)}")
    name_a, name_b, width = DEMOS[sample]
    t0 = time.perf_counter()
    out = Path(out)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    train_dir = samples.export_sample(sample, work / "train", split="train")
    hold_dir = samples.export_sample(sample, work / "holdout", split="holdout")
    model_ref, model = _model(sample, train, train_dir, hold_dir, out, quick, progress)
    eval_dir = _eval_set(sample, hold_dir, work / "eval", width, quick)
    res_dirs = _evaluate_runs(eval_dir, model, out, quick, workers, progress)
    table = compare(res_dirs, out=out)
    print(table)

    names = (name_a, name_b)
    figures = _figures(
        model, names, hold_dir, eval_dir, out, model_ref, angle_step=30 if quick else 10
    )
    summary = {
        "seconds": round(time.perf_counter() - t0, 1),
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "sample": sample,
        "modalities": list(names),
        "model": str(model_ref),
        "eval_width": width,
        "runs": {p.name: json.loads((p / "summary.json").read_text()) for p in res_dirs},
        "figures": {k: str(v.relative_to(out)) for k, v in figures.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_report(out, table, summary)
    print(f"report: {out / 'report.html'}  ({summary['seconds']:.0f} s)")
    return summary


def _model(sample: str, train: bool, train_dir, hold_dir, out: Path, quick: bool, progress):
    """``(reference, ComirModel)``: the shipped sample model, or one trained here."""
    from comir.embed import load_model

    model_ref: str | Path = f"sample:{sample}"
    if train:
        from comir.train import train as train_model

        config = sample_train_config(sample, train_dir, hold_dir, quick)
        model_ref = train_model(config, out / "model", progress=progress)
    return model_ref, load_model(model_ref)


def _eval_set(sample: str, hold_dir: Path, out: Path, width: int, quick: bool) -> Path:
    """The level 1–4 evaluation set cut from the held-out half."""
    from comir import samples
    from comir.evaluate import make_eval

    info = samples.sample(sample)
    return make_eval(
        hold_dir, layout=info["layout"], a=info["a_spec"], b=info["b_spec"], out=out,
        width=width, levels=(1, 2, 3, 4), per_image=3 if quick else 12, seed=0,
        norm=info["norm"],
    )  # fmt: skip


def _evaluate_runs(eval_dir: Path, model, out: Path, quick: bool, workers, progress) -> list:
    """Every run of :data:`RUNS` on raw images and on CoMIRs; returns the results folders."""
    import contextlib

    from comir.evaluate import evaluate, registration_pool

    runs = [r for r in RUNS if r[0] in QUICK_RUNS] if quick else RUNS
    n = min(os.cpu_count() or 1, 4) if workers is None else int(workers)
    res_dirs = []
    # one pool for all runs: its processes start once (about 1.5 s each time otherwise)
    with registration_pool(n) if n > 1 else contextlib.nullcontext() as pool:
        for name, mdl in (("raw", None), ("comir", model)):
            for tag, method, options in runs:
                res = out / "results" / f"{name}-{tag}"
                evaluate(
                    eval_dir, method=method, model=mdl, out=res, workers=1, pool=pool,
                    progress=progress, **options,
                )  # fmt: skip
                res_dirs.append(res)
    return res_dirs


def _figures(
    model,
    names: tuple[str, str],
    hold_dir: Path,
    eval_dir: Path,
    out: Path,
    model_ref,
    angle_step: int,
) -> dict:
    """Pictures for the report: CoMIRs, an example registration, loss and equivariance curves."""
    from comir import plot
    from comir.equivariance import equivariance_correlation
    from comir.io import read_image

    figs: dict[str, Path] = {}
    raw = read_image(next(p for p in sorted(hold_dir.iterdir()) if p.is_file()))
    za = model.embed(raw, "a")
    zb = model.embed(raw, "b")
    prep_a = model.data.prepare(raw, "a")
    prep_b = model.data.prepare(raw, "b")
    figs["comirs"] = plot.plot_modalities_and_comirs(
        prep_a, prep_b, za, zb, out / "figures" / "comirs.png"
    )
    angles = np.arange(0, 361, angle_step, dtype=float)
    # rotated inputs are zero-padded on purpose: no out-of-distribution check for them
    corr_a = equivariance_correlation(lambda x: model.embed(x, "a", check=False), raw, angles)
    corr_b = equivariance_correlation(lambda x: model.embed(x, "b", check=False), raw, angles)
    figs["equivariance"] = plot.plot_equivariance(
        angles,
        {f"modality A ({names[0]})": corr_a, f"modality B ({names[1]})": corr_b},
        out / "figures" / "equivariance.png",
    )
    loss_png = _loss_png(model_ref)
    if loss_png is not None:
        figs["loss"] = out / "figures" / "loss.png"
        shutil.copyfile(loss_png, figs["loss"])
    figs["example"] = _example_registrations(
        model, names, eval_dir, out / "figures" / "examples.png"
    )
    for key in ("compare",):
        p = out / f"{key}.png"
        if p.exists():
            figs[key] = p
    return figs


def _example_registrations(model, names: tuple[str, str], eval_dir: Path, path: Path) -> Path:
    """Re-register one pair per level with raw MI and with CoMIR + fft, and draw them."""
    from comir import plot
    from comir.evaluate import find_levels, patch_encoder, read_level, read_patch
    from comir.register import register

    encoder = patch_encoder(model)
    rows = []
    for i, folder in enumerate(find_levels(eval_dir)):
        level = read_level(folder)
        for name in level.names[(5 * i) % len(level.names) :][:1]:  # a different region each
            fixed = read_patch(level.files["A"][f"{name}_R"])
            moving = read_patch(level.files["B"][f"{name}_T"])
            raw = register(fixed, moving, method="mi")
            zf, zm = encoder.embed(fixed, "a"), encoder.embed(moving, "b")
            co = register(zf, zm, method="fft")
            shape = fixed.shape[:2]
            rows.append(
                {
                    "title": f"level {level.label}, pair {name}",
                    "panels": [
                        (f"fixed ({names[0]})", fixed),
                        (f"moving ({names[1]})", moving),
                        ("CoMIR of fixed", zf),
                        ("CoMIR of moving", zm),
                    ],
                    # CoMIRs of both modalities look alike, so their overlay shows alignment
                    "overlays": [
                        ("before", zf, zm, zm),
                        ("raw MI", zf, raw.transform.warp(zm, shape), zm),
                        ("CoMIR + fft", zf, co.transform.warp(zm, shape), zm),
                    ],
                }
            )
    return plot.plot_registration_rows(rows, path)


def _loss_png(model_ref) -> Path | None:
    from comir import samples

    ref = str(model_ref)
    run = samples.model_dir(ref[len("sample:") :]) if ref.startswith("sample:") else Path(ref)
    p = run / "loss.png"
    return p if p.exists() else None


def _write_report(out: Path, table: str, summary: dict) -> None:
    from comir.io import write_text

    figs = summary["figures"]
    name_a, name_b = summary["modalities"]
    captions = {
        "compare": "Success rate per level (left) and success rate vs threshold (right).",
        "example": f"Example registrations, one per level: fixed {name_a}, moving {name_b}, "
        "their CoMIRs, and overlays of the CoMIRs before registration and after raw mutual "
        "information and CoMIR + fft registration.",
        "comirs": "The held-out half of the scene: both modalities and their CoMIRs.",
        "equivariance": "Rotation equivariance: Pearson correlation of f(rotate(x)) with "
        "rotate(f(x)) for rotation angles over the full circle.",
        "loss": "Training and validation loss of the model.",
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>comir demo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:4px 8px;"
        "text-align:right}img{max-width:100%}figcaption{color:#444}</style></head><body>",
        "<h1>comir demo</h1>",
        f"<p>Model: <code>{html.escape(summary['model'])}</code>; evaluation patches "
        f"{summary['eval_width']} px wide from the held-out half of the bundled "
        f"<code>{html.escape(summary['sample'])}</code> scene (A = {html.escape(name_a)}, "
        f"B = {html.escape(name_b)}; moving B registered onto fixed A); "
        f"success = corner error ≤ 2 % of the width. Total time {summary['seconds']:.0f} s.</p>",
        "<h2>Success rates</h2>",
        _markdown_table_to_html(table),
    ]
    for key in ("compare", "example", "comirs", "equivariance", "loss"):
        if key in figs:
            parts.append(
                f"<figure><img src='{html.escape(figs[key])}'>"
                f"<figcaption>{html.escape(captions[key])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    write_text(out / "report.html", "\n".join(parts) + "\n")


def _markdown_table_to_html(table: str) -> str:
    rows = [r.strip().strip("|").split("|") for r in table.strip().splitlines() if r.strip()]
    rows = [r for r in rows if not set("".join(r)) <= set("-: ")]
    if not rows:
        raise ComirError("empty comparison table")
    head, body = rows[0], rows[1:]
    th = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body
    )
    return f"<table><tr>{th}</tr>{trs}</table>"
