"""InfoNCE over dense representation maps, computed as one batched similarity matrix.

References
----------
* van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive Coding",
  arXiv:1807.03748, 2018 (InfoNCE).
* Pielawski, Wetzer et al., "CoMIR: Contrastive Multimodal Image Representation for
  Registration", NeurIPS 2020 (dense maps, critics, partner indexing).

A batch holds ``N`` aligned pairs; ``z = cat(z_a, z_b)`` has ``M = 2N`` maps and the partner of
map ``i`` is ``p(i) = (i + N) mod 2N``. With ``s(i, k) = critic(z_i, z_k) / tau`` the loss of
anchor ``i`` is ``-s(i, p(i)) + log sum_{k != i} exp s(i, k)``, averaged over the ``2N``
anchors.

Critics
-------
Of two maps ``x, y`` of shape ``(L, H, W)``, with ``x_p`` the ``L``-vector at pixel ``p``
(``P = H·W`` pixels); higher means more similar:

* ``mse``: ``-1/(L·P) · Σ_p ||x_p - y_p||²`` (the mean squared difference);
* ``cosine``: ``1/P · Σ_p cos(x_p, y_p)``;
* ``l1``: ``-1/P · Σ_p ||x_p - y_p||_1``;
* ``euclidean``: ``-1/P · Σ_p ||x_p - y_p||_2``.

That is, the channel-wise similarity at each pixel, then the mean over pixels: the
definitions the CoMIR paper describes. The original CoMIR code reduces its ``l1``,
``euclidean`` and ``cosine`` critics over ``dim=1`` of the ``L×H×W`` map, i.e. over image
rows rather than channels, so those three differ from the code's; ``mse`` is identical, and
it is the only critic behind the published results (Pielawski, Wetzer et al., NeurIPS 2020).

With one latent channel (``L = 1``, the default) the cosine of two scalars is the product of
their signs: piecewise constant, so its gradient is zero everywhere and a network trained
with it does not learn. ``comir train`` therefore refuses ``critic="cosine"`` with
``latent_channels=1``; use ``L = 3`` (or another critic).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from comir.losses import CRITICS, DEFAULT_TAU

#: Elements of the ``(rows, M, L, P)`` pairwise-difference chunk of the l1/euclidean critics
#: (2**24 float32 = 64 MiB per temporary).
CHUNK_ELEMENTS = 2**24


def _check(z: Tensor, critic: str) -> None:
    if critic not in CRITICS:
        raise ValueError(f"critic must be one of {CRITICS}, got {critic!r}")
    if z.ndim != 4:
        raise ValueError(f"expected maps of shape (M, L, H, W), got {tuple(z.shape)}")


class _PairwiseDistance(torch.autograd.Function):
    """``D[i, k] = sum_p ||z_i[:, p] - z_k[:, p]||_q`` for ``q`` in {1, 2}, in row chunks.

    ``z``: ``(M, L, P)`` -> ``D``: ``(M, M)``. Forward (``q = 2``; ``q = 1`` uses the fused
    :func:`torch.cdist`) and backward each hold at most one ``(rows, M, L, P)`` chunk, so
    memory stays bounded for large batches (autograd through a plain broadcast, or through
    ``cdist``, keeps an ``(M, M, L·P)`` tensor alive). The subgradient at a zero difference is
    0. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, z: Tensor, q: int, rows: int) -> Tensor:
        ctx.save_for_backward(z)
        ctx.q, ctx.rows = q, rows
        m = z.shape[0]
        if q == 1:  # the L1 sum over channels and pixels is the L1 distance of flat maps
            flat = z.reshape(m, -1)
            return torch.cdist(flat[None], flat[None], p=1.0)[0]
        out = z.new_empty((m, m))
        for s in range(0, m, rows):
            diff = z[s : s + rows, None] - z[None]  # (r, M, L, P)
            out[s : s + rows] = diff.square_().sum(2).sqrt_().sum(2)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        (z,) = ctx.saved_tensors
        # D is symmetric and every pair appears as (i, k) and (k, i).
        g = grad_out + grad_out.T
        grad = torch.empty_like(z)
        for s in range(0, z.shape[0], ctx.rows):
            diff = z[s : s + ctx.rows, None] - z[None]  # (r, M, L, P)
            if ctx.q == 1:
                unit = diff.sign_()
            else:
                norm = diff.square().sum(2, keepdim=True).sqrt_()
                unit = diff.div_(norm.clamp_min_(torch.finfo(z.dtype).tiny))
            grad[s : s + ctx.rows] = torch.einsum("rk,rklp->rlp", g[s : s + ctx.rows], unit)
        return grad, None, None


