"""Data-parallel training across processes: process group, rank helpers, DDP wrapper, launcher.

``comir train`` runs unchanged under ``torchrun`` (PyTorch elastic): every process trains on
its own patch stream, gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel` and the InfoNCE negatives come from the
global batch (:func:`comir.losses.infonce.gather_distributed`). ``comir train --nproc N``
starts the elastic launcher itself (standalone rendezvous on localhost). The backend is gloo
on CPU and nccl on CUDA; see docs/distributed.md for command lines.

The world is read from the environment variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Collectives time out after
``COMIR_DIST_TIMEOUT`` seconds (default :data:`DEFAULT_TIMEOUT`), so a rank that hangs or
dies never blocks the others for ever.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from comir.errors import ComirError

__all__ = [
    "DEFAULT_TIMEOUT",
    "DataParallelPair",
    "World",
    "all_gather_objects",
    "barrier",
    "collective_errors",
    "env_world_size",
    "is_main",
    "launch",
    "setup",
    "teardown",
    "timeout_seconds",
]

#: Seconds a collective may wait for the other processes (``COMIR_DIST_TIMEOUT``).
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class World:
    """This process's place in the training world.

    ``owned``: the process group was created by :func:`setup` (and is destroyed by
    :func:`teardown`); ``False`` when single-process or when the caller created it.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owned: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes metrics, checkpoints and the model."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world_size() -> int:
    """``WORLD_SIZE`` of the environment (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ComirError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; start the "
            "processes with torchrun"
        ) from None


def is_main() -> bool:
    """Whether this process is rank 0 (of the live group, else of ``RANK``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def timeout_seconds() -> float:
    """The collective timeout, ``COMIR_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT`."""
    raw = os.environ.get("COMIR_DIST_TIMEOUT")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ComirError(f"COMIR_DIST_TIMEOUT={raw!r} is invalid; give seconds > 0")
    return value


def _device_for(device: torch.device, local_rank: int) -> torch.device:
    """One CUDA device per process (``cuda:LOCAL_RANK``); CPU stays CPU."""
    if device.type != "cuda":
        if device.type != "cpu":
            raise ComirError(
                f"distributed training runs on cpu or cuda, not {device.type}; "
                "use --device cpu or cuda"
            )
        return device
    if local_rank >= torch.cuda.device_count():
        raise ComirError(
            f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
            "lower --nproc-per-node to the number of GPUs"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(device: torch.device) -> World:
    """Join the process group of the environment (or the caller's) and pick the device.

    Single-process (``WORLD_SIZE`` unset or 1, no group): ``World()`` on ``device``.
    Otherwise backend nccl for CUDA, gloo for CPU, ``env://`` rendezvous, timeout
    :func:`timeout_seconds`.
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return World(dist.get_rank(), dist.get_world_size(), local, _device_for(device, local))
    size = env_world_size()
    if size <= 1:
        return World(device=device)
    if not dist.is_available():
        raise ComirError("this PyTorch build has no torch.distributed; train with one process")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device_for(device, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_seconds())
    with collective_errors():
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method="env://", timeout=timeout, **kw)
    return World(dist.get_rank(), dist.get_world_size(), local, device, owned=True)


def teardown(world: World) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if world.owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait for all processes (a no-op with one)."""
    if world.distributed:
        with collective_errors(world):
            dist.barrier()


def all_gather_objects(world: World, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` with one process)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    with collective_errors(world):
        dist.all_gather_object(out, obj)
    return out


def _is_collective_error(exc: BaseException) -> bool:
    """A torch.distributed failure: gloo/NCCL raise plain ``RuntimeError`` s too."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return any(w in text for w in ("gloo", "NCCL", "nccl", "c10d", "Connection closed by peer"))


@contextlib.contextmanager
def collective_errors(world: World | None = None) -> Iterator[None]:
    """Turn a failed or timed-out collective into a one-line :class:`ComirError`."""
    try:
        yield
    except (dist.DistError, RuntimeError) as exc:
        if not _is_collective_error(exc):
            raise
        rank = f"rank {world.rank}" if world is not None else "this process"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ComirError(
            f"{rank}: lost the other training processes ({type(exc).__name__}: {first}); "
            f"another rank failed or hung (timeout {timeout_seconds():g} s, COMIR_DIST_TIMEOUT): "
            "see its message"
        ) from None


class DataParallelPair(nn.Module):
    """Both encoders of an :class:`~comir.model.EncoderPair`, each wrapped in DDP.

    One DDP wrapper per encoder, because every step calls each encoder once (directly or
    through the C4 wrapper, :func:`comir.equivariance.c4_encode`); the parameters are
    those of ``pair``, so the optimiser, checkpoints and saved weights use ``pair`` itself.
    """

    def __init__(self, pair: nn.Module, world: World, sync_bn: bool = False) -> None:
        super().__init__()
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [world.device.index] if world.device.type == "cuda" else None
        # On CPU the Tiramisu computes in channels_last, so 1×1-conv weight gradients arrive
        # with other strides than DDP's bucket views: a copy, not an error.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        encoders = {}
        for m, enc in pair.encoders.items():
            if sync_bn:
                enc = nn.SyncBatchNorm.convert_sync_batchnorm(enc)
                pair.encoders[m] = enc
            encoders[m] = DDP(enc, device_ids=ids)
        self.encoders = nn.ModuleDict(encoders)

    def forward(self, x: Tensor, modality: str) -> Tensor:
        return self.encoders[modality](x)


def check_sync_bn(sync_bn: bool, world: World) -> None:
    """``--sync-bn`` needs CUDA: PyTorch's SyncBatchNorm does not run on CPU tensors."""
    if sync_bn and world.distributed and world.device.type != "cuda":
        raise ComirError(
            "--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); drop --sync-bn "
            "on CPU (batch norm then uses each process's own batch)"
        )


def _failure_line(exc: Exception) -> str:
    """One line naming the first failed rank and its error, from a ``ChildFailedError``."""
    failures = getattr(exc, "failures", {}) or {}
    if not failures:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    rank, failure = exc.get_first_failure()  # the root cause: the earliest failure
    message = getattr(failure, "message", "")
    if isinstance(message, dict):
        message = message.get("message", "")
    text = (str(message).strip().splitlines() or [""])[0]
    if not text or text.startswith("To enable traceback"):
        text = f"exit code {failure.exitcode}"
    return f"rank {rank} failed: {text[:300]}"


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in ``nproc`` local processes under PyTorch's elastic agent.

    Standalone rendezvous (c10d on a free localhost port) like ``torchrun --standalone``,
    no restarts; the workers see the torchrun environment, so :func:`setup` joins them.
    ``fn`` must be importable (a module-level function). Returns rank 0's result; a failed
    rank raises :class:`ComirError` naming it.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ComirError(f"--nproc {nproc} is invalid; give 1 or more processes")
    if env_world_size() > 1:
        raise ComirError("--nproc cannot be used inside torchrun; give one or the other")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"comir-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    agent_log = logging.getLogger("torch.distributed.elastic")
    level = agent_log.level
    agent_log.setLevel(logging.CRITICAL)  # its tracebacks: the one-line error below says it
    try:
        results = elastic_launch(config, _run_recorded)(fn, *args)
    except ChildFailedError as exc:
        raise ComirError(_failure_line(exc)) from None
    finally:
        agent_log.setLevel(level)
    return results.get(0) if isinstance(results, dict) else results


def _run_recorded(fn: Callable[..., Any], *args: Any) -> Any:
    """A launched worker: ``fn(*args)`` with its exception recorded for the launcher."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(fn)(*args)
