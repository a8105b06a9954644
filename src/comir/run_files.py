"""Files of a training run folder: checks, checkpoint, RNG state and ``metrics.csv``.

Everything is written atomically (:func:`comir.io.atomic_path`), so an interrupted run
leaves either the previous or the new file, never half of one. Checkpoints are read with
``weights_only=True`` (no arbitrary unpickling).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from comir.errors import ComirError
from comir.io import atomic_path, write_text
from comir.train_config import RESUMABLE_CHANGES, TrainConfig

__all__ = [
    "CHECKPOINT_NAME",
    "METRIC_COLUMNS",
    "check_resume",
    "load_checkpoint",
    "open_run_folder",
    "rank_rng_state",
    "read_metrics",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "write_metrics",
]

#: File name of the checkpoint in ``RUN/checkpoint/``.
CHECKPOINT_NAME = "last.pt"
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


def rank_rng_state(ck: dict, rank: int, size: int, path: Path) -> dict[str, Any]:
    """RNG state of ``rank`` of ``size`` processes from a checkpoint.

    Data-parallel checkpoints hold one state per rank (``rng_ranks``); single-process ones
    only ``rng``. A different number of processes cannot replay the run: refused.
    """
    states = ck.get("rng_ranks", [ck["rng"]])
    if len(states) != size:
        raise ComirError(
            f"{path}: the run was trained with {len(states)} process(es), not {size}; "
            f"resume it with {len(states)} (torchrun --nproc-per-node / comir train --nproc)"
        )
    return states[rank]


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The global torch (and CUDA) RNG state plus ``generator``'s, for a checkpoint."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "c4": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of :func:`rng_state` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["c4"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _cell(column: str, value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(int(value)) if column in ("step", "epoch") else f"{value:.6g}"


def write_metrics(path: str | os.PathLike, rows: Sequence[dict[str, float]]) -> Path:
    """Atomically write ``metrics.csv`` (columns :data:`METRIC_COLUMNS`, blank for NaN)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for r in rows:
        writer.writerow([_cell(c, r.get(c, math.nan)) for c in METRIC_COLUMNS])
    write_text(path, buf.getvalue())
    return Path(path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as dicts of floats (blank -> NaN)."""
    with open(path, newline="") as fh:
        return [
            {k: float(v) if v != "" else math.nan for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def check_resume(stored: dict, config: TrainConfig, run: Path) -> None:
    """Refuse to resume ``run`` when a non-resumable option differs from ``stored``."""
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


def open_run_folder(folder: Path, config: TrainConfig, resume: bool) -> dict | None:
    """Check the run folder; the stored ``config.json`` when resuming, else ``None``."""
    ckpt = folder / "checkpoint" / CHECKPOINT_NAME
    cfg_path = folder / "config.json"
    if not resume:
        # a bare config.json (a run that failed before its first epoch) may be overwritten
        if (folder / "model.safetensors").exists() or ckpt.exists():
            raise ComirError(
                f"{folder}: already holds a training run; use --resume to continue it or "
                "choose another --out folder"
            )
        return None
    if not cfg_path.is_file() or not ckpt.is_file():
        raise ComirError(
            f"{folder}: nothing to resume (no config.json or checkpoint/{CHECKPOINT_NAME}); "
            "train without --resume"
        )
    try:
        stored = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ComirError(f"{cfg_path}: unreadable ({exc}); restore or delete the run") from None
    check_resume(stored, config, folder)
    return stored
