"""The five measurements of the claims report, each returning a JSON-able dict.

Paper: Pielawski, Wetzer et al., "CoMIR", NeurIPS 2020 (§3 C4 equivariance, §4 the
registration results and the seed experiment); evaluation protocol: Lu et al., PLOS ONE
2022 (success = corner error ≤ 2 % of the patch width).
"""

from __future__ import annotations

import numpy as np

from comir.claims.runs import Workspace
from comir.claims.stats import best_match_correlation, bootstrap_ci, channel_correlations, pearson

LEVELS = ("1", "2", "3", "4")
#: Equivariance design: variant -> (C4 on, rotation augmentation on).
EQUIVARIANCE = {
    "C4 + rotation aug.": (True, True),
    "C4 only": (True, False),
    "rotation aug. only": (False, True),
    "neither": (False, False),
}
#: Seed runs: name -> (TrainConfig.weight_seed, TrainConfig.seed = patch-stream seed).
SEEDS = {"w0-d0": (0, 0), "w0-d1": (0, 1), "w1-d1": (1, 1)}
SEED_PAIRS = (
    ("w0-d0", "w0-d1", "same weight seed, other patch stream"),
    ("w0-d1", "w1-d1", "other weight seed, same patch stream"),
    ("w0-d0", "w1-d1", "other weight seed and patch stream"),
)
#: Defaults sweep: variant -> TrainConfig changes (the recipe: mse, tau 0.5, l2 0.1).
DEFAULTS = {
    "mse, τ 0.5, λ2 0.1 (default)": ("base", {}),
    "cosine (L = 3)": ("def-cosine3", {"critic": "cosine", "latent_channels": 3}),
    "l1": ("def-l1", {"critic": "l1"}),
    "τ 0.1": ("def-tau0.1", {"tau": 0.1}),
    "λ2 0.01": ("def-l2-0.01", {"l2": 0.01}),
}
#: The ``comir`` SIFT preset before this report (docs/claims.md, "SIFT on CoMIRs").
SIFT_BEFORE = {
    "matcher": "ratio",
    "ratio": 0.75,
    "n_features": 0,
    "contrast_threshold": 0.04,
    "sigma": 1.6,
    "upsample": 1,
    "orientation": False,
    "iterations": 2000,
}
#: One setting of the new preset at a time set back to its old value.
SIFT_ABLATION = {
    "ratio test 0.75 instead of 2 candidates": {"matcher": "ratio", "ratio": 0.75},
    "contrast threshold 0.04": {"contrast_threshold": 0.04},
    "σ 1.6": {"sigma": 1.6},
    "no upsampling": {"upsample": 1},
    "no orientation hypotheses": {"orientation": False},
}


def _register(method: str, **options):
    from comir.register import register

    return lambda f, m: register(f, m, method=method, **options)


def level_rates(scored: dict, n_boot: int) -> dict:
    """Success per level and over all pairs, each ``[mean, low, high]`` (bootstrap 95 %)."""
    labels = np.asarray(scored["labels"])
    succ = np.asarray(scored["success"], float)
    out = {lv: list(bootstrap_ci(succ[labels == lv], n_boot)) for lv in LEVELS}
    out["all"] = list(bootstrap_ci(succ, n_boot))
    out["n"] = {lv: int((labels == lv).sum()) for lv in LEVELS} | {"all": int(len(succ))}
    return out


def _comir_rates(ws: Workspace, run: str, methods: dict) -> dict:
    """Success of the trained run ``run`` (a :meth:`Workspace.model` name) per method."""
    es = ws.eval_set("sentinel2")
    zf, zm = es.embedded(run, ws.models[run])
    return {name: level_rates(es.register_all(zf, zm, fn, key=(run, name)), ws.budget.n_boot)
            for name, fn in methods.items()}  # fmt: skip


def _main_methods() -> dict:
    return {"fft": _register("fft"), "sift": _register("sift")}


