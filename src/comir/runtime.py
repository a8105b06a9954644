"""Runtime pieces shared by training and inference: devices, precisions, weight files.

Both :mod:`comir.train` and :mod:`comir.embed` build on this module, so inference never
imports the training loop. The constants are importable without loading torch (the CLI
builds its ``choices=`` from them); torch and safetensors load on first use of a function.

Weights are stored as safetensors (read without unpickling) with flat keys
``"a.<name>"`` / ``"b.<name>"``: the parameters and BatchNorm buffers of the two encoders of
an :class:`comir.model.EncoderPair`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from comir.errors import ComirError
from comir.io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "TRAIN_PRECISIONS",
    "autocast_dtype",
    "check_precision",
    "load_weights",
    "load_weights_state",
    "resolve_device",
    "save_weights",
    "weights_state",
]

#: Device names of ``--device`` (``cuda:N`` is accepted as well).
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Inference precisions: ``fp32``, or autocast with bf16 (fast on CPUs with AMX/AVX512-BF16,
#: see benchmarks/notes.md) or fp16 (CUDA).
PRECISIONS = ("fp32", "bf16", "fp16")
#: Training precisions: :data:`PRECISIONS` plus ``auto`` (fp16 autocast on CUDA when the
#: run's ``amp`` option is on, fp32 elsewhere).
TRAIN_PRECISIONS = ("auto", *PRECISIONS)


def check_precision(precision: str, choices: tuple[str, ...] = PRECISIONS) -> str:
    """Return ``precision`` if it is one of ``choices``, else raise :class:`ComirError`."""
    if precision not in choices:
        raise ComirError(f"invalid precision {precision!r}; use one of {', '.join(choices)}")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of an inference precision (``None`` for ``fp32``: no autocast)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[check_precision(precision)]


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _cuda_device(name: str) -> torch.device:
    import torch

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


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:N``) into a device; unavailable -> ComirError.

    ``auto`` prefers CUDA, then Apple MPS, then the CPU.
    """
    import torch

    kind = name.split(":", 1)[0]
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        return _cuda_device(name)
    if kind == "mps":
        if not _mps_available():
            raise ComirError(
                f"device {name!r}: Apple MPS is not available here; use --device cpu or auto"
            )
        return torch.device("mps")
    raise ComirError(f"invalid device {name!r}; use one of {', '.join(DEVICES)}")


def weights_state(model) -> dict[str, torch.Tensor]:
    """Flat ``{"a.<name>": tensor, "b.<name>": tensor}`` of parameters and BN buffers.

    ``model`` is an :class:`comir.model.EncoderPair`; tensors are detached CPU copies.
    """
    out: dict[str, torch.Tensor] = {}
    for m in ("a", "b"):
        for k, v in model.encoders[m].state_dict().items():
            out[f"{m}.{k}"] = v.detach().to("cpu", copy=True).contiguous()
    return out


def load_weights_state(model, state: dict[str, torch.Tensor], where: str) -> None:
    """Inverse of :func:`weights_state` (strict: every key must match); ``where`` names the
    file in the :class:`ComirError` raised on a mismatch."""
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
    """Write the weights of an :class:`comir.model.EncoderPair` as safetensors (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(weights_state(model), str(tmp), metadata={"format": "pt", "comir": "1"})
    return path


def load_weights(model, path: str | os.PathLike) -> None:
    """Read ``path`` (safetensors) into ``model``; corrupt or mismatching files raise
    :class:`ComirError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ComirError(f"{path}: corrupt weights file ({exc}); retrain or restore") from None
    load_weights_state(model, state, str(path))
