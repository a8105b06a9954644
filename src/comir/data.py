"""Aligned training pairs: discovery, validation, normalisation and batched augmentation.

From files to batches of patches for CoMIR training (Pielawski, Wetzer et al., NeurIPS
2020, SPEC §2):

* :func:`find_pairs` matches the two modalities on disk in one of three layouts
  (:data:`LAYOUTS`): ``folders`` (``root/A/x.tif`` with ``root/B/x.tif``), ``suffix``
  (``root/x_SHG.tif`` with ``root/x_BF.tif``) or ``channels`` (both modalities are channel
  ranges of one multichannel file, e.g. RGB and NIR of a 4-band satellite scene).
* :func:`load_pairs` reads and validates every pair and normalises it once for the whole
  set; the resulting :class:`DataSpec` records how, so that validation images and new
  images at inference time are prepared identically (:meth:`DataSpec.prepare`).
* :class:`PatchStream` produces an endless, seeded stream of augmented patch batches:
  the same random crop for both modalities, horizontal flip and rotation by a uniform
  angle in [-180°, 180°] done for the whole batch by one ``grid_sample`` call, then
  per-modality noise / blur / contrast changes (:func:`augment_batch`).

Arrays are channel-last ``(H, W, C)`` float32; tensors are ``(B, C, P, P)`` float32.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from comir import io
from comir.errors import ComirError

#: Ways the two modalities of an aligned pair can be stored (see :func:`find_pairs`).
LAYOUTS = ("folders", "suffix", "channels")
#: Show a progress bar when loading at least this many files.
_PROGRESS_MIN_FILES = 16
#: Names of unmatched files listed in a warning before it says "and N more".
_MAX_LISTED = 8


# ---------------------------------------------------------------------------- discovery
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


def _by_key(files: Sequence[Path], key, where: Path) -> dict[str, Path]:
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
        warnings.warn(f"{where}: skipping unmatched files, " + "; ".join(parts), stacklevel=3)
    return [PairSpec(k, found_a[k], found_b[k]) for k in common]


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
        ``"0,2"``); they are checked against the files by :func:`load_pairs`.
    a, b : str
        Folder names, file-name suffixes or channel specs, depending on ``layout``.

    Returns
    -------
    list of PairSpec
        Sorted by name. Files without a partner are skipped with a warning naming them.

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

        # The longer suffix is tested first so that e.g. "_BF" / "_F" stay distinct.
        def key_for(suffix: str, other: str):
            def key(p: Path) -> str | None:
                stem = p.stem
                if len(other) > len(suffix) and stem.endswith(other):
                    return None
                return stem[: -len(suffix)] if stem.endswith(suffix) else None

            return key

        return _match(
            _by_key(files, key_for(a, b), root),
            _by_key(files, key_for(b, a), root),
            root,
            f"no '<id>{a}' file has an '<id>{b}' partner",
        )
    files = _image_files(root, "data")
    return [PairSpec(p.stem, p, p) for p in files]


# ---------------------------------------------------------------------------- preparation
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
        Resolved normalisation (``"bits:12"``, ``"percentile"``, ``"none"``, ...).
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
        if m == "a":
            return (
                self.channels_a,
                self.file_channels_a,
                self.in_channels_a,
                self.norm_a,
                self.log_a,
            )
        if m == "b":
            return (
                self.channels_b,
                self.file_channels_b,
                self.in_channels_b,
                self.norm_b,
                self.log_b,
            )
        raise ValueError(f"modality must be 'a' or 'b', got {modality!r}")

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


# ---------------------------------------------------------------------------- loading
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


def _n_channels(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else image.shape[2]


def _check_consistent(seen: dict[str, tuple[int, Path]], path: Path, n: int, what: str) -> None:
    """Every file of a modality must have the same channel count as the first one."""
    first = seen.setdefault(what, (n, path))
    if first[0] != n:
        raise ComirError(
            f"{path}: has {n} channel(s) but {first[1]} has {first[0]}; "
            f"all modality {what} images must have the same channels"
        )


_CHANNEL_SPEC = re.compile(r"^\s*(\d*\s*:\s*\d*|\d+(\s*,\s*\d+)*)\s*$")


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
        As for :func:`find_pairs`.
    norm : str
        Normalisation of modality A (and of B unless ``norm_b`` is given): ``auto``,
        ``none``, ``percentile`` or ``bits:N`` (:func:`comir.io.normalize`). ``auto`` is
        resolved once for the whole set from the largest value of each modality
        (:func:`comir.io.resolve_norm`), so 12-bit data in uint16 files gets ``bits:12``.
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
        ``images_a[i]`` ``(H, W, Ca)`` and ``images_b[i]`` ``(H, W, Cb)`` float32.

    Raises
    ------
    ComirError
        Any problem from :func:`find_pairs` or :func:`comir.io.read_image` (corrupt, empty,
        NaN/Inf), mismatched pair sizes, a channel spec out of range, inconsistent channel
        counts, or an image smaller than ``min_size``.
    """
    from tqdm import tqdm

    pairs = find_pairs(root, layout, a, b)
    channels_layout = layout == "channels"
    if channels_layout and spec is None:
        for s in (a, b):
            if not _CHANNEL_SPEC.match(s):
                raise ComirError(
                    f"{root}: the channels layout takes channel specs for --a and --b "
                    f"(e.g. --a 0:3 --b 3), got {s!r}"
                )

    raw_a: list[np.ndarray] = []
    raw_b: list[np.ndarray] = []
    seen: dict[str, tuple[int, Path]] = {}
    sel: dict[str, list[int] | None] = {"A": None, "B": None}
    files: dict[str, int] = {}
    bar = tqdm(
        pairs,
        desc=f"reading {Path(root).name or root}",
        unit="pair",
        disable=len(pairs) < _PROGRESS_MIN_FILES,
        leave=False,
    )
    for pair in bar:
        img_a = io.read_image(pair.path_a)
        img_b = img_a if channels_layout else io.read_image(pair.path_b)
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
        for what, img, path, s in (("A", img_a, pair.path_a, a), ("B", img_b, pair.path_b, b)):
            n = _n_channels(img)
            if spec is not None:
                prepared = spec.select(img, what.lower(), str(path))
            elif channels_layout:
                chans = io.parse_channels(s, n, where=str(path))
                sel[what] = chans
                prepared = io.select_channels(img, chans)
            else:
                prepared = io.select_channels(img, None)
            _check_consistent(seen, path, n, what)
            files[what] = n
            (raw_a if what == "A" else raw_b).append(prepared)
    bar.close()

    if spec is None:
        norm_a = io.resolve_norm(norm, raw_a)
        norm_bb = io.resolve_norm(norm if norm_b is None else norm_b, raw_b)
        spec = DataSpec(
            layout=layout,
            a=a,
            b=b,
            channels_a=sel["A"],
            channels_b=sel["B"],
            file_channels_a=files["A"],
            file_channels_b=files["B"],
            in_channels_a=raw_a[0].shape[2],
            in_channels_b=raw_b[0].shape[2],
            norm_a=norm_a,
            norm_b=norm_bb,
            log_a=log_a,
            log_b=log_b,
        )
    images_a = [_normalise(raw_a, i, spec.norm_a, spec.log_a) for i in range(len(raw_a))]
    images_b = [_normalise(raw_b, i, spec.norm_b, spec.log_b) for i in range(len(raw_b))]
    return PairSet(pairs, images_a, images_b, spec)


