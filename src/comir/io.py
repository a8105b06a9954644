"""Image files in and out: TIFF (8/16-bit, float, multichannel, BigTIFF), PNG, JPEG, NumPy.

Arrays are always returned channel-last: ``(H, W)`` or ``(H, W, C)``. All writers are
atomic: data goes to a temporary file in the destination folder, which is renamed onto
the final name only once it is complete, so an interrupted run never leaves a
half-written output behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from comir.errors import ComirError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
#: Normalisation words: ``auto`` and ``dtype`` are set-level (:func:`resolve_norm` turns
#: them into ``bits:N``), the others concrete (:func:`normalize`).


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=path.suffix + ".part", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ComirError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise ComirError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise ComirError(f"{path}: file is empty; re-export or remove it")


def _channels_last(arr: np.ndarray) -> np.ndarray:
    """Turn a planar ``(C, H, W)`` array with few channels into ``(H, W, C)``."""
    if arr.ndim == 3 and arr.shape[0] <= 8 and arr.shape[2] > 8:
        arr = np.moveaxis(arr, 0, -1)
    return arr


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a channel-last array in its stored dtype.

    Parameters
    ----------
    path : str or PathLike
        ``.tif``/``.tiff`` (any dtype, planar or interleaved, BigTIFF), ``.png``
        (8 or 16 bit), ``.jpg``/``.jpeg`` or ``.npy``.

    Returns
    -------
    ndarray
        ``(H, W)`` or ``(H, W, C)``; colour PNG/JPEG come back as RGB(A).

    Raises
    ------
    ComirError
        Missing, empty, corrupt or truncated files, unsupported suffixes, arrays that are
        not 2-D images, and images holding NaN or Inf.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".png", ".jpg", ".jpeg"):
            import cv2

            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise ValueError("decoder returned nothing")
            if arr.ndim == 3 and arr.shape[2] == 3:
                arr = arr[..., ::-1]
            elif arr.ndim == 3 and arr.shape[2] == 4:
                arr = arr[..., [2, 1, 0, 3]]
        else:
            raise ComirError(
                f"{path}: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}"
            )
    except ComirError:
        raise
    except Exception as exc:  # decoders raise many types for corrupt data
        raise ComirError(
            f"{path}: cannot be read ({type(exc).__name__}: {exc}); the file is corrupt or truncated"
        ) from None
    arr = _channels_last(np.squeeze(np.ascontiguousarray(arr)))
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ComirError(
            f"{path}: expected a 2-D image (H×W or H×W×C), got an array of shape {arr.shape}"
        )
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise ComirError(f"{path}: unsupported pixel type {arr.dtype}; convert to integer or float")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ComirError(f"{path}: image contains NaN or Inf values; clean or mask them first")
    return arr


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Atomically write ``image`` (``(H, W)`` or ``(H, W, C)``) chosen by the suffix.

    ``.tif`` keeps the dtype (float32 representations stay float32; BigTIFF above 2 GB),
    ``.png`` takes uint8 or uint16 with 1, 3 or 4 channels, ``.npy`` anything.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1 and suffix != ".npy":
        image = image[..., 0]  # one channel: a plain grey image (tifffile refuses contig 1)
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile

            photometric = "rgb" if image.ndim == 3 and image.shape[2] == 3 else "minisblack"
            planar = None if photometric == "rgb" or image.ndim == 2 else "contig"
            tifffile.imwrite(
                tmp,
                image,
                photometric=photometric,
                planarconfig=planar,
                bigtiff=image.nbytes > 2**31 - 2**25,
            )
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, image, allow_pickle=False)
        elif suffix in (".png", ".jpg", ".jpeg"):
            import cv2

            if image.dtype not in (np.uint8, np.uint16):
                raise ComirError(f"{path}: PNG/JPEG need uint8 or uint16 data, got {image.dtype}")
            if image.ndim == 3 and image.shape[2] == 3:
                image = image[..., ::-1]
            elif image.ndim == 3 and image.shape[2] == 4:
                image = image[..., [2, 1, 0, 3]]
            elif image.ndim == 3 and image.shape[2] != 1:
                raise ComirError(
                    f"{path}: PNG holds 1, 3 or 4 channels, got {image.shape[2]}; use .tif or .npy"
                )
            ok, buf = cv2.imencode(suffix, np.ascontiguousarray(image))
            if not ok:
                raise ComirError(f"{path}: encoding failed")
            tmp.write_bytes(buf.tobytes())
        else:
            raise ComirError(f"{path}: unsupported output type {suffix!r}; use .tif, .png or .npy")
    return path


def parse_channels(spec: str | Sequence[int] | None, n_channels: int, where: str = "") -> list[int]:
    """Parse a channel selection such as ``"0:3"``, ``"3"``, ``"0,2"`` or ``None`` (all).

    Parameters
    ----------
    spec : str, sequence of int or None
        Python-style slice ``start:stop``, a single index, or a comma-separated list.
    n_channels : int
        Number of channels the image has (a 2-D image has 1).
    where : str
        File name used in the error message.
    """
    if spec is None or spec == "" or spec == ":":
        return list(range(n_channels))
    if not isinstance(spec, str):
        idx = [int(i) for i in spec]
    else:
        try:
            if ":" in spec:
                start, stop = (s.strip() for s in spec.split(":", 1))
                idx = list(range(int(start or 0), int(stop) if stop else n_channels))
            else:
                idx = [int(s) for s in spec.split(",")]
        except ValueError:
            raise ComirError(
                f"invalid channel spec {spec!r}; use e.g. '0:3', '3' or '0,2'"
            ) from None
    bad = [i for i in idx if not 0 <= i < n_channels]
    if bad or not idx:
        raise ComirError(
            f"{where or 'image'}: channel spec {spec!r} is out of range for an image with "
            f"{n_channels} channel(s); valid indices are 0..{n_channels - 1}"
        )
    return idx


def select_channels(image: np.ndarray, channels: Sequence[int] | None) -> np.ndarray:
    """Return ``image[..., channels]`` as ``(H, W, C)`` (2-D images count as 1 channel)."""
    if image.ndim == 2:
        image = image[..., None]
    if channels is None:
        return image
    return image[..., list(channels)]


# ----------------------------------------------------------------------------- intensities
def unit_max(bits: int) -> int:
    """The largest value of ``bits``-bit data, ``2**bits - 1``.

    **The one convention for N-bit data in comir:** a stored value ``v`` means the float
    ``v / (2**N - 1)``, so 0 → 0 and the largest N-bit value → 1 exactly, and storing a
    float ``x`` in [0, 1] writes ``round(x · (2**N - 1))`` (:func:`from_unit_float`). It
    holds for training (``bits:N``), evaluation sets (``make-eval``), their reading
    (:func:`to_unit_float`) and embedding; an 8-bit source round-trips exactly.
    """
    return 2 ** int(bits) - 1


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Integer images → float32 over [0, 1] by their dtype's bits (``v / (2**N - 1)``,
    :func:`unit_max`); float images are returned as float32 unchanged."""
    if image.dtype.kind in "ui":
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32, copy=False)


