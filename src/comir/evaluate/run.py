"""Running an evaluation: register every pair of a set, in a process pool, optionally
through a model's encoders first, optionally as one shard of several (:mod:`.shards`)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from comir.batch import parse_shard, progress_bar, shard_indices
from comir.errors import ComirError
from comir.evaluate.encode import UNREADABLE, embed_items, patch_encoder
from comir.evaluate.protocol import DIRECTIONS
from comir.evaluate.sets import EvalLevel, find_levels, read_level, read_patch

#: Status prefix of a pair whose image is absent (a failure; see also ``UNREADABLE``).
MISSING = "missing"


@dataclass(frozen=True)
class PairResult:
    """Outcome of one pair: recovered moving → fixed ``matrix`` (3×3 nested list, None
    for a failure; the global part of a deformable result), back-end ``score``,
    ``seconds`` and ``status`` (``"ok"``, ``"failed: …"``, ``"missing: <file>"``,
    ``"unreadable: <file>"``); on deformable sets ``landmarks``, the pair's moving
    landmarks mapped by the whole recovered transform, and the ``folded`` fraction of a
    recovered field."""

    index: int
    matrix: list[list[float]] | None
    score: float
    seconds: float
    status: str
    landmarks: list[list[float]] | None = None
    folded: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN score → None; landmarks and folded only when present)."""
        score = self.score if math.isfinite(self.score) else None
        out = {"index": self.index, "matrix": self.matrix, "score": score,
               "seconds": self.seconds, "status": self.status}  # fmt: skip
        extra = {"landmarks": self.landmarks, "folded": self.folded}
        return {**out, **{k: v for k, v in extra.items() if v is not None}}

    @classmethod
    def from_dict(cls, d: dict) -> PairResult:
        score = d.get("score")
        return cls(int(d["index"]), d.get("matrix"), math.nan if score is None else float(score),
                   float(d.get("seconds", 0.0)), str(d.get("status", "failed")),
                   d.get("landmarks"), d.get("folded"))  # fmt: skip

    @property
    def missing(self) -> bool:
        """True when an image of the pair was absent or unreadable."""
        return self.status.startswith((f"{MISSING}:", f"{UNREADABLE}:"))


@dataclass(frozen=True)
class PairTask:
    """What a worker needs for one pair (picklable). ``problem``: a ``missing: …``
    status when an image is absent, so the pair fails without being read."""

    index: int
    fixed: str | None
    moving: str | None
    problem: str | None
    method: str | Callable
    options: dict
    info: dict
    points: list[list[float]] | None = None


def _init_worker(threads: int) -> None:
    try:
        from comir.register import set_library_threads

        set_library_threads(threads)
    except ImportError:  # pragma: no cover - register back-end missing
        pass


@contextmanager
def _single_threaded_itk():
    """SimpleITK's default thread count set to 1 for the block, as in pool workers.

    ITK's multi-threaded metric sums differ in the last digits from run to run; one
    thread per registration (parallel over pairs instead) makes ``mi`` repeatable and its
    results independent of ``workers``.
    """
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - a dependency
        yield
        return
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _read_pair(task: PairTask) -> tuple[np.ndarray, np.ndarray] | str:
    """The two images of a task, or the ``unreadable: <file>`` status."""
    images = []
    for path in (task.fixed, task.moving):
        try:
            images.append(read_patch(path))
        except (ComirError, OSError, ValueError):
            return f"{UNREADABLE}: {path}"
    return images[0], images[1]


