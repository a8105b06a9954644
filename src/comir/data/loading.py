"""From files to prepared arrays: :class:`DataSpec`, :class:`PairSet`, :func:`load_pairs`,
:func:`split_pairs`.

Normalisation words (:func:`comir.io.resolve_norm`): ``auto`` takes ``bits:N`` from the
largest value of each modality over the whole set (12-bit data in uint16 files:
``bits:12``), ``dtype`` takes ``bits:N`` from the storage dtype (uint16: ``bits:16``);
float images get ``none`` for both. Both are resolved once per set, so a :class:`DataSpec`
only ever records a concrete normalisation (``bits:N``, ``percentile`` or ``none``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np

from comir import io
from comir.data.discovery import PairSpec, find_pairs
from comir.errors import ComirError

#: Show a progress bar when loading at least this many files.
_PROGRESS_MIN_FILES = 16
#: The normalisation words that depend on the whole set (see :func:`comir.io.resolve_norm`).
SET_LEVEL_NORMS = ("auto", "dtype")
_CHANNEL_SPEC = re.compile(r"^\s*(\d*\s*:\s*\d*|\d+(\s*,\s*\d+)*)\s*$")


@dataclass
class DataSpec:
    """How training images were turned into network inputs; JSON-able via :meth:`to_dict`.

    Attributes
    ----------
    layout, a, b : str
        The layout and the ``a``/``b`` arguments the training set was found with.
    channels_a, channels_b : list of int or None
        Channel indices taken from each file (``None``: all channels).
    file_channels_a, file_channels_b : int
        Channel count of the training files (1 for grey images).
    in_channels_a, in_channels_b : int
        Network input channels after selection.
    norm_a, norm_b : str
        Resolved, concrete normalisation (``"bits:12"``, ``"percentile"``, ``"none"``);
        the set-level words ``auto`` / ``dtype`` are rejected with a :class:`ComirError`.
    log_a, log_b : bool
        ``log(1 + x)`` after scaling (second-harmonic-generation images).
    """

    layout: str
    a: str
    b: str
    channels_a: list[int] | None
    channels_b: list[int] | None
    file_channels_a: int
    file_channels_b: int
    in_channels_a: int
    in_channels_b: int
    norm_a: str
    norm_b: str
    log_a: bool = False
    log_b: bool = False

    def __post_init__(self) -> None:
        for key in ("norm_a", "norm_b"):
            norm = getattr(self, key)
            if norm in SET_LEVEL_NORMS:
                raise ComirError(
                    f"data spec {key} is {norm!r}, which depends on the whole image set; "
                    "resolve it first with comir.io.resolve_norm (e.g. to bits:12)"
                )
            io.normalize(np.zeros((1, 1), np.float32), norm)  # validates the spec

    def to_dict(self) -> dict:
        """Plain ``dict`` of JSON types."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ComirError(f"data spec is missing {', '.join(missing)}; the config is damaged")
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("channels_a", "channels_b"):
            if kw[k] is not None:
                kw[k] = [int(i) for i in kw[k]]
        return cls(**kw)

    def _side(self, modality: str) -> tuple[list[int] | None, int, int, str, bool]:
        m = modality.lower()
        if m not in ("a", "b"):
            raise ValueError(f"modality must be 'a' or 'b', got {modality!r}")
        return tuple(
            getattr(self, f"{k}_{m}")
            for k in ("channels", "file_channels", "in_channels", "norm", "log")
        )

    def select(self, image: np.ndarray, modality: str, where: str = "") -> np.ndarray:
        """Channel selection and count check only: ``(H, W[, C])`` -> ``(H, W, in_channels)``.

        The stored selection is applied when the image has as many channels as the
        training files; otherwise it must already have the network's input channel count.
        """
        channels, n_file, n_in, _, _ = self._side(modality)
        img = image if image.ndim == 3 else image[..., None]
        if img.shape[2] == n_file and channels is not None:
            img = img[..., channels]
        if img.shape[2] != n_in:
            raise ComirError(
                f"{where or 'image'}: has {img.shape[2]} channel(s), modality "
                f"{modality.upper()} expects {n_in} (or {n_file} to select from); "
                "pass an image of the kind the model was trained on"
            )
        return img

    def prepare(self, image: np.ndarray, modality: str, where: str = "") -> np.ndarray:
        """Turn a raw image into network input the way training did.

        Parameters
        ----------
        image : ndarray, ``(H, W)`` or ``(H, W, C)``
            Raw pixels in the file's dtype.
        modality : {"a", "b"}
        where : str
            File name for error messages.

        Returns
        -------
        ndarray, ``(H, W, in_channels)`` float32
        """
        _, _, _, norm, log = self._side(modality)
        img = self.select(image, modality, where)
        return np.ascontiguousarray(io.normalize(img, norm, log), dtype=np.float32)


