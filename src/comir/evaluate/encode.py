"""CoMIRs of evaluation patches: a model's encoders without a second normalisation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from comir.batch import progress_bar
from comir.errors import ComirError, warn
from comir.evaluate.sets import read_patch

#: Status prefix of a pair whose image exists but cannot be read (a failure).
UNREADABLE = "unreadable"
#: Pixels per forward pass when embedding patches: the patches of all pairs with one
#: modality and size share a pass (measured on the demo's 96 px patches: 48 per pass
#: 1.4× faster than 16, 16 2.5× faster than 4; ~1.6 GB of activations per megapixel).
BATCH_PIXELS = 2**20


def _prep(norm: str, log: bool) -> str:
    return f"{norm}{' + log' if log else ''}"


def patch_encoder(model, eval_info: dict | None = None):
    """The model for evaluation patches: loaded, with its input normalisation switched off.

    Evaluation images already hold prepared values (:func:`make_eval`; public 8-bit sets
    are taken as such) and are read by :func:`read_patch` into [0, 1]; only the channel
    selection of the model's ``DataSpec`` still applies. ``model.embed(read_patch(p), m)``
    on the returned model gives the CoMIR of patch ``p``. Warns when ``eval_info`` (the
    set's ``eval_info.json``) records another normalisation than the model was trained on.

    Parameters
    ----------
    model : run dir, ``"sample:<name>"`` or ComirModel
    eval_info : dict, optional
    """
    import dataclasses

    if isinstance(model, str | os.PathLike):
        from comir.embed import load_model

        model = load_model(model)
    spec = getattr(model, "data", None)
    if not (dataclasses.is_dataclass(model) and dataclasses.is_dataclass(spec)):
        return model
    odd = []
    for m in ("a", "b") if eval_info is not None else ():
        want = (getattr(spec, f"norm_{m}"), bool(getattr(spec, f"log_{m}")))
        have = (eval_info.get(f"norm_{m}"), bool(eval_info.get(f"log_{m}", False)))
        if have[0] is not None and have != want:
            odd.append(f"{m.upper()} was prepared with {_prep(*have)}, the model was trained on "
                       f"{_prep(*want)}")  # fmt: skip
    if odd:
        warn(
            f"evaluation set modality {'; '.join(odd)}; remake the set with comir make-eval "
            "using the model's normalisation (--norm, --norm-b, --log-a, --log-b)"
        )
    spec = dataclasses.replace(spec, norm_a="none", norm_b="none", log_a=False, log_b=False)
    return dataclasses.replace(model, data=spec)


def _read_for_embedding(items: Sequence[tuple[str | None, str]]) -> tuple[dict, list]:
    """Images of ``(path, modality)`` items that exist and read, and per item a problem
    status or None."""
    images, problems = {}, []
    for k, (path, _) in enumerate(items):
        try:
            images[k] = None if path is None else read_patch(path)
            problems.append(None if path is not None else "absent")
        except (ComirError, OSError, ValueError):
            images[k] = None
            problems.append(f"{UNREADABLE}: {path}")
    return images, problems


def embed_items(model, items: Sequence[tuple[str | None, str]], cache: Path, progress: bool):
    """CoMIRs of images ``(path or None, modality)`` in batches of equal size, up to
    :data:`BATCH_PIXELS` pixels per forward pass.

    Returns
    -------
    paths : list of str or None
        A ``.npy`` file per item (None where the image is absent or unreadable).
    problems : list of str or None
        ``unreadable: <file>`` where reading failed.
    """
    images, problems = _read_for_embedding(items)
    groups: dict[tuple, list[int]] = {}
    for k, img in images.items():
        if img is not None:
            groups.setdefault((items[k][1], img.shape), []).append(k)
    _check_set(model, images, items)
    out: list[str | None] = [None] * len(items)
    chunks = []
    for (mod, shape), idx in groups.items():
        per_pass = max(1, BATCH_PIXELS // (shape[0] * shape[1]))
        chunks += [(mod, idx[s : s + per_pass]) for s in range(0, len(idx), per_pass)]
    bar = progress_bar(sum(map(len, groups.values())), "embed", progress, unit="img")
    for chunk, zs in _encode_chunks(model, chunks, images):
        for k, z in zip(chunk, zs, strict=True):
            out[k] = str(cache / f"{k}.npy")
            np.save(out[k], np.asarray(z, dtype=np.float32))
        bar.update(len(chunk))
    bar.close()
    return out, [p if p != "absent" else None for p in problems]


def _encode_chunks(model, chunks: list[tuple[str, list[int]]], images: dict):
    """``(indices, CoMIRs)`` per chunk ``(modality, indices)``, in chunk order.

    With several chunks they run as parallel streams of one torch thread each (torch
    releases the GIL inside its ops), not one stream with all threads: on 2 cores two
    streams embedded the demo's 96 patches faster than two intra-op threads, which scale
    by ~1.4× only (benchmarks/notes.md).
    """
    import torch

    threads = torch.get_num_threads()
    streams = max(1, min(len(chunks), threads))

    def run(chunk: tuple[str, list[int]]) -> tuple[list[int], list]:
        mod, idx = chunk
        return idx, model.embed_batch([images.pop(k) for k in idx], mod, check=False)

    if streams == 1:
        yield from map(run, chunks)
        return
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(max(1, threads // streams))
    try:
        with ThreadPoolExecutor(streams) as pool:
            yield from pool.map(run, chunks)
    finally:
        torch.set_num_threads(threads)


def _check_set(model, images: dict, items: Sequence[tuple[str | None, str]]) -> None:
    """One out-of-distribution check per modality over all its patches (a warning per
    patch would repeat the same news hundreds of times)."""
    from comir.input_stats import check_input

    stats = getattr(model, "input_stats", None)
    if not stats:
        return
    trained = model.config.get("data", {})  # the run's own normalisation, for the hint
    for mod in sorted({m for _, m in items}):
        prepared = [
            model.data.prepare(img, mod)
            for k, img in images.items()
            if img is not None and items[k][1] == mod
        ]
        pixels = [x.reshape(-1, 1, x.shape[-1]) for x in prepared]
        if pixels:
            first = next(p for p, m in items if m == mod and p is not None)
            where = f"{len(pixels)} modality {mod.upper()} patches such as {first}"
            check_input(np.concatenate(pixels), stats, mod, where, trained.get(f"norm_{mod}", ""))
