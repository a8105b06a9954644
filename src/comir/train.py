"""Training loop: one Tiramisu per modality, InfoNCE over dense maps, C4 equivariance.

Recipe (Pielawski, Wetzer et al., NeurIPS 2020; see ``SPEC.md`` §2 and §5): random aligned
patch pairs, each modality encoded by its own FC-DenseNet, the C4 wrapper rotates every
input by a random multiple of 90° and the output back, the loss is InfoNCE over all
``2N`` maps of the batch plus an activation decay on the outputs, gradients are clipped to
norm 1.0, optimiser SGD or Adam, mixed precision on CUDA (fp16) and, opt-in, bf16 autocast
on CPU (``precision="bf16"``; measured ~2× faster steps for the ``small`` preset on a CPU
with AMX, see benchmarks/notes.md).

A run folder ``RUN/`` receives ``config.json`` (everything needed to rebuild the model and
its input preparation), ``metrics.csv`` (one row per step, validation loss at the end of
each epoch), ``loss.png``, ``checkpoint/last.pt`` (written atomically every epoch; resume
reproduces an uninterrupted run exactly on CPU) and finally ``model.safetensors``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comir.errors import ComirError
from comir.io import atomic_path, write_text

CRITICS = ("mse", "cosine", "l1", "euclidean")
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: InfoNCE values below this are reported as a collapsed training signal (SPEC §5).
COLLAPSE_LOSS = 1e-3
#: Columns of ``metrics.csv``.
METRIC_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "val_loss",
    "pos_sim",
    "neg_sim",
    "gap",
    "out_std",
    "lr",
    "seconds",
)
#: Keys of :class:`TrainConfig` that may change when a run is resumed.
RESUMABLE_CHANGES = frozenset({"steps", "epochs", "device", "workers"})
#: Training precisions: ``auto`` = fp16 autocast on CUDA (when ``amp``), fp32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_NAME = "last.pt"
VAL_BATCHES = 4


@dataclass
class TrainConfig:
    """Every option of ``comir train``; JSON/TOML-able via :meth:`to_dict` / :meth:`from_dict`.

    ``steps`` (if given) is the total number of optimisation steps; otherwise
    ``epochs * steps_per_epoch``. An epoch is ``steps_per_epoch`` steps followed by a
    validation pass and a checkpoint. ``model_overrides`` are passed to
    :func:`comir.model.tiramisu_config` (e.g. ``growth``, ``dropout``); ``augment`` holds
    :class:`comir.data.AugmentConfig` fields.
    """

    data: str
    layout: str = "folders"
    a: str = "A"
    b: str = "B"
    val: str | None = None
    val_fraction: float = 0.0
    norm: str = "auto"
    norm_b: str | None = None
    log_a: bool = False
    log_b: bool = False
    preset: str = "small"
    latent_channels: int = 1
    model_overrides: dict = field(default_factory=dict)
    steps: int | None = None
    epochs: int = 10
    steps_per_epoch: int = 32
    batch_size: int = 16
    patch_size: int = 128
    critic: str = "mse"
    tau: float = 0.5
    l1: float = 1e-4
    l2: float = 0.1
    equivariance: bool = True
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    amp: bool = True
    augment: dict = field(default_factory=dict)
    precision: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "train config") -> TrainConfig:
        """Build from a dict (e.g. a TOML file); unknown keys raise :class:`ComirError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ComirError(
                f"{where}: unknown option(s) {', '.join(unknown)}; valid keys are "
                f"{', '.join(sorted(names))}"
            )
        if "data" not in d:
            raise ComirError(f"{where}: missing 'data' (the training data folder)")
        cfg = cls(**d)
        cfg.validate(where)
        return cfg

    def total_steps(self) -> int:
        """Number of optimisation steps of the whole run."""
        return int(self.steps) if self.steps is not None else self.epochs * self.steps_per_epoch

    def validate(self, where: str = "train config") -> None:
        """Check types and ranges; raise :class:`ComirError` naming the option and the fix."""

        def bad(name: str, fix: str) -> ComirError:
            return ComirError(f"{where}: {name}={getattr(self, name)!r} is invalid; {fix}")

        ints = ("latent_channels", "epochs", "steps_per_epoch", "batch_size", "patch_size")
        for name in (*ints, "seed", "workers"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise bad(name, "give an integer")
        floats = ("val_fraction", "tau", "l1", "l2", "lr", "weight_decay", "momentum", "grad_clip")
        for name in floats:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "give a number")
            setattr(self, name, float(v))
        for name in ("log_a", "log_b", "equivariance", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "give true or false")
        for name in ("model_overrides", "augment"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "give a table/dict of options")
        for name in ints:
            if getattr(self, name) < 1:
                raise bad(name, "give a positive integer")
        if self.steps is not None and (
            not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1
        ):
            raise bad("steps", "give a positive integer")
        if self.batch_size < 2:
            raise bad("batch_size", "InfoNCE needs at least 2 pairs per batch")
        if self.seed < 0:
            raise bad("seed", "give a non-negative integer")
        if self.workers < 0:
            raise bad("workers", "give 0 (load in the main process) or more")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "give a fraction in [0, 1)")
        if self.val is not None and self.val_fraction > 0:
            raise ComirError(f"{where}: give either val or val_fraction, not both")
        if self.tau <= 0:
            raise bad("tau", "the temperature must be > 0 (0.1–0.5 are typical)")
        if self.lr <= 0:
            raise bad("lr", "the learning rate must be > 0")
        for name in ("l1", "l2", "weight_decay", "momentum", "grad_clip"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0 (0 disables it)")
        if self.critic not in CRITICS:
            raise bad("critic", f"use one of {', '.join(CRITICS)}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"use one of {', '.join(OPTIMIZERS)}")
        if self.device not in DEVICES:
            raise bad("device", f"use one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"use one of {', '.join(PRECISIONS)}")


# ---------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:N``) into a device; unavailable -> ComirError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ComirError(
                f"device {name!r}: CUDA is not available on this machine; use --device cpu or auto"
            )
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ComirError(f"invalid device {name!r}; use cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ComirError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return dev
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ComirError(
                f"device {name!r}: Apple MPS is not available here; use --device cpu or auto"
            )
        return torch.device("mps")
    raise ComirError(f"invalid device {name!r}; use one of {', '.join(DEVICES)}")


def resolve_precision(config: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """``(autocast enabled, dtype)`` for ``config.precision`` on ``device``.

    ``auto``: fp16 on CUDA when ``config.amp``, else fp32 (the CPU default: bf16 is
    opt-in, see benchmarks/notes.md); ``fp16`` needs CUDA.
    """
    p = config.precision
    if p == "auto":
        return config.amp and device.type == "cuda", torch.float16
    if p == "fp32":
        return False, torch.float32
    if p == "fp16" and device.type != "cuda":
        raise ComirError(
            f"precision fp16 needs a CUDA device (got {device.type}); use bf16 or fp32 on CPU"
        )
    return True, torch.bfloat16 if p == "bf16" else torch.float16


def stream_seed(seed: int, step: int, purpose: int = 0) -> int:
    """Seed derived from ``(seed, purpose, step)``.

    ``purpose`` 0 is the data stream of the epoch starting at ``step`` (so resuming
    replays it exactly), 1 the C4 rotations, 2 the global RNG (dropout).
    """
    return int(np.random.SeedSequence([int(seed), int(purpose), int(step)]).generate_state(1)[0])


def build_model(config: TrainConfig, in_channels_a: int, in_channels_b: int):
    """The two encoders of ``config`` with weights drawn from ``config.seed``."""
    from comir.model import CoMIRModel, tiramisu_config

    try:
        cfg_a = tiramisu_config(
            config.preset, in_channels_a, config.latent_channels, **config.model_overrides
        )
        cfg_b = tiramisu_config(
            config.preset, in_channels_b, config.latent_channels, **config.model_overrides
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise ComirError(
            f"invalid model options (preset={config.preset!r}, "
            f"overrides={config.model_overrides}): {exc}"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = CoMIRModel(cfg_a, cfg_b)
    return model


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam as configured."""
    params = list(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def weights_state(model) -> dict[str, torch.Tensor]:
    """Flat ``{"a.<name>": tensor, "b.<name>": tensor}`` of parameters and BN buffers."""
    out: dict[str, torch.Tensor] = {}
    for m in ("a", "b"):
        for k, v in model.encoders[m].state_dict().items():
            out[f"{m}.{k}"] = v.detach().to("cpu", copy=True).contiguous()
    return out


def load_weights_state(model, state: dict[str, torch.Tensor], where: str) -> None:
    """Inverse of :func:`weights_state` (strict: every key must match)."""
    for m in ("a", "b"):
        sub = {k[2:]: v for k, v in state.items() if k.startswith(f"{m}.")}
        try:
            model.encoders[m].load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ComirError(
                f"{where}: weights do not match the model in config.json ({first}); "
                "the run folder is inconsistent, retrain or restore it"
            ) from None
    extra = [k for k in state if not k.startswith(("a.", "b."))]
    if extra:
        raise ComirError(f"{where}: unexpected weight keys such as {extra[0]!r}")


def save_weights(model, path: str | os.PathLike) -> Path:
    """Write the model weights as safetensors (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(weights_state(model), str(tmp), metadata={"format": "pt", "comir": "1"})
    return path


# ---------------------------------------------------------------------------- one step
def encode_pair(
    model, xa: torch.Tensor, xb: torch.Tensor, equivariance: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a batch of both modalities, ``(B, C, P, P)`` -> ``(B, L, P, P)`` each.

    With ``equivariance`` each sample is rotated by an independent random k·90° before
    encoding and the output rotated back (C4 wrapper, SPEC §2).
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
    model : CoMIRModel
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


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write a checkpoint dict (tensors, numbers, strings, lists, dicts)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise ComirError(f"{path}: no checkpoint to resume from; train without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ComirError(
            f"{path}: checkpoint cannot be read ({type(exc).__name__}); it is corrupt, "
            "delete it and train again"
        ) from None


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "c4": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["c4"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------- metrics
def write_metrics(path: str | os.PathLike, rows: Sequence[dict[str, float]]) -> Path:
    """Atomically write ``metrics.csv`` (columns :data:`METRIC_COLUMNS`, blank for NaN)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for r in rows:
        vals = []
        for c in METRIC_COLUMNS:
            v = r.get(c, math.nan)
            if isinstance(v, float) and math.isnan(v):
                vals.append("")
            elif c in ("step", "epoch"):
                vals.append(str(int(v)))
            else:
                vals.append(f"{v:.6g}")
        writer.writerow(vals)
    write_text(path, buf.getvalue())
    return Path(path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as dicts of floats (blank -> NaN)."""
    with open(path, newline="") as fh:
        return [
            {k: float(v) if v != "" else math.nan for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


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


def _device_batches(batches, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(xa.to(device), xb.to(device)) for xa, xb in batches]


def _epoch_stream(pairs, config: TrainConfig, start_step: int) -> Iterator:
    from comir.data import AugmentConfig, make_loader

    try:
        augment = AugmentConfig(**config.augment)
    except TypeError as exc:
        raise ComirError(f"invalid augment options {config.augment}: {exc}") from None
    return make_loader(
        pairs,
        config.patch_size,
        config.batch_size,
        augment,
        stream_seed(config.seed, start_step),
        config.workers,
    )


# ---------------------------------------------------------------------------- the loop
def _check_resume(stored: dict, config: TrainConfig, run: Path) -> None:
    old = stored.get("train", {})
    new = config.to_dict()
    # options added after a run was made count as their defaults
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    diff = sorted(
        k for k in new if k not in RESUMABLE_CHANGES and old.get(k, defaults.get(k)) != new.get(k)
    )
    if diff:
        raise ComirError(
            f"{run}: cannot resume with changed option(s) {', '.join(diff)}; use the options "
            "of the original run (see its config.json) or train into a new --out folder"
        )


def train(
    config: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True
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
        Show a tqdm bar with the running loss.

    Returns
    -------
    Path
        ``RUN`` holding ``model.safetensors``, ``config.json``, ``metrics.csv``, ``loss.png``
        and ``checkpoint/last.pt``.
    """
    from comir import __version__
    from comir.losses.infonce import InfoNCELoss
    from comir.model import count_parameters

    config.validate()
    run = Path(out)
    ckpt_path = run / "checkpoint" / CHECKPOINT_NAME
    cfg_path = run / "config.json"
    device = resolve_device(config.device)

    stored: dict | None = None
    if resume:
        if not cfg_path.is_file() or not ckpt_path.is_file():
            raise ComirError(
                f"{run}: nothing to resume (no config.json or checkpoint/{CHECKPOINT_NAME}); "
                "train without --resume"
            )
        try:
            stored = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ComirError(f"{cfg_path}: unreadable ({exc}); restore or delete the run") from None
        _check_resume(stored, config, run)
    # a bare config.json (a run that failed before its first epoch) may be overwritten
    elif (run / "model.safetensors").exists() or ckpt_path.exists():
        raise ComirError(
            f"{run}: already holds a training run; use --resume to continue it or choose "
            "another --out folder"
        )

    pairs, val_pairs = _load_data(config, stored["data"] if stored else None)
    ca = pairs.images_a[0].shape[2]
    cb = pairs.images_b[0].shape[2]
    model = build_model(config, ca, cb)
    channels_last = device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp, amp_dtype = resolve_precision(config, device)
    optimizer = make_optimizer(config, model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    loss_fn = InfoNCELoss(config.critic, config.tau)
    generator = torch.Generator().manual_seed(stream_seed(config.seed, 0, purpose=1))

    from comir.data import fixed_batches

    val_batches = []
    if val_pairs is not None and len(val_pairs.images_a) > 0:
        val_batches = _device_batches(
            fixed_batches(
                val_pairs, config.patch_size, VAL_BATCHES, config.batch_size, config.seed
            ),
            device,
        )

    total = config.total_steps()
    spe = config.steps_per_epoch
    step = 0
    rows: list[dict[str, float]] = []
    seconds0 = 0.0
    # The run draws from the global RNG (dropout); fork it so callers' streams are untouched
    # and so a resumed run restores exactly the state it was saved with.
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        if resume:
            ck = load_checkpoint(ckpt_path)
            try:
                load_weights_state(model, ck["model"], str(ckpt_path))
                optimizer.load_state_dict(ck["optimizer"])
                scaler.load_state_dict(ck["scaler"])
                _set_rng_state(ck["rng"], generator)
                step = int(ck["step"])
                rows = [dict(r) for r in ck["metrics"]]
                seconds0 = float(ck["seconds"])
            except (KeyError, ValueError, RuntimeError) as exc:
                raise ComirError(
                    f"{ckpt_path}: checkpoint does not match this run ({type(exc).__name__}: {exc})"
                ) from None
        else:
            torch.manual_seed(
                stream_seed(config.seed, 0, purpose=2)
            )  # dropout and other global draws
            info = {
                "comir_version": __version__,
                "model": model.config_dict(),
                "data": pairs.spec.to_dict(),
                "train": config.to_dict(),
                "parameters": int(count_parameters(model)),
            }
            write_text(cfg_path, json.dumps(info, indent=2) + "\n")
        if stored is not None:
            # keep the stored record; only the resumable options change
            stored["train"] = config.to_dict()
            write_text(cfg_path, json.dumps(stored, indent=2) + "\n")

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True)
        t0 = time.perf_counter()
        running = math.nan
        warned = False
        try:
            while step < total:
                epoch = step // spe
                epoch_start = epoch * spe
                stream = _epoch_stream(pairs, config, epoch_start)
                for _ in range(step - epoch_start):  # replay a partly done epoch
                    next(stream)
                epoch_end = min(epoch_start + spe, total)
                while step < epoch_end:
                    xa, xb = next(stream)
                    batch = (xa.to(device, non_blocking=True), xb.to(device, non_blocking=True))
                    stats = train_step(
                        model,
                        batch,
                        loss_fn,
                        optimizer,
                        scaler,
                        l1=config.l1,
                        l2=config.l2,
                        grad_clip=config.grad_clip,
                        equivariance=config.equivariance,
                        generator=generator,
                        amp=amp,
                        channels_last=channels_last,
                        amp_dtype=amp_dtype,
                    )
                    step += 1
                    if not math.isfinite(stats["loss"]):
                        raise ComirError(
                            f"training diverged at step {step} (loss {stats['loss']}); lower --lr "
                            "or check the input normalisation (--norm)"
                        )
                    running = (
                        stats["loss"]
                        if math.isnan(running)
                        else 0.9 * running + 0.1 * stats["loss"]
                    )
                    rows.append(
                        {
                            "step": step,
                            "epoch": epoch + 1,
                            "loss": stats["loss"],
                            "val_loss": math.nan,
                            "pos_sim": stats.get("pos_sim", math.nan),
                            "neg_sim": stats.get("neg_sim", math.nan),
                            "gap": stats.get("gap", math.nan),
                            "out_std": stats["out_std"],
                            "lr": optimizer.param_groups[0]["lr"],
                            "seconds": seconds0 + time.perf_counter() - t0,
                        }
                    )
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{running:.4f}", std=f"{stats['out_std']:.3g}")
                    if not warned and step >= min(10, total) and running < COLLAPSE_LOSS:
                        warned = True
                        msg = (
                            f"comir train: the contrastive loss collapsed to {running:.2e} at step "
                            f"{step} (representation std {stats['out_std']:.3g}): the networks "
                            "inflate the output scale and the training signal vanishes; raise --l2 "
                            "(e.g. 0.1) or --tau (e.g. 0.5)"
                        )
                        warnings.warn(msg, RuntimeWarning, stacklevel=2)
                val = validation_loss(model, val_batches, loss_fn)
                rows[-1]["val_loss"] = val
                rows[-1]["seconds"] = seconds0 + time.perf_counter() - t0
                save_checkpoint(
                    ckpt_path,
                    {
                        "step": step,
                        "model": weights_state(model),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": _rng_state(generator),
                        "metrics": rows,
                        "seconds": rows[-1]["seconds"],
                    },
                )
                write_metrics(run / "metrics.csv", rows)
                _plot(rows, run / "loss.png")
                if bar is not None and not math.isnan(val):
                    bar.write(f"epoch {epoch + 1}: loss {running:.4f}  val_loss {val:.4f}")
        finally:
            if bar is not None:
                bar.close()
    save_weights(model, run / "model.safetensors")
    write_metrics(run / "metrics.csv", rows)
    _plot(rows, run / "loss.png")
    return run


def _plot(rows: list[dict[str, float]], path: Path) -> None:
    from comir.plot import plot_loss

    plot_loss(rows, path)
