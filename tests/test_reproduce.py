"""Run the command lines of ``docs/reproduce.md`` on tiny stand-ins of the real datasets.

Every ``<!-- repro:NAME -->`` code block of the document is read from the file itself and
executed: shell blocks with ``bash``, ``comir ...`` lines through :func:`comir.cli.main`,
with ``$VARIABLES`` pointing at fixture folders (:mod:`fixtures_real_layouts`) and only
size/speed flags appended (:data:`OVERRIDES`; argparse lets the last occurrence win), so
the document and the CLI cannot drift apart. The assertions check the documented recipe
values against the papers' recipes (Pielawski et al. 2020; Lu et al. 2022, as listed in
docs/reproduce.md) and the outputs against independent computations.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import math
import re
import shlex
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
from fixtures_real_layouts import (
    BFSHG_IDS,
    ZURICH_FOLDS,
    make_bfshg,
    make_multiregeval,
    make_zurich,
)

from comir.cli import build_parser, main
from comir.io import read_image

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproduce.md"
_BLOCK = re.compile(r"<!-- repro:([\w-]+) -->\s*\n```bash\n(.*?)^```", re.S | re.M)
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")

#: Zurich fixture ids: fold 1 tests {3, 7, 9} of them and trains on {1, 2, 10}.
ZURICH_IDS = (1, 2, 3, 7, 9, 10)
FOLD = 1
TRAIN_FAST = ["--epochs", "2", "--steps-per-epoch", "1", "--batch-size", "2"]
TRAIN_FAST += ["--patch-size", "32", "--device", "cpu", "--quiet"]
EVAL_FAST = ["--workers", "1", "--quiet"]
#: Same number of poolings as the preset, one dense layer per block, few channels.
TINY_MODEL = (
    "model_overrides = {{ first_filters = 8, growth = 4, bottleneck_layers = 1, "
    "down_layers = [{layers}] }}\n"
)
#: Flags appended to the documented lines of each block: tiny sizes and step counts only
#: ($TINY_SMALL / $TINY_PAPER: --config files shrinking the preset, see ``TINY_MODEL``).
OVERRIDES: dict[str, dict[str, list[str]]] = {
    "zurich-train": {"train": [*TRAIN_FAST, "--config", "$TINY_SMALL"]},
    "zurich-embed": {"embed": ["--device", "cpu"]},
    "zurich-make-eval": {"make-eval": ["--width", "32", "--levels", "1", "4", "--quiet"]},
    "zurich-evaluate": {"evaluate": EVAL_FAST},
    "zurich-register": {"register": ["--device", "cpu"]},
    "bfshg-train": {"train": [*TRAIN_FAST, "--config", "$TINY_PAPER"]},
    "bfshg-make-eval": {"make-eval": ["--width", "64", "--levels", "1", "4", "--quiet"]},
    "bfshg-evaluate": {"evaluate": EVAL_FAST},
    "mre-train": {"train": [*TRAIN_FAST, "--config", "$TINY_SMALL"]},
    "mre-evaluate": {"evaluate": EVAL_FAST},
}


# ----------------------------------------------------------------------------- the document
def doc_blocks() -> dict[str, str]:
    """``{name: body}`` of the tagged ``bash`` blocks of docs/reproduce.md."""
    blocks = dict(_BLOCK.findall(DOC.read_text()))
    assert blocks, f"{DOC}: no <!-- repro:NAME --> blocks found"
    return blocks


def command_lines(body: str) -> list[str]:
    """Logical lines of a block: continuations joined, comments and blank lines dropped."""
    lines = body.replace("\\\n", " ").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def substitute(text: str, env: dict[str, str]) -> str:
    """Replace ``$NAME`` / ``${NAME}``; a variable the test does not provide is an error."""

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise AssertionError(f"docs/reproduce.md uses ${name}; add it to the test env")
        return env[name]

    return _VAR.sub(repl, text)


def to_argv(line: str, env: dict[str, str]) -> list[str]:
    """``comir ...`` line -> argv for :func:`main` (variables substituted, globs expanded)."""
    words = shlex.split(substitute(line, env))
    assert words[0] == "comir", f"not a comir command: {line}"
    argv: list[str] = []
    for w in words[1:]:
        matches = sorted(glob.glob(w)) if any(c in w for c in "*?[") else []
        argv.extend(matches or [w])
    return argv


@dataclass
class Ran:
    """One executed command: the documented argv, exit code, output and warnings."""

    argv: list[str]
    rc: int
    out: str
    err: str
    warnings: list[str] = field(default_factory=list)


def run_block(name: str, env: dict[str, str]) -> list[Ran]:
    """Execute the block ``name`` of the document with the fixture variables ``env``."""
    body = doc_blocks()[name]
    lines = command_lines(body)
    if not any(ln.startswith("comir ") for ln in lines):  # plain shell (fold folders)
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return [Ran(["bash"], proc.returncode, proc.stdout, proc.stderr)]
    ran = []
    for line in lines:
        argv = to_argv(line, env)
        extra = [substitute(w, env) for w in OVERRIDES.get(name, {}).get(argv[0], [])]
        out, err = io.StringIO(), io.StringIO()
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("always")
            try:
                rc = main(argv + extra)
            except SystemExit as exc:  # argparse rejected a documented option
                rc = exc.code if isinstance(exc.code, int) else 2
        msgs = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
        ran.append(Ran(argv, rc, out.getvalue(), err.getvalue(), msgs))
    return ran


def assert_ok(ran: list[Ran]) -> None:
    bad = [f"comir {' '.join(r.argv)} -> {r.rc}: {r.err.strip()[-400:]}" for r in ran if r.rc]
    assert not bad, "documented command(s) failed:\n" + "\n".join(bad)


def documented(name: str, env: dict[str, str], command: str) -> list:
    """Parsed namespaces of the documented ``comir <command>`` lines of a block (no overrides)."""
    parser = build_parser()
    lines = [ln for ln in command_lines(doc_blocks()[name]) if ln.startswith(f"comir {command} ")]
    return [parser.parse_args(to_argv(ln, env)) for ln in lines]


def summary(res: Path) -> dict:
    return json.loads((res / "summary.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny convolutions on a shared CPU: extra threads only cost (5x slower measured here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The document's variables, pointing at tiny stand-ins of the three datasets."""
    root = tmp_path_factory.mktemp("repro")
    make_zurich(root / "Zurich_dataset_v1.0", ids=ZURICH_IDS, size=64)
    make_bfshg(root / "BF-SHG", size=128)
    make_multiregeval(root / "MultiRegEval", width=96, levels=2)
    for preset, pools in (("small", 3), ("paper", 6)):
        (root / f"tiny-{preset}.toml").write_text(TINY_MODEL.format(layers=", ".join("1" * pools)))
    return {
        "TINY_SMALL": str(root / "tiny-small.toml"),
        "TINY_PAPER": str(root / "tiny-paper.toml"),
        "ZURICH": str(root / "Zurich_dataset_v1.0"),
        "BFSHG": str(root / "BF-SHG"),
        "MRE": str(root / "MultiRegEval"),
        "WORK": str(root / "work"),
        "FOLD": str(FOLD),
    }


