"""Dask-distributed batch work: ``--scheduler local[:N]|ADDRESS`` for embed and evaluate.

Bioimage labs run batch jobs on :mod:`dask.distributed` (often through ``dask-jobqueue``
on SLURM/PBS); comir submits its work items to such a cluster instead of starting a pool
of its own. One future per work item (a pair registration, an input file), each retried
once (``retries=1``) and then reported by item, while the other items still finish
(docs/dask.md).

The scheduler spec
------------------
``local`` / ``local:N``
    A :class:`distributed.LocalCluster` of ``N`` worker processes, one thread each
    (default ``N`` = CPU count), started and closed around the work.
``tcp://host:8786`` (any Dask address)
    A running scheduler; it does not answer within :data:`CONNECT_TIMEOUT` s →
    :class:`~comir.errors.ComirError`.
A :class:`distributed.Client` or a cluster object (``scheduler_address``)
    Python API only: used as is and not closed (e.g. a ``SLURMCluster``).

Dask is an optional dependency (``pip install comir[dask]``); this module imports it only
when a scheduler is used, so the core runs without it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comir.errors import ComirError, warn

#: Seconds to wait for a scheduler address to answer.
CONNECT_TIMEOUT = 5.0
#: Submissions of a failing work item: the first plus one retry.
RETRIES = 1
_LOCAL = re.compile(r"^local(?::(\d+))?$")


# ----------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class SchedulerSpec:
    """A parsed ``--scheduler`` value: ``local`` with ``n_workers``, or an ``address``."""

    local: bool
    n_workers: int | None = None
    address: str | None = None


def parse_scheduler(spec: str) -> SchedulerSpec:
    """Parse ``local``, ``local:N`` (N ≥ 1) or a scheduler address (``tcp://host:port``)."""
    s = str(spec).strip()
    m = _LOCAL.match(s)
    if m:
        n = None if m.group(1) is None else int(m.group(1))
        if n is not None and n < 1:
            raise ComirError(f"--scheduler {spec!r}: N must be ≥ 1, e.g. local:4")
        return SchedulerSpec(True, n_workers=n)
    if s.startswith("local") or not s or any(c.isspace() for c in s):
        raise ComirError(
            f"--scheduler {spec!r} is invalid; use local, local:N or an address like "
            "tcp://host:8786"
        )
    return SchedulerSpec(False, address=s if "://" in s else f"tcp://{s}")


def check_scheduler(scheduler: Any) -> None:
    """Reject an invalid spec string before any work starts (even when nothing is left to
    do); a Client or cluster object passes."""
    if isinstance(scheduler, str):
        parse_scheduler(scheduler)


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ComirError(
            "--scheduler needs Dask: pip install 'comir[dask]' (or 'dask[distributed]')"
        ) from None
    return distributed


@contextlib.contextmanager
def open_client(scheduler: Any) -> Iterator[Any]:
    """A :class:`distributed.Client` for ``scheduler`` (a spec string, a Client or a cluster),
    closed on exit when this function started it.

    A local cluster is started with ``distributed.scheduler.allowed-failures`` = 1, so that
    a work item whose worker dies is retried once, like one that raises.
    """
    distributed = _import_distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if not isinstance(scheduler, str) and hasattr(scheduler, "scheduler_address"):
        scheduler = scheduler.scheduler_address
    spec = parse_scheduler(scheduler)
    with contextlib.ExitStack() as stack:
        if spec.local:
            cluster = stack.enter_context(_local_cluster(distributed, spec.n_workers))
            client = stack.enter_context(distributed.Client(cluster))
        else:
            client = stack.enter_context(_connect(distributed, spec.address))
        yield client


@contextlib.contextmanager
def _local_cluster(distributed, n_workers: int | None):
    import dask

    n = n_workers or os.cpu_count() or 1
    with dask.config.set({"distributed.scheduler.allowed-failures": RETRIES}):
        cluster = distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )  # fmt: skip
    try:
        yield cluster
    finally:
        cluster.close()


def _connect(distributed, address: str):
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ComirError(
            f"--scheduler {address}: no Dask scheduler answered within {CONNECT_TIMEOUT:g} s "
            f"({type(exc).__name__}); start one (dask scheduler) or check the address"
        ) from None


# ----------------------------------------------------------------------------- map
@dataclass(frozen=True)
class Outcome:
    """One work item after the cluster ran it: ``value`` or the ``error`` (one line)."""

    index: int
    value: Any = None
    error: str | None = None
    exception: BaseException | None = None


def map_items(client, fn: Callable, items: Sequence[Any], progress: bool, desc: str,
              unit: str, extra: tuple = ()) -> list[Outcome]:  # fmt: skip
    """``fn(item, *extra)`` for every item as one future each (``retries=1``), in input
    order (``extra``: e.g. futures of scattered data, resolved on the worker).

    A progress bar advances as futures finish. An item that still fails after its retry
    becomes an :class:`Outcome` with ``error`` (``"Type: message"``); the others finish.
    """
    import distributed

    from comir.batch import progress_bar

    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(
            fn, item, *extra, key=f"comir-{desc}-{token}-{k}", retries=RETRIES, pure=False
        )
        for k, item in enumerate(items)
    ]
    where = {f.key: k for k, f in enumerate(futures)}
    out: list[Outcome | None] = [None] * len(items)
    bar = progress_bar(len(items), desc, progress, unit=unit)
    try:
        for f in distributed.as_completed(futures):
            k = where[f.key]
            if f.status == "finished":
                out[k] = Outcome(k, value=f.result())
            else:
                exc = f.exception()
                out[k] = Outcome(k, error=_one_line(exc), exception=exc)
            bar.update(1)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        bar.close()
    return out  # type: ignore[return-value]


