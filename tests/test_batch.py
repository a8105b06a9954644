"""Batch work: shards, band-wise image I/O, resumable embedding, sharded evaluation + merge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TINY1, oracle

from comir.batch import (
    RowWriter,
    open_image,
    parse_shard,
    remove_stale_parts,
    shard_indices,
)
from comir.cli import main
from comir.errors import ComirError
from comir.io import read_image, write_image
from comir.transform import RigidTransform


# ----------------------------------------------------------------------------- shards
def test_parse_shard():
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
    assert parse_shard((1, 2)) == (1, 2) and parse_shard(None) is None
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0", "1/2/3"):
        with pytest.raises(ComirError, match="--shard"):
            parse_shard(bad)


def test_shard_indices_partition_sorted_items():
    rng = np.random.default_rng(0)
    keys = [f"img{int(v):04d}" for v in rng.permutation(23)]
    parts = [shard_indices(keys, (i, 4)) for i in range(4)]
    flat = sorted(k for p in parts for k in p)
    assert flat == list(range(23))  # every item exactly once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    # deterministic by sorted key, not by input order: shard 0 holds ranks 0, 4, 8, ...
    ranked = sorted(keys)
    assert {keys[k] for k in parts[0]} == set(ranked[0::4])
    shuffled = list(reversed(keys))
    assert {shuffled[k] for k in shard_indices(shuffled, (0, 4))} == set(ranked[0::4])
    assert shard_indices(keys, None) == list(range(23))


# ----------------------------------------------------------------------------- band I/O
@pytest.mark.parametrize(
    "kind", ["strips", "tiled-zlib", "rgb-tiled", "planar-separate", "float-bigtiff"]
)
def test_open_image_reads_bands_like_read_image(tmp_path: Path, kind: str):
    rng = np.random.default_rng(1)
    path = tmp_path / "im.tif"
    if kind == "strips":
        tifffile.imwrite(path, rng.integers(0, 255, (77, 53), dtype=np.uint8), rowsperstrip=5)
    elif kind == "tiled-zlib":
        img = rng.integers(0, 4096, (100, 70), dtype=np.uint16)
        tifffile.imwrite(path, img, tile=(32, 32), compression="zlib")
    elif kind == "rgb-tiled":
        img = rng.integers(0, 255, (61, 90, 3), dtype=np.uint8)
        tifffile.imwrite(path, img, tile=(16, 32), photometric="rgb")
    elif kind == "planar-separate":
        img = rng.integers(0, 255, (4, 45, 60), dtype=np.uint8)
        tifffile.imwrite(path, img, planarconfig="separate", photometric="minisblack")
    else:
        img = rng.random((40, 30)).astype(np.float32)
        tifffile.imwrite(path, img, bigtiff=True, rowsperstrip=3)
    ref = read_image(path)
    with open_image(path) as src:
        assert src.streaming and src.shape == ref.shape and src.dtype == ref.dtype
        for r0, r1 in ((0, 1), (3, 17), (10, ref.shape[0])):
            np.testing.assert_array_equal(src.read_rows(r0, r1), ref[r0:r1])


def test_open_image_npy_and_fallback(tmp_path: Path):
    arr = np.arange(60 * 20 * 2, dtype=np.int16).reshape(60, 20, 2)
    np.save(tmp_path / "a.npy", arr)
    with open_image(tmp_path / "a.npy") as src:
        assert src.streaming and src.shape == (60, 20, 2)
        np.testing.assert_array_equal(src.read_rows(7, 33), arr[7:33])
    png = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40)
    write_image(tmp_path / "b.png", png)
    with open_image(tmp_path / "b.png") as src:  # not streamable: read whole
        assert not src.streaming
        np.testing.assert_array_equal(src.read_rows(5, 9), png[5:9])
    bad = np.full((20, 20), np.nan, np.float32)
    np.save(tmp_path / "nan.npy", bad)
    with open_image(tmp_path / "nan.npy") as src, pytest.raises(ComirError, match="NaN"):
        src.read_rows(0, 4)


@pytest.mark.parametrize(
    "shape,suffix", [((50, 37), ".tif"), ((50, 37, 3), ".tif"), ((50, 37, 2), ".npy")]
)
def test_row_writer_writes_valid_files_band_by_band(tmp_path: Path, shape, suffix):
    data = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    path = tmp_path / f"z{suffix}"
    with RowWriter(path, shape) as w:
        for r0 in (30, 0, 13):  # any order, each row once
            r1 = {30: 50, 0: 13, 13: 30}[r0]
            w.write_rows(r0, data[r0:r1])
        assert not path.exists()  # appears only when complete
    if suffix == ".tif":
        with tifffile.TiffFile(path) as tf:
            assert tf.is_bigtiff and tf.pages[0].dtype == np.float32
    np.testing.assert_array_equal(read_image(path), data)
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))


def test_row_writer_failure_leaves_nothing(tmp_path: Path):
    path = tmp_path / "z.tif"
    with pytest.raises(RuntimeError), RowWriter(path, (10, 10)) as w:
        w.write_rows(0, np.zeros((5, 10)))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_parts(tmp_path: Path):
    (tmp_path / ".img1.abc123.tif.part").write_bytes(b"x")
    (tmp_path / ".img10.zz.tif.part").write_bytes(b"x")  # another output's temp file
    (tmp_path / "img1.tif").write_bytes(b"done")
    assert remove_stale_parts(tmp_path / "img1.tif") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".img10.zz.tif.part", "img1.tif"]


# ----------------------------------------------------------------------------- embed folders
@pytest.fixture()
def run_and_images(tmp_path: Path, tiny_run, scene):
    tiny_run(tmp_path / "run", TINY1)
    paths = []
    for i in range(5):
        p = tmp_path / "in" / f"im{i}.tif"
        p.parent.mkdir(exist_ok=True)
        write_image(p, scene(24 + 4 * i, 30, seed=i))
        paths.append(p)
    return tmp_path / "run", paths


def test_embed_files_resume_skips_finished_and_redoes_partial(run_and_images, tmp_path: Path):
    from comir.embed import embed_files, load_model

    run, paths = run_and_images
    model = load_model(run, device="cpu")
    ref = embed_files(model, paths, "a", tmp_path / "ref")
    out = tmp_path / "out"
    out.mkdir()
    # im0 finished earlier (marker content must survive), im1 interrupted mid-write
    write_image(out / "im0.tif", np.full((3, 3), 7.0, np.float32))
    stale = out / ".im1.k2j3.tif.part"
    stale.write_bytes(b"half a file")
    outs = embed_files(model, paths, "a", out)
    assert [o.name for o in outs] == [f"im{i}.tif" for i in range(5)]
    np.testing.assert_array_equal(read_image(out / "im0.tif"), np.full((3, 3), 7.0))
    assert not stale.exists()
    for i in range(1, 5):
        np.testing.assert_array_equal(read_image(out / f"im{i}.tif"), read_image(ref[i]))
    # without skipping, the marker is recomputed
    embed_files(model, paths, "a", out, skip_existing=False)
    np.testing.assert_array_equal(read_image(out / "im0.tif"), read_image(ref[0]))


def test_embed_shards_cover_inputs_once(run_and_images, tmp_path: Path, capsys):
    run, paths = run_and_images
    args = ["embed", str(run), *map(str, paths), "--modality", "a", "--quiet"]
    written = []
    for i in range(3):
        out = tmp_path / f"s{i}"
        assert main([*args, "--out", str(out), "--shard", f"{i}/3"]) == 0
        written.append(sorted(p.name for p in out.iterdir()))
    assert "shard 0/3" in capsys.readouterr().out
    flat = sorted(n for w in written for n in w)
    assert flat == sorted(f"im{i}.tif" for i in range(5))
    assert written[0] == ["im0.tif", "im3.tif"]  # ranks 0 and 3 of the sorted inputs
    assert main([*args, "--out", str(tmp_path / "x"), "--shard", "3/3"]) == 2


# ----------------------------------------------------------------------------- evaluate
def noisy_oracle(fixed, moving, info, **_):
    """Ground truth perturbed per pair (deterministic), some pairs failing; 0 s per pair."""
    from comir.register.base import failed

    name = info["Filename"]
    if name.endswith("2"):
        return failed("noisy_oracle", "on purpose")
    res = oracle(fixed, moving, info)
    shift = RigidTransform.from_params(0.0, ((sum(map(ord, name)) % 7) * 0.3,) * 2)
    res.transform = shift @ res.transform
    res.seconds = 0.0
    return res


def test_sharded_evaluate_merges_to_unsharded_result(tmp_path: Path, textured, pair_folder):
    from comir.evaluate import evaluate, make_eval, merge_shards

    root = tmp_path / "data"
    imgs = [textured((130, 130), seed=s, sigma=2.5) for s in (0, 1)]
    pair_folder(root, imgs, [1.0 - x**2 for x in imgs])
    ev = make_eval(root, "folders", "A", "B", tmp_path / "ev", width=40, levels=(1, 3), seed=1)
    kw = dict(method=noisy_oracle, workers=1, progress=False)
    full = evaluate(ev, out=tmp_path / "full", **kw)
    assert 0 < full["success_rate"]["all"] < 1 and full["n_failed"] > 0  # a real mix

    res = tmp_path / "sharded"
    part = evaluate(ev, out=res, shard="1/3", **kw)
    assert part["complete"] is False and part["missing_shards"] == [0, 2]
    assert not (res / "results.csv").exists()
    with pytest.raises(ComirError, match="not finished"):
        merge_shards(res)
    evaluate(ev, out=res, shard="0/3", **kw)
    # resume: a finished shard is not recomputed (its file, with a marker, is kept)
    f1 = res / "shards" / "shard-1-of-3.json"
    rec = json.loads(f1.read_text())
    rec["wall_seconds"] = 123.0
    f1.write_text(json.dumps(rec))
    merged = evaluate(ev, out=res, shard="2/3", **kw)  # the last one merges
    assert json.loads(f1.read_text())["wall_seconds"] == 123.0
    assert (res / "results.csv").read_bytes() == (tmp_path / "full" / "results.csv").read_bytes()
    strip = ("wall_seconds", "shard_wall_seconds")
    on_disk = json.loads((res / "summary.json").read_text())
    want = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert {k: v for k, v in on_disk.items() if k not in strip} == {
        k: v for k, v in want.items() if k not in strip
    }
    assert merged["success_rate"] == full["success_rate"]
    assert (res / "success_vs_threshold.png").stat().st_size > 1000
    # explicit merge via the CLI gives the same files again
    (res / "results.csv").unlink()
    assert main(["evaluate", "--merge", str(res)]) == 0
    assert (res / "results.csv").read_bytes() == (tmp_path / "full" / "results.csv").read_bytes()
    # a shard computed with other settings is rejected at merge time
    rec["direction"] = "a2b"
    f1.write_text(json.dumps(rec))
    assert main(["evaluate", "--merge", str(res)]) == 2


# ----------------------------------------------------------------------------- precision
def test_train_precision_option():
    import torch

    from comir.train import TrainConfig, _check_resume, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision(TrainConfig(data="d"), cpu) == (False, torch.float16)  # auto: fp32
    assert resolve_precision(TrainConfig(data="d", precision="bf16"), cpu) == (True, torch.bfloat16)
    assert resolve_precision(TrainConfig(data="d", precision="fp32"), cpu)[0] is False
    with pytest.raises(ComirError, match="CUDA"):
        resolve_precision(TrainConfig(data="d", precision="fp16"), cpu)
    with pytest.raises(ComirError, match="precision"):
        TrainConfig.from_dict({"data": "d", "precision": "fp8"})
    # a run made before the option existed resumes with the default, not with another value
    old = TrainConfig(data="d").to_dict()
    del old["precision"]
    _check_resume({"train": old}, TrainConfig(data="d"), Path("run"))
    with pytest.raises(ComirError, match="precision"):
        _check_resume({"train": old}, TrainConfig(data="d", precision="bf16"), Path("run"))


def test_bf16_train_step_and_inference_are_close_to_fp32(tmp_path: Path, tiny_run, scene):
    import torch

    from comir.embed import load_model
    from comir.losses.infonce import InfoNCELoss
    from comir.model import EncoderPair, tiramisu_config
    from comir.train import train_step

    losses = {}
    for dt in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = EncoderPair(
            tiramisu_config("small", 1, 1, **TINY1), tiramisu_config("small", 1, 1, **TINY1)
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(4, 1, 32, 32, generator=g)
        stats = train_step(
            model, (x, x.flip(-1)), InfoNCELoss("mse", 0.5), opt,
            torch.amp.GradScaler("cpu", enabled=False), l1=0.0, l2=0.0, grad_clip=1.0,
            equivariance=False, generator=g, amp=dt != torch.float32, amp_dtype=dt,
        )  # fmt: skip
        losses[dt] = stats["loss"]
    assert losses[torch.bfloat16] != losses[torch.float32]  # autocast really applied
    assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], rel=0.05)

    tiny_run(tmp_path / "run", TINY1)
    img = scene(40, 48)
    z32 = load_model(tmp_path / "run", device="cpu").embed(img, "a")
    z16 = load_model(tmp_path / "run", device="cpu", precision="bf16").embed(img, "a")
    err = np.abs(z16 - z32).max() / z32.std()
    assert 0 < err < 0.1
    with pytest.raises(ComirError, match="precision"):
        load_model(tmp_path / "run", precision="int8")