def register_pair(task: PairTask) -> PairResult:
    """Register one pair; a back-end error fails the pair, a :class:`ComirError` (a bad
    option) stops the evaluation."""
    t0 = time.perf_counter()
    if task.problem is not None:
        return PairResult(task.index, None, math.nan, 0.0, task.problem)
    images = _read_pair(task)
    if isinstance(images, str):
        return PairResult(task.index, None, math.nan, time.perf_counter() - t0, images)
    try:
        if callable(task.method):
            res = task.method(*images, info=task.info, **task.options)
        else:
            from comir.register import register

            res = register(*images, method=task.method, **task.options)
    except ComirError:
        raise
    except Exception as exc:  # one pair's failure must not stop the evaluation
        why = f"failed: {type(exc).__name__}: {exc}"
        return PairResult(task.index, None, math.nan, time.perf_counter() - t0, why)
    status = str(getattr(res, "status", "ok"))
    ok = bool(getattr(res, "ok", status == "ok"))
    seconds = float(getattr(res, "seconds", time.perf_counter() - t0))
    score = float(getattr(res, "score", math.nan))
    if not ok or res.transform is None:
        return PairResult(task.index, None, score, seconds, status if status != "ok" else "failed")
    return _success(task, res, score, seconds, status)


def _success(task: PairTask, res, score: float, seconds: float, status: str) -> PairResult:
    from comir.register.files import global_part

    glob = global_part(res.transform)
    matrix = None if glob is None else np.asarray(glob.matrix, dtype=float).tolist()
    points = None
    if task.points is not None:
        warped = res.transform.apply(np.asarray(task.points, dtype=float))
        points = np.where(np.isfinite(warped), warped, np.nan).tolist()
    folded = getattr(res, "details", {}).get("folded_fraction")
    return PairResult(task.index, matrix, score, seconds, status, points,
                      None if folded is None else float(folded))  # fmt: skip


#: Pairs per pool worker below which the default stays in this process: a spawned worker
#: takes about 1.5 s to import its libraries, more than 64 typical pairs cost (measured on
#: the demo's 48-pair set, 2 cores: 37 s in-process vs 43 s with 2 workers).
PAIRS_PER_WORKER = 64