# Tests using the section fixtures below run the documented commands end to end (training
# included) and are marked slow.
@pytest.fixture(scope="module")
def zurich(env) -> dict[str, list[Ran]]:
    """Run section 1 of the document in order (fold folders, train, embed, eval, compare)."""
    names = ["zurich-fold", "zurich-train", "zurich-embed", "zurich-make-eval"]
    names += ["zurich-evaluate", "zurich-register"]
    return {n: run_block(n, env) for n in names}


@pytest.fixture(scope="module")
def bfshg(env) -> dict[str, list[Ran]]:
    """Run section 2 of the document in order."""
    return {n: run_block(n, env) for n in ("bfshg-train", "bfshg-make-eval", "bfshg-evaluate")}


@pytest.fixture(scope="module")
def mre(env, zurich, bfshg) -> dict[str, list[Ran]]:
    """Run section 3 (needs the fold folders of section 1 and the model of section 2)."""
    return {n: run_block(n, env) for n in ("mre-train", "mre-evaluate")}


# ----------------------------------------------------------------------------- document
def test_document_blocks_use_existing_options(env):
    """Every documented comir line parses, and every section is covered by the tests."""
    blocks = doc_blocks()
    assert set(blocks) == set(OVERRIDES) | {"zurich-fold"}
    parser = build_parser()
    for body in blocks.values():
        for line in command_lines(body):
            if line.startswith("comir "):
                parser.parse_args(to_argv(line, env))  # SystemExit on an unknown option


