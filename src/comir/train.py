"""Training loop: one Tiramisu per modality, InfoNCE over dense maps, C4 equivariance.

Recipe (Pielawski, Wetzer et al., "CoMIR", NeurIPS 2020, method section and implementation
details): random aligned patch pairs, each modality encoded by its own FC-DenseNet, the C4
wrapper rotates every input by a random multiple of 90° and the output back, the loss is
InfoNCE over all ``2N`` maps of the batch plus an activation decay on the outputs, gradients
are clipped to norm 1.0, optimiser SGD or Adam, mixed precision on CUDA (fp16) and, opt-in,
bf16 autocast on CPU (``precision="bf16"``; measured ~2× faster steps for the ``small``
preset on a CPU with AMX, see benchmarks/notes.md). The recipes of the paper's experiments
are in docs/reproduce.md.

A run folder ``RUN/`` receives ``config.json`` (everything needed to rebuild the model and
its input preparation, and the intensity statistics of the prepared training inputs,
:mod:`comir.input_stats`), ``metrics.csv`` (one row per step, validation loss at the end of
each epoch), ``loss.png``, ``checkpoint/last.pt`` (written atomically every epoch; resume
reproduces an uninterrupted run exactly on CPU) and finally ``model.safetensors``.

The loop is a handful of small functions around one :class:`_Run` state: open the folder,
build the run, restore a checkpoint or write ``config.json``, then epochs of steps, each
epoch ending with a validation pass, a checkpoint and the metrics.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from comir import distributed
from comir.data.streams import stream_seed
from comir.distributed import World
from comir.errors import ComirError, warn
from comir.io import write_text
from comir.run_files import (
    CHECKPOINT_NAME,
    load_checkpoint,
    open_run_folder,
    rank_rng_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_metrics,
)
from comir.run_files import (
    check_resume as _check_resume,  # noqa: F401  (imported from here by older callers)
)
from comir.runtime import (
    autocast_dtype,
    load_weights_state,
    resolve_device,
    save_weights,
    weights_state,
)
from comir.step import encode_pair, train_step, validation_loss
from comir.train_config import TrainConfig

__all__ = [
    "COLLAPSE_LOSS",
    "TrainConfig",
    "build_model",
    "encode_pair",
    "make_optimizer",
    "resolve_precision",
    "stream_seed",
    "train",
    "train_step",
    "validation_loss",
]

#: InfoNCE values below this are reported as a collapsed training signal: the networks
#: inflate the output scale (docs/reproduce.md, "τ and the activation decay").
COLLAPSE_LOSS = 1e-3
#: Fixed validation batches evaluated at the end of every epoch.
VAL_BATCHES = 4


# ---------------------------------------------------------------------------- helpers
def resolve_precision(config: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """``(autocast enabled, dtype)`` for ``config.precision`` on ``device``.

    ``auto``: fp16 on CUDA when ``config.amp``, else fp32 (the CPU default: bf16 is
    opt-in, see benchmarks/notes.md); ``fp16`` needs CUDA.
    """
    p = config.precision
    if p == "auto":
        return config.amp and device.type == "cuda", torch.float16
    if p == "fp16" and device.type != "cuda":
        raise ComirError(
            f"precision fp16 needs a CUDA device (got {device.type}); use bf16 or fp32 on CPU"
        )
    dtype = autocast_dtype(p)
    return dtype is not None, torch.float32 if dtype is None else dtype


def build_model(config: TrainConfig, in_channels_a: int, in_channels_b: int):
    """The :class:`~comir.model.EncoderPair` of ``config``, weights drawn from
    ``config.weight_seed`` (``config.seed`` when that is None)."""
    from comir.model import EncoderPair, tiramisu_config

    try:
        cfg_a, cfg_b = (
            tiramisu_config(config.preset, c, config.latent_channels, **config.model_overrides)
            for c in (in_channels_a, in_channels_b)
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise ComirError(
            f"invalid model options (preset={config.preset!r}, "
            f"overrides={config.model_overrides}): {exc}"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed if config.weight_seed is None else config.weight_seed)
        model = EncoderPair(cfg_a, cfg_b)
    return model


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam as configured."""
    params = list(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


# ---------------------------------------------------------------------------- data
def _load_data(config: TrainConfig, spec_dict: dict | None):
    """Training and validation :class:`PairSet` (validation may be ``None``)."""
    from comir.data import DataSpec, load_pairs, split_pairs

    spec = DataSpec.from_dict(spec_dict) if spec_dict is not None else None
    kw = dict(
        layout=config.layout,
        a=config.a,
        b=config.b,
        norm=config.norm,
        norm_b=config.norm_b,
        log_a=config.log_a,
        log_b=config.log_b,
        min_size=config.patch_size,
    )
    pairs = load_pairs(config.data, spec=spec, **kw)
    val = None
    if config.val is not None:
        val = load_pairs(config.val, spec=pairs.spec, **kw)
    elif config.val_fraction > 0:
        pairs, val = split_pairs(pairs, config.val_fraction, config.seed, config.patch_size)
    return pairs, val


def _validation_batches(val_pairs, config: TrainConfig, device: torch.device) -> list:
    """The fixed validation batches on ``device`` (empty without validation data)."""
    from comir.data import fixed_batches

    if val_pairs is None or len(val_pairs.images_a) == 0:
        return []
    batches = fixed_batches(
        val_pairs, config.patch_size, VAL_BATCHES, config.batch_size, config.seed
    )
    return [(xa.to(device), xb.to(device)) for xa, xb in batches]


def _epoch_stream(pairs, config: TrainConfig, start_step: int, rank: int = 0) -> Iterator:
    from comir.data import AugmentConfig, make_loader

    try:
        augment = AugmentConfig(**config.augment)
    except (TypeError, ValueError) as exc:
        raise ComirError(f"invalid augment options {config.augment}: {exc}") from None
    return make_loader(
        pairs,
        config.patch_size,
        config.batch_size,
        augment,
        stream_seed(config.seed, start_step, rank=rank),
        config.workers,
    )


# ---------------------------------------------------------------------------- run state
@dataclass
class _Run:
    """Everything one training run works on; the loop's functions update it in place."""

    config: TrainConfig
    folder: Path
    world: World  # this process's rank; world.device is the device
    pairs: Any  # comir.data.PairSet, the training images
    model: torch.nn.Module  # comir.model.EncoderPair (saved, validated)
    net: torch.nn.Module  # what steps call: model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module  # comir.losses.InfoNCELoss
    generator: torch.Generator  # the C4 rotations
    amp: bool
    amp_dtype: torch.dtype
    channels_last: bool
    val_batches: list
    step: int = 0
    rows: list[dict[str, float]] = field(default_factory=list)
    seconds0: float = 0.0  # training time before this process (resumed runs)
    t0: float = 0.0
    running: float = math.nan  # exponential moving average of the loss
    warned: bool = False
    bar: Any = None
    callback: Any = None  # f(metrics row) after every step (rank 0); may raise to stop

    @property
    def device(self) -> torch.device:
        return self.world.device

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint" / CHECKPOINT_NAME

    def seconds(self) -> float:
        """Training seconds so far, including those before a resume."""
        return self.seconds0 + time.perf_counter() - self.t0


def _build_run(config: TrainConfig, folder: Path, world: World, stored: dict | None):
    """Load the data and build model (DDP-wrapped when distributed), optimiser, scaler,
    loss (negatives from the global batch) and C4 generator."""
    from comir.losses.infonce import InfoNCELoss

    device = world.device
    distributed.check_sync_bn(config.sync_bn, world)
    pairs, val_pairs = _load_data(config, stored["data"] if stored else None)
    model = build_model(config, pairs.images_a[0].shape[2], pairs.images_b[0].shape[2])
    channels_last = device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = distributed.DataParallelPair(model, world, config.sync_bn) if world.distributed else model
    amp, amp_dtype = resolve_precision(config, device)
    optimizer = make_optimizer(config, model.parameters())
    return _Run(
        config=config,
        folder=folder,
        world=world,
        pairs=pairs,
        model=model,
        net=net,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16),
        loss_fn=InfoNCELoss(config.critic, config.tau, gather_distributed=world.distributed),
        generator=torch.Generator().manual_seed(
            stream_seed(config.seed, 0, purpose=1, rank=world.rank)
        ),
        amp=amp,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        val_batches=_validation_batches(val_pairs, config, device),
    )


