"""The options of ``comir train`` (:class:`TrainConfig`), validated, JSON/TOML-able.

Importable without torch: the CLI builds its ``choices=`` from the constants used here
(:data:`comir.losses.CRITICS`, :data:`OPTIMIZERS`, :data:`comir.runtime.DEVICES`,
:data:`comir.runtime.TRAIN_PRECISIONS`). The training recipe is described in
:mod:`comir.train`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from comir.errors import ComirError
from comir.losses import CRITICS, DEFAULT_TAU
from comir.runtime import DEVICES, TRAIN_PRECISIONS

__all__ = ["OPTIMIZERS", "RESUMABLE_CHANGES", "TrainConfig"]

OPTIMIZERS = ("sgd", "adam")
#: Keys of :class:`TrainConfig` that may change when a run is resumed.
RESUMABLE_CHANGES = frozenset({"steps", "epochs", "device", "workers"})

_INTS = ("latent_channels", "epochs", "steps_per_epoch", "batch_size", "patch_size")
_FLOATS = ("val_fraction", "tau", "l1", "l2", "lr", "weight_decay", "momentum", "grad_clip")
_BOOLS = ("log_a", "log_b", "equivariance", "amp", "sync_bn")
_CHOICES = (
    ("critic", CRITICS),
    ("optimizer", OPTIMIZERS),
    ("device", DEVICES),
    ("precision", TRAIN_PRECISIONS),
)


@dataclass
class TrainConfig:
    """Every option of ``comir train``; JSON/TOML-able via :meth:`to_dict` / :meth:`from_dict`.

    ``steps`` (if given) is the total number of optimisation steps; otherwise
    ``epochs * steps_per_epoch``. An epoch is ``steps_per_epoch`` steps followed by a
    validation pass and a checkpoint. ``model_overrides`` are passed to
    :func:`comir.model.tiramisu_config` (e.g. ``growth``, ``dropout``); ``augment`` holds
    :class:`comir.data.AugmentConfig` fields. ``tau`` defaults to
    :data:`comir.losses.DEFAULT_TAU` (0.5, see there). ``batch_size`` is per process in
    data-parallel training (the global batch is ``batch_size × world size``); ``sync_bn``
    converts batch norm to :class:`torch.nn.SyncBatchNorm` there (CUDA only).
    ``seed`` drives the patch stream and, unless ``weight_seed`` is given, the initial
    weights too; ``weight_seed`` draws the initial weights alone (the seed experiment of
    Pielawski et al. 2020, §4, compares runs that share it). ``pixel_size_um`` (µm per
    pixel of the training images) is what whole-slide registration embeds a slide at
    (:func:`comir.slide.register_slides` picks the level of that pixel size).
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
    tau: float = DEFAULT_TAU
    l1: float = 1e-4
    l2: float = 0.1
    equivariance: bool = True
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    grad_clip: float = 1.0
    seed: int = 0
    weight_seed: int | None = None
    device: str = "auto"
    workers: int = 0
    amp: bool = True
    augment: dict = field(default_factory=dict)
    precision: str = "auto"
    sync_bn: bool = False
    pixel_size_um: float | None = None

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

    def _bad(self, where: str, name: str, fix: str) -> ComirError:
        return ComirError(f"{where}: {name}={getattr(self, name)!r} is invalid; {fix}")

    def _check_types(self, where: str) -> None:
        """Integers, finite numbers (cast to float), booleans and dicts where expected."""

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in (*_INTS, "seed", "workers"):
            if not is_int(getattr(self, name)):
                raise self._bad(where, name, "give an integer")
        for name in _FLOATS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self._bad(where, name, "give a number")
            setattr(self, name, float(v))
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise self._bad(where, name, "give true or false")
        for name in ("model_overrides", "augment"):
            if not isinstance(getattr(self, name), dict):
                raise self._bad(where, name, "give a table/dict of options")
        if self.steps is not None and not (is_int(self.steps) and self.steps >= 1):
            raise self._bad(where, "steps", "give a positive integer")
        px = self.pixel_size_um
        if px is not None and (isinstance(px, bool) or not isinstance(px, (int, float))
                               or not math.isfinite(px) or px <= 0):  # fmt: skip
            raise self._bad(where, "pixel_size_um", "give the training pixel size in µm (> 0)")
        if px is not None:
            self.pixel_size_um = float(px)
        if self.weight_seed is not None and not (
            is_int(self.weight_seed) and self.weight_seed >= 0
        ):
            raise self._bad(where, "weight_seed", "give a non-negative integer (or leave it unset)")

    def _check_ranges(self, where: str) -> None:
        for name in _INTS:
            if getattr(self, name) < 1:
                raise self._bad(where, name, "give a positive integer")
        if self.batch_size < 2:
            raise self._bad(where, "batch_size", "InfoNCE needs at least 2 pairs per batch")
        if self.seed < 0:
            raise self._bad(where, "seed", "give a non-negative integer")
        if self.workers < 0:
            raise self._bad(where, "workers", "give 0 (load in the main process) or more")
        if not 0.0 <= self.val_fraction < 1.0:
            raise self._bad(where, "val_fraction", "give a fraction in [0, 1)")
        if self.val is not None and self.val_fraction > 0:
            raise ComirError(f"{where}: give either val or val_fraction, not both")
        if self.tau <= 0:
            raise self._bad(where, "tau", "the temperature must be > 0 (0.1–0.5 are typical)")
        if self.lr <= 0:
            raise self._bad(where, "lr", "the learning rate must be > 0")
        for name in ("l1", "l2", "weight_decay", "momentum", "grad_clip"):
            if getattr(self, name) < 0:
                raise self._bad(where, name, "must be >= 0 (0 disables it)")

    def validate(self, where: str = "train config") -> None:
        """Check types, ranges and choices; raise :class:`ComirError` naming the option and
        the fix."""
        self._check_types(where)
        self._check_ranges(where)
        for name, choices in _CHOICES:
            if getattr(self, name) not in choices:
                raise self._bad(where, name, f"use one of {', '.join(choices)}")
        if self.critic == "cosine" and self.latent_channels == 1:
            # cos(x, y) of scalars is sign(x)·sign(y): zero gradient (comir.losses.infonce)
            raise ComirError(
                f"{where}: critic='cosine' cannot learn with latent_channels=1 (the cosine of "
                "two scalars is ±1 and has no gradient); use --latent-channels 3 (or "
                "--critic mse)"
            )