# ----------------------------------------------------------------------------- Zurich
@pytest.mark.slow
def test_zurich_fold_folders(env, zurich):
    assert_ok(zurich["zurich-fold"])
    fold = Path(env["WORK"]) / f"fold{FOLD}"
    test_ids = set(ZURICH_FOLDS[FOLD]) & set(ZURICH_IDS)
    for split, ids in (("test", test_ids), ("train", set(ZURICH_IDS) - test_ids)):
        files = sorted(p.name for p in (fold / split).iterdir())
        assert files == sorted(f"zh{n}.tif" for n in ids), split
        for n in ids:
            link = fold / split / f"zh{n}.tif"
            assert link.is_symlink()
            assert link.resolve() == (Path(env["ZURICH"]) / "images_tif" / f"zh{n}.tif").resolve()


def test_zurich_fold_loop_all_folds(tmp_path):
    """The documented loop splits all 20 scenes into each fold's test and train sets."""
    zurich = make_zurich(tmp_path / "Zurich_dataset_v1.0", ids=tuple(range(1, 21)), size=8)
    seen_in_test: list[int] = []
    for k, test_ids in ZURICH_FOLDS.items():
        work = tmp_path / f"work{k}"
        (ran,) = run_block(
            "zurich-fold", {"ZURICH": str(zurich), "WORK": str(work), "FOLD": str(k)}
        )
        assert ran.rc == 0, ran.err
        ids = {
            s: {int(p.stem[2:]) for p in (work / f"fold{k}" / s).iterdir()}
            for s in ("test", "train")
        }
        assert ids["test"] == set(test_ids)
        assert ids["train"] == set(range(1, 21)) - set(test_ids)
        seen_in_test += sorted(ids["test"])
    assert sorted(seen_in_test) == list(range(1, 21))  # the folds partition the 20 scenes


@pytest.mark.slow
def test_zurich_train_follows_paper_recipe(env, zurich):
    (args,) = documented("zurich-train", env, "train")
    assert (args.layout, args.a, args.b, args.norm) == ("channels", "0:3", "3", "bits:12")
    assert (args.optimizer, args.lr, args.weight_decay) == ("adam", 1e-3, 1e-4)
    assert (args.batch_size, args.epochs, args.steps_per_epoch) == (24, 5, 32)
    assert (args.preset, args.patch_size, args.critic, args.tau) == ("small", 128, "mse", 0.1)
    assert args.equivariance is None  # C4 stays on

    assert_ok(zurich["zurich-train"])
    run = Path(env["WORK"]) / "runs" / f"zurich-fold{FOLD}"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["channels_a"] == [0, 1, 2] and cfg["data"]["channels_b"] == [3]
    assert cfg["data"]["norm_a"] == cfg["data"]["norm_b"] == "bits:12"
    assert cfg["train"]["tau"] == 0.1 and cfg["train"]["l2"] == 0.1
    assert (run / "model.safetensors").stat().st_size > 0
    rows = read_csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
    # --val-fraction held out a training image: a finite validation loss at each epoch end
    assert all(math.isfinite(float(r["val_loss"])) for r in rows)


@pytest.mark.slow
def test_zurich_embed_writes_one_comir_per_scene(env, zurich):
    assert_ok(zurich["zurich-embed"])
    test_ids = sorted(set(ZURICH_FOLDS[FOLD]) & set(ZURICH_IDS))
    for m in ("A", "B"):
        out = Path(env["WORK"]) / "comirs" / f"zurich-fold{FOLD}" / m
        names = sorted(p.stem for p in out.iterdir() if p.suffix == ".tif")
        assert names == sorted(f"zh{n}" for n in test_ids)
        z = read_image(out / f"zh{test_ids[0]}.tif")
        assert z.dtype == np.float32 and z.shape[:2] == (64, 64) and np.isfinite(z).all()