def _restore(run: _Run) -> None:
    """Weights, optimiser, scaler, RNG states and metrics from the run's checkpoint."""
    ck = load_checkpoint(run.checkpoint)
    try:
        load_weights_state(run.model, ck["model"], str(run.checkpoint))
        run.optimizer.load_state_dict(ck["optimizer"])
        run.scaler.load_state_dict(ck["scaler"])
        set_rng_state(
            rank_rng_state(ck, run.world.rank, run.world.size, run.checkpoint), run.generator
        )
        run.step = int(ck["step"])
        run.rows = [dict(r) for r in ck["metrics"]]
        run.seconds0 = float(ck["seconds"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ComirError(
            f"{run.checkpoint}: checkpoint does not match this run ({type(exc).__name__}: {exc})"
        ) from None


def _write_config(run: _Run, stored: dict | None) -> None:
    """``config.json``: a new record, or the stored one with the resumable options updated."""
    from comir import __version__
    from comir.input_stats import STATS_KEY, training_stats
    from comir.model import count_parameters

    if stored is not None:
        info = {**stored, "train": run.config.to_dict()}
    else:
        info = {
            "comir_version": __version__,
            "model": run.model.config_dict(),
            "data": run.pairs.spec.to_dict(),
            STATS_KEY: training_stats(run.pairs),
            "train": run.config.to_dict(),
            "parameters": int(count_parameters(run.model)),
        }
    write_text(run.folder / "config.json", json.dumps(info, indent=2) + "\n")


# ---------------------------------------------------------------------------- the loop
def _train_one_step(run: _Run, batch: tuple[torch.Tensor, torch.Tensor], epoch: int) -> None:
    """Move ``batch`` to the device, take one step, log it and watch for collapse."""
    cfg, dev = run.config, run.device
    xa, xb = (x.to(dev, non_blocking=True) for x in batch)
    stats = train_step(
        run.net,
        (xa, xb),
        run.loss_fn,
        run.optimizer,
        run.scaler,
        l1=cfg.l1,
        l2=cfg.l2,
        grad_clip=cfg.grad_clip,
        equivariance=cfg.equivariance,
        generator=run.generator,
        amp=run.amp,
        channels_last=run.channels_last,
        amp_dtype=run.amp_dtype,
    )
    run.step += 1
    if not math.isfinite(stats["loss"]):
        raise ComirError(
            f"training diverged at step {run.step} (loss {stats['loss']}); lower --lr "
            "or check the input normalisation (--norm)"
        )
    _log_step(run, stats, epoch)
    _check_collapse(run, stats)


def _log_step(run: _Run, stats: dict[str, float], epoch: int) -> None:
    """Append the metrics row of the step just taken and update the progress bar."""
    loss = stats["loss"]
    run.running = loss if math.isnan(run.running) else 0.9 * run.running + 0.1 * loss
    run.rows.append(
        {
            "step": run.step,
            "epoch": epoch + 1,
            "loss": loss,
            "val_loss": math.nan,
            "pos_sim": stats.get("pos_sim", math.nan),
            "neg_sim": stats.get("neg_sim", math.nan),
            "gap": stats.get("gap", math.nan),
            "out_std": stats["out_std"],
            "lr": run.optimizer.param_groups[0]["lr"],
            "seconds": run.seconds(),
        }
    )
    if run.bar is not None:  # rank 0 only
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{run.running:.4f}", std=f"{stats['out_std']:.3g}")
    if run.callback is not None and run.world.main:
        run.callback(run.rows[-1])


def _check_collapse(run: _Run, stats: dict[str, float]) -> None:
    """Warn once when the running loss falls below :data:`COLLAPSE_LOSS`."""
    if run.warned or not run.world.main or run.step < min(10, run.config.total_steps()):
        return
    if not run.running < COLLAPSE_LOSS:
        return
    run.warned = True
    warn(
        f"the contrastive loss collapsed to {run.running:.2e} at step {run.step} "
        f"(representation std {stats['out_std']:.3g}): the networks inflate the output scale "
        "and the training signal vanishes; raise --l2 (e.g. 0.1) or --tau (e.g. 0.5)"
    )


def _run_epoch(run: _Run) -> None:
    """The (rest of the) epoch ``run.step`` lies in, then its validation and checkpoint."""
    cfg = run.config
    epoch = run.step // cfg.steps_per_epoch
    start = epoch * cfg.steps_per_epoch
    stream = _epoch_stream(run.pairs, cfg, start, run.world.rank)
    for _ in range(run.step - start):  # replay a partly done epoch
        next(stream)
    end = min(start + cfg.steps_per_epoch, cfg.total_steps())
    while run.step < end:
        _train_one_step(run, next(stream), epoch)
    _end_epoch(run, epoch)


def _end_epoch(run: _Run, epoch: int) -> None:
    """Validation loss, checkpoint (atomic), ``metrics.csv`` and ``loss.png``; rank 0
    writes them, with the RNG states of all ranks."""
    from comir.losses.infonce import InfoNCELoss

    rngs = distributed.all_gather_objects(run.world, rng_state(run.generator))
    if not run.world.main:
        return
    local_loss = InfoNCELoss(run.config.critic, run.config.tau)  # no collectives on rank 0
    val = validation_loss(run.model, run.val_batches, local_loss)
    run.rows[-1]["val_loss"] = val
    run.rows[-1]["seconds"] = run.seconds()
    state = {
        "step": run.step,
        "model": weights_state(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rngs[0],
        **({"rng_ranks": rngs} if run.world.distributed else {}),
        "metrics": run.rows,
        "seconds": run.rows[-1]["seconds"],
    }
    save_checkpoint(run.checkpoint, state)
    _write_logs(run)
    if run.bar is not None and not math.isnan(val):
        run.bar.write(f"epoch {epoch + 1}: loss {run.running:.4f}  val_loss {val:.4f}")


def _run_epochs(run: _Run, progress: bool) -> None:
    """Epochs until ``config.total_steps()``, with a tqdm bar when ``progress``."""
    total = run.config.total_steps()
    if progress and run.world.main:
        from tqdm.auto import tqdm

        run.bar = tqdm(total=total, initial=run.step, desc="train", unit="step", dynamic_ncols=True)
    run.t0 = time.perf_counter()
    try:
        while run.step < total:
            _run_epoch(run)
    finally:
        if run.bar is not None:
            run.bar.close()


def _write_logs(run: _Run) -> None:
    from comir.plot import plot_loss

    write_metrics(run.folder / "metrics.csv", run.rows)
    plot_loss(run.rows, run.folder / "loss.png")


def train(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
) -> Path:
    """Train a CoMIR model pair and write the run folder.

    Parameters
    ----------
    config : TrainConfig
        All options (validated here).
    out : path
        Run folder ``RUN``; must not hold a run unless ``resume`` is set.
    resume : bool
        Continue from ``RUN/checkpoint/last.pt`` to ``config.total_steps()``; on CPU the
        final weights equal those of an uninterrupted run.
    progress : bool
        Show a tqdm bar with the running loss (rank 0).
    callback : callable, optional
        ``callback(row)`` after every step on rank 0 with that step's ``metrics.csv`` row
        (``step``, ``loss``, ...); an exception it raises stops training and propagates
        (the napari Train widget's live plot and cancel button, :mod:`comir.napari`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this: each draws its own
    patch stream of ``config.batch_size`` pairs (the per-rank batch), gradients are averaged
    by DDP, InfoNCE negatives come from the global batch and rank 0 writes the run folder
    (:mod:`comir.distributed`, docs/distributed.md).

    Returns
    -------
    Path
        ``RUN`` holding ``model.safetensors``, ``config.json``, ``metrics.csv``, ``loss.png``
        and ``checkpoint/last.pt``.
    """
    config.validate()
    folder = Path(out)
    world = distributed.setup(resolve_device(config.device))
    try:
        with distributed.collective_errors(world):
            _train_in(config, folder, world, resume, progress, callback)
        distributed.barrier(world)  # the model is written before any rank returns
    finally:
        distributed.teardown(world)
    return folder


def _train_in(
    config: TrainConfig, folder: Path, world: World, resume: bool, progress: bool, callback=None
) -> None:
    """:func:`train` on this process's rank (rank 0 writes the run folder)."""
    device = world.device
    stored = open_run_folder(folder, config, resume)
    run = _build_run(config, folder, world, stored)
    run.callback = callback
    distributed.barrier(world)  # every rank checked the folder before rank 0 writes to it
    # The run draws from the global RNG (dropout); fork it so callers' streams are untouched
    # and so a resumed run restores exactly the state it was saved with.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        if resume:
            _restore(run)
        else:
            torch.manual_seed(stream_seed(config.seed, 0, purpose=2, rank=world.rank))
        if world.main:
            _write_config(run, stored)
        _run_epochs(run, progress)
    if world.main:
        save_weights(run.model, folder / "model.safetensors")
        _write_logs(run)
