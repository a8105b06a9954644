"""Data-parallel training (comir.distributed): 2 CPU processes, gloo, tiny models.

What is compared, and why: plain batch norm normalises with the statistics of each
process's own batch (PyTorch's SyncBatchNorm has no CPU kernel), so a 2-rank step on
``n + n`` patches equals a single-process step on the ``2n`` patches whose encoders see the
batch as two chunks of ``n`` (batch statistics per chunk) while the loss (InfoNCE over all
``4n`` maps, activation decay) and the gradient cover the whole batch. Dropout is 0 and C4
off there, so nothing random differs between the two.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY1, write_train_pairs
from safetensors.torch import load_file
from torch import nn

import comir.train as train_module
from comir import distributed
from comir.errors import ComirError
from comir.losses.infonce import InfoNCELoss
from comir.run_files import read_metrics
from comir.train import TrainConfig, build_model, make_optimizer, stream_seed, train, train_step

WORLD = 2
#: Wall-clock limit of each multi-process test (a hang fails instead of blocking CI).
LIMIT_S = 120


def _write_data(root: Path, n: int = 3, size: int = 40) -> Path:
    return write_train_pairs(root, n, size)


def _config(data: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        model_overrides={**TINY1, "dropout": 0.0},
        batch_size=3,
        patch_size=24,
        steps=4,
        steps_per_epoch=2,
        device="cpu",
        augment={"rotate": False},
    )
    return TrainConfig(**{**base, **kw})


def _spawn(fn, tmp_path: Path, *args) -> None:
    """Run ``fn(rank, init, *args)`` on WORLD processes joined by a file store."""
    ctx = mp.start_processes(
        fn, args=(f"file://{tmp_path / 'store'}", *args), nprocs=WORLD, join=False
    )
    deadline = time.monotonic() + LIMIT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers still running after {LIMIT_S} s")


def _init(rank: int, init: str) -> None:
    torch.set_num_threads(1)  # two processes on a shared 2-core machine
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)


def test_stream_seeds_per_rank():
    """Rank 0 (and a single process) keeps the historical seeds; other ranks differ."""
    for seed, step, purpose in [(0, 0, 0), (7, 32, 1), (3, 5, 2)]:
        old = int(np.random.SeedSequence([seed, purpose, step]).generate_state(1)[0])
        assert stream_seed(seed, step, purpose) == old
        assert stream_seed(seed, step, purpose, rank=0) == old
        others = {stream_seed(seed, step, purpose, rank=r) for r in (1, 2, 3)}
        assert len(others) == 3 and old not in others


def test_world_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = distributed.setup(torch.device("cpu"))
    assert (world.rank, world.size, world.main, world.owned) == (0, 1, True, False)
    monkeypatch.setenv("COMIR_DIST_TIMEOUT", "abc")
    with pytest.raises(ComirError, match="COMIR_DIST_TIMEOUT"):
        distributed.timeout_seconds()


# ---------------------------------------------------------------- (a), (b): one spawn
class _Chunked(nn.Module):
    """The reference: encode the batch in chunks of ``n`` (batch norm per chunk)."""

    def __init__(self, pair: nn.Module, n: int) -> None:
        super().__init__()
        self.pair, self.n = pair, n

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return torch.cat([self.pair(c, modality) for c in x.split(self.n)])


def _one_step(net, params, batch, loss_fn) -> float:
    """One plain SGD step (no momentum, no clipping: the update is ``lr`` × the gradient)."""
    cfg = TrainConfig(data="x", optimizer="sgd", lr=0.5, momentum=0.0, weight_decay=0.0)
    opt = make_optimizer(cfg, params)
    stats = train_step(
        net, batch, loss_fn, opt, torch.amp.GradScaler("cpu", enabled=False),
        l1=1e-3, l2=0.1, grad_clip=0.0, equivariance=False, generator=torch.Generator(),
    )  # fmt: skip
    return stats["loss"]


def _step_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.rand(6, 3, 16, 16, generator=g), torch.rand(6, 1, 16, 16, generator=g)


def _step(rank: int, cfg: TrainConfig, root: Path) -> None:
    """(a): one step on this rank's half of :func:`_step_batch`, saved by every rank."""
    world = distributed.setup(torch.device("cpu"))
    model = build_model(cfg, 3, 1)
    net = distributed.DataParallelPair(model, world)
    xa, xb = _step_batch()
    n = xa.shape[0] // WORLD
    part = (xa[rank * n : (rank + 1) * n], xb[rank * n : (rank + 1) * n])
    loss = _one_step(net, model.parameters(), part, InfoNCELoss("mse", 0.5, True))
    torch.save({"loss": loss, "weights": model.state_dict()}, root / f"step{rank}.pt")