def similarity_matrix(z: Tensor, critic: str = "mse") -> Tensor:
    """All-pairs critic values of dense maps, higher = more similar.

    Parameters
    ----------
    z : Tensor, shape (M, L, H, W)
        Representation maps.
    critic : {"mse", "cosine", "l1", "euclidean"}
        Definitions in the module docstring (channel-wise at each pixel, then the mean over
        pixels); ``cosine`` needs ``L > 1`` to have a gradient.

    Returns
    -------
    Tensor, shape (M, M)
        Symmetric matrix ``S[i, k] = critic(z_i, z_k)``.
    """
    _check(z, critic)
    if z.dtype in (torch.float16, torch.bfloat16):
        # Sums over L·H·W elements and the ||x||² + ||y||² - 2x·y expansion need float32.
        z = z.float()
    m, c, h, w = z.shape
    p = h * w
    if critic in ("mse", "cosine"):
        with torch.autocast(z.device.type, enabled=False):  # keep the matmul in float32
            if critic == "mse":
                flat = z.reshape(m, -1)
                sq = flat.square().sum(1)
                # Round-off can make distances of near-identical maps slightly negative.
                d2 = (sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T).clamp_min(0.0)
                return d2 * (-1.0 / (c * p))
            unit = F.normalize(z.reshape(m, c, p), dim=1)
            flat = unit.reshape(m, -1)
            return (flat @ flat.T) / p
    rows = max(1, CHUNK_ELEMENTS // max(1, m * c * p))
    q = 1 if critic == "l1" or c == 1 else 2  # for L = 1 the two critics coincide
    return _PairwiseDistance.apply(z.reshape(m, c, p), q, rows) * (-1.0 / p)


def _partners(n: int, device: torch.device) -> Tensor:
    """``p(i) = (i + n) mod 2n`` for ``i < 2n``, shape ``(2n,)``."""
    return (torch.arange(2 * n, device=device) + n) % (2 * n)


def _loss_from_similarity(sim: Tensor, n: int, tau: float) -> Tensor:
    """InfoNCE from a ``(2n, 2n)`` critic matrix; scalar."""
    logits = sim / tau
    eye = torch.eye(2 * n, dtype=torch.bool, device=sim.device)
    lse = torch.logsumexp(logits.masked_fill(eye, -math.inf), dim=1)
    pos = logits.gather(1, _partners(n, sim.device)[:, None]).squeeze(1)
    return (lse - pos).mean()


def _check_pair(z_a: Tensor, z_b: Tensor, tau: float) -> None:
    if z_a.shape != z_b.shape or z_a.ndim != 4:
        raise ValueError(
            f"z_a and z_b must both be (N, L, H, W) of equal shape, got "
            f"{tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau!r}")


def info_nce(z_a: Tensor, z_b: Tensor, critic: str = "mse", tau: float = DEFAULT_TAU) -> Tensor:
    """InfoNCE loss of ``N`` aligned pairs of dense maps.

    Parameters
    ----------
    z_a, z_b : Tensor, shape (N, L, H, W)
        Representations of modality A and B; ``z_a[j]`` and ``z_b[j]`` are partners.
    critic : str
        One of :data:`CRITICS`.
    tau : float
        Temperature.

    Returns
    -------
    Tensor, shape ()
        Mean loss over the ``2N`` anchors.
    """
    _check_pair(z_a, z_b, tau)
    sim = similarity_matrix(torch.cat([z_a, z_b]), critic)
    return _loss_from_similarity(sim, z_a.shape[0], tau)


def info_nce_stats(
    z_a: Tensor, z_b: Tensor, critic: str = "mse", tau: float = DEFAULT_TAU
) -> tuple[Tensor, dict[str, float]]:
    """:func:`info_nce` plus diagnostics of the critic (unscaled by ``tau``).

    Returns
    -------
    loss : Tensor, shape ()
    stats : dict
        ``pos_sim``: mean critic value of the ``2N`` positive pairs; ``neg_sim``: mean over
        the ``2N (2N - 2)`` negative pairs (NaN when ``N = 1``); ``gap = pos_sim - neg_sim``.
    """
    _check_pair(z_a, z_b, tau)
    n = z_a.shape[0]
    sim = similarity_matrix(torch.cat([z_a, z_b]), critic)
    loss = _loss_from_similarity(sim, n, tau)
    with torch.no_grad():
        s = sim.detach().double()
        pos = s.gather(1, _partners(n, s.device)[:, None]).sum()
        n_neg = 2 * n * (2 * n - 2)
        neg = (s.sum() - s.diagonal().sum() - pos) / n_neg if n_neg else torch.tensor(math.nan)
        pos_sim, neg_sim = float(pos) / (2 * n), float(neg)
    return loss, {"pos_sim": pos_sim, "neg_sim": neg_sim, "gap": pos_sim - neg_sim}


def activation_decay(z: Tensor, l1: float, l2: float) -> Tensor:
    """Activation decay ``l1 * mean|z| + l2 * mean(z**2)`` of representation maps ``z``."""
    out = z.new_zeros(())
    if l1:
        out = out + l1 * z.abs().mean()
    if l2:
        out = out + l2 * z.square().mean()
    return out


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward sums the gradients of all processes for the local part.

    Every process computes the same global loss, so after summing, process ``r`` holds
    ``W · dL/dz_r``; DDP's averaging of parameter gradients over ``W`` processes then yields
    exactly ``dL/dθ``.
    """

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        r = dist.get_rank()
        return grad[r * n : (r + 1) * n]


def gather_distributed(z: Tensor) -> Tensor:
    """Concatenate ``z`` ``(N, ...)`` of all processes, rank order, with gradient.

    A no-op when ``torch.distributed`` is unavailable, not initialised, or has one process.
    All processes must pass the same shape.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    return _GatherWithGrad.apply(z)


class InfoNCELoss(nn.Module):
    """InfoNCE loss over dense maps (CoMIR, Pielawski et al. 2020; van den Oord et al. 2018).

    Each of the ``2N`` maps is an anchor; its partner from the other modality is the
    positive, all ``2N - 2`` other maps of both modalities are negatives.

    Parameters
    ----------
    critic : {"mse", "cosine", "l1", "euclidean"}
        Similarity of two maps, see :func:`similarity_matrix`.
    tau : float
        Temperature, default :data:`comir.losses.DEFAULT_TAU` = 0.5 (the paper used 0.5 for
        BF/SHG and 0.1 for RGB/NIR; 0.5 measured better on RGB/NIR in this project).
    gather_distributed : bool
        Take negatives from the global batch of all ``torch.distributed`` processes; a no-op
        when distributed is not initialised.

    Shapes
    ------
    z_a, z_b : (N, L, H, W) -> loss : ()

    Examples
    --------
    >>> loss_fn = InfoNCELoss(critic="mse", tau=0.5)
    >>> z_a, z_b = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    >>> loss_fn(z_a, z_b).shape
    torch.Size([])
    """

    def __init__(
        self, critic: str = "mse", tau: float = DEFAULT_TAU, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        if critic not in CRITICS:
            raise ValueError(f"critic must be one of {CRITICS}, got {critic!r}")
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        self.critic = critic
        self.tau = float(tau)
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        if self.gather_distributed:
            z_a, z_b = gather_distributed(z_a), gather_distributed(z_b)
        return info_nce(z_a, z_b, self.critic, self.tau)

    def forward_with_stats(self, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The loss and the diagnostics of :func:`info_nce_stats` (over the global batch)."""
        if self.gather_distributed:
            z_a, z_b = gather_distributed(z_a), gather_distributed(z_b)
        return info_nce_stats(z_a, z_b, self.critic, self.tau)

    def extra_repr(self) -> str:
        return (
            f"critic={self.critic!r}, tau={self.tau}, gather_distributed={self.gather_distributed}"
        )
