"""InfoNCE: batched implementation vs a naive double loop, analytic values, distributed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from comir.losses import (
    CRITICS,
    InfoNCELoss,
    activation_decay,
    gather_distributed,
    info_nce,
    info_nce_stats,
    similarity_matrix,
)
from comir.losses import infonce as infonce_mod


# ------------------------------------------------------------------------- naive reference
def naive_critic(x: torch.Tensor, y: torch.Tensor, critic: str) -> torch.Tensor:
    """Critic of two maps ``(L, H, W)`` written directly from the definitions."""
    if critic == "mse":
        return -((x - y) ** 2).mean()
    if critic == "cosine":
        return ((x * y).sum(0) / (x.norm(dim=0) * y.norm(dim=0))).mean()
    if critic == "l1":
        return -(x - y).abs().sum(0).mean()
    if critic == "euclidean":
        return -((x - y) ** 2).sum(0).sqrt().mean()
    raise AssertionError(critic)


def naive_info_nce(z_a: torch.Tensor, z_b: torch.Tensor, critic: str, tau: float) -> torch.Tensor:
    z = list(z_a) + list(z_b)
    n, m = z_a.shape[0], 2 * z_a.shape[0]
    total = z_a.new_zeros(())
    for i in range(m):
        partner = (i + n) % m
        denom = z_a.new_zeros(())
        for k in range(m):
            if k != i:
                denom = denom + torch.exp(naive_critic(z[i], z[k], critic) / tau)
        total = total - naive_critic(z[i], z[partner], critic) / tau + torch.log(denom)
    return total / m


def _maps(n: int, c: int, seed: int, h: int = 5, w: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    # Partners are correlated, like a partly trained model.
    z_b = 0.7 * z_a + 0.5 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    return z_a, z_b


# ------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("critic", CRITICS)
@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("c", [1, 3])
def test_loss_and_gradients_match_naive_loop(critic: str, n: int, c: int) -> None:
    z_a, z_b = _maps(n, c, seed=100 * n + c)
    tau = 0.3
    za1, zb1 = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    za2, zb2 = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    loss = info_nce(za1, zb1, critic, tau)
    ref = naive_info_nce(za2, zb2, critic, tau)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(za1.grad, za2.grad, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(zb1.grad, zb2.grad, rtol=1e-5, atol=1e-10)
    # Gradients must be non-trivial for the comparison to mean something (the cosine of
    # scalars is ±1, so its gradient vanishes for L = 1).
    if n > 1 and not (critic == "cosine" and c == 1):
        assert za1.grad.abs().max() > 1e-5


@pytest.mark.parametrize("critic", CRITICS)
def test_similarity_matrix_matches_naive(critic: str) -> None:
    z = torch.cat(_maps(3, 3, seed=7))
    s = similarity_matrix(z, critic)
    ref = torch.stack([torch.stack([naive_critic(x, y, critic) for y in z]) for x in z])
    torch.testing.assert_close(s, ref, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("critic", ["l1", "euclidean"])
def test_chunked_distance_path(critic: str, monkeypatch: pytest.MonkeyPatch) -> None:
    z_a, z_b = _maps(4, 3, seed=3)
    grads = []
    for chunk in (1 << 30, 1):  # one chunk, then one anchor row per chunk
        monkeypatch.setattr(infonce_mod, "CHUNK_ELEMENTS", chunk)
        za, zb = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        loss = info_nce(za, zb, critic, 0.5)
        loss.backward()
        grads.append((loss.detach(), za.grad, zb.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("critic", CRITICS)
def test_single_pair_loss_is_zero(critic: str) -> None:
    # N = 1: the only term in the denominator is the positive, so the loss is exactly 0.
    z_a, z_b = _maps(1, 3, seed=11)
    z_a.requires_grad_()
    loss = info_nce(z_a, z_b, critic, 0.1)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-12
    assert float(z_a.grad.abs().max()) < 1e-10


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_analytic_two_pairs(tau: float) -> None:
    # 1x1 maps with values [1, -1 | 1, -1]: partner similarity s_p, the two negatives s_n,
    # so every anchor's loss is log(1 + 2 exp((s_n - s_p) / tau)).
    z_a = torch.tensor([1.0, -1.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    z_b = z_a.clone()
    gaps = {"mse": 4.0, "cosine": 2.0, "l1": 2.0, "euclidean": 2.0}
    for critic, gap in gaps.items():
        expected = math.log(1.0 + 2.0 * math.exp(-gap / tau))
        assert float(info_nce(z_a, z_b, critic, tau)) == pytest.approx(expected, rel=1e-12)


def test_stats_match_naive() -> None:
    z_a, z_b = _maps(3, 1, seed=5)
    loss, stats = info_nce_stats(z_a, z_b, "mse", 0.2)
    z = list(z_a) + list(z_b)
    m = len(z)
    pos = [float(naive_critic(z[i], z[(i + 3) % m], "mse")) for i in range(m)]
    neg = [
        float(naive_critic(z[i], z[k], "mse"))
        for i in range(m)
        for k in range(m)
        if k != i and k != (i + 3) % m
    ]
    assert stats["pos_sim"] == pytest.approx(sum(pos) / len(pos), rel=1e-10)
    assert stats["neg_sim"] == pytest.approx(sum(neg) / len(neg), rel=1e-10)
    assert stats["gap"] == pytest.approx(stats["pos_sim"] - stats["neg_sim"], rel=1e-10)
    assert stats["gap"] > 0  # partners are correlated by construction
    torch.testing.assert_close(loss, info_nce(z_a, z_b, "mse", 0.2))
    assert math.isnan(info_nce_stats(z_a[:1], z_b[:1])[1]["neg_sim"])


def test_activation_decay_value() -> None:
    z = torch.tensor([[-2.0, 1.0], [0.5, 0.0]]).reshape(1, 1, 2, 2)
    # mean|z| = 3.5 / 4, mean z² = 5.25 / 4
    assert float(activation_decay(z, 0.1, 0.01)) == pytest.approx(0.1 * 0.875 + 0.01 * 1.3125)
    assert float(activation_decay(z, 0.0, 0.0)) == 0.0


def test_module_matches_function_and_validates() -> None:
    z_a, z_b = _maps(4, 1, seed=9)
    loss_fn = InfoNCELoss("cosine", tau=0.5, gather_distributed=True)  # no-op: not initialised
    torch.testing.assert_close(loss_fn(z_a, z_b), info_nce(z_a, z_b, "cosine", 0.5))
    loss, stats = loss_fn.forward_with_stats(z_a, z_b)
    assert stats == info_nce_stats(z_a, z_b, "cosine", 0.5)[1]
    torch.testing.assert_close(loss, info_nce(z_a, z_b, "cosine", 0.5))
    assert gather_distributed(z_a) is z_a
    with pytest.raises(ValueError):
        InfoNCELoss("dot")
    with pytest.raises(ValueError):
        info_nce(z_a, z_b[:2])


def test_mse_clamps_round_off() -> None:
    # Identical large-valued maps: the expansion ||x||² + ||y||² - 2x·y may round below 0.
    z = torch.full((2, 1, 8, 8), 1e3, dtype=torch.float32) + torch.rand(1, 1, 8, 8) * 1e-3
    s = similarity_matrix(z, "mse")
    assert torch.all(s <= 0)
    assert torch.isfinite(info_nce(z[:1], z[1:])).item()


def _distributed_worker(rank: int, world: int, init: str, z_a, z_b, out) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        n = z_a.shape[0] // world
        za = z_a[rank * n : (rank + 1) * n].clone().requires_grad_()
        zb = z_b[rank * n : (rank + 1) * n].clone().requires_grad_()
        loss = InfoNCELoss("mse", 0.2, gather_distributed=True)(za, zb)
        loss.backward()
        out[rank] = (loss.detach(), za.grad, zb.grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_distributed_two_processes(tmp_path) -> None:
    world = 2
    z_a, z_b = _maps(4, 1, seed=21, h=4, w=4)
    out = mp.Manager().dict()
    mp.spawn(
        _distributed_worker,
        args=(world, f"file://{tmp_path / 'store'}", z_a, z_b, out),
        nprocs=world,
        join=True,
    )
    za, zb = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    ref = info_nce(za, zb, "mse", 0.2)
    ref.backward()
    n = z_a.shape[0] // world
    for r in range(world):
        loss, ga, gb = out[r]
        torch.testing.assert_close(loss, ref.detach())
        # Each process holds world × the global gradient of its local part; DDP then averages.
        torch.testing.assert_close(ga, world * za.grad[r * n : (r + 1) * n])
        torch.testing.assert_close(gb, world * zb.grad[r * n : (r + 1) * n])


def test_one_temperature_default() -> None:
    from comir.losses import DEFAULT_TAU
    from comir.train import TrainConfig

    assert DEFAULT_TAU == 0.5 == TrainConfig(data="x").tau == InfoNCELoss().tau
    z_a, z_b = _maps(3, 2, seed=4)
    assert float(info_nce(z_a, z_b)) == float(info_nce(z_a, z_b, "mse", 0.5))
    assert float(info_nce_stats(z_a, z_b)[0]) == float(info_nce(z_a, z_b, "mse", 0.5))