@pytest.mark.slow
def test_zurich_eval_set_holds_test_fold_only_with_training_scaling(env, zurich):
    assert_ok(zurich["zurich-make-eval"])
    ev = Path(env["WORK"]) / "eval" / f"zurich-fold{FOLD}"
    info = json.loads((ev / "eval_info.json").read_text())
    assert (info["norm_a"], info["norm_b"]) == ("bits:12", "bits:12")
    test_ids = set(ZURICH_FOLDS[FOLD]) & set(ZURICH_IDS)
    for level in (1, 4):
        rows = read_csv(ev / f"patch_tlevel{level}" / "info_test.csv")
        assert {r["Source"] for r in rows} == {f"zh{n}" for n in test_ids}
    # the reference patch of B is channel 3 (NIR) of the scene / 4095, stored as 16-bit
    row = next(r for r in read_csv(ev / "patch_tlevel1" / "info_test.csv") if r["Source"] == "zh7")
    x0, y0 = int(row["X0"]), int(row["Y0"])
    scene = tifffile.imread(Path(env["ZURICH"]) / "images_tif" / "zh7.tif")
    for m, chans in (("B", [3]), ("A", [0, 1, 2])):
        patch = read_image(ev / "patch_tlevel1" / m / "test" / f"{row['Filename']}_R.png")
        expect = scene[y0 : y0 + 32, x0 : x0 + 32][..., chans].squeeze() / 4095.0
        np.testing.assert_allclose(patch / 65535.0, expect, atol=1.0 / 65535)


@pytest.mark.slow
def test_zurich_evaluate_and_compare(env, zurich):
    assert_ok(zurich["zurich-evaluate"])
    res = Path(env["WORK"]) / "results" / f"zurich-fold{FOLD}"
    names = ["mi", "sift", "fft", "comir-mi", "comir-sift", "comir-fft"]
    for name in names:
        s = summary(res / name)
        assert s["n_pairs"] == 2 * 3 and set(s["success_rate"]) == {"1", "4", "all"}
        assert s["direction"] == "b2a" and (s["model"] is not None) == name.startswith("comir")
        assert len(read_csv(res / name / "results.csv")) == 6
    # the evaluation set was prepared like the training data: no mismatch warning
    assert not [w for r in zurich["zurich-evaluate"] for w in r.warnings if "prepared" in w]
    table = (res / "compare.md").read_text().splitlines()
    assert [ln.split("|")[1].strip() for ln in table[2:]] == names
    assert (res / "compare.png").stat().st_size > 0


@pytest.mark.slow
def test_zurich_register_one_pair(env, zurich):
    assert_ok(zurich["zurich-register"])
    out = Path(env["WORK"]) / "register" / "zh7"
    d = json.loads((out / "transform.json").read_text())
    assert d["method"] == "fft" and np.asarray(d["matrix"]).shape == (3, 3)
    assert d["model"].endswith(f"zurich-fold{FOLD}")
    warped = read_image(out / "zh7_registered.tif")  # the raw 4-channel scene, resampled
    assert warped.shape == (64, 64, 4) and warped.dtype == np.uint16
    assert (out / "overlay.png").stat().st_size > 0


# ----------------------------------------------------------------------------- BF/SHG
@pytest.mark.slow
def test_bfshg_train_follows_paper_recipe(env, bfshg):
    (args,) = documented("bfshg-train", env, "train")
    assert (args.layout, args.a, args.b, args.log_a, args.log_b) == (
        "suffix",
        "_SHG",
        "_BF",
        True,
        None,
    )
    assert (args.optimizer, args.lr, args.weight_decay) == ("sgd", 1e-2, 1e-5)
    assert (args.batch_size, args.epochs, args.steps_per_epoch) == (32, 23, 32)
    assert (args.preset, args.patch_size, args.tau) == ("paper", 128, 0.5)
    assert args.val.endswith("Validation1Set")

    assert_ok(bfshg["bfshg-train"])
    run = Path(env["WORK"]) / "runs" / "bfshg"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["momentum"] == 0.9  # SGD momentum of the paper (no flag)
    # the paper preset (shrunk by the test's --config) keeps its 6 poolings and dropout
    assert len(cfg["model"]["a"]["down_layers"]) == 6 and cfg["model"]["b"]["dropout"] == 0.2
    d = cfg["data"]
    assert (d["log_a"], d["log_b"], d["in_channels_a"], d["in_channels_b"]) == (True, False, 1, 3)
    assert all(math.isfinite(float(r["val_loss"])) for r in read_csv(run / "metrics.csv"))


