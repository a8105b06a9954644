"""Training loop: learning signal, metrics, run folder, atomic checkpoints, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY1, write_train_pairs
from safetensors.torch import load_file

import comir.train as train_module
from comir.errors import ComirError, ComirWarning
from comir.run_files import METRIC_COLUMNS, load_checkpoint, read_metrics
from comir.runtime import resolve_device
from comir.train import TrainConfig, build_model, make_optimizer, train, train_step

make_data = write_train_pairs


def tiny_config(data: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        model_overrides=dict(TINY1),
        batch_size=6,
        patch_size=32,
        steps=4,
        steps_per_epoch=2,
        lr=3e-3,
        device="cpu",
        augment={"rotate": False},
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


def test_config_roundtrip_and_validation():
    cfg = TrainConfig(data="x", model_overrides={"growth": 4}, augment={"flip": False})
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == cfg
    assert cfg.total_steps() == 10 * 32
    assert TrainConfig(data="x", steps=7).total_steps() == 7
    with pytest.raises(ComirError, match="unknown option.*bogus"):
        TrainConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ComirError, match="critic"):
        TrainConfig.from_dict({**d, "critic": "dot"})
    with pytest.raises(ComirError, match="batch_size"):
        TrainConfig.from_dict({**d, "batch_size": 1})
    with pytest.raises(ComirError, match="missing 'data'"):
        TrainConfig.from_dict({"lr": 0.1})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ComirError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ComirError):
        resolve_device("tpu")


def test_train_step_clips_gradient_norm(data):
    """Plain SGD with lr 1: the update equals the clipped gradient, so its norm is the clip."""
    from comir.losses.infonce import InfoNCELoss

    cfg = tiny_config(data, optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0)
    model = build_model(cfg, 3, 1)
    opt = make_optimizer(cfg, model.parameters())
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(4, 3, 16, 16), torch.rand(4, 1, 16, 16))
    stats = train_step(
        model,
        batch,
        InfoNCELoss("mse", 0.5),
        opt,
        torch.amp.GradScaler("cpu", enabled=False),
        l1=0.0,
        l2=0.0,
        grad_clip=1e-3,
        equivariance=True,
        generator=g,
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert stats["grad_norm"] > 1e-3  # the clip was active
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-3)
    assert set(stats) >= {"loss", "pos_sim", "neg_sim", "gap", "out_std"}
    assert stats["gap"] == pytest.approx(stats["pos_sim"] - stats["neg_sim"], abs=1e-6)


def test_loss_decreases_and_run_folder(data, tmp_path):
    from comir.model import EncoderPair, count_parameters

    cfg = tiny_config(data, steps=30, steps_per_epoch=10, val_fraction=0.34)
    run = train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(run / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(1, 31))
    loss = np.array([r["loss"] for r in rows])
    assert loss[-5:].mean() < 0.8 * loss[:5].mean()
    val = [r["val_loss"] for r in rows]
    assert [i + 1 for i, v in enumerate(val) if not math.isnan(v)] == [10, 20, 30]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == METRIC_COLUMNS
    assert all(r["out_std"] > 0 for r in rows)
    assert (run / "loss.png").stat().st_size > 1000

    info = json.loads((run / "config.json").read_text())
    assert set(info) == {"comir_version", "model", "data", "input_stats", "train", "parameters"}
    assert TrainConfig.from_dict(info["train"]) == cfg
    model = EncoderPair.from_config_dict(info["model"])
    assert info["parameters"] == count_parameters(model)
    assert info["data"]["in_channels_a"] == 3 and info["data"]["in_channels_b"] == 1

    weights = load_file(str(run / "model.safetensors"))
    expected = {f"{m}.{k}" for m in "ab" for k in model.encoders[m].state_dict()}
    assert set(weights) == expected
    assert any(k.endswith("running_var") for k in weights)  # BN buffers included
    ck = load_checkpoint(run / "checkpoint" / "last.pt")
    assert ck["step"] == 30
    assert all(torch.equal(weights[k], ck["model"][k]) for k in weights)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_resume_gives_identical_weights(data, tmp_path, monkeypatch):
    """4 steps straight == 2 steps, interruption, resume 2 (dropout and C4 on)."""
    cfg = tiny_config(data, model_overrides={**TINY1, "dropout": 0.2}, augment={})
    straight = train(cfg, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    real_step = train_module.train_step

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    monkeypatch.setattr(train_module, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint" / "last.pt")["step"] == 2
    monkeypatch.setattr(train_module, "train_step", real_step)
    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)

    wa, wb = _weights(straight), _weights(resumed)
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ra, rb = read_metrics(straight / "metrics.csv"), read_metrics(resumed / "metrics.csv")
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]

    # extending a finished run continues it; other changes are refused
    more = train(TrainConfig(**{**cfg.to_dict(), "steps": 6}), resumed, resume=True, progress=False)
    assert read_metrics(more / "metrics.csv")[-1]["step"] == 6
    with pytest.raises(ComirError, match="changed option.*lr"):
        train(TrainConfig(**{**cfg.to_dict(), "lr": 0.1}), resumed, resume=True, progress=False)


def test_checkpoint_never_half_written(data, tmp_path, monkeypatch):
    cfg = tiny_config(data)
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # second epoch: write garbage, then fail like a full disk
            Path(f).write_bytes(b"\x00garbage")
            raise OSError("No space left on device")
        return real_save(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        train(cfg, tmp_path / "run", progress=False)
    ckdir = tmp_path / "run" / "checkpoint"
    assert [p.name for p in ckdir.iterdir()] == ["last.pt"]  # no temporary leftovers
    ck = load_checkpoint(ckdir / "last.pt")
    assert ck["step"] == 2
    assert set(ck) >= {"model", "optimizer", "scaler", "rng", "step"}

    monkeypatch.setattr(torch, "save", real_save)
    (ckdir / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ComirError, match="corrupt"):
        train(cfg, tmp_path / "run", resume=True, progress=False)


def test_refuses_to_overwrite_and_bad_data(data, tmp_path):
    run = train(tiny_config(data, steps=2), tmp_path / "run", progress=False)
    with pytest.raises(ComirError, match="already holds a training run"):
        train(tiny_config(data, steps=2), run, progress=False)
    with pytest.raises(ComirError, match="nothing to resume"):
        train(tiny_config(data), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ComirError, match="not found"):
        train(tiny_config(tmp_path / "missing"), tmp_path / "r2", progress=False)


def test_collapse_warning(data, tmp_path, monkeypatch):
    def collapsed(*args, **kw):
        return {"loss": 1e-6, "pos_sim": 0.0, "neg_sim": -50.0, "gap": 50.0, "out_std": 40.0}

    monkeypatch.setattr(train_module, "train_step", collapsed)
    with pytest.warns(ComirWarning, match="^the contrastive loss collapsed"):
        train(tiny_config(data, steps=12, steps_per_epoch=12), tmp_path / "run", progress=False)


def test_lazy_exports():
    import subprocess
    import sys

    import comir

    code = "import sys, comir, comir.cli; comir.cli.build_parser(); print('torch' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "False"  # `import comir` and the CLI parser skip torch
    assert callable(comir.load_model)
    assert comir.load_model.__module__ == "comir.embed"


def test_cosine_critic_needs_more_than_one_latent_channel():
    with pytest.raises(ComirError, match=r"--latent-channels 3") as info:
        TrainConfig(data="x", critic="cosine").validate()
    assert "\n" not in str(info.value)
    TrainConfig(data="x", critic="cosine", latent_channels=3).validate()  # fine with L = 3
    TrainConfig(data="x", critic="mse").validate()  # and other critics keep L = 1


def test_cosine_of_scalar_maps_has_zero_gradient():
    """Why: for L = 1 the per-pixel cosine is sign(x)·sign(y), piecewise constant."""
    from comir.losses import info_nce, similarity_matrix

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    sim = similarity_matrix(z, "cosine")
    signs = torch.sign(z.detach()).reshape(6, -1)
    torch.testing.assert_close(sim.detach(), signs @ signs.T / 20)  # analytic value
    (grad,) = torch.autograd.grad(sim.sum(), z)
    assert grad.abs().max() < 1e-12
    (grad,) = torch.autograd.grad(info_nce(z[:3], z[3:], "cosine"), z)
    assert grad.abs().max() < 1e-12
    z3 = torch.randn(6, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    (grad3,) = torch.autograd.grad(info_nce(z3[:3], z3[3:], "cosine"), z3)
    assert grad3.abs().max() > 1e-3  # with three channels the critic does carry a gradient


def test_config_records_training_input_statistics(data, tmp_path):
    """Statistics of the prepared training inputs, checked against plain numpy."""
    from comir.io import read_image

    run = train(tiny_config(data, steps=1, steps_per_epoch=1), tmp_path / "run", progress=False)
    stats = json.loads((run / "config.json").read_text())["input_stats"]
    files = sorted((data / "A").glob("*.tif"))
    a = np.concatenate([read_image(f).reshape(-1, 3) / 255.0 for f in files])
    b = np.concatenate([read_image(data / "B" / f.name).reshape(-1, 1) / 255.0 for f in files])
    for got, x in ((stats["a"], a), (stats["b"], b)):
        assert got["pixels"] == x.shape[0]
        np.testing.assert_allclose(got["mean"], x.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["std"], x.std(0), rtol=1e-5, atol=1e-6)
        for key, q in (("p1", 1), ("p50", 50), ("p99", 99)):
            np.testing.assert_allclose(got[key], np.percentile(x, q, axis=0), rtol=1e-5, atol=1e-6)


def _init_weights(model) -> list:
    return [t.detach().clone() for t in model.state_dict().values() if t.is_floating_point()]


def test_weight_seed_draws_the_initial_weights_apart_from_the_stream_seed(data, tmp_path):
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # noqa: E731
    w_seed0 = _init_weights(build_model(tiny_config(data, seed=0), 3, 1))
    # weight_seed alone decides the weights; seed decides them only when weight_seed is unset
    assert same(_init_weights(build_model(tiny_config(data, seed=7, weight_seed=0), 3, 1)), w_seed0)
    assert not same(
        _init_weights(build_model(tiny_config(data, seed=0, weight_seed=1), 3, 1)), w_seed0
    )
    assert not same(_init_weights(build_model(tiny_config(data, seed=7), 3, 1)), w_seed0)
    with pytest.raises(ComirError, match="weight_seed"):
        TrainConfig.from_dict({**tiny_config(data).to_dict(), "weight_seed": -1})
    # the stream still follows seed: one weight seed, two streams -> two trained models;
    # weight_seed equal to seed changes nothing (runs of older configs are reproduced)
    from safetensors.torch import load_file

    runs = {k: train(tiny_config(data, **kw), tmp_path / k, progress=False)
            for k, kw in {"s0": {"seed": 0}, "s0w0": {"seed": 0, "weight_seed": 0},
                          "s1w0": {"seed": 1, "weight_seed": 0}}.items()}  # fmt: skip
    final = {k: list(load_file(p / "model.safetensors").values()) for k, p in runs.items()}
    assert same(final["s0"], final["s0w0"])
    assert not same(final["s0w0"], final["s1w0"])
    assert json.loads((runs["s1w0"] / "config.json").read_text())["train"]["weight_seed"] == 0


def test_training_pixel_size_is_stored_and_read_by_slide_registration(data, tmp_path, capsys):
    from comir.cli import main
    from comir.embed import load_model
    from comir.slide.register import _model_pixel_size

    run = train(tiny_config(data, pixel_size_um=0.5), tmp_path / "px", progress=False)
    model = load_model(run, device="cpu")
    assert model.config["train"]["pixel_size_um"] == 0.5
    assert _model_pixel_size(model, None) == 0.5  # what picks the slide's working level
    assert _model_pixel_size(model, 2.0) == 2.0  # given explicitly: wins
    plain = train(tiny_config(data), tmp_path / "plain", progress=False)
    assert _model_pixel_size(load_model(plain, device="cpu"), None) is None
    rc = main(["train", str(data), "--out", str(tmp_path / "bad"), "--pixel-size", "0"])
    assert rc == 2 and "pixel_size_um=0.0 is invalid" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
