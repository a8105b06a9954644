"""Register many pairs of files: what ``comir register-batch`` does.

:func:`register_pairs` runs :func:`comir.register.register_files` for every pair of a CSV
(``fixed,moving`` columns; optional ``name``, ``landmarks_fixed``, ``landmarks_moving``)
or a list of ``(fixed, moving)`` paths, each into ``out_dir/<name>/``, in this process, in
a spawn process pool or on a Dask cluster (:mod:`comir.scale`, docs/dask.md). It is
resumable: a pair's folder gets ``done.json`` last (atomically), and a rerun skips pairs
that have it and redoes the others from scratch. A pair that fails (registration failed,
unreadable image) is reported by one warning and in ``out_dir/summary.csv``; the other
pairs still run.

Examples
--------
>>> from comir.register import register_pairs
>>> rep = register_pairs("pairs.csv", "out", method="fft", workers=4)  # doctest: +SKIP
>>> rep.n_ok, rep.n_failed, rep.summary  # doctest: +SKIP
(12, 0, PosixPath('out/summary.csv'))
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from comir.errors import ComirError, warn
from comir.transform import functional as F

PathLike = str | os.PathLike
#: Marker written last into a finished pair's folder.
DONE = "done.json"
SUMMARY = "summary.csv"
COLUMNS = ("name", "fixed", "moving", "status", "angle_deg", "tx", "ty", "score", "seconds")
TRE_COLUMNS = ("tre_median_px", "tre_max_px")


@dataclass(frozen=True)
class BatchPair:
    """One pair: output sub-folder ``name``, absolute image paths, optional landmark CSVs
    and the CSV row number (1 = first data row; 0 for list input)."""

    name: str
    fixed: str
    moving: str
    landmarks: tuple[str, str] | None = None
    row: int = 0


@dataclass(frozen=True)
class BatchJob:
    """What a worker needs for one pair (picklable): ``model`` is a run folder (loaded
    once per worker process), a loaded model (in-process only) or None."""

    pair: BatchPair
    out: str
    method: str
    model: Any
    fixed_modality: str
    device: str
    options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


@dataclass
class BatchReport:
    """Outcome of :func:`register_pairs`: one summary row (dict) per pair, in input order."""

    rows: list[dict]
    summary: Path
    seconds: float

    def _count(self, prefix: str) -> int:
        return sum(str(r["status"]).startswith(prefix) for r in self.rows)

    @property
    def n_ok(self) -> int:
        return self._count("ok")

    @property
    def n_skipped(self) -> int:
        return self._count("skipped")

    @property
    def n_failed(self) -> int:
        return len(self.rows) - self.n_ok - self.n_skipped


# ----------------------------------------------------------------------------- pairs
def read_pairs(source: PathLike | Sequence[Sequence[PathLike]]) -> list[BatchPair]:
    """The pairs of a CSV (paths relative to its folder) or of ``(fixed, moving)`` paths.

    Raises
    ------
    ComirError
        A missing column, an empty row, a missing file (naming the row), an invalid or
        duplicate name.
    """
    if isinstance(source, str | os.PathLike):
        pairs = _csv_pairs(Path(source))
    else:
        pairs = [_list_pair(k, p) for k, p in enumerate(source)]
    _check_names(pairs, source)
    for p in pairs:
        where = f"{source}: row {p.row}" if p.row else f"pair {p.name!r}"
        for f in (p.fixed, p.moving, *(p.landmarks or ())):
            if not Path(f).exists():  # a file, or an OME-Zarr folder
                raise ComirError(f"{where}: file {f} not found; fix the path or remove the row")
    return pairs


def _list_pair(k: int, pair) -> BatchPair:
    if isinstance(pair, str | os.PathLike) or len(pair) != 2:
        raise ComirError(f"pairs[{k}]: give (fixed, moving) paths, got {pair!r}")
    fixed, moving = (str(Path(p).absolute()) for p in pair)
    return BatchPair(Path(moving).stem, fixed, moving)


def _csv_pairs(path: Path) -> list[BatchPair]:
    if not path.is_file():
        raise ComirError(f"{path}: pairs CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in reader.fieldnames or []]
        rows = list(reader)
    missing = [c for c in ("fixed", "moving") if c not in cols]
    if missing:
        raise ComirError(
            f"{path}: no column {', '.join(missing)}; the header needs fixed,moving "
            "(optional: name, landmarks_fixed, landmarks_moving)"
        )
    if ("landmarks_fixed" in cols) != ("landmarks_moving" in cols):
        raise ComirError(f"{path}: landmarks_fixed and landmarks_moving columns go together")
    base = path.parent
    return [_csv_pair(path, base, k, row) for k, row in enumerate(rows, 1)]


def _csv_pair(path: Path, base: Path, k: int, row: dict) -> BatchPair:
    row = {str(c).strip(): (v or "").strip() for c, v in row.items() if c is not None}

    def resolve(p: str) -> str:
        return str((base / p).absolute())

    if not row["fixed"] or not row["moving"]:
        raise ComirError(f"{path}: row {k}: fixed and moving must both be given")
    lm = (row.get("landmarks_fixed", ""), row.get("landmarks_moving", ""))
    if bool(lm[0]) != bool(lm[1]):
        raise ComirError(f"{path}: row {k}: give both landmarks_fixed and landmarks_moving")
    moving = resolve(row["moving"])
    name = row.get("name") or Path(moving).stem
    landmarks = (resolve(lm[0]), resolve(lm[1])) if lm[0] else None
    return BatchPair(name, resolve(row["fixed"]), moving, landmarks, k)


def _check_names(pairs: list[BatchPair], source) -> None:
    seen: dict[str, BatchPair] = {}
    for p in pairs:
        if p.name in ("", ".", "..", SUMMARY) or any(s in p.name for s in ("/", "\\")):
            raise ComirError(f"{source}: pair name {p.name!r} is not a plain folder name")
        if p.name in seen:
            raise ComirError(
                f"{source}: duplicate pair name {p.name!r} (rows {seen[p.name].row} and "
                f"{p.row}); add a name column with unique names"
            )
        seen[p.name] = p


# ----------------------------------------------------------------------------- one pair
#: Models loaded by this worker process, by (run, device).
_MODELS: dict[tuple[str, str], Any] = {}


def _job_model(job: BatchJob):
    if not isinstance(job.model, str | os.PathLike):
        return job.model
    key = (str(job.model), job.device)
    if key not in _MODELS:
        from comir.embed import load_model

        _MODELS[key] = load_model(job.model, device=job.device)
    return _MODELS[key]


def _row(pair: BatchPair, status: str, seconds: float, out=None) -> dict:
    row = dict(name=pair.name, fixed=pair.fixed, moving=pair.moving, status=status,
               angle_deg=None, tx=None, ty=None, score=None, seconds=round(seconds, 4))  # fmt: skip
    if out is not None and out.ok:
        from comir.register.files import global_part

        glob = global_part(out.transform)
        t = glob.translation_about(out.center)
        score = float(out.result.score)
        angle = float(np.degrees(F.matrix_angles(glob.matrix)))
        row.update(angle_deg=angle, tx=float(t[0]), ty=float(t[1]),
                   score=score if math.isfinite(score) else None)  # fmt: skip
        if "folded_fraction" in out.result.details:
            row["folded_fraction"] = out.result.details["folded_fraction"]
    if out is not None and out.landmarks is not None:
        s = out.landmarks.summary()
        row.update(tre_median_px=s["median_tre_px"], tre_max_px=s["max_tre_px"])
    return row


def register_job(job: BatchJob) -> dict:
    """Register one pair into ``out/<name>/`` (leftovers removed first); ``done.json`` is
    written last. Never raises for the pair's own problems: returns its summary row with
    ``status`` ``ok`` or ``failed: ...``."""
    from comir.io import write_text
    from comir.register.files import register_files

    pair, t0 = job.pair, time.perf_counter()
    folder = Path(job.out) / pair.name
    if folder.exists():
        shutil.rmtree(folder)
    try:
        out = register_files(
            pair.fixed, pair.moving, folder, method=job.method, model=_job_model(job),
            fixed_modality=job.fixed_modality, device=job.device, landmarks=pair.landmarks,
            **job.options,
        )  # fmt: skip
    except Exception as exc:  # an unreadable or unusable file fails this pair only
        text = " ".join(str(exc).split()) or type(exc).__name__
        return _row(pair, f"failed: {text}", time.perf_counter() - t0)
    if not out.ok:
        return _row(pair, out.result.status, time.perf_counter() - t0)
    row = _row(pair, "ok", time.perf_counter() - t0, out)
    done = {**row, "settings": job.settings}
    write_text(folder / DONE, json.dumps(done, indent=2) + "\n")
    return row


def _settings(method: str, model, fixed_modality: str, options: dict) -> dict:
    """What makes a stored result reusable by a rerun (JSON-normalised)."""
    if model is not None and not isinstance(model, str | os.PathLike):
        model = getattr(model, "name", None) or type(model).__name__
    raw = {"method": method, "model": None if model is None else str(model),
           "fixed_modality": fixed_modality, "options": options}  # fmt: skip
    return json.loads(json.dumps(raw, default=str))


def _done_row(pair: BatchPair, out_dir: Path, settings: dict) -> dict | None:
    """The stored row of a finished pair (status ``skipped``), or None.

    Raises
    ------
    ComirError
        The pair was finished with other settings (method, model, options).
    """
    path = out_dir / pair.name / DONE
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    stored = row.pop("settings", settings)
    if stored != settings:
        diff = ", ".join(f"{k}={stored.get(k)!r}" for k in settings if stored.get(k) != settings[k])
        raise ComirError(
            f"{path}: pair {pair.name!r} was registered with other settings ({diff}); "
            f"use another output folder or delete {path.parent}"
        )
    return {**row, "status": "skipped"}


# ----------------------------------------------------------------------------- execution
def _check_method(method: str, options: dict) -> None:
    """Unknown method / options fail every pair alike: refuse them before any runs."""
    from comir.register import _BACKENDS, available_methods

    if method not in available_methods():
        raise ComirError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    from comir.slide.register import SLIDE_OPTIONS

    allowed = [*list(inspect.signature(_BACKENDS[method].__wrapped__).parameters)[2:], "transform",
               "refine", *SLIDE_OPTIONS]  # fmt: skip
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ComirError(
            f"{method}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )


def _worker_model_spec(model, parallel: bool):
    """A run folder string for the workers to load; a loaded model only in-process."""
    if model is None or isinstance(model, str | os.PathLike) or not parallel:
        return str(model) if isinstance(model, os.PathLike) else model
    from comir.scale import _model_key

    key = _model_key(model)
    if key is None:
        raise ComirError(
            "a loaded model without a run folder runs only with workers=1; pass its run folder"
        )
    return key[0]


def _run_local(jobs: list[BatchJob], workers: int, progress: bool) -> list[dict]:
    from concurrent.futures import as_completed

    from comir.batch import progress_bar
    from comir.evaluate.run import _single_threaded_itk, registration_pool

    bar = progress_bar(len(jobs), "register", progress, unit="pair")
    rows: list[dict | None] = [None] * len(jobs)
    try:
        if workers == 1:
            with _single_threaded_itk():
                for k, job in enumerate(jobs):
                    rows[k] = register_job(job)
                    bar.update(1)
            return rows  # type: ignore[return-value]
        with registration_pool(workers) as pool:
            futures = {pool.submit(register_job, job): k for k, job in enumerate(jobs)}
            for f in as_completed(futures):
                k = futures[f]
                exc = f.exception()
                rows[k] = f.result() if exc is None else _row(
                    jobs[k].pair, f"failed: worker: {type(exc).__name__}: {exc}", 0.0
                )  # fmt: skip
                bar.update(1)
    finally:
        bar.close()
    return rows  # type: ignore[return-value]


_THREADS_SET = False


def _job_on_worker(job: BatchJob) -> dict:
    """:func:`register_job` on a Dask worker, library threads set to 1 once per process."""
    global _THREADS_SET
    if not _THREADS_SET:
        from comir.evaluate.run import _init_worker

        _init_worker(1)
        _THREADS_SET = True
    return register_job(job)


def _run_dask(jobs: list[BatchJob], scheduler, progress: bool) -> list[dict]:
    from comir.scale import map_items, open_client

    with open_client(scheduler) as client:
        outcomes = map_items(client, _job_on_worker, jobs, progress, "register", "pair")
    return [
        o.value if o.error is None else _row(job.pair, f"failed: worker: {o.error}", 0.0)
        for job, o in zip(jobs, outcomes, strict=True)
    ]


def write_summary(path: Path, rows: list[dict]) -> None:
    """``summary.csv`` (atomically): :data:`COLUMNS`, plus TRE columns when any row has
    them; empty cells for missing values."""
    from comir.io import write_text

    cols = list(COLUMNS) + (list(TRE_COLUMNS) if any("tre_median_px" in r for r in rows) else [])
    cols += ["folded_fraction"] if any("folded_fraction" in r for r in rows) else []
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows({c: ("" if r.get(c) is None else r[c]) for c in cols} for r in rows)
    write_text(path, buf.getvalue())


def _warn_failures(rows: list[dict]) -> None:
    """One warning line per failed pair, naming it (and its moving file)."""
    for r in rows:
        why = str(r["status"]).removeprefix("failed: ")
        if why != r["status"]:
            where = "" if r["moving"] in why else f" ({r['moving']})"
            warn(f"pair {r['name']} failed: {why}{where}")


def _job_device(spec, device: str, any_jobs: bool) -> str:
    """Workers that load the model themselves (``spec`` a run folder) use the device
    resolved here, so that every worker agrees."""
    if isinstance(spec, str) and any_jobs:
        from comir.runtime import resolve_device

        return str(resolve_device(device))
    return device


def _shard_table(table: list, shard) -> tuple[list, str]:
    """The pairs of ``shard`` (all without one) and the name of their summary file."""
    from comir.batch import parse_shard, shard_indices

    part = parse_shard(shard)
    table = [table[i] for i in shard_indices([p.name for p in table], part)]
    return table, SUMMARY if part is None else f"summary.shard-{part[0]}-of-{part[1]}.csv"


def register_pairs(
    pairs: PathLike | Sequence[Sequence[PathLike]],
    out_dir: PathLike,
    method: str = "fft",
    model=None,
    fixed_modality: str = "a",
    workers: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
    device: str = "auto",
    shard: str | Sequence[int] | None = None,
    **options,
) -> BatchReport:
    """Register every pair with :func:`comir.register.register_files` into
    ``out_dir/<name>/``, skipping pairs finished by an earlier run.

    Parameters
    ----------
    pairs : path or sequence of (fixed, moving)
        A CSV with columns ``fixed,moving`` (relative to the CSV's folder or absolute) and
        optional ``name`` (sub-folder; default the moving file's stem) and
        ``landmarks_fixed,landmarks_moving`` (passed as ``landmarks=``).
    out_dir : path
        Output folder; each pair's folder holds what ``register_files`` writes plus
        ``done.json``; ``summary.csv`` lists every pair.
    method, model, fixed_modality, device, **options
        As for :func:`~comir.register.register_files`. A model given by its run folder is
        loaded once per worker process; each worker embeds its own pairs.
    workers : int, optional
        1: in this process; N > 1: a spawn process pool of N; default
        :func:`comir.evaluate.run.default_workers`. Ignored with ``scheduler``.
    scheduler : str, Client or cluster, optional
        ``local[:N]`` or a Dask address: one future per pair (:mod:`comir.scale`).
    progress : bool
        Show a progress bar.
    shard : "I/N", optional
        Only the ``I``-th of ``N`` interleaved parts of the pairs sorted by name
        (:func:`comir.batch.shard_indices`); the summary is then ``summary.shard-I-of-N.csv``.

    Returns
    -------
    BatchReport
        One row per pair in input order, ``status`` ``ok``, ``skipped`` or ``failed: ...``.

    Raises
    ------
    ComirError
        Before anything runs: a bad CSV, missing files, duplicate names, unknown method or
        option, an invalid scheduler.
    """
    from comir.evaluate.run import default_workers
    from comir.scale import check_scheduler

    t0 = time.perf_counter()
    table, summary = _shard_table(read_pairs(pairs), shard)
    _check_method(method, options)
    if fixed_modality not in ("a", "b"):
        raise ComirError(f"fixed_modality must be 'a' or 'b', got {fixed_modality!r}")
    check_scheduler(scheduler)
    out = Path(out_dir)
    settings = _settings(method, model, fixed_modality, options)
    done = {p.name: _done_row(p, out, settings) for p in table}
    todo = [p for p in table if done[p.name] is None]
    n = max(1, min(int(workers or default_workers(len(todo))), max(len(todo), 1)))
    spec = _worker_model_spec(model, bool(todo) and (scheduler is not None or n > 1))
    device = _job_device(spec, device, bool(todo))
    jobs = [BatchJob(p, str(out), method, spec, fixed_modality, device, options, settings)
            for p in todo]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    if not jobs:
        fresh = []
    elif scheduler is not None:
        fresh = _run_dask(jobs, scheduler, progress)
    else:
        fresh = _run_local(jobs, n, progress)
    by_name = {r["name"]: r for r in fresh}
    rows = [done[p.name] or by_name[p.name] for p in table]
    _warn_failures(rows)
    write_summary(out / summary, rows)
    return BatchReport(rows, out / summary, time.perf_counter() - t0)