def default_workers(n_pairs: int) -> int:
    """``min(cpu, 4, ceil(n_pairs / PAIRS_PER_WORKER))`` registration processes."""
    return max(1, min(os.cpu_count() or 1, 4, -(-n_pairs // PAIRS_PER_WORKER)))


def registration_pool(workers: int):
    """A spawn process pool of ``workers`` registration processes (one library thread each)
    that several :func:`evaluate` calls can share (``pool=``), paying the start-up once.

    Use it as a context manager; scripts need the usual ``if __name__ == "__main__":``.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    return ProcessPoolExecutor(int(workers), ctx, initializer=_init_worker, initargs=(1,))


def run_tasks(
    tasks: Sequence[PairTask], workers: int | None, progress: bool, pool=None, scheduler=None
) -> list[PairResult]:
    """:func:`register_pair` over ``tasks``: on a Dask ``scheduler`` (:mod:`comir.scale`), in
    ``pool`` (an executor) when given, else in a spawn process pool of its own when
    workers > 1; results sorted by index."""
    if scheduler is not None:
        from comir.scale import register_tasks

        return sorted(register_tasks(tasks, scheduler, progress), key=lambda r: r.index)
    if workers is None:
        workers = default_workers(len(tasks))
    workers = max(1, min(int(workers), len(tasks)))
    bar = progress_bar(len(tasks), "register", progress, unit="pair")
    if pool is None and workers == 1:
        with _single_threaded_itk():
            results = []
            for t in tasks:
                results.append(register_pair(t))
                bar.update(1)
    elif pool is None:
        with registration_pool(workers) as own:
            results = _in_pool(own, tasks, bar, shutdown=True)
    else:
        results = _in_pool(pool, tasks, bar, shutdown=False)
    bar.close()
    return sorted(results, key=lambda r: r.index)


def _in_pool(pool, tasks: Sequence[PairTask], bar, shutdown: bool) -> list[PairResult]:
    from concurrent.futures import as_completed

    futures = [pool.submit(register_pair, t) for t in tasks]
    results = []
    try:
        for f in as_completed(futures):
            results.append(f.result())
            bar.update(1)
    except BaseException:
        for f in futures:
            f.cancel()
        if shutdown:
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    return results


# ----------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """One pair of a set for a direction: its index in (level, CSV) order, level label,
    name, image paths (None: absent; ``problem`` then says which) and CSV row."""

    index: int
    label: str
    name: str
    fixed: str | None
    moving: str | None
    problem: str | None
    info: dict
    points: list[list[float]] | None = None


def pair_table(levels: Sequence[EvalLevel], direction: str) -> list[Pair]:
    """Every pair of the set in (level, CSV) order; ``b2a``: moving = ``B/<id>_T``,
    fixed = ``A/<id>_R``."""
    mov, fix = direction[0].upper(), direction[2].upper()
    out: list[Pair] = []
    for lv in levels:
        for name, row in zip(lv.names, lv.rows, strict=True):
            f, m = lv.image(fix, name, "R"), lv.image(mov, name, "T")
            absent = [lv.expected(fix, name, "R")] if f is None else []
            absent += [lv.expected(mov, name, "T")] if m is None else []
            problem = f"{MISSING}: {absent[0]}" if absent else None
            fs, ms = (None if p is None else str(p) for p in (f, m))
            pts = None if lv.landmarks is None else lv.landmarks.get(name)
            pts = None if pts is None else pts[0].tolist()
            out.append(Pair(len(out), lv.label, name, fs, ms, problem, dict(row), pts))
    return out


def _task(pair: Pair, fixed, moving, problem, method, options: dict) -> PairTask:
    return PairTask(pair.index, fixed, moving, problem, method, options, pair.info, pair.points)


def _embedded_tasks(pairs, model, eval_dir, direction, cache: Path, progress, method, options):
    """Tasks registering the pairs' CoMIRs; returns ``(tasks, embed_seconds)``."""
    t0 = time.perf_counter()
    info_path = Path(eval_dir) / "eval_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    items = [(p.fixed, direction[2]) for p in pairs] + [(p.moving, direction[0]) for p in pairs]
    paths, problems = embed_items(patch_encoder(model, info), items, cache, progress)
    n = len(pairs)
    tasks = [
        _task(
            p, paths[k], paths[n + k], p.problem or problems[k] or problems[n + k], method, options
        )  # fmt: skip
        for k, p in enumerate(pairs)
    ]
    return tasks, time.perf_counter() - t0


def compute_pairs(pairs: Sequence[Pair], method, options: dict, model, eval_dir, direction: str,
                  out: Path, workers, progress: bool, pool=None, scheduler=None):  # fmt: skip
    """Register ``pairs`` (through the model's CoMIRs when given).

    Returns
    -------
    results : list of PairResult
        Sorted by index.
    embed_seconds : float
    """
    with tempfile.TemporaryDirectory(prefix=".comirs-", dir=out) as tmp:
        if model is None:
            tasks = [_task(p, p.fixed, p.moving, p.problem, method, options) for p in pairs]
            embed_seconds = 0.0
        else:
            tasks, embed_seconds = _embedded_tasks(
                pairs, model, eval_dir, direction, Path(tmp), progress, method, options
            )
        return run_tasks(tasks, workers, progress, pool, scheduler), embed_seconds


# ----------------------------------------------------------------------------- evaluate
def _model_name(model) -> str | None:
    if model is None:
        return None
    if isinstance(model, str | os.PathLike):
        return str(model)
    return str(getattr(model, "name", None) or getattr(model, "run", None) or type(model).__name__)


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


def _header(eval_dir, name: str, model, direction: str, options: dict, n_pairs: int) -> dict:
    """The settings that identify a run (shards of one run share them)."""
    return {
        "eval_dir": str(eval_dir),
        "method": name,
        "model": _model_name(model),
        "direction": direction,
        "method_options": {k: _jsonable(v) for k, v in options.items()},
        "n_pairs": n_pairs,
    }


def _method_name(method) -> str:
    """Name of a back-end (validated) or of a callable."""
    if callable(method):
        return getattr(method, "__name__", type(method).__name__)
    from comir.register import available_methods

    known = list(available_methods())
    if method not in known:
        raise ComirError(f"unknown method {method!r}; available: {', '.join(known)}")
    return method


def _results_folder(eval_dir, out, name: str, model, direction: str) -> Path:
    """``out`` (created), default ``eval_dir/results/<method>[_comir]_<direction>``."""
    if direction not in DIRECTIONS:
        raise ComirError(
            f"--direction {direction!r} is invalid; use one of {', '.join(DIRECTIONS)}"
        )
    tag = f"{name}{'_comir' if model is not None else ''}_{direction}"
    out = Path(eval_dir) / "results" / tag if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def evaluate(
    eval_dir: str | os.PathLike,
    method: str | Callable = "fft",
    model=None,
    direction: str = "b2a",
    out: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    shard: tuple[int, int] | str | None = None,
    pool=None,
    scheduler=None,
    **method_options,
) -> dict:
    """Register every pair of an evaluation set and score it by the public protocol.

    Parameters
    ----------
    eval_dir : path
        A set from :func:`make_eval` or a released MultiRegEval set: a folder with
        ``patch_tlevel*/`` sub-folders, or one level folder (``A/test``, ``B/test``,
        ``info_test.csv``); ``.png`` or ``.tif`` images. A pair whose image is absent or
        unreadable counts as a failure (one warning; ``n_missing`` in the summary).
    method : str or callable
        A :func:`comir.register.register` back-end (``fft``, ``sift``, ``mi``, ``elastix``)
        or ``f(fixed, moving, info=row, **options) -> RegistrationResult`` (``row`` is the
        pair's CSV row; for custom back-ends and test oracles; must be picklable).
    model : run dir, ``"sample:<name>"`` or ComirModel, optional
        Register CoMIRs instead of raw images: every patch goes through the encoder of its
        own modality first (in this process, batched by size).
    direction : {"b2a", "a2b", "a2a", "b2b"}
        ``b2a``: moving = ``B/test/<id>_T``, fixed = ``A/test/<id>_R``.
    out : path, optional
        Results folder (default ``eval_dir/results/<method>[_comir]_<direction>``).
    workers : int, optional
        Registration processes (default :func:`default_workers`: one per 64 pairs, at most
        ``min(cpu, 4)``; 1 runs in this process). The pool
        uses the ``spawn`` start method, so a script calling this with workers > 1 needs the
        usual ``if __name__ == "__main__":`` guard.
    pool : concurrent.futures.Executor, optional
        Register in this pool (e.g. :func:`registration_pool`, shared by several
        evaluations so that its processes start once) instead of ``workers``.
    scheduler : ``"local[:N]"``, a Dask address, Client or cluster, optional
        Register one pair per Dask future instead (:mod:`comir.scale`, docs/dask.md;
        ``workers``/``pool`` are then unused); a pair failing twice on the cluster is a
        failed pair. CoMIRs (``model``) are still computed in this process.
    shard : (I, N) or "I/N", optional
        Register only the ``I``-th of ``N`` interleaved parts of the pairs sorted by
        (level, Filename) (:func:`comir.batch.shard_indices`) into
        ``out/shards/shard-I-of-N.json``; a shard whose file already exists with the same
        settings is not recomputed (resume). When all ``N`` shard files are present they
        are merged (:func:`merge_shards`) into the outputs of an unsharded run.
    **method_options
        Passed to the back-end.

    Returns
    -------
    dict
        The summary also written to ``out/summary.json``; for a shard whose siblings are
        not finished yet, ``{"shard", "n_pairs", "shard_file", "complete": False, ...}``.
    """
    from comir.evaluate.score import finish
    from comir.evaluate.shards import run_shard

    t_start = time.perf_counter()
    name = _method_name(method)
    levels = [read_level(p) for p in find_levels(eval_dir)]
    out = _results_folder(eval_dir, out, name, model, direction)
    pairs = pair_table(levels, direction)
    header = _header(eval_dir, name, model, direction, method_options, len(pairs))
    shard = parse_shard(shard)
    own = [pairs[i] for i in shard_indices([(p.label, p.name) for p in pairs], shard)]

    args = (method, method_options, model, eval_dir, direction, out, workers, progress)
    compute = partial(compute_pairs, own, *args, pool=pool, scheduler=scheduler)

    if shard is None:
        results, embed_seconds = compute()
        wall = time.perf_counter() - t_start
        return finish(out, levels, results, header, embed_seconds, wall)
    return run_shard(out, shard, header, own, compute, t_start)