@pytest.mark.slow
def test_bfshg_eval_set_is_log_scaled_centre_crops(env, bfshg):
    assert_ok(bfshg["bfshg-make-eval"])
    ev = Path(env["WORK"]) / "eval" / "bfshg"
    rows = read_csv(ev / "patch_tlevel4" / "info_test.csv")
    assert sorted(r["Source"] for r in rows) == sorted(BFSHG_IDS["TestSet"])
    w = 64
    for r in rows:  # one patch per core, from the centre of the 128 px image
        assert (int(r["X0"]), int(r["Y0"])) == ((128 - w) // 2, (128 - w) // 2)
    core = rows[0]["Source"]
    shg = tifffile.imread(Path(env["BFSHG"]) / "TestSet" / f"{core}_SHG.tif")
    patch = read_image(ev / "patch_tlevel4" / "A" / "test" / f"{rows[0]['Filename']}_R.png")
    expect = np.log1p(shg[32:96, 32:96] / 255.0)  # uint8 SHG: bits:8, then log(1 + x)
    np.testing.assert_allclose(patch / 65535.0, expect, atol=1.0 / 65535)


@pytest.mark.slow
def test_bfshg_evaluate_and_compare(env, bfshg):
    assert_ok(bfshg["bfshg-evaluate"])
    res = Path(env["WORK"]) / "results" / "bfshg"
    names = ["mi", "sift", "fft", "comir-mi", "comir-sift", "comir-fft"]
    for name in names:
        s = summary(res / name)
        assert s["n_pairs"] == 2 * len(BFSHG_IDS["TestSet"]) and s["width"] == 64
    assert not [w for r in bfshg["bfshg-evaluate"] for w in r.warnings if "prepared" in w]
    table = (res / "compare.md").read_text().splitlines()
    assert [ln.split("|")[1].strip() for ln in table[2:]] == names


# ----------------------------------------------------------------------------- MultiRegEval
@pytest.mark.slow
def test_released_sets_evaluate_unchanged(env, mre):
    assert_ok(mre["mre-train"])
    cfg = json.loads((Path(env["WORK"]) / "runs" / "zurich-nir-fold1" / "config.json").read_text())
    assert cfg["data"]["channels_a"] == [3] and cfg["data"]["channels_b"] == [0, 1, 2]

    assert_ok(mre["mre-evaluate"])
    results = Path(env["WORK"]) / "results"
    sets = {
        "mre-zurich-fold1": ("Zurich_patches/fold1", 3),
        "mre-eliceiri": ("Eliceiri_patches", 2),
    }
    for tag, (rel, n) in sets.items():
        for name in ("mi", "sift", "fft", "comir-fft"):
            s = summary(results / tag / name)
            assert s["n_pairs"] == 2 * n and set(s["success_rate"]) == {"1", "2", "all"}
        # Displacement recomputed by the evaluator from the public corners = the CSV's value
        rows = read_csv(results / tag / "fft" / "results.csv")
        for r in rows:
            src = read_csv(Path(env["MRE"]) / rel / f"patch_tlevel{r['level']}" / "info_test.csv")
            want = next(float(c["Displacement"]) for c in src if c["Filename"] == r["Filename"])
            assert float(r["Displacement"]) == pytest.approx(want, rel=1e-9)
        assert (results / tag / "compare.md").is_file()


@pytest.mark.slow
def test_released_sets_raw_fft_recovers_public_transforms(env, mre):
    """B is an increasing function of A in the fixture: raw FFT must recover the public
    generator's transforms, which fails if the evaluator misreads the public convention."""
    assert_ok(mre["mre-evaluate"])
    results = Path(env["WORK"]) / "results"
    for tag in ("mre-zurich-fold1", "mre-eliceiri"):
        rows = read_csv(results / tag / "fft" / "results.csv")
        errors = np.array([float(r["Error"]) for r in rows])
        # a half-pixel or sign slip in reading the public corners would cost >= 0.5 px
        assert np.median(errors) < 0.25, (tag, errors)
        assert summary(results / tag / "fft")["success_rate"]["all"] == 1.0, (tag, errors)
