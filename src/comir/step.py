"""One optimisation step of CoMIR training and the validation loss (used by
:mod:`comir.train`, and directly by tests and the data-parallel equivalence checks).

Pielawski, Wetzer et al., "CoMIR", NeurIPS 2020: both modalities encoded (optionally
through the C4 wrapper), InfoNCE over the ``2N`` maps plus an activation decay, gradient
clipping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def encode_pair(
    model, xa: torch.Tensor, xb: torch.Tensor, equivariance: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a batch of both modalities, ``(B, C, P, P)`` -> ``(B, L, P, P)`` each.

    With ``equivariance`` each sample is rotated by an independent random k·90° before
    encoding and the output rotated back (the C4 wrapper of CoMIR, Pielawski, Wetzer et
    al. 2020; :mod:`comir.equivariance`).
    """
    if equivariance:
        from comir.equivariance import c4_encode

        return (
            c4_encode(model.encoders["a"], xa, generator),
            c4_encode(model.encoders["b"], xb, generator),
        )
    return model(xa, "a"), model(xb, "b")


def train_step(
    model,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    l1: float,
    l2: float,
    grad_clip: float,
    equivariance: bool,
    generator: torch.Generator,
    amp: bool = False,
    channels_last: bool = False,
    amp_dtype: torch.dtype = torch.float16,
) -> dict[str, float]:
    """One optimisation step on a batch of aligned patches.

    Parameters
    ----------
    model : EncoderPair
        Both encoders (a DDP wrapper of each encoder works the same way).
    batch : (Tensor, Tensor)
        ``xa (B, Ca, P, P)``, ``xb (B, Cb, P, P)`` already on the model's device.
    loss_fn : InfoNCELoss
        Its ``forward_with_stats`` gives the contrastive loss and diagnostics (with
        ``gather_distributed=True`` negatives come from all processes, so this function is
        unchanged under data parallelism).
    generator : torch.Generator
        Draws the C4 rotations.
    amp, amp_dtype : bool, torch.dtype
        Encode under ``torch.autocast`` with this dtype (fp16 needs a gradient scaler
        that is enabled; bf16 does not).

    Returns
    -------
    dict
        ``loss`` (InfoNCE, without decay), ``pos_sim``, ``neg_sim``, ``gap``, ``out_std``
        (std of the representations), ``grad_norm``.
    """
    from comir.losses.infonce import activation_decay

    model.train()
    xa, xb = batch
    if channels_last:
        xa = xa.contiguous(memory_format=torch.channels_last)
        xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.autocast(xa.device.type, dtype=amp_dtype, enabled=amp):
        za, zb = encode_pair(model, xa, xb, equivariance, generator)
    # the loss in float32: exp/log of similarities over 2N maps is precision sensitive
    za, zb = za.float(), zb.float()
    loss, stats = loss_fn.forward_with_stats(za, zb)
    total = loss + activation_decay(torch.cat([za, zb]), l1, l2)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        out_std = torch.cat([za.detach(), zb.detach()]).std()
    return {
        "loss": float(loss.detach()),
        **{k: float(v) for k, v in stats.items()},
        "out_std": float(out_std),
        "grad_norm": float(grad_norm),
    }


@torch.no_grad()
def validation_loss(model, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], loss_fn) -> float:
    """Mean InfoNCE of ``model.eval()`` (no C4) over fixed batches; NaN without batches."""
    if not batches:
        return math.nan
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = []
    for xa, xb in batches:
        za = model(xa.to(device), "a").float()
        zb = model(xb.to(device), "b").float()
        losses.append(float(loss_fn(za, zb)))
    model.train(was_training)
    return float(np.mean(losses))
