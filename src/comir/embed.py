"""Inference: load a trained run and turn images into CoMIRs, whole or in overlapping tiles.

A run folder (``comir train --out RUN``) holds ``config.json`` (model hyper-parameters and
the :class:`comir.data.DataSpec` that prepares raw images exactly as in training) and
``model.safetensors`` (weights; read without unpickling).

Tiled inference
---------------
Large images are split into equal tiles of at most ``tile × tile`` px on the network's
pooling grid of the image padded exactly as the encoder pads a whole image, and the tile
outputs are blended with weights that vanish within the network's context of interior
tile edges (:func:`comir.tiling.plan_tiles`). The context is computed exactly from the
architecture (:func:`comir.tiling.receptive_halo`: 7 px for a one-pooling toy model, 67
px for the ``small`` preset, 887 px for ``paper``; measured equal by perturbing input
rows). With ``overlap ≥`` twice that, rounded up to the pooling multiple
(:meth:`ComirModel.exact_overlap`: 136 px for ``small``, 1792 px for ``paper``; the
default ``overlap=None``), the tiled result equals the whole-image result up to float
rounding everywhere, including the image border (image edges are treated identically in
both passes; measured max |tiled − whole| / std 1e-6 to 6e-6, tests require < 1e-5). A smaller
``--overlap`` gets one warning naming the exact value; it still blends smoothly but
approximates the whole-image result near tile seams (``--tile 256 --overlap 32``: 4e-4).
The tiles of a row share forward passes (:mod:`comir.infer`); with ``runtime="onnx"``
they run through ONNX Runtime (:mod:`comir.ort`, optional; 1.9× eager torch here).

Memory. Whole-image inference of the ``small`` preset on CPU peaks at about 1.6 GB per
megapixel (measured, float32), so images above ``max_pixels`` (default
:data:`MAX_PIXELS` = 4 MP) are tiled automatically with tiles of :data:`DEFAULT_TILE`
px, or twice the exact overlap where that is larger (3584 px for ``paper``: exactness is
expensive for that deep network; give ``--tile``/``--overlap`` to trade it for memory).
Tiles are processed one row of tiles at a time: the input is read and the output written
in bands of ``tile`` rows (:mod:`comir.batch` streams single-page TIFF and ``.npy`` files
and writes float32 BigTIFF / ``.npy`` band by band), so peak memory is set by the tile
size and the image width, not the image size (16384² with 1024 px tiles: 1.4 GB peak
RSS, see benchmarks/notes.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from comir.errors import ComirError, warn
from comir.infer import RowSample, run_tiles
from comir.input_stats import STATS_KEY, check_input
from comir.io import IMAGE_SUFFIXES, to_uint8, write_image
from comir.runtime import autocast_dtype, check_precision
from comir.tiling import TilePlan, exact_overlap, plan_tiles, receptive_halo, receptive_radius

FORMATS = ("tif", "png", "npy")
#: Images with more pixels than this are tiled automatically (whole-image inference of the
#: ``small`` preset needs ~1.6 GB per megapixel on CPU).
MAX_PIXELS = 4 * 2**20
#: Inference runtimes (:attr:`ComirModel.runtime`).
RUNTIMES = ("torch", "onnx")
#: Tile side used when tiling is automatic.
DEFAULT_TILE = 1024


@dataclass
class ComirModel:
    """A trained model pair with its input preparation, ready for inference.

    ``model`` is the :class:`comir.model.EncoderPair`, ``data`` the
    :class:`comir.data.DataSpec` that prepares raw images as in training, ``config`` the
    run's ``config.json``. Inputs whose prepared intensities lie far outside the training
    data recorded there are reported with one warning per image
    (:mod:`comir.input_stats`).
    """

    model: torch.nn.Module
    data: object  # comir.data.DataSpec
    config: dict
    device: torch.device
    #: Where the model came from (run folder or ``sample:<name>``), for reports.
    name: str | None = None
    #: Inference precision: ``fp32`` (default), ``bf16`` (autocast; fast on CPUs with
    #: AMX/AVX512-BF16, see benchmarks/notes.md) or ``fp16`` (autocast, CUDA).
    precision: str = "fp32"
    #: Run the encoders through ``torch.compile`` (compiled once per input shape: pays off
    #: for many equal tiles or patches; measured in benchmarks/notes.md).
    compile: bool = False
    #: ``torch`` (default) or ``onnx``: tiles (and inputs on the pooling grid) run through
    #: ONNX Runtime on CPU (optional ``pip install onnxruntime onnx``; :mod:`comir.ort`:
    #: 1.9× faster than eager torch on 776² tiles, max deviation 2.7e-6 of the std).
    runtime: str = "torch"
    _compiled: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ComirError(f"unknown runtime {self.runtime!r}; use one of {', '.join(RUNTIMES)}")

    @property
    def input_stats(self) -> dict | None:
        """Training input statistics of the run (``None`` for runs made without them)."""
        return self.config.get(STATS_KEY) if isinstance(self.config, dict) else None

    def check_input(self, x: np.ndarray, modality: str, where: str = "") -> bool:
        """Warn once if prepared input ``x`` ``(H, W, C)`` of ``modality`` lies far outside
        the training data (:func:`comir.input_stats.check_input`); returns whether it did."""
        norm = str(getattr(self.data, f"norm_{modality}", ""))
        return check_input(x, self.input_stats, modality, where, norm)

    @property
    def latent_channels(self) -> int:
        """Representation channels ``L``."""
        return int(self.model.encoders["a"].config.out_channels)

    def _check_modality(self, modality: str) -> str:
        m = str(modality).lower()
        if m not in ("a", "b"):
            raise ComirError(f"modality must be 'a' or 'b', got {modality!r}")
        return m

    def receptive_radius(self, modality: str = "a") -> int:
        """Receptive-field radius (px) of the encoder of ``modality``."""
        return receptive_radius(self.model.encoders[self._check_modality(modality)].config)

    def halo(self, modality: str = "a") -> tuple[int, int]:
        """Exact ``(before, after)`` context (px) of the encoder of ``modality``
        (:func:`comir.tiling.receptive_halo`; 67 px each for the ``small`` preset)."""
        return receptive_halo(self.model.encoders[self._check_modality(modality)].config)

    def exact_overlap(self, modality: str = "a") -> int:
        """Smallest tile overlap giving tiled == whole-image output for this model.

        ``before + after`` of :meth:`halo`, rounded up to the pooling multiple (136 px for
        the ``small`` preset, 1792 px for ``paper``; :func:`comir.tiling.exact_overlap`).
        """
        return exact_overlap(self.model.encoders[self._check_modality(modality)].config)

    def _prepare(self, image: np.ndarray, modality: str, where: str, check: bool) -> np.ndarray:
        """Prepared ``(H, W, C)`` float32 input, checked against the training data."""
        x = self.data.prepare(image, modality, where=where)
        if check:
            self.check_input(x, modality, where)
        return x

    @staticmethod
    def _to_tensor(x: np.ndarray) -> torch.Tensor:
        """``(H, W, C)`` -> ``(1, C, H, W)``."""
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """``(B, C, H, W)`` on CPU -> ``(B, L, H, W)`` float32 on CPU."""
        self.model.eval()
        dt = autocast_dtype(self.precision)
        net = self.model.encoders[modality]
        if self.runtime == "onnx" and dt is None and self.device.type == "cpu":
            from comir.ort import session_for

            ort_net = session_for(net)
            if ort_net.accepts(x):
                return ort_net(x).float()
        if self.compile:
            if modality not in self._compiled:
                self._compiled[modality] = torch.compile(net, dynamic=False)
            net = self._compiled[modality]
        with torch.autocast(self.device.type, dtype=dt or torch.float32, enabled=dt is not None):
            z = net(x.to(self.device))
        return z.float().cpu()

    def embed(
        self,
        image: np.ndarray,
        modality: str,
        *,
        tile: int | None = None,
        overlap: int | None = None,
        where: str = "",
        max_pixels: int | None = MAX_PIXELS,
        check: bool = True,
    ) -> np.ndarray:
        """Encode one raw image.

        Parameters
        ----------
        image : ndarray
            ``(H, W)`` or ``(H, W, C)`` as returned by :func:`comir.io.read_image`; the
            stored channel selection and normalisation are applied.
        modality : {"a", "b"}
        tile : int, optional
            Tile size (rounded up to the pooling multiple); ``None`` encodes the whole
            image at once unless it has more than ``max_pixels`` pixels.
        overlap : int, optional
            Overlap of neighbouring tiles; ``None`` uses :meth:`exact_overlap` (tiled ==
            whole-image output, see the module docstring).
        where : str
            File name used in error messages and the out-of-distribution warning.
        max_pixels : int, optional
            Larger images are tiled with ``tile or DEFAULT_TILE``; ``None`` never tiles
            automatically.
        check : bool
            Warn when the input is far outside the training data (:meth:`check_input`);
            off for synthetic inputs such as the zero-padded rotations of
            :func:`comir.equivariance.equivariance_correlation`.

        Returns
        -------
        ndarray
            ``(H, W, L)`` float32 representation.
        """
        m = self._check_modality(modality)
        h, w = image.shape[:2]
        tile = self._auto_tile(h, w, tile, max_pixels, m)
        x = self._prepare(image, m, where, check)
        if tile is None or (tile >= h and tile >= w):
            z = self._forward(self._to_tensor(x), m)
            return np.ascontiguousarray(z[0, :, :h, :w].permute(1, 2, 0).numpy(), dtype=np.float32)
        out = np.empty((h, w, self.latent_channels), dtype=np.float32)

        def sink(r0: int, rows: np.ndarray) -> None:
            out[r0 : r0 + rows.shape[0]] = rows

        self.embed_rows(lambda r0, r1: x[r0:r1], (h, w), m, sink, tile=tile, overlap=overlap)
        return out

    def _auto_tile(
        self, h: int, w: int, tile: int | None, max_pixels: int | None, modality: str = "a"
    ) -> int | None:
        """The tile size to use: ``tile``, or an automatic one above ``max_pixels``."""
        if tile is None and max_pixels is not None and h * w > max_pixels:
            return max(DEFAULT_TILE, 2 * self.exact_overlap(modality))
        return tile

    def embed_rows(
        self,
        read_rows,
        shape: tuple[int, int],
        modality: str,
        write_rows,
        *,
        tile: int,
        overlap: int | None = None,
        progress=None,
    ) -> TilePlan:
        """Tiled inference with bounded memory: read and write the image in row bands.

        Parameters
        ----------
        read_rows : callable
            ``read_rows(r0, r1) -> (r1 - r0, W, C)`` float32 network input (prepared).
        shape : (int, int)
            Image size ``(H, W)``.
        modality : {"a", "b"}
        write_rows : callable
            ``write_rows(r0, rows)`` receives finished output rows ``(n, W, L)`` float32,
            top to bottom, each row exactly once.
        tile, overlap : int
            As for :meth:`embed`.
        progress : object, optional
            Gets ``update(1)`` per tile (e.g. a tqdm bar).

        Returns
        -------
        TilePlan
            The layout used.

        Notes
        -----
        Memory holds one row of tiles: the prepared input band ``(tile, W, C)``, the
        output accumulator ``(tile, W, L)`` and the activations of
        ``max(1, comir.infer.TILE_BATCH_PIXELS // tile²)`` tiles.
        """
        m = self._check_modality(modality)
        plan = self.tile_plan(shape, m, tile, overlap)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return self._forward(x, m)

        n_lat = self.latent_channels
        return run_tiles(forward, read_rows, shape, write_rows, plan, n_lat, progress)

    def tile_plan(
        self,
        shape: tuple[int, int],
        modality: str,
        tile: int,
        overlap: int | None = None,
        warn_inexact: bool = True,
    ) -> TilePlan:
        """The tile layout of an ``(H, W)`` image (:func:`comir.tiling.plan_tiles`).

        ``overlap=None``: :meth:`exact_overlap`. A smaller overlap gets one warning with
        the exact value (``warn_inexact``) when the image needs more than one tile.
        """
        m = self._check_modality(modality)
        enc = self.model.encoders[m]
        exact = self.exact_overlap(m)
        if overlap is None:
            overlap = exact
            if tile <= overlap:
                raise ComirError(
                    f"--tile {tile} is too small for this model: exact tiling needs an overlap "
                    f"of {overlap} px; use --tile {2 * overlap} or more (or set --overlap)"
                )
        h, w = (int(v) for v in shape)
        plan = plan_tiles(h, w, int(tile), int(overlap), int(enc.multiple), self.halo(m))
        if warn_inexact and plan.overlap < exact and (len(plan.ys) > 1 or len(plan.xs) > 1):
            warn(
                f"--overlap {overlap} is below the {exact} px this model needs for tiles to "
                f"equal the whole-image output (seams differ slightly); use --overlap {exact} "
                "or leave it unset"
            )
        return plan

    def embed_batch(
        self,
        images: Sequence[np.ndarray],
        modality: str,
        where: Sequence[str] | None = None,
        check: bool = True,
    ) -> list[np.ndarray]:
        """Encode several raw images; images of equal size share one forward pass.

        ``where`` names the images in messages (default ``image <i>``); ``check`` as for
        :meth:`embed`. Returns a list of ``(H, W, L)`` float32 arrays in input order.
        """
        m = self._check_modality(modality)
        names = [f"image {i}" for i in range(len(images))] if where is None else list(where)
        prepared = [self._to_tensor(self._prepare(im, m, n, check)) for im, n in zip(images, names)]
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


def load_model(
    run: str | Path, device: str = "auto", precision: str = "fp32", runtime: str = "torch"
) -> ComirModel:
    """Load ``RUN/config.json`` + ``RUN/model.safetensors`` for inference.

    Parameters
    ----------
    run : path or ``"sample:<name>"``
        A ``comir train`` output folder, or the model shipped with a bundled sample.
    device : {"auto", "cpu", "cuda", "mps"}
    precision : {"fp32", "bf16", "fp16"}
        Inference precision (autocast); see :attr:`ComirModel.precision`.
    runtime : {"torch", "onnx"}
        See :attr:`ComirModel.runtime`.

    Raises
    ------
    ComirError
        Missing or corrupt files, or weights that do not match the configuration.
    """
    from comir.data import DataSpec
    from comir.model import EncoderPair
    from comir.runtime import load_weights, resolve_device

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
    model = EncoderPair.from_config_dict(model_cfg)
    spec = DataSpec.from_dict(data_cfg)
    load_weights(model, w_path)
    check_precision(precision)
    dev = resolve_device(device)
    model.to(dev).eval()
    return ComirModel(
        model=model, data=spec, config=config, device=dev, name=str(run), precision=precision,
        runtime=runtime,
    )  # fmt: skip


def embed_files(
    model: ComirModel,
    inputs: Sequence[str | os.PathLike],
    modality: str,
    out_dir: str | os.PathLike,
    fmt: str = "tif",
    tile: int | None = None,
    overlap: int | None = None,
    skip_existing: bool = True,
    *,
    max_pixels: int | None = MAX_PIXELS,
    shard: tuple[int, int] | str | None = None,
    progress: bool = False,
    scheduler=None,
) -> list[Path]:
    """Embed image files into ``out_dir/<stem>.<fmt>`` (atomic writes, resumable).

    ``fmt``: ``tif`` float32 (default), ``png`` 8-bit via :func:`to_uint8` (L = 1 or 3),
    ``npy`` float32. Inputs are checked (existence, type, unique names) before anything is
    written.

    Tiled images (``tile`` given, or more than ``max_pixels`` pixels) with ``tif``/``npy``
    output are streamed: single-page TIFF and ``.npy`` inputs are read in bands and the
    output is written band by band into a BigTIFF / ``.npy`` (memory bounded by the tile
    size and image width, see the module docstring).

    Resuming: with ``skip_existing`` finished outputs are kept; an output exists under its
    final name only when complete, and temporary ``.part`` files of an interrupted run
    are removed and redone.

    Parameters
    ----------
    shard : (I, N) or "I/N", optional
        Embed only the ``I``-th of ``N`` interleaved parts of the inputs sorted by path
        (:func:`comir.batch.shard_indices`).
    progress : bool
        Show a progress bar (images, and tiles of streamed images).
    scheduler : ``"local[:N]"``, a Dask address, Client or cluster, optional
        Embed one file per Dask future (:mod:`comir.scale`, docs/dask.md); each worker
        loads the model once. Failed files are named, then a :class:`ComirError`.

    Returns
    -------
    list of Path
        The output file of every input of this shard, in input order.
    """
    from comir.batch import (
        parse_shard,
        progress_bar,
        remove_stale_parts,
        shard_indices,
    )

    fmt = fmt.lower().lstrip(".")
    m = model._check_modality(modality)
    paths, outs = _plan_outputs(model, inputs, Path(out_dir), fmt)
    mine = shard_indices([str(p) for p in paths], parse_shard(shard))
    todo = []
    for k in mine:
        remove_stale_parts(outs[k])
        if not (skip_existing and outs[k].is_file()):
            todo.append(k)
    if scheduler is not None:
        from comir.scale import embed_paths

        settings = dict(modality=m, fmt=fmt, tile=tile, overlap=overlap, max_pixels=max_pixels)
        embed_paths(model, [(paths[k], outs[k]) for k in todo], settings, scheduler, progress)
        return [outs[k] for k in mine]
    bar = progress_bar(len(todo), "embed", progress, unit="img")
    try:
        for k in todo:
            _embed_file(model, paths[k], m, outs[k], fmt, tile, overlap, max_pixels, progress)
            bar.update(1)
    finally:
        bar.close()
    return [outs[k] for k in mine]


def _plan_outputs(
    model: ComirModel, inputs: Sequence[str | os.PathLike], out_dir: Path, fmt: str
) -> tuple[list[Path], list[Path]]:
    """Check format, inputs and output names before anything is written; ``(inputs, outputs)``."""
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
    return paths, outs


def _embed_file(
    model: ComirModel,
    path: Path,
    modality: str,
    out: Path,
    fmt: str,
    tile: int | None,
    overlap: int | None,
    max_pixels: int | None,
    progress: bool,
) -> None:
    """Embed one file into ``out``: streamed band by band when tiled, else in memory."""
    from comir.batch import open_image

    with open_image(path) as src:
        h, w = src.shape[:2]
        t = model._auto_tile(h, w, tile, max_pixels, modality)
        pointwise = getattr(model.data, f"norm_{modality}", "none") != "percentile"
        if t is not None and t < max(h, w) and fmt != "png" and src.streaming and pointwise:
            _embed_streamed(model, src, modality, out, t, overlap, progress)
        else:
            z = model.embed(
                src.read(), modality, tile=t, overlap=overlap, where=str(path), max_pixels=None
            )
            _write_output(out, z, fmt)


def _write_output(path: Path, z: np.ndarray, fmt: str) -> None:
    """Atomically write one ``(H, W, L)`` CoMIR in ``fmt``."""
    if fmt == "png":
        write_image(path, to_uint8(z))
    else:
        write_image(path, z[..., 0] if fmt == "tif" and z.shape[2] == 1 else z)


def _embed_streamed(
    model: ComirModel,
    src,
    modality: str,
    out: Path,
    tile: int,
    overlap: int | None,
    progress: bool,
) -> None:
    """Band-wise tiled embedding of an :class:`comir.batch.ImageSource` into ``out``."""
    from comir.batch import RowWriter, progress_bar

    h, w = src.shape[:2]
    n_lat = model.latent_channels
    squeeze = out.suffix == ".tif" and n_lat == 1
    where = str(src.path)
    sample = RowSample(h, w)

    def read_rows(r0: int, r1: int) -> np.ndarray:
        rows = model.data.prepare(src.read_rows(r0, r1), modality, where=where)
        sample.add(r0, rows)
        return rows

    bar = None
    with RowWriter(out, (h, w) if squeeze else (h, w, n_lat)) as writer:

        def write_rows(r0: int, rows: np.ndarray) -> None:
            writer.write_rows(r0, rows[..., 0] if squeeze else rows)

        if progress:
            plan = model.tile_plan((h, w), modality, tile, overlap, warn_inexact=False)
            bar = progress_bar(len(plan.ys) * len(plan.xs), out.name, True, unit="tile")
        try:
            model.embed_rows(
                read_rows, (h, w), modality, write_rows, tile=tile, overlap=overlap, progress=bar
            )
        finally:
            if bar is not None:
                bar.close()
    model.check_input(sample.image(), modality, where)
