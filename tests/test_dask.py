"""Dask-distributed embed and evaluate (comir.scale): same outputs as the in-process path,
per-item retry and failure reports, resumability, a one-line error for a dead scheduler."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_textured, oracle, write_pairs

from comir import scale
from comir.cli import main
from comir.errors import ComirError, ComirWarning
from comir.evaluate import evaluate, make_eval
from comir.io import read_image, write_image


class LostWorker(BaseException):
    """Escapes register_pair's per-pair ``except Exception`` like a dying worker would."""


def flaky_oracle(fixed, moving, info, marker_dir: str, always: str, once: str, **_):
    """The truth oracle, except that pair ``always`` fails every time and pair ``once``
    fails on its first try only (a marker file remembers the try across processes)."""
    name = info["Filename"]
    if name == always:
        raise LostWorker(f"simulated crash on {name}")
    marker = Path(marker_dir) / name
    if name == once and not marker.exists():
        marker.touch()
        raise LostWorker("first try")
    return oracle(fixed, moving, info)


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dask_data")
    imgs = [make_textured((120, 150), seed=s, sigma=2.5) for s in (0, 1)]
    write_pairs(root, imgs, [1.0 - x**2 for x in imgs])
    return make_eval(root, "folders", "A", "B", root.parent / "dask_eval", width=40, seed=3,
                     levels=(2,))  # fmt: skip


@pytest.fixture(scope="module")
def client():
    """One ``local:2`` cluster (comir's own start-up path) for the module, always closed."""
    pytest.importorskip("distributed")
    with scale.open_client("local:2") as c:
        assert len(c.scheduler_info()["workers"]) == 2
        assert c.run_on_scheduler(_allowed_failures) == scale.RETRIES
        yield c


def _allowed_failures(dask_scheduler=None):
    return dask_scheduler.allowed_failures


def _rows(path: Path) -> list[dict]:
    """results.csv rows without the timing column."""
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "Seconds"} for r in csv.DictReader(fh)]


# ----------------------------------------------------------------------------- spec
def test_parse_scheduler_specs():
    assert scale.parse_scheduler("local") == scale.SchedulerSpec(True, None)
    assert scale.parse_scheduler("local:3") == scale.SchedulerSpec(True, 3)
    assert scale.parse_scheduler("tcp://h:8786").address == "tcp://h:8786"
    assert scale.parse_scheduler("h:8786").address == "tcp://h:8786"
    for bad in ("local:0", "local:x", "locale", "", "a b"):
        with pytest.raises(ComirError, match="--scheduler"):
            scale.parse_scheduler(bad)