def from_unit_float(image: np.ndarray, bits: int) -> np.ndarray:
    """Float ``(H, W[, C])`` over [0, 1] → uint8 (``bits=8``) or uint16 (``bits=16``),
    ``round(clip(x, 0, 1) · (2**bits - 1))``: the inverse of :func:`to_unit_float`."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    top = unit_max(bits)
    out = np.rint(np.clip(image, 0.0, 1.0) * top)
    return out.astype(np.uint8 if bits == 8 else np.uint16)


def percentile_scale(
    image: np.ndarray, low: float = 0.5, high: float = 99.5, per_channel: bool = True
) -> np.ndarray:
    """Map the ``low``/``high`` percentiles to 0/1 (not clipped), float32.

    ``(H, W)`` or ``(H, W, C)``; with ``per_channel`` each channel gets its own
    percentiles. A constant image (or channel) maps to 0.
    """
    x = np.asarray(image, dtype=np.float32)
    axes = (0, 1) if per_channel and x.ndim == 3 else None
    lo, hi = np.percentile(x, [low, high], axis=axes, keepdims=axes is not None)
    span = hi - lo
    return ((x - lo) / np.where(span > 0, span, np.inf)).astype(np.float32, copy=False)


def standardize(
    image: np.ndarray,
    axis: int | tuple[int, ...] | None = None,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Zero mean, unit standard deviation over ``axis`` (all elements by default), float32.

    ``reference`` (default: ``image``) supplies the mean and standard deviation, so that
    e.g. a warped copy with empty borders keeps the scale of its original; it must have
    the same number of dimensions as ``image`` and broadcast against it after the
    reduction over ``axis``. Constant inputs come back as zeros.
    """
    x = np.asarray(image, dtype=np.float32)
    ref = x if reference is None else np.asarray(reference, dtype=np.float32)
    mean = ref.mean(axis=axis, keepdims=True)
    std = ref.std(axis=axis, keepdims=True)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32, copy=False)