@dataclass
class PairSet:
    """Aligned, prepared images: ``images_a[i]`` and ``images_b[i]`` are ``(H_i, W_i, C)``."""

    pairs: list[PairSpec]
    images_a: list[np.ndarray]
    images_b: list[np.ndarray]
    spec: DataSpec

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, indices: Sequence[int]) -> PairSet:
        """Pairs at ``indices`` (same :class:`DataSpec`)."""
        return PairSet(
            [self.pairs[i] for i in indices],
            [self.images_a[i] for i in indices],
            [self.images_b[i] for i in indices],
            self.spec,
        )


# ---------------------------------------------------------------------------- reading
@dataclass
class _Raw:
    """Channel-selected raw images of one set, before normalisation."""

    images: dict[str, list[np.ndarray]]  # "A" / "B" -> (H, W, C) arrays in file dtype
    channels: dict[str, list[int] | None]  # selection taken from multichannel files
    file_channels: dict[str, tuple[int, Path]]  # channel count of the first file


def _read_pair(pair: PairSpec, same_file: bool, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images of ``pair`` in their stored dtype, checked for equal size and ``min_size``."""
    img_a = io.read_image(pair.path_a)
    img_b = img_a if same_file else io.read_image(pair.path_b)
    if img_a.shape[:2] != img_b.shape[:2]:
        raise ComirError(
            f"{pair.path_a} is {img_a.shape[0]}×{img_a.shape[1]} but {pair.path_b} is "
            f"{img_b.shape[0]}×{img_b.shape[1]}; aligned pairs must have the same size"
        )
    h, w = img_a.shape[:2]
    if min(h, w) < min_size:
        raise ComirError(
            f"{pair.path_a}: image is {h}×{w}, smaller than the patch size {min_size}; "
            "lower --patch-size or remove the file"
        )
    return img_a, img_b


def _add_image(
    raw: _Raw, what: str, img: np.ndarray, path: Path, channel_spec: str | None, spec
) -> None:
    """Select the channels of one image of modality ``what`` and append it to ``raw``."""
    n = 1 if img.ndim == 2 else img.shape[2]
    if spec is not None:
        selected = spec.select(img, what.lower(), str(path))
    elif channel_spec is not None:
        chans = io.parse_channels(channel_spec, n, where=str(path))
        raw.channels[what] = chans
        selected = io.select_channels(img, chans)
    else:
        selected = io.select_channels(img, None)
    first = raw.file_channels.setdefault(what, (n, path))
    if first[0] != n:  # every file of a modality has the channel count of the first one
        raise ComirError(
            f"{path}: has {n} channel(s) but {first[1]} has {first[0]}; "
            f"all modality {what} images must have the same channels"
        )
    raw.images[what].append(selected)


def _read_all(
    root, pairs: list[PairSpec], layout: str, a: str, b: str, min_size: int, spec
) -> _Raw:
    from tqdm import tqdm

    channels_layout = layout == "channels"
    raw = _Raw({"A": [], "B": []}, {"A": None, "B": None}, {})
    bar = tqdm(
        pairs,
        desc=f"reading {Path(root).name or root}",
        unit="pair",
        disable=len(pairs) < _PROGRESS_MIN_FILES,
        leave=False,
    )
    for pair in bar:
        img_a, img_b = _read_pair(pair, channels_layout, min_size)
        for what, img, path, s in (("A", img_a, pair.path_a, a), ("B", img_b, pair.path_b, b)):
            _add_image(raw, what, img, path, s if channels_layout else None, spec)
    bar.close()
    return raw


def _normalise_all(raw: list[np.ndarray], norm: str, log: bool) -> list[np.ndarray]:
    """Normalise every image in place of its raw array, keeping peak memory low."""
    for i, img in enumerate(raw):
        raw[i] = np.ascontiguousarray(io.normalize(img, norm, log), dtype=np.float32)
    return raw


def load_pairs(
    root: str | os.PathLike,
    layout: str,
    a: str = "A",
    b: str = "B",
    norm: str = "auto",
    norm_b: str | None = None,
    log_a: bool = False,
    log_b: bool = False,
    min_size: int = 0,
    spec: DataSpec | None = None,
) -> PairSet:
    """Read, validate and normalise every aligned pair under ``root``.

    Parameters
    ----------
    root, layout, a, b
        As for :func:`~comir.data.find_pairs`.
    norm : str
        Normalisation of modality A (and of B unless ``norm_b`` is given): ``auto``
        (``bits:N`` from the largest value of the modality over the whole set, so 12-bit
        data in uint16 files gets ``bits:12``), ``dtype`` (``bits:N`` of the storage
        dtype), ``none``, ``percentile`` or ``bits:N``; the set-level words are resolved
        once by :func:`comir.io.resolve_norm`, the result by :func:`comir.io.normalize`.
    norm_b : str, optional
        Normalisation of modality B.
    log_a, log_b : bool
        ``log(1 + x)`` after scaling.
    min_size : int
        Smallest allowed height and width (the training patch size).
    spec : DataSpec, optional
        Prepare the images exactly like this earlier set (validation data); ``norm``,
        ``norm_b`` and ``log_*`` are then ignored, and for the ``channels`` layout so are
        ``a``/``b``.

    Returns
    -------
    PairSet
        ``images_a[i]`` ``(H, W, Ca)`` and ``images_b[i]`` ``(H, W, Cb)`` float32;
        ``spec`` holds the resolved normalisation.

    Raises
    ------
    ComirError
        Any problem from :func:`~comir.data.find_pairs` or :func:`comir.io.read_image`
        (corrupt, empty, NaN/Inf), mismatched pair sizes, a channel spec out of range,
        inconsistent channel counts, or an image smaller than ``min_size``.
    """
    pairs = find_pairs(root, layout, a, b)
    if layout == "channels" and spec is None:
        for s in (a, b):
            if not _CHANNEL_SPEC.match(s):
                raise ComirError(
                    f"{root}: the channels layout takes channel specs for --a and --b "
                    f"(e.g. --a 0:3 --b 3), got {s!r}"
                )
    raw = _read_all(root, pairs, layout, a, b, min_size, spec)
    images_a, images_b = raw.images["A"], raw.images["B"]
    if spec is None:
        spec = DataSpec(
            layout=layout,
            a=a,
            b=b,
            channels_a=raw.channels["A"],
            channels_b=raw.channels["B"],
            file_channels_a=raw.file_channels["A"][0],
            file_channels_b=raw.file_channels["B"][0],
            in_channels_a=images_a[0].shape[2],
            in_channels_b=images_b[0].shape[2],
            norm_a=io.resolve_norm(norm, images_a),
            norm_b=io.resolve_norm(norm if norm_b is None else norm_b, images_b),
            log_a=log_a,
            log_b=log_b,
        )
    images_a = _normalise_all(images_a, spec.norm_a, spec.log_a)
    images_b = _normalise_all(images_b, spec.norm_b, spec.log_b)
    return PairSet(pairs, images_a, images_b, spec)


# ---------------------------------------------------------------------------- splitting
def _split_single(ps: PairSet, val_fraction: float, min_size: int) -> tuple[PairSet, PairSet]:
    """Cut the one image of ``ps`` across its longer side (see :func:`split_pairs`)."""
    img_a, img_b, pair = ps.images_a[0], ps.images_b[0], ps.pairs[0]
    axis = 0 if img_a.shape[0] >= img_a.shape[1] else 1
    length = img_a.shape[axis]
    n_val = max(round(val_fraction * length), max(min_size, 1))
    if length - n_val < max(min_size, 1):
        raise ComirError(
            f"{pair.path_a}: a single {img_a.shape[0]}×{img_a.shape[1]} image cannot be split "
            f"into training and validation parts of at least {min_size} px; lower --patch-size "
            "or give a separate validation folder"
        )
    cut = length - n_val

    def part(img: np.ndarray, lo: int, hi: int) -> np.ndarray:
        return np.ascontiguousarray(img[lo:hi] if axis == 0 else img[:, lo:hi])

    def piece(lo: int, hi: int, tag: str) -> PairSet:
        spec = PairSpec(f"{pair.name}[{tag}]", pair.path_a, pair.path_b)
        return PairSet([spec], [part(img_a, lo, hi)], [part(img_b, lo, hi)], ps.spec)

    return piece(0, cut, "train"), piece(cut, length, "val")


def split_pairs(
    ps: PairSet, val_fraction: float, seed: int = 0, min_size: int = 0
) -> tuple[PairSet, PairSet]:
    """Split into a training and a validation set.

    With two or more images the split is by whole images (``round(val_fraction · n)``
    of them, at least one and at most ``n - 1``, chosen with ``seed``). A single image is
    cut across its longer side instead: the first ``1 - val_fraction`` of it trains and
    the rest validates (named ``<name>[train]`` / ``<name>[val]``), both parts at least
    ``min_size`` long. ``val_fraction = 0`` returns an empty validation set.

    Returns
    -------
    (PairSet, PairSet)
        Training and validation sets sharing ``ps.spec``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ComirError(f"validation fraction must be in [0, 1), got {val_fraction}")
    n = len(ps)
    if val_fraction == 0.0 or n == 0:
        return ps, ps.subset([])
    if n == 1:
        return _split_single(ps, val_fraction, min_size)
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return ps.subset(sorted(order[n_val:].tolist())), ps.subset(sorted(order[:n_val].tolist()))
