"""Reading evaluation sets in the MultiRegEval layout (ours or a released one, unchanged).

``<set>/patch_tlevel<k>/A/test/<id>_R.<ext>``, ``<id>_T.<ext>``, the same under ``B/test/``,
and ``patch_tlevel<k>/info_test.csv`` indexed by ``Filename`` (extra, empty columns such as
``Method`` or ``Error`` may be present); ``.png`` or ``.tif`` images. A level folder may
also be given on its own.
"""

from __future__ import annotations

import csv
import io as _io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.evaluate.protocol import REF_COLUMNS, TRANS_COLUMNS, corner_widths
from comir.io import IMAGE_SUFFIXES, read_image, to_unit_float, write_text


@dataclass
class EvalLevel:
    """One level folder of an evaluation set.

    Attributes
    ----------
    label : str
        ``"<k>"`` of ``patch_tlevel<k>`` (else the folder name).
    folder : Path
    names : list of str
        ``Filename`` of each pair, in CSV order.
    ref, trans : ndarray, shape (N, 4, 2)
        The ``*_Ref`` and ``*_Trans`` corners.
    rows : list of dict
        The CSV rows as read.
    files : dict
        ``"A"``/``"B"`` → image stem (``<id>_R``) → path, for the images present.
    landmarks : dict or None
        ``Filename`` → ``(moving (N, 2), fixed (N, 2))`` points of a deformable set
        (``landmarks_test.csv``, :mod:`comir.evaluate.deform`); None for rigid sets.
    """

    label: str
    folder: Path
    names: list[str]
    ref: np.ndarray
    trans: np.ndarray
    rows: list[dict] = field(repr=False)
    files: dict[str, dict[str, Path]] = field(repr=False)
    landmarks: dict | None = field(default=None, repr=False)

    @property
    def widths(self) -> np.ndarray:
        """Patch width of each pair, ``(N,)``, from its reference corners."""
        return corner_widths(self.ref)

    def image(self, modality: str, name: str, kind: str) -> Path | None:
        """Path of ``<modality>/test/<name>_<kind>.*``, or None when the file is absent."""
        return self.files[modality].get(f"{name}_{kind}")

    def expected(self, modality: str, name: str, kind: str) -> Path:
        """Where an absent image was expected (its suffix unknown)."""
        return self.folder / modality / "test" / f"{name}_{kind}"


def _level_label(folder: Path) -> str:
    m = re.search(r"tlevel(\d+)$", folder.name)
    return m.group(1) if m else folder.name


def find_levels(eval_dir: str | os.PathLike) -> list[Path]:
    """Level folders of an evaluation set: ``eval_dir`` itself or its ``patch_tlevel*``.

    Raises
    ------
    ComirError
        When neither ``eval_dir/info_test.csv`` nor sub-folders holding one exist.
    """
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise ComirError(f"{eval_dir}: evaluation folder not found; create it with comir make-eval")
    if (eval_dir / "info_test.csv").is_file():
        return [eval_dir]
    subs = [p for p in eval_dir.iterdir() if p.is_dir() and (p / "info_test.csv").is_file()]
    if not subs:
        raise ComirError(
            f"{eval_dir}: no info_test.csv here or in patch_tlevel*/ sub-folders; "
            "expected the MultiRegEval layout (make one with comir make-eval)"
        )

    def key(p: Path):
        m = re.search(r"(\d+)$", p.name)
        return (0, int(m.group(1)), p.name) if m else (1, 0, p.name)

    return sorted(subs, key=key)


def _index_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise ComirError(f"{folder}: folder not found; an evaluation level needs A/test and B/test")
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows of a CSV file; unreadable files raise :class:`ComirError`."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError) as exc:
        raise ComirError(f"{path}: cannot be read ({exc})") from None


def read_level(folder: str | os.PathLike) -> EvalLevel:
    """Read ``info_test.csv`` and index ``A/test``, ``B/test`` of one level folder.

    Images listed in the CSV but absent are not an error here: :func:`evaluate` counts
    such pairs as failures (as the public scorer does).
    """
    folder = Path(folder)
    csv_path = folder / "info_test.csv"
    header, rows = read_rows(csv_path)
    missing = [c for c in ("Filename", *REF_COLUMNS, *TRANS_COLUMNS) if c not in header]
    if missing:
        raise ComirError(
            f"{csv_path}: lacks column(s) {', '.join(missing[:4])}"
            f"{' …' if len(missing) > 4 else ''}; expected the MultiRegEval info_test.csv"
        )
    if not rows:
        raise ComirError(f"{csv_path}: has no rows; regenerate the set with comir make-eval")
    try:
        ref = np.array([[float(r[c]) for c in REF_COLUMNS] for r in rows]).reshape(-1, 4, 2)
        trans = np.array([[float(r[c]) for c in TRANS_COLUMNS] for r in rows]).reshape(-1, 4, 2)
    except (TypeError, ValueError) as exc:
        raise ComirError(f"{csv_path}: non-numeric corner coordinate ({exc})") from None
    files = {m: _index_images(folder / m / "test") for m in ("A", "B")}
    names = [r["Filename"] for r in rows]
    from comir.evaluate.deform import read_landmarks

    points = read_landmarks(folder)
    return EvalLevel(_level_label(folder), folder, names, ref, trans, rows, files, points)


def read_patch(path: str | os.PathLike) -> np.ndarray:
    """An evaluation patch (or a cached ``.npy`` CoMIR) as float32 ``(H, W[, C])``.

    Integer images map to [0, 1] by :func:`comir.io.to_unit_float` (a stored N-bit value
    v means v / (2**N − 1)), the inverse of how :func:`make_eval` stores them.
    """
    path = str(path)
    return np.load(path) if path.endswith(".npy") else to_unit_float(read_image(path))


def _fmt(v) -> str:
    if isinstance(v, float | np.floating):
        return "" if not np.isfinite(v) else repr(float(v))
    return str(v)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """Atomically write ``rows`` (dicts) under ``columns``; NaN floats become empty cells."""
    buf = _io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(columns)
    for r in rows:
        wr.writerow([_fmt(r.get(c, "")) for c in columns])
    write_text(path, buf.getvalue())