def _normalise(raw: list[np.ndarray], i: int, norm: str, log: bool) -> np.ndarray:
    """Normalise ``raw[i]`` and drop the raw array to keep peak memory low."""
    out = np.ascontiguousarray(io.normalize(raw[i], norm, log), dtype=np.float32)
    raw[i] = out
    return out


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
    if n >= 2:
        n_val = min(max(1, round(val_fraction * n)), n - 1)
        order = np.random.default_rng(seed).permutation(n)
        return ps.subset(sorted(order[n_val:].tolist())), ps.subset(sorted(order[:n_val].tolist()))
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


# ---------------------------------------------------------------------------- augmentation
@dataclass
class AugmentConfig:
    """Augmentation settings (SPEC §2).

    ``flip`` and ``rotate`` act on both modalities together (horizontal flip with
    probability 1/2, rotation by a uniform angle in [-180°, 180°]); the rest acts on each
    modality independently. ``noise_*`` is the standard deviation of added Gaussian noise;
    ``blur_*`` the largest Gaussian blur sigma in pixels (each sample draws one in
    ``[0, blur]``); ``contrast_*`` = s draws a gamma and a contrast gain in
    ``[exp(-s), exp(s)]`` per sample.
    """

    flip: bool = True
    rotate: bool = True
    noise_a: float = 0.0
    noise_b: float = 0.0
    blur_a: float = 0.0
    blur_b: float = 0.0
    contrast_a: float = 0.0
    contrast_b: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _rand(shape: Sequence[int], g: torch.Generator, like: Tensor) -> Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, moved next to ``like``."""
    return torch.rand(tuple(shape), generator=g, device=g.device).to(like.device, like.dtype)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each sample with its own Gaussian, separably, with mirror padding.

    Parameters
    ----------
    x : Tensor, ``(B, C, H, W)``
    sigma : Tensor, ``(B,)``
        Standard deviation in pixels per sample (0 leaves the sample unchanged).
        The kernel radius is ``ceil(3 · max(sigma))`` for the whole batch.

    Returns
    -------
    Tensor, ``(B, C, H, W)``
    """
    b, c, h, w = x.shape
    radius = min(max(1, math.ceil(3.0 * float(sigma.max()))), h - 1, w - 1)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype).clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / s) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)