def test_core_imports_and_runs_without_dask(tmp_path: Path):
    code = (
        "import sys; sys.modules['dask'] = sys.modules['distributed'] = None\n"
        "import comir.cli, comir.embed, comir.evaluate, comir.scale\n"
        "from comir.errors import ComirError\n"
        "try:\n"
        "    with comir.scale.open_client('local:1'): pass\n"
        "except ComirError as e: print('ERR', e)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "ERR --scheduler needs Dask: pip install 'comir[dask]'" in p.stdout


def test_dead_scheduler_is_one_line_error_fast(eval_set, tmp_path, monkeypatch, capsys):
    pytest.importorskip("distributed")
    monkeypatch.setattr(scale, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    argv = ["evaluate", str(eval_set), "--out", str(tmp_path / "r"), "--quiet"]
    rc = main([*argv, "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert time.perf_counter() - t0 < 4.0
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and f"127.0.0.1:{port}: no Dask scheduler answered" in err


# ----------------------------------------------------------------------------- evaluate
@pytest.mark.slow
def test_evaluate_cli_on_scheduler_address_same_rows_as_in_process(eval_set, client, tmp_path):
    evaluate(eval_set, "fft", out=tmp_path / "inproc", workers=1, progress=False)
    argv = ["evaluate", str(eval_set), "--method", "fft", "--quiet", "--out", str(tmp_path / "d")]
    assert main([*argv, "--scheduler", client.scheduler.address]) == 0
    want = _rows(tmp_path / "inproc" / "results.csv")
    assert len(want) == 12 and _rows(tmp_path / "d" / "results.csv") == want


@pytest.mark.slow
def test_evaluate_failed_item_retried_once_then_reported(eval_set, client, tmp_path):
    ref = evaluate(eval_set, oracle, out=tmp_path / "ref", workers=1, progress=False)
    rows = _rows(tmp_path / "ref" / "results.csv")
    always, once = rows[1]["Filename"], rows[4]["Filename"]
    (tmp_path / "m").mkdir()
    opts = dict(marker_dir=str(tmp_path / "m"), always=always, once=once)
    with pytest.warns(ComirWarning, match=rf"pair 1 .*{always}.* failed on a Dask worker"):
        s = evaluate(eval_set, flaky_oracle, out=tmp_path / "d", scheduler=client,
                     progress=False, **opts)  # fmt: skip
    got = {r["Filename"]: r for r in _rows(tmp_path / "d" / "results.csv")}
    assert got[always]["Status"].startswith("failed: worker: LostWorker: simulated crash")
    assert got[always]["Success"] == "0"
    assert got[once]["Status"] == "ok" and (tmp_path / "m" / once).exists()  # the retry
    for r in rows:
        if r["Filename"] != always:
            assert got[r["Filename"]] == r
    assert s["n_pairs"] == ref["n_pairs"] == 12


# ----------------------------------------------------------------------------- embed
@pytest.fixture
def one_torch_thread():
    """Dask workers run torch on one thread (OMP_NUM_THREADS=1): so does the reference,
    since another thread count reorders float32 sums (last-digit differences)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def embed_inputs(tmp_path, tiny_run, scene, one_torch_thread):
    tiny_run(tmp_path / "run")
    ins = []
    for k in range(3):
        p = tmp_path / "in" / f"im{k}.tif"
        p.parent.mkdir(exist_ok=True)
        write_image(p, scene(40 + 8 * k, 48, seed=k))
        ins.append(p)
    return tmp_path / "run", ins


@pytest.mark.slow
def test_embed_on_cluster_identical_resumable_and_reports_bad_file(embed_inputs, client, tmp_path):
    from comir.embed import embed_files, load_model

    run, ins = embed_inputs
    model = load_model(run, device="cpu")
    ref = embed_files(model, ins, "a", tmp_path / "ref")
    outs = embed_files(model, ins, "a", tmp_path / "d", scheduler=client)
    for a, b in zip(ref, outs):
        assert np.array_equal(read_image(a), read_image(b))
    # resume: a finished output is kept, a stale partial one removed and redone
    keep = outs[0].read_bytes()
    outs[1].unlink()
    stale = outs[1].parent / f".{outs[1].stem}.x1y2{outs[1].suffix}.part"
    stale.write_bytes(b"half")
    mtime = outs[0].stat().st_mtime_ns
    embed_files(model, ins, "a", tmp_path / "d", scheduler=client)
    assert outs[0].read_bytes() == keep and outs[0].stat().st_mtime_ns == mtime
    assert not stale.exists() and np.array_equal(read_image(outs[1]), read_image(ref[1]))
    # a corrupt file fails (after its retry) by name; the others still finish
    bad = ins[0].parent / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with (
        pytest.warns(ComirWarning, match=r"bad\.tif: not embedded"),
        pytest.raises(ComirError, match=r"bad\.tif: 1 of 4 image\(s\) not embedded"),
    ):
        embed_files(model, [bad, *ins], "a", tmp_path / "e", scheduler=client)
    assert not (tmp_path / "e" / "bad.tif").exists()
    for a, b in zip(ref, ins):
        assert np.array_equal(read_image(tmp_path / "e" / b.name), read_image(a))


@pytest.mark.slow
def test_embed_in_memory_model_is_sent_to_workers(embed_inputs, client, tmp_path):
    import dataclasses

    from comir.embed import embed_files, load_model

    run, ins = embed_inputs
    model = dataclasses.replace(load_model(run, device="cpu"), name="in-memory")
    assert scale._model_key(model) is None
    ref = embed_files(model, ins[:2], "b", tmp_path / "ref", fmt="npy")
    outs = embed_files(model, ins[:2], "b", tmp_path / "d", fmt="npy", scheduler=client)
    for a, b in zip(ref, outs):
        assert np.array_equal(np.load(a), np.load(b))


def test_workers_load_the_model_with_its_runtime(embed_inputs):
    """A run-folder model is loaded by each worker itself: with the same runtime."""
    from comir.embed import load_model

    run, ins = embed_inputs
    model = load_model(run, device="cpu", runtime="onnx")
    key = scale._model_key(model)
    assert key is not None and key[-1] == "onnx"
    job = scale.EmbedJob(key, str(ins[0]), "x.npy", "a", "npy", None, None, None)
    scale._MODELS.pop(key, None)
    assert scale._worker_model(job, None).runtime == "onnx"
    assert scale._model_key(load_model(run, device="cpu"))[-1] == "torch"