# ---------------------------------------------------------------------------- equivariance
def equivariance(ws: Workspace) -> dict:
    """2 × 2: C4 on/off × rotation augmentation on/off; curves per modality, success."""
    from comir.equivariance import equivariance_correlation

    angles = np.arange(0, 361, ws.budget.angle_step, dtype=float)
    crop = ws.holdout_crop()
    out: dict = {"angles": angles.tolist(), "variants": {}}
    for name, (c4, rot) in EQUIVARIANCE.items():
        run = _variant(ws, c4, rot)
        model = ws.models[run]
        curves = {
            m: equivariance_correlation(lambda x, m=m, f=model: f.embed(x, m, check=False), crop, angles)
            for m in ("a", "b")
        }  # fmt: skip
        out["variants"][name] = {
            "c4": c4,
            "rotation_augmentation": rot,
            "curves": {m: c.tolist() for m, c in curves.items()},
            "mean_off_axis": {m: float(np.nanmean(c[angles % 90 != 0])) for m, c in curves.items()},
            "min": {m: float(np.nanmin(c)) for m, c in curves.items()},
            "run": run,
            "success": _comir_rates(ws, run, _main_methods()),
        }
    return out


def _variant(ws: Workspace, c4: bool, rot: bool) -> str:
    if c4 and rot:
        return base_run(ws)
    name = f"eq-c4{int(c4)}-rot{int(rot)}"
    ws.model(name, equivariance=c4, augment={"rotate": rot})
    return name


def base_run(ws: Workspace) -> str:
    """The recipe itself (C4 on, rotation augmentation on, seeds 0); its run name."""
    ws.model("base")
    return "base"


# ---------------------------------------------------------------------------- seeds
def seeds(ws: Workspace) -> dict:
    """CoMIR correlation between runs (raw per channel and best permutation/sign) and the
    success of each run."""
    from comir.io import read_image

    _, hold = ws.halves("sentinel2")
    image = read_image(next(p for p in sorted(hold.iterdir()) if p.is_file()))
    runs = {}
    for name, (w, d) in SEEDS.items():
        runs[name] = base_run(ws) if (w, d) == (0, 0) else f"seed-{name}"
        if (w, d) != (0, 0):
            ws.model(runs[name], weight_seed=w, seed=d)
    comirs = {n: {m: ws.models[r].embed(image, m) for m in ("a", "b")} for n, r in runs.items()}
    pairs = []
    for r1, r2, what in SEED_PAIRS:
        row = {"runs": [r1, r2], "what": what}
        for m in ("a", "b"):
            c = channel_correlations(comirs[r1][m], comirs[r2][m])
            best, perm, signs = best_match_correlation(comirs[r1][m], comirs[r2][m])
            row[m] = {"raw": float(np.nanmean(np.diag(c))), "best": best,
                      "perm": list(perm), "signs": list(signs)}  # fmt: skip
        pairs.append(row)
    success = {n: _comir_rates(ws, r, _main_methods()) for n, r in runs.items()}
    return {"runs": {n: {"weight_seed": w, "seed": d} for n, (w, d) in SEEDS.items()},
            "pairs": pairs, "success": success, "image": "held-out half of sentinel2"}  # fmt: skip


# ---------------------------------------------------------------------------- methods
def methods(ws: Workspace) -> dict:
    """CoMIR vs MI vs SIFT per level on both samples (shipped models), bootstrap CIs."""
    out = {}
    for sample in ("sentinel2", "ihc"):
        es = ws.eval_set(sample)
        zf, zm = es.embedded(f"sample:{sample}", f"sample:{sample}")
        runs = {
            "raw MI": (es.fixed, es.moving, _register("mi")),
            "raw SIFT (public)": (es.fixed, es.moving, _register("sift", preset="public")),
            "raw SIFT (comir preset)": (es.fixed, es.moving, _register("sift")),
            "CoMIR + MI": (zf, zm, _register("mi")),
            "CoMIR + SIFT": (zf, zm, _register("sift")),
            "CoMIR + fft": (zf, zm, _register("fft")),
        }
        out[sample] = {
            name: level_rates(es.register_all(f, m, fn, key=(sample, name)), ws.budget.n_boot)
            for name, (f, m, fn) in runs.items()
        }
    return out


