"""Sharded evaluation: one JSON file of per-pair results per shard, resumable, merged into
the outputs of an unsharded run once every shard is finished."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from comir.errors import ComirError
from comir.evaluate.run import Pair, PairResult
from comir.evaluate.score import finish
from comir.evaluate.sets import find_levels, read_level
from comir.io import write_text

#: ``format`` value of the per-shard result files (``results``: list of PairResult dicts).
SHARD_FORMAT = "comir-evaluate-shard/2"
_SHARD_NAME = re.compile(r"^shard-(\d+)-of-(\d+)\.json$")
_SETTINGS = ("eval_dir", "method", "model", "direction", "method_options", "n_pairs")


def shard_path(out: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """``out/shards/shard-I-of-N.json``."""
    return Path(out) / "shards" / f"shard-{shard[0]}-of-{shard[1]}.json"


def read_shard(path: Path) -> dict | None:
    """A finished shard file, or ``None`` (absent; unreadable or older-format files count
    as absent, so they are recomputed)."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("format") == SHARD_FORMAT else None


def _same_settings(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in _SETTINGS)


def shard_status(res_dir: str | os.PathLike, n_shards: int) -> dict:
    """Which of ``n_shards`` shard files in ``res_dir/shards`` are finished.

    Returns
    -------
    dict
        ``{"done": [I, ...], "missing": [I, ...], "complete": bool}``.
    """
    done = [i for i in range(n_shards) if read_shard(shard_path(res_dir, (i, n_shards)))]
    missing = sorted(set(range(n_shards)) - set(done))
    return {"done": done, "missing": missing, "complete": not missing}


def run_shard(out: Path, shard: tuple[int, int], header: dict, own: Sequence[Pair],
              compute: Callable, t_start: float) -> dict:  # fmt: skip
    """Compute shard ``(I, N)`` unless its file already holds these settings (resume),
    then merge when every shard is finished.

    ``compute()`` returns ``(results, embed_seconds)`` for the pairs ``own``.
    """
    path = shard_path(out, shard)
    record = read_shard(path)
    if record is None or not _same_settings(record, header):
        results, embed_seconds = compute()
        record = {
            "format": SHARD_FORMAT,
            **header,
            "shard": list(shard),
            "keys": [[p.label, p.name] for p in own],
            "results": [r.to_dict() for r in results],
            "embed_seconds": embed_seconds,
            "wall_seconds": time.perf_counter() - t_start,
        }
        write_text(path, json.dumps(record) + "\n")
    status = shard_status(out, shard[1])
    if status["complete"]:
        return merge_shards(out)
    return {
        **header,
        "shard": list(shard),
        "shard_file": str(path),
        "n_shard_pairs": len(own),
        "complete": False,
        "missing_shards": status["missing"],
    }


def _shard_count(res_dir: Path) -> int:
    folder = res_dir / "shards"
    found = sorted(folder.glob("shard-*-of-*.json")) if folder.is_dir() else []
    counts = {int(m.group(2)) for m in (_SHARD_NAME.match(p.name) for p in found) if m}
    if not counts:
        raise ComirError(
            f"{res_dir}: no shards/shard-I-of-N.json files; run comir evaluate --shard I/N first"
        )
    if len(counts) > 1:
        raise ComirError(
            f"{folder}: shard files of different shard counts {sorted(counts)}; remove the "
            "stale ones"
        )
    return counts.pop()


def _check_records(res_dir: Path, records: list[dict], keys: list, results: list) -> None:
    """Same settings everywhere, and every pair of the set exactly once, as computed."""
    head = records[0]
    if not all(_same_settings(r, head) for r in records[1:]):
        raise ComirError(
            f"{res_dir / 'shards'}: shards were run with different settings (method, model, "
            "direction, options or evaluation set); rerun the odd ones"
        )
    if len(keys) != head["n_pairs"] or [r.index for r in results] != list(range(len(keys))):
        raise ComirError(
            f"{res_dir}: the shards do not cover the {len(keys)} pairs of {head['eval_dir']} "
            "exactly once (the set changed?); rerun all shards"
        )
    for r in records:
        own = [int(x["index"]) for x in r["results"]]
        if [keys[i] for i in own] != r["keys"]:
            raise ComirError(
                f"{res_dir}: shard {r['shard']} was computed on other pairs (the evaluation set "
                "changed); rerun it"
            )


def merge_shards(res_dir: str | os.PathLike) -> dict:
    """Combine the shard files of ``res_dir/shards`` into ``results.csv``, ``summary.json``
    and the success plot, exactly as an unsharded :func:`evaluate` would write them.

    The summary's ``wall_seconds`` is the sum of the shards' wall times, and
    ``shard_wall_seconds`` lists them (shard 0 first).

    Raises
    ------
    ComirError
        No shard files, shards of different runs or shard counts, missing shards, or an
        evaluation set that changed since the shards were computed.
    """
    res_dir = Path(res_dir)
    n_shards = _shard_count(res_dir)
    status = shard_status(res_dir, n_shards)
    if not status["complete"]:
        raise ComirError(
            f"{res_dir}: shard(s) {', '.join(map(str, status['missing']))} of {n_shards} are "
            "not finished; run them with --shard I/N before merging"
        )
    records = [read_shard(shard_path(res_dir, (i, n_shards))) for i in range(n_shards)]
    head = records[0]
    levels = [read_level(p) for p in find_levels(head["eval_dir"])]
    keys = [[lv.label, name] for lv in levels for name in lv.names]
    results = sorted(
        (PairResult.from_dict(x) for r in records for x in r["results"]), key=lambda r: r.index
    )
    _check_records(res_dir, records, keys, results)
    header = {k: head[k] for k in _SETTINGS}
    embed = sum(float(r.get("embed_seconds", 0.0)) for r in records)
    walls = [float(r.get("wall_seconds", 0.0)) for r in records]
    return finish(res_dir, levels, results, header, embed, sum(walls), shard_wall_seconds=walls)
