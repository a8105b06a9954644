"""Inference: load a trained run and turn images into CoMIRs, whole or in overlapping tiles.

A run folder (``comir train --out RUN``) holds ``config.json`` (model hyper-parameters and
the :class:`comir.data.DataSpec` that prepares raw images exactly as in training) and
``model.safetensors`` (weights; read without unpickling).

Tiled inference
---------------
Large images are split into ``tile × tile`` windows whose origins lie on the network's
pooling grid (multiples of ``2 ** len(down_layers)``) of the image reflect-padded at the
bottom/right exactly as the encoder pads a whole image, so every tile sees the same
pixels and pooling cells as the whole-image pass. Tile outputs are blended with weights
that are zero within ``margin`` pixels of a tile edge that lies inside the image and rise
with a raised cosine over the rest of the overlap; the weights of two neighbours sum to 1.
With ``margin`` at least the receptive-field radius of the network
(:func:`receptive_radius`; 8 px for a one-pooling toy model, 74 px for the ``small``
preset), which requires ``overlap >= 2 * radius + ramp``, the tiled result equals the
whole-image result up to float rounding everywhere, including the image border (there is
no border band: image edges are treated identically in both passes). Smaller overlaps
still blend smoothly but approximate the whole-image result near tile seams.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from comir.errors import ComirError
from comir.io import IMAGE_SUFFIXES, read_image, write_image

FORMATS = ("tif", "png", "npy")
#: Tiles encoded per forward pass.
TILE_BATCH = 8


def receptive_radius(config) -> int:
    """Upper bound of the receptive-field radius (px) of a :class:`~comir.model.Tiramisu`.

    Follows the deepest path: each 3×3 conv at scale ``s`` adds ``s``, each 2×2 max-pool
    adds ``s`` and doubles the scale, each nearest ×2 upsample adds ``s/2`` and halves it.
    """
    r, s = 1, 1  # first 3×3 conv
    for n in config.down_layers:
        r += n * s + s
        s *= 2
    r += config.bottleneck_layers * s
    up = config.up_layers if config.up_layers is not None else tuple(reversed(config.down_layers))
    for n in up:
        s //= 2
        r += s + s + n * s  # upsample, 3×3 conv, dense block
    return int(r)


def _window(n: int, lead: bool, trail: bool, overlap: int, margin: int) -> np.ndarray:
    """1-D blending weights ``(n,)`` of a tile; ``lead``/``trail``: that edge is interior."""
    d = np.arange(n, dtype=np.float64)
    ramp = max(overlap - 2 * margin, 1)

    def rise(dist: np.ndarray) -> np.ndarray:
        t = np.clip((dist - margin + 0.5) / ramp, 0.0, 1.0)
        return np.sin(0.5 * math.pi * t) ** 2

    w = np.ones(n)
    if lead:
        w *= rise(d)
    if trail:
        w *= rise(n - 1 - d)
    return w


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Reflect-pad ``(B, C, H, W)`` at the bottom/right to multiples of ``m`` (as Tiramisu does)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


@dataclass
class ComirModel:
    """A trained model pair with its input preparation, ready for inference."""

    model: torch.nn.Module
    data: object  # comir.data.DataSpec
    config: dict
    device: torch.device

    @property
    def latent_channels(self) -> int:
        """Representation channels ``L``."""
        return int(self.model.encoders["a"].config.out_channels)

    def _check_modality(self, modality: str) -> str:
        m = str(modality).lower()
        if m not in ("a", "b"):
            raise ComirError(f"modality must be 'a' or 'b', got {modality!r}")
        return m

    def _prepare(self, image: np.ndarray, modality: str, where: str) -> torch.Tensor:
        x = self.data.prepare(image, modality, where=where)  # (H, W, C) float32
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """``(B, C, H, W)`` on CPU -> ``(B, L, H, W)`` float32 on CPU."""
        self.model.eval()
        return self.model(x.to(self.device), modality).float().cpu()

    def embed(
        self,
        image: np.ndarray,
        modality: str,
        *,
        tile: int | None = None,
        overlap: int = 32,
        where: str = "",
    ) -> np.ndarray:
        """Encode one raw image.

        Parameters
        ----------
        image : ndarray
            ``(H, W)`` or ``(H, W, C)`` as returned by :func:`comir.io.read_image`; the
            stored channel selection and normalisation are applied.
        modality : {"a", "b"}
        tile : int, optional
            Tile size for large images (rounded up to the pooling multiple); ``None``
            encodes the whole image at once.
        overlap : int
            Overlap of neighbouring tiles (see the module docstring for exactness).
        where : str
            File name used in error messages.

        Returns
        -------
        ndarray
            ``(H, W, L)`` float32 representation.
        """
        m = self._check_modality(modality)
        x = self._prepare(image, m, where)
        h, w = x.shape[-2:]
        if tile is None or (tile >= h and tile >= w):
            z = self._forward(x, m)
        else:
            z = self._embed_tiled(x, m, int(tile), int(overlap))
        return np.ascontiguousarray(z[0, :, :h, :w].permute(1, 2, 0).numpy(), dtype=np.float32)

    def _embed_tiled(self, x: torch.Tensor, m: str, tile: int, overlap: int) -> torch.Tensor:
        """Blend overlapping tiles of ``x (1, C, H, W)``; returns ``(1, L, Hp, Wp)``."""
        enc = self.model.encoders[m]
        mult = int(enc.multiple)
        if tile < 1 or overlap < 0 or overlap >= tile:
            raise ComirError(
                f"invalid tiling tile={tile}, overlap={overlap}; need tile > overlap >= 0"
            )
        tile = -(-tile // mult) * mult
        stride = max(mult, (tile - overlap) // mult * mult)
        overlap = tile - stride
        rf = receptive_radius(enc.config)
        ramp = max(overlap - 2 * rf, overlap // 4, 1)
        margin = max((overlap - ramp) // 2, 0)

        xp = _pad_to_multiple(x, mult)
        hp, wp = xp.shape[-2:]
        th, tw = min(tile, hp), min(tile, wp)
        ys, xs = _starts(hp, th, stride), _starts(wp, tw, stride)
        wy = [_window(th, y > 0, y + th < hp, overlap, margin) for y in ys]
        wx = [_window(tw, c > 0, c + tw < wp, overlap, margin) for c in xs]
        boxes = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
        out = torch.zeros((1, self.latent_channels, hp, wp), dtype=torch.float64)
        wsum = torch.zeros((1, 1, hp, wp), dtype=torch.float64)
        for k in range(0, len(boxes), TILE_BATCH):
            chunk = boxes[k : k + TILE_BATCH]
            batch = torch.cat([xp[..., ys[i] : ys[i] + th, xs[j] : xs[j] + tw] for i, j in chunk])
            z = self._forward(batch, m).double()
            for (i, j), zt in zip(chunk, z):
                wt = torch.from_numpy(np.outer(wy[i], wx[j]))
                sl = (..., slice(ys[i], ys[i] + th), slice(xs[j], xs[j] + tw))
                out[sl] += zt * wt
                wsum[sl] += wt
        return (out / wsum).float()

    def embed_batch(self, images: Sequence[np.ndarray], modality: str) -> list[np.ndarray]:
        """Encode several raw images; images of equal size share one forward pass.

        Returns a list of ``(H, W, L)`` float32 arrays in input order.
        """
        m = self._check_modality(modality)
        prepared = [self._prepare(im, m, f"image {i}") for i, im in enumerate(images)]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(prepared):
            groups.setdefault(tuple(x.shape), []).append(i)
        out: list[np.ndarray | None] = [None] * len(prepared)
        for idx in groups.values():
            z = self._forward(torch.cat([prepared[i] for i in idx]), m)
            for i, zi in zip(idx, z):
                out[i] = np.ascontiguousarray(zi.permute(1, 2, 0).numpy(), dtype=np.float32)
        return out  # type: ignore[return-value]


def _resolve_run(run: str | os.PathLike) -> Path:
    s = str(run)
    if s.startswith("sample:"):
        from comir import samples

        return samples.model_dir(s[len("sample:") :])
    return Path(run)


def load_model(run: str | Path, device: str = "auto") -> ComirModel:
    """Load ``RUN/config.json`` + ``RUN/model.safetensors`` for inference.

    Parameters
    ----------
    run : path or ``"sample:<name>"``
        A ``comir train`` output folder, or the model shipped with a bundled sample.
    device : {"auto", "cpu", "cuda", "mps"}

    Raises
    ------
    ComirError
        Missing or corrupt files, or weights that do not match the configuration.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from comir.data import DataSpec
    from comir.model import CoMIRModel
    from comir.train import load_weights_state, resolve_device

    path = _resolve_run(run)
    if not path.is_dir():
        raise ComirError(f"{path}: model folder not found; give the --out folder of `comir train`")
    cfg_path, w_path = path / "config.json", path / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            hint = (
                "training has not finished; resume it with `comir train ... --resume`"
                if (path / "checkpoint").is_dir()
                else "not a comir run folder"
            )
            raise ComirError(f"{p}: missing; {hint}")
    try:
        config = json.loads(cfg_path.read_text())
        model_cfg, data_cfg = config["model"], config["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ComirError(f"{cfg_path}: corrupt run configuration ({exc}); retrain") from None
    model = CoMIRModel.from_config_dict(model_cfg)
    spec = DataSpec.from_dict(data_cfg)
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ComirError(f"{w_path}: corrupt weights file ({exc}); retrain or restore") from None
    load_weights_state(model, state, str(w_path))
    dev = resolve_device(device)
    model.to(dev).eval()
    return ComirModel(model=model, data=spec, config=config, device=dev)


def to_uint8(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """8-bit export: ``sigmoid(z / T)`` min–max scaled to 0..255.

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


def embed_files(
    model: ComirModel,
    inputs: Sequence[str | os.PathLike],
    modality: str,
    out_dir: str | os.PathLike,
    fmt: str = "tif",
    tile: int | None = None,
    overlap: int = 32,
    skip_existing: bool = True,
) -> list[Path]:
    """Embed image files into ``out_dir/<stem>.<fmt>`` (atomic writes).

    ``fmt``: ``tif`` float32 (default), ``png`` 8-bit via :func:`to_uint8` (L = 1 or 3),
    ``npy`` float32. Existing outputs are kept when ``skip_existing``. Inputs are checked
    (existence, type, unique names) before anything is written.

    Returns
    -------
    list of Path
        The output file of every input, in input order.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ComirError(f"unsupported output format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "png" and model.latent_channels not in (1, 3):
        raise ComirError(
            f"PNG export needs 1 or 3 representation channels, the model has "
            f"{model.latent_channels}; use --format tif or npy"
        )
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ComirError("no input images given")
    for p in paths:
        if not p.is_file():
            raise ComirError(f"{p}: input image not found; check the path")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise ComirError(
                f"{p}: unsupported file type {p.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}"
            )
    out_dir = Path(out_dir)
    outs = [out_dir / f"{p.stem}.{fmt}" for p in paths]
    seen: dict[Path, Path] = {}
    for p, o in zip(paths, outs):
        if o in seen:
            raise ComirError(
                f"{p}: same output name {o.name} as {seen[o]}; embed them into separate folders"
            )
        seen[o] = p
    if out_dir.exists() and not out_dir.is_dir():
        raise ComirError(f"{out_dir}: exists and is not a folder; choose another --out")
    for p, o in zip(paths, outs):
        if skip_existing and o.is_file():
            continue
        z = model.embed(read_image(p), modality, tile=tile, overlap=overlap, where=str(p))
        if fmt == "png":
            write_image(o, to_uint8(z))
        else:
            write_image(o, z[..., 0] if fmt == "tif" and z.shape[2] == 1 else z)
    return outs