def _resume(cfg: TrainConfig, root: Path) -> None:
    """(b): an uninterrupted run, and one interrupted before step 3 then resumed."""
    train(cfg, root / "straight", progress=False)
    real, calls = train_module.train_step, [0]

    def interrupted(*args, **kw):
        calls[0] += 1
        if calls[0] == 3:  # every rank stops before step 3: no collective pending
            raise KeyboardInterrupt
        return real(*args, **kw)

    train_module.train_step = interrupted
    try:
        train(cfg, root / "resumed", progress=False)
    except KeyboardInterrupt:
        pass
    train_module.train_step = real
    dist.barrier()  # like a restart: rank 0 has written its checkpoint
    train(cfg, root / "resumed", resume=True, progress=False)


def _worker(rank: int, init: str, step_cfg: dict, resume_cfg: dict, root: str) -> None:
    _init(rank, init)
    try:
        _step(rank, TrainConfig(**step_cfg), Path(root))
        _resume(TrainConfig(**resume_cfg), Path(root))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """Run (a) and (b) in one pair of processes (spawning costs seconds)."""
    root = tmp_path_factory.mktemp("ddp")
    data = _write_data(root / "data")
    step_cfg = _config(data)
    # dropout, C4 and augmentation on: every rank's RNG states must be restored
    resume_cfg = _config(data, model_overrides={**TINY1, "dropout": 0.2}, augment={})
    _spawn(_worker, root, step_cfg.to_dict(), resume_cfg.to_dict(), str(root))
    return root, step_cfg, resume_cfg


@pytest.mark.slow
def test_two_ranks_step_equals_one_process_on_global_batch(two_rank_runs):
    root, cfg, _ = two_rank_runs
    model = build_model(cfg, 3, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref_loss = _one_step(_Chunked(model, 3), model.parameters(), _step_batch(), InfoNCELoss())
    moved = max(float((p.detach() - before[k]).abs().max()) for k, p in model.named_parameters())
    assert moved > 1e-2  # the step is large against the tolerance
    for rank in range(WORLD):
        out = torch.load(root / f"step{rank}.pt", weights_only=True)
        assert out["loss"] == pytest.approx(ref_loss, abs=1e-5)
        for k, p in model.named_parameters():
            torch.testing.assert_close(out["weights"][k], p.detach(), rtol=0, atol=1e-5, msg=k)


@pytest.mark.slow
def test_two_rank_resume_equals_uninterrupted(two_rank_runs, tmp_path):
    root, _, cfg = two_rank_runs
    straight, resumed = root / "straight", root / "resumed"
    wa = load_file(str(straight / "model.safetensors"))
    wb = load_file(str(resumed / "model.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ra, rb = read_metrics(straight / "metrics.csv"), read_metrics(resumed / "metrics.csv")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    # the global-batch loss differs from a single process's on rank 0's stream alone
    single = train(cfg, tmp_path / "single", progress=False)
    assert read_metrics(single / "metrics.csv")[0]["loss"] != ra[0]["loss"]
    with pytest.raises(ComirError, match="trained with 2 process"):
        train(TrainConfig(**{**cfg.to_dict(), "steps": 6}), resumed, resume=True, progress=False)


# ---------------------------------------------------------------- (c) a rank fails
def _failing_worker(cfg: dict, out: str, mode: str) -> str:
    """Train; rank 1 raises (``mode="raise"``) or hangs (``"hang"``) before its step 2."""
    real, calls = train_module.train_step, [0]
    rank = int(os.environ["RANK"])

    def step(*args, **kw):
        calls[0] += 1
        if rank == 1 and calls[0] == 2:
            if mode == "raise":
                raise RuntimeError("injected failure at step 2")
            time.sleep(60)
        return real(*args, **kw)

    train_module.train_step = step
    return str(train(TrainConfig(**cfg), out, progress=False))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_failed_rank_stops_the_run(tmp_path, monkeypatch, mode):
    """A rank that raises is named in one line; one that hangs trips the timeout."""
    # a short timeout only where it is the subject: slow process starts must not trip it
    monkeypatch.setenv("COMIR_DIST_TIMEOUT", "5" if mode == "hang" else "60")
    cfg = _config(_write_data(tmp_path / "data")).to_dict()
    t0 = time.monotonic()
    with pytest.raises(ComirError) as info:
        distributed.launch(WORLD, _failing_worker, cfg, str(tmp_path / "run"), mode)
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert "\n" not in msg
    if mode == "raise":
        assert msg.startswith("rank 1 failed: RuntimeError: injected failure at step 2"), msg
    else:  # rank 0 gives up waiting after COMIR_DIST_TIMEOUT seconds
        assert msg.startswith("rank 0 failed:") and "timeout 5 s" in msg, msg
    assert elapsed < 50  # nobody waited for the sleeping rank's 60 s
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_cli_nproc_refuses_sync_bn_on_cpu_and_torchrun_nesting(tmp_path, monkeypatch, capsys):
    """Checked before any process starts: exit 2 with one line naming the option."""
    from comir.cli import main

    data = _write_data(tmp_path / "data", n=1, size=24)
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"]
    assert main([*args, "--nproc", "2", "--sync-bn"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--sync-bn needs CUDA" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ComirError, match="inside torchrun"):
        distributed.launch(2, _failing_worker)
