"""Finding the aligned pairs of a training set on disk (:func:`find_pairs`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from comir import io
from comir.errors import ComirError, warn

#: Ways the two modalities of an aligned pair can be stored (see :func:`find_pairs`).
LAYOUTS = ("folders", "suffix", "channels")
#: Names of unmatched files listed in a warning before it says "and N more".
_MAX_LISTED = 8


@dataclass
class PairSpec:
    """One aligned pair on disk; for the ``channels`` layout ``path_a == path_b``."""

    name: str
    path_a: Path
    path_b: Path


def _listing(paths: Sequence[str]) -> str:
    names = sorted(paths)
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _image_files(folder: Path, what: str) -> list[Path]:
    """Image files directly in ``folder`` (hidden and partial files skipped)."""
    if not folder.exists():
        raise ComirError(f"{folder}: {what} folder not found; check the path and --layout")
    if not folder.is_dir():
        raise ComirError(f"{folder}: expected a folder of images, got a file")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in io.IMAGE_SUFFIXES
    )
    if not files:
        raise ComirError(
            f"{folder}: no image files ({', '.join(io.IMAGE_SUFFIXES)}) in this {what} folder"
        )
    return files


def _by_key(
    files: Sequence[Path], key: Callable[[Path], str | None], where: Path
) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        k = key(p)
        if k is None:
            continue
        if k in out:
            raise ComirError(
                f"{where}: {out[k].name} and {p.name} both match {k!r}; keep one file per image"
            )
        out[k] = p
    return out


def _match(
    found_a: dict[str, Path], found_b: dict[str, Path], where: Path, hint: str
) -> list[PairSpec]:
    common = sorted(set(found_a) & set(found_b))
    only_a = [found_a[k].name for k in set(found_a) - set(found_b)]
    only_b = [found_b[k].name for k in set(found_b) - set(found_a)]
    parts = []
    if only_a:
        parts.append(f"{len(only_a)} without a B partner: {_listing(only_a)}")
    if only_b:
        parts.append(f"{len(only_b)} without an A partner: {_listing(only_b)}")
    if not common:
        raise ComirError(
            f"{where}: no aligned pairs found ({hint}; "
            + "; ".join(parts or ["no files"])
            + "); check --layout, --a and --b"
        )
    if parts:
        warn(f"{where}: skipping unmatched files, " + "; ".join(parts))
    return [PairSpec(k, found_a[k], found_b[k]) for k in common]


def _suffix_key(suffix: str, other: str) -> Callable[[Path], str | None]:
    """Image id of ``<id><suffix>.<ext>`` files; the longer of the two suffixes is tested
    first so that e.g. ``_BF`` and ``_F`` stay distinct."""

    def key(p: Path) -> str | None:
        stem = p.stem
        if len(other) > len(suffix) and stem.endswith(other):
            return None
        return stem[: -len(suffix)] if stem.endswith(suffix) else None

    return key


def find_pairs(root: str | os.PathLike, layout: str, a: str = "A", b: str = "B") -> list[PairSpec]:
    """Find the aligned image pairs under ``root``.

    Parameters
    ----------
    root : str or PathLike
        Data folder.
    layout : {"folders", "suffix", "channels"}
        ``folders``: ``root/<a>/<stem>.<ext>`` pairs with ``root/<b>/<stem>.<ext>`` (same
        stem, any image extension). ``suffix``: ``root/<id><a>.<ext>`` pairs with
        ``root/<id><b>.<ext>`` (e.g. ``a="_SHG"``, ``b="_BF"``). ``channels``: every image
        in ``root`` is multichannel and ``a``/``b`` are channel specs (``"0:3"``, ``"3"``,
        ``"0,2"``); they are checked against the files by :func:`~comir.data.load_pairs`.
    a, b : str
        Folder names, file-name suffixes or channel specs, depending on ``layout``.

    Returns
    -------
    list of PairSpec
        Sorted by name. Files without a partner are skipped with a one-line
        :class:`~comir.errors.ComirWarning` naming them.

    Raises
    ------
    ComirError
        Unknown layout, missing or empty folder, or no pair at all.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ComirError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if not root.exists():
        raise ComirError(f"{root}: data folder not found; check the path")
    if not root.is_dir():
        raise ComirError(f"{root}: expected a data folder, got a file")
    if layout == "folders":
        if a == b:
            raise ComirError(f"{root}: modality folders --a and --b are both {a!r}; name two")
        files_a = _image_files(root / a, "modality A")
        files_b = _image_files(root / b, "modality B")
        return _match(
            _by_key(files_a, lambda p: p.stem, root / a),
            _by_key(files_b, lambda p: p.stem, root / b),
            root,
            f"no file stem in {a}/ has a partner in {b}/",
        )
    if layout == "suffix":
        if not a or not b or a == b:
            raise ComirError(
                f"{root}: suffix layout needs two different file-name suffixes, e.g. "
                "--a _SHG --b _BF"
            )
        files = _image_files(root, "data")
        return _match(
            _by_key(files, _suffix_key(a, b), root),
            _by_key(files, _suffix_key(b, a), root),
            root,
            f"no '<id>{a}' file has an '<id>{b}' partner",
        )
    files = _image_files(root, "data")
    return [PairSpec(p.stem, p, p) for p in files]