def _contrast(x: Tensor, strength: float, g: torch.Generator) -> Tensor:
    """Random gamma on the per-sample range, then a random contrast gain about the mean."""
    b = x.shape[0]
    gamma = torch.exp((2 * _rand((b, 1, 1, 1), g, x) - 1) * strength)
    gain = torch.exp((2 * _rand((b, 1, 1, 1), g, x) - 1) * strength)
    lo = x.amin(dim=(2, 3), keepdim=True)
    span = (x.amax(dim=(2, 3), keepdim=True) - lo).clamp_min(1e-12)
    y = lo + span * ((x - lo) / span).clamp(0, 1) ** gamma
    mean = y.mean(dim=(2, 3), keepdim=True)
    return mean + gain * (y - mean)


def _intensity(x: Tensor, contrast: float, blur: float, noise: float, g: torch.Generator) -> Tensor:
    if contrast > 0:
        x = _contrast(x, contrast, g)
    if blur > 0:
        x = gaussian_blur(x, _rand((x.shape[0],), g, x) * blur)
    if noise > 0:
        eps = torch.randn(tuple(x.shape), generator=g, device=g.device).to(x.device, x.dtype)
        x = x + noise * eps
    return x


def augment_batch(
    xa: Tensor, xb: Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Per-modality intensity augmentation of a batch: contrast, then blur, then noise.

    Parameters
    ----------
    xa : Tensor, ``(B, Ca, P, P)``
    xb : Tensor, ``(B, Cb, P, P)``
    cfg : AugmentConfig
        Only the ``*_a`` / ``*_b`` intensity settings are used here.
    generator : torch.Generator
        Source of randomness (numbers are drawn on its device).

    Returns
    -------
    (Tensor, Tensor)
        Same shapes; inputs are not modified.
    """
    xa = _intensity(xa, cfg.contrast_a, cfg.blur_a, cfg.noise_a, generator)
    xb = _intensity(xb, cfg.contrast_b, cfg.blur_b, cfg.noise_b, generator)
    return xa, xb


def rotation_grid(
    centre: Tensor, angle_rad: Tensor, flip: Tensor, patch_size: int, height: int, width: int
) -> Tensor:
    """Sampling grid of flipped, rotated ``P×P`` patches for ``F.grid_sample``.

    Output pixel ``p`` (relative to the patch centre, x = column, y = row) samples the
    input at ``centre + F R(-angle) p``: the patch shows the content flipped horizontally
    where ``flip`` is set, then rotated by ``angle`` (clockwise on screen for a positive
    angle, the convention of :mod:`comir.transform`).

    Parameters
    ----------
    centre : Tensor, ``(B, 2)``
        Patch centres ``(x, y)`` in input pixels (origin at the centre of pixel (0, 0)).
    angle_rad : Tensor, ``(B,)``
    flip : Tensor, ``(B,)`` bool
    patch_size : int
        ``P``.
    height, width : int
        Input size.

    Returns
    -------
    Tensor, ``(B, P, P, 2)`` float32
        Normalised ``(x, y)`` for ``grid_sample(..., align_corners=False)``.
    """
    ang = angle_rad.to(torch.float64)
    cos, sin = torch.cos(ang), torch.sin(ang)
    f = 1.0 - 2.0 * flip.to(torch.float64)
    sx, sy = 2.0 / width, 2.0 / height
    centre = centre.to(torch.float64)
    # Per-sample affine coefficients in float64, then one float32 evaluation per pixel:
    # F R(-angle) = [[f cos, f sin], [-sin, cos]], followed by pixel -> normalised units.
    coef = torch.stack(
        [
            torch.stack([(centre[:, 0] + 0.5) * sx - 1.0, f * cos * sx, f * sin * sx], 1),
            torch.stack([(centre[:, 1] + 0.5) * sy - 1.0, -sin * sy, cos * sy], 1),
        ],
        1,
    ).to(torch.float32)  # (B, 2, 3): offset, d/du, d/dv
    t = torch.arange(patch_size, dtype=torch.float32) - (patch_size - 1) / 2.0
    u = t[None, None, :, None]  # column offsets
    v = t[None, :, None, None]  # row offsets
    coef = coef[:, None, None]  # (B, 1, 1, 2, 3)
    return coef[..., 0] + coef[..., 1] * u + coef[..., 2] * v


def rotate_crop(
    windows: Tensor,
    angle_rad: Tensor,
    flip: Tensor,
    patch_size: int,
    padding_mode: str = "reflection",
) -> Tensor:
    """Flip and rotate every window about its centre and cut the central patch, batched.

    See :func:`rotation_grid` for the geometry; bilinear sampling.

    Parameters
    ----------
    windows : Tensor, ``(B, C, S, S)``
        Windows centred on the patches; ``S >= P·√2 + 2`` keeps every rotation inside,
        otherwise ``padding_mode`` fills the corners.
    angle_rad : Tensor, ``(B,)``
    flip : Tensor, ``(B,)`` bool
    patch_size : int
        ``P``.
    padding_mode : {"reflection", "border", "zeros"}

    Returns
    -------
    Tensor, ``(B, C, P, P)``
    """
    b, _, h, w = windows.shape
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64).expand(b, 2)
    grid = rotation_grid(centre, angle_rad, flip, patch_size, h, w).to(windows.device)
    return F.grid_sample(
        windows, grid.to(windows.dtype), "bilinear", padding_mode, align_corners=False
    )


# ---------------------------------------------------------------------------- patch streams
def _stream_seed(seed: int, worker: int) -> int:
    """Independent 63-bit seed per (seed, DataLoader worker)."""
    return int(np.random.SeedSequence([seed, worker]).generate_state(1, np.uint64)[0] >> 1)


def _check_sizes(pairs: PairSet, patch_size: int) -> None:
    if len(pairs) == 0:
        raise ComirError("no image pairs to draw patches from; check the data folder")
    if patch_size < 1:
        raise ComirError(f"patch size must be positive, got {patch_size}")
    for pair, img in zip(pairs.pairs, pairs.images_a):
        if min(img.shape[:2]) < patch_size:
            raise ComirError(
                f"{pair.path_a}: image ({pair.name}) is {img.shape[0]}×{img.shape[1]}, smaller "
                f"than the patch size {patch_size}; lower --patch-size or remove the file"
            )


@dataclass
class _Sampler:
    """Crop positions with images drawn in proportion to their area."""

    sizes: Tensor  # (N, 2) int64 (H, W)
    weights: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.weights = (self.sizes[:, 0] * self.sizes[:, 1]).to(torch.float64)

    def draw(self, n: int, patch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Image index, top row and left column of ``n`` crops, each ``(n,)`` int64."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=g)
        room = self.sizes[idx] - patch_size + 1  # (n, 2) number of valid offsets
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        off = torch.minimum((u * room).long(), room - 1)
        return idx, off[:, 0], off[:, 1]


class PatchStream(IterableDataset):
    """Endless stream of augmented, aligned patch batches (SPEC §2).

    Each batch: images drawn with probability proportional to their area, the same
    random ``P×P`` crop for both modalities, then (per :class:`AugmentConfig`) horizontal
    flip and rotation by a uniform angle in [-180°, 180°], both done for the whole batch
    by one bilinear ``grid_sample`` call. The corners a rotated crop needs come from the
    real surroundings of the crop, and from symmetric (reflect) padding of the image
    where they leave it. Per-modality intensity changes follow (:func:`augment_batch`).

    The stream is deterministic for a ``seed``; each DataLoader worker gets its own.
    All images are held once more, padded, in one float32 tensor.

    Parameters
    ----------
    pairs : PairSet
    patch_size : int
        ``P``; every image must be at least this large.
    batch_size : int
        ``B``.
    augment : AugmentConfig, optional
        ``None``: crops only (no flip, rotation or intensity changes).
    seed : int

    Yields
    ------
    (Tensor, Tensor)
        ``xa`` ``(B, Ca, P, P)`` and ``xb`` ``(B, Cb, P, P)`` float32.
    """

    def __init__(
        self,
        pairs: PairSet,
        patch_size: int,
        batch_size: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(pairs, patch_size)
        if batch_size < 1:
            raise ComirError(f"batch size must be positive, got {batch_size}")
        self.patch_size = int(patch_size)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.seed = int(seed)
        self.channels_a = pairs.images_a[0].shape[2]
        # Half the growth of a rotated patch's bounding box, plus one pixel for bilinear:
        # every sample point of any rotation then lies inside the padded image.
        self.margin = m = math.ceil((math.sqrt(2.0) - 1.0) * patch_size / 2.0) + 1
        # All images, padded symmetrically by the margin, stacked top to bottom in one
        # (1, Ca + Cb, sum of heights, widest) tensor, so that a single grid_sample call
        # serves the whole batch without copying windows out first.
        shapes = [(im.shape[0] + 2 * m, im.shape[1] + 2 * m) for im in pairs.images_a]
        channels = self.channels_a + pairs.images_b[0].shape[2]
        atlas = np.zeros(
            (sum(h for h, _ in shapes), max(w for _, w in shapes), channels), np.float32
        )
        self._row0 = torch.tensor(np.cumsum([0] + [h for h, _ in shapes[:-1]]), dtype=torch.int64)
        for r0, (h, w), ia, ib in zip(self._row0.tolist(), shapes, pairs.images_a, pairs.images_b):
            both = np.concatenate([ia, ib], axis=2)
            atlas[r0 : r0 + h, :w] = np.pad(both, ((m, m), (m, m), (0, 0)), "symmetric")
        self._atlas = torch.from_numpy(atlas).permute(2, 0, 1)[None].contiguous()
        self._sampler = _Sampler(torch.tensor([im.shape[:2] for im in pairs.images_a]))

    def sample_batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw one batch ``(xa (B, Ca, P, P), xb (B, Cb, P, P))`` using ``generator``."""
        p, m, b = self.patch_size, self.margin, self.batch_size
        idx, rows, cols = self._sampler.draw(b, p, generator)
        top = self._row0[idx] + rows + m  # crop's top row and left column in the atlas
        left = cols + m
        cfg = self.augment
        if cfg is not None and (cfg.flip or cfg.rotate):
            u = torch.rand(b, 2, generator=generator, dtype=torch.float64)
            angle = (2.0 * u[:, 0] - 1.0) * math.pi if cfg.rotate else torch.zeros(b)
            flip = u[:, 1] < 0.5 if cfg.flip else torch.zeros(b, dtype=torch.bool)
            centre = torch.stack([left, top], 1).to(torch.float64) + (p - 1) / 2.0
            _, c, h, w = self._atlas.shape
            grid = rotation_grid(centre, angle, flip, p, h, w).reshape(1, b * p, p, 2)
            # Sample points stay inside the padded images, so the padding mode never acts.
            out = F.grid_sample(self._atlas, grid, "bilinear", "zeros", align_corners=False)
            out = out.reshape(c, b, p, p).transpose(0, 1)
        else:
            out = torch.stack(
                [
                    self._atlas[0, :, y : y + p, x : x + p]
                    for y, x in zip(top.tolist(), left.tolist())
                ]
            )
        xa, xb = out[:, : self.channels_a], out[:, self.channels_a :]
        if cfg is not None:
            xa, xb = augment_batch(xa, xb, cfg, generator)
        return xa.contiguous(), xb.contiguous()

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        info = get_worker_info()
        g = torch.Generator().manual_seed(_stream_seed(self.seed, 0 if info is None else info.id))
        while True:
            yield self.sample_batch(g)


def make_loader(
    pairs: PairSet,
    patch_size: int,
    batch_size: int,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless iterator of augmented batches from a :class:`PatchStream`.

    ``workers > 0`` prepares batches in that many persistent background processes (each
    with its own random stream); memory is pinned when CUDA is available.
    """
    stream = PatchStream(pairs, patch_size, batch_size, augment, seed)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)


def fixed_batches(
    pairs: PairSet, patch_size: int, n_batches: int, batch_size: int, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """Deterministic validation batches: random crops (area-weighted), no augmentation.

    Returns
    -------
    list of (Tensor, Tensor)
        ``n_batches`` pairs ``(B, Ca, P, P)``, ``(B, Cb, P, P)``; identical for equal
        arguments.
    """
    _check_sizes(pairs, patch_size)
    p = patch_size
    g = torch.Generator().manual_seed(_stream_seed(seed, 1 << 20))
    sampler = _Sampler(torch.tensor([im.shape[:2] for im in pairs.images_a]))
    out = []
    for _ in range(n_batches):
        idx, rows, cols = sampler.draw(batch_size, p, g)
        crops = [
            (pairs.images_a[i][r : r + p, c : c + p], pairs.images_b[i][r : r + p, c : c + p])
            for i, r, c in zip(idx.tolist(), rows.tolist(), cols.tolist())
        ]
        xa = torch.from_numpy(np.stack([ca for ca, _ in crops])).permute(0, 3, 1, 2)
        xb = torch.from_numpy(np.stack([cb for _, cb in crops])).permute(0, 3, 1, 2)
        out.append((xa.contiguous(), xb.contiguous()))
    return out