def _one_line(exc: BaseException | None) -> str:
    """``"Type: message"`` on one line (Dask's long KilledWorker text shortened)."""
    name = type(exc).__name__ if exc is not None else "Error"
    if name == "KilledWorker":
        return f"{name}: its worker process died on every try"
    text = " ".join(str(exc).split()) if exc is not None else ""
    return f"{name}: {text}" if text else name


# ----------------------------------------------------------------------------- evaluate
_THREADS_SET = False


def _pair_on_worker(task):
    """:func:`comir.evaluate.run.register_pair` on a worker, library threads set to 1 once
    per worker process (as in the process pool: parallel over pairs, repeatable ``mi``)."""
    global _THREADS_SET
    from comir.evaluate.run import _init_worker, register_pair

    if not _THREADS_SET:
        _init_worker(1)
        _THREADS_SET = True
    return register_pair(task)


def register_tasks(tasks: Sequence, scheduler: Any, progress: bool) -> list:
    """Every :class:`~comir.evaluate.run.PairTask` as one future on ``scheduler``.

    Returns
    -------
    list of PairResult
        In task order; an item that failed twice is a failed pair (``failed: worker: …``,
        one warning naming it). A :class:`ComirError` (a bad option) stops the evaluation.
    """
    from comir.evaluate.run import PairResult

    check_scheduler(scheduler)
    if not tasks:
        return []
    with open_client(scheduler) as client:
        outcomes = map_items(client, _pair_on_worker, tasks, progress, "register", "pair")
    results = []
    for task, o in zip(tasks, outcomes):
        if isinstance(o.exception, ComirError):
            raise o.exception
        if o.error is None:
            results.append(o.value)
            continue
        where = task.moving or task.fixed or f"pair {task.index}"
        warn(f"pair {task.index} ({where}) failed on a Dask worker after a retry: {o.error}")
        results.append(PairResult(task.index, None, math.nan, 0.0, f"failed: worker: {o.error}"))
    return results


# ----------------------------------------------------------------------------- embed
#: Models loaded by this worker process, by (run, device, precision, compile).
_MODELS: dict[tuple, Any] = {}


@dataclass(frozen=True)
class EmbedJob:
    """One input file for a worker: the model ``key`` to load it by (``None``: the model is
    passed along), paths and :func:`comir.embed.embed_files` settings."""

    model_key: tuple | None
    path: str
    out: str
    modality: str
    fmt: str
    tile: int | None
    overlap: int | None
    max_pixels: int | None


def _worker_model(job: EmbedJob, model):
    if job.model_key is None:
        return model
    model = _MODELS.get(job.model_key)
    if model is None:
        from comir.embed import load_model

        run, device, precision, compile_, runtime = job.model_key
        model = load_model(run, device=device, precision=precision, runtime=runtime)
        model.compile = compile_
        _MODELS[job.model_key] = model
    return model


def _embed_on_worker(job: EmbedJob, model=None) -> str:
    """Embed one file on a worker (the output appears atomically); returns its path."""
    from comir.embed import _embed_file

    model = _worker_model(job, model)
    args = (job.modality, Path(job.out), job.fmt, job.tile, job.overlap, job.max_pixels)
    _embed_file(model, Path(job.path), *args, False)
    return job.out


def _model_key(model) -> tuple | None:
    """How a worker loads ``model`` itself: its run folder, device, precision, compile flag
    and runtime; ``None`` when the model has no run folder (it is then sent to every
    worker, pickled: an ONNX session travels as its exported graph, :mod:`comir.ort`)."""
    from comir.embed import _resolve_run

    name = getattr(model, "name", None)
    try:
        run = _resolve_run(name) if name else None
    except ComirError:
        run = None
    if run is None or not (Path(run) / "config.json").is_file():
        return None
    device = str(getattr(model, "device", "cpu"))
    precision = getattr(model, "precision", "fp32")
    runtime = getattr(model, "runtime", "torch")
    return (str(name), device, precision, bool(model.compile), runtime)


def embed_paths(model, jobs: list[tuple[Path, Path]], settings: dict, scheduler: Any,
                progress: bool) -> None:  # fmt: skip
    """Embed ``(input, output)`` files on ``scheduler``, one future per file.

    Each worker loads the model once (by its run folder; a model without one is scattered
    to the workers). Raises :class:`ComirError` naming the failed files after the others
    finished (one warning each); their outputs are absent, so a rerun redoes just them.
    """
    check_scheduler(scheduler)
    if not jobs:
        return
    key = _model_key(model)
    with open_client(scheduler) as client:
        extra = () if key is not None else (client.scatter(model, broadcast=True),)
        items = [EmbedJob(key, str(p), str(o), **settings) for p, o in jobs]
        outcomes = map_items(client, _embed_on_worker, items, progress, "embed", "img", extra)
    failed = [(jobs[o.index][0], o) for o in outcomes if o.error is not None]
    for path, o in failed:
        if isinstance(o.exception, ComirError):
            warn(f"{path}: not embedded: {o.exception}")
        else:
            warn(f"{path}: embedding failed on a Dask worker after a retry: {o.error}")
    if failed:
        raise ComirError(
            f"{failed[0][0]}: {len(failed)} of {len(jobs)} image(s) not embedded (see the "
            "warnings); rerun the same command to redo only those"
        )