# ---------------------------------------------------------------------------- SIFT
def _sift_counts(scored: dict) -> dict:
    d = [x for x in scored["details"] if x]

    def med(key: str, i: int | None = None) -> float:
        vals = [x[key] if i is None else x[key][i] for x in d]
        return float(np.median(vals)) if vals else 0.0

    return {"ok_fraction": len(d) / max(len(scored["details"]), 1),
            "keypoints_moving": med("keypoints", 0), "keypoints_fixed": med("keypoints", 1),
            "matches": med("matches"), "inliers": med("inliers")}  # fmt: skip


def comir_properties(zf: list, zm: list, fixed: list, moving: list, crop_a, crop_b) -> dict:
    """Why SIFT finds CoMIRs hard: agreement of the two modalities' CoMIRs of one place,
    spectral smoothness and dynamic range."""

    def hf(z):
        z = np.asarray(z, np.float64)
        z = z.mean(axis=-1) if z.ndim == 3 else z
        p = np.abs(np.fft.fft2(z - z.mean())) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(z.shape[0]), np.fft.fftfreq(z.shape[1]), indexing="ij")
        return float(p[np.hypot(fy, fx) > 1 / 8].sum() / p.sum())

    return {
        "ab_correlation": pearson(crop_a, crop_b),
        "hf_energy_comir": float(np.mean([hf(z) for z in zm])),
        "hf_energy_raw_b": float(np.mean([hf(m) for m in moving])),
        "hf_energy_raw_a": float(np.mean([hf(f) for f in fixed])),
        "latent_channels": int(np.asarray(zf[0]).shape[-1]),
    }


def sift(ws: Workspace) -> dict:
    """SIFT on CoMIRs before/after the preset change, the change ablated, 1 vs 3 channels."""
    from comir.register.sift import register_sift

    out: dict = {}
    settings = {"before (old comir preset)": SIFT_BEFORE, "after (comir preset)": {},
                "public preset": {"preset": "public"}}  # fmt: skip
    for sample in ("sentinel2", "ihc"):
        es = ws.eval_set(sample)
        zf, zm = es.embedded(f"sample:{sample}", f"sample:{sample}")
        rows = {}
        for name, opts in settings.items():
            key = (sample, "CoMIR + SIFT") if not opts else None  # = section 3's run
            sc = es.register_all(zf, zm, lambda f, m, o=opts: register_sift(f, m, **o), key)
            rows[name] = {"success": level_rates(sc, ws.budget.n_boot), **_sift_counts(sc)}
        model = _load(f"sample:{sample}")
        crop = ws.holdout_crop(sample)
        props = comir_properties(zf, zm, es.fixed, es.moving,
                                 model.embed(crop, "a"), model.embed(crop, "b"))  # fmt: skip
        out[sample] = {"settings": rows, "properties": props}
    es = ws.eval_set("sentinel2")
    zf, zm = es.embedded("sample:sentinel2", "sample:sentinel2")
    out["ablation"] = {
        name: level_rates(
            es.register_all(zf, zm, lambda f, m, o=opts: register_sift(f, m, **o)),
            ws.budget.n_boot,
        )["all"]
        for name, opts in SIFT_ABLATION.items()
    }
    out["channels"] = {}
    ws.model("latent3", latent_channels=3)
    for name, run in (("L = 1 (recipe)", base_run(ws)), ("L = 3 (recipe, mse)", "latent3")):
        zf, zm = es.embedded(run, ws.models[run])
        fns = {"SIFT before": lambda f, m: register_sift(f, m, **SIFT_BEFORE),
               "SIFT after": _register("sift"), "fft": _register("fft")}  # fmt: skip
        keys = {"SIFT after": (run, "sift"), "fft": (run, "fft")}  # = section 1's runs
        out["channels"][name] = {
            k: level_rates(es.register_all(zf, zm, fn, keys.get(k)), ws.budget.n_boot)["all"]
            for k, fn in fns.items()
        }
    return out


def _load(ref: str):
    from comir.embed import load_model

    return load_model(ref)


# ---------------------------------------------------------------------------- defaults
def defaults(ws: Workspace) -> dict:
    """Critic, τ and λ2 swept one at a time on sentinel2; success of each."""
    out = {}
    for name, (run, changes) in DEFAULTS.items():
        ws.model(run, **changes)
        out[name] = {"run": run, "changes": changes,
                     "success": _comir_rates(ws, run, _main_methods())}  # fmt: skip
    return out