def infer_bits(max_value: float) -> int:
    """Smallest common integer bit depth (8, 10, 12, 14, 16, 32) holding ``max_value``."""
    for bits in (8, 10, 12, 14, 16, 32):
        if max_value < 2**bits:
            return bits
    return 32


def resolve_norm(norm: str, images: Sequence[np.ndarray]) -> str:
    """Turn the set-level words into a concrete normalisation for a set of images.

    ``auto``: integer images get ``bits:N`` from the largest value found in ``images``
    (so 12-bit data in uint16 files is scaled by 2**12 - 1, not 2**16 - 1); ``dtype``:
    ``bits:N`` from the storage dtype (uint8 → ``bits:8``, uint16 → ``bits:16``); float
    images get ``none`` for both. Concrete specs are validated and returned unchanged.
    """
    if norm not in ("auto", "dtype"):
        normalize(np.zeros((1, 1), np.float32), norm)  # validates the spec
        return norm
    if all(im.dtype.kind == "f" for im in images):
        return "none"
    if norm == "dtype":
        return f"bits:{max(np.iinfo(im.dtype).bits for im in images if im.dtype.kind in 'ui')}"
    top = max(float(im.max()) for im in images)
    return f"bits:{infer_bits(top)}"


def parse_bits(norm: str) -> int:
    """N of a ``bits:N`` spec (1..32)."""
    try:
        bits = int(norm[5:])
    except ValueError:
        raise ComirError(f"invalid normalisation {norm!r}; use e.g. bits:12") from None
    if not 1 <= bits <= 32:
        raise ComirError(f"invalid normalisation {norm!r}; N must be 1..32")
    return bits


def normalize(image: np.ndarray, norm: str, log: bool = False) -> np.ndarray:
    """Scale an image to float32, roughly into [0, 1], by a *concrete* normalisation.

    Parameters
    ----------
    image : ndarray
        Any numeric array.
    norm : {"none", "percentile", "bits:N"}
        ``bits:N`` divides by ``2**N - 1`` (:func:`unit_max`; 12-bit data: ``bits:12``);
        ``percentile`` maps the 0.5th/99.5th percentiles of each channel to 0/1
        (:func:`percentile_scale`); ``none`` keeps values. The set-level words ``auto``
        and ``dtype`` are resolved first by :func:`resolve_norm`.
    log : bool
        Apply ``log(1 + x)`` after scaling (second-harmonic-generation images).
    """
    x = image.astype(np.float32, copy=False)
    if norm.startswith("bits:"):
        x = x / np.float32(unit_max(parse_bits(norm)))
    elif norm == "percentile":
        x = percentile_scale(x)
    elif norm in ("auto", "dtype"):
        raise ComirError(
            f"normalisation {norm!r} depends on the whole set; resolve it with resolve_norm"
        )
    elif norm != "none":
        raise ComirError(
            f"invalid normalisation {norm!r}; use auto, dtype, none, percentile or bits:N"
        )
    if log:
        x = np.log1p(np.maximum(x, 0))
    return x


def to_uint8(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """8-bit export of a CoMIR ``z``: ``sigmoid(z / T)`` min–max scaled to 0..255.

    ``(H, W, 1)`` becomes ``(H, W)`` grey; other shapes keep their channels.
    """
    z = np.asarray(z, dtype=np.float64)
    if temperature <= 0:
        raise ComirError(f"temperature must be > 0, got {temperature}")
    s = 0.5 * (1.0 + np.tanh(0.5 * z / temperature))  # numerically safe sigmoid
    lo, hi = float(s.min()), float(s.max())
    u = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
    out = np.round(u * 255.0).astype(np.uint8)
    return out[..., 0] if out.ndim == 3 and out.shape[2] == 1 else out
