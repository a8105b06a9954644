"""FC-DenseNet ("Tiramisu") encoders and :class:`EncoderPair`, the two encoders of CoMIR.

Jégou et al., "The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for Semantic
Segmentation", CVPR Workshops 2017; used as the CoMIR encoder by Pielawski, Wetzer et al.,
"CoMIR: Contrastive Multimodal Image Representation for Registration", NeurIPS 2020.

Building blocks (Jégou et al. 2017, Sec. 3 and Table 1, except where marked):

* dense layer: BN → ReLU → 3×3 conv (``growth`` channels) → dropout;
* dense block: ``n`` dense layers, each fed the concatenation of the block input and all
  earlier layer outputs;
* transition down: BN → ReLU → 1×1 conv (channels × compression) → dropout → 2×2 max-pool;
* transition up: nearest ×2 upsample → 3×3 conv → ReLU, concatenated with the skip
  connection (instead of the paper's transposed convolution: no checkerboard artefacts);
* up-path dense blocks return only their new feature maps, except the last one;
* a final 1×1 conv **without bias** to ``L`` channels, no output activation (the CoMIR
  representation, Pielawski, Wetzer et al. 2020).

:class:`EncoderPair` is the trainable ``nn.Module`` (one encoder per modality); the
inference wrapper with input preparation is :class:`comir.embed.ComirModel`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comir.errors import ComirError

__all__ = [
    "PRESETS",
    "EncoderPair",
    "Tiramisu",
    "TiramisuConfig",
    "count_parameters",
    "tiramisu_config",
]

MODALITIES = ("a", "b")


@dataclass
class TiramisuConfig:
    """Hyper-parameters of one :class:`Tiramisu` encoder.

    Parameters
    ----------
    in_channels : int
        Input channels ``C``.
    out_channels : int
        Representation channels ``L`` (1 or 3 in the paper).
    first_filters : int
        Filters of the first 3×3 convolution.
    down_layers : tuple of int
        Dense layers in each down-path block; its length is the number of poolings.
    bottleneck_layers : int
        Dense layers in the bottleneck block.
    up_layers : tuple of int or None
        Dense layers in each up-path block; ``None`` mirrors ``down_layers``.
    growth : int
        Channels added by each dense layer.
    compression : float
        Channel factor of the transition-down 1×1 convolution (0 < c ≤ 1).
    dropout : float
        Dropout probability after dense-layer and transition-down convolutions.
    """

    in_channels: int
    out_channels: int = 1
    first_filters: int = 16
    down_layers: tuple[int, ...] = (2, 2, 2)
    bottleneck_layers: int = 3
    up_layers: tuple[int, ...] | None = None
    growth: int = 12
    compression: float = 1.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("down_layers", "up_layers"):
            value = getattr(self, name)
            if value is None and name == "up_layers":
                continue
            try:
                layers = tuple(value)
            except TypeError:
                layers = (value,)
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in layers):
                raise ComirError(
                    f"model config: {name} must be a list of positive integers, got {value!r}"
                )
            setattr(self, name, layers)
        self.validate()

    @property
    def resolved_up_layers(self) -> tuple[int, ...]:
        """``up_layers``, or ``down_layers`` reversed when it is ``None``."""
        return tuple(reversed(self.down_layers)) if self.up_layers is None else self.up_layers

    def validate(self) -> None:
        """Raise :class:`ComirError` naming the first invalid field."""
        ints = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "first_filters": self.first_filters,
            "growth": self.growth,
        }
        for name, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ComirError(f"model config: {name} must be a positive integer, got {value!r}")
        if not self.down_layers or any(n < 1 for n in self.down_layers):
            raise ComirError(
                f"model config: down_layers must be a non-empty list of positive integers, "
                f"got {list(self.down_layers)}"
            )
        if len(self.resolved_up_layers) != len(self.down_layers) or any(
            n < 1 for n in self.resolved_up_layers
        ):
            raise ComirError(
                f"model config: up_layers must hold {len(self.down_layers)} positive integers "
                f"(one per down block), got {list(self.resolved_up_layers)}"
            )
        if not isinstance(self.bottleneck_layers, int) or self.bottleneck_layers < 1:
            raise ComirError(
                f"model config: bottleneck_layers must be a positive integer, "
                f"got {self.bottleneck_layers!r}"
            )

        def number(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        if not (number(self.compression) and 0.0 < self.compression <= 1.0):
            raise ComirError(
                f"model config: compression must be in (0, 1], got {self.compression!r}"
            )
        if not (number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ComirError(f"model config: dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["down_layers"] = list(self.down_layers)
        d["up_layers"] = None if self.up_layers is None else list(self.up_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TiramisuConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ComirError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ComirError(
                f"model config: unknown key(s) {unknown}; valid keys are {sorted(names)}"
            )
        if "in_channels" not in d:
            raise ComirError("model config: missing key 'in_channels'")
        kw = dict(d)
        if "down_layers" in kw:
            kw["down_layers"] = tuple(kw["down_layers"])
        if kw.get("up_layers") is not None:
            kw["up_layers"] = tuple(kw["up_layers"])
        try:
            return cls(**kw)
        except TypeError as exc:
            raise ComirError(f"model config: {exc}") from None


PRESETS: dict[str, dict] = {
    # Zurich RGB/NIR configuration of the CoMIR authors.
    "small": dict(
        first_filters=16,
        down_layers=(2, 2, 2),
        bottleneck_layers=3,
        growth=12,
        compression=1.0,
        dropout=0.0,
    ),
    # BF/SHG configuration of the CoMIR paper.
    "paper": dict(
        first_filters=32,
        down_layers=(4, 4, 4, 4, 4, 4),
        bottleneck_layers=4,
        growth=12,
        compression=0.75,
        dropout=0.2,
    ),
}


def tiramisu_config(
    preset: str, in_channels: int, out_channels: int = 1, **overrides
) -> TiramisuConfig:
    """Build a :class:`TiramisuConfig` from a named preset (``"small"`` or ``"paper"``).

    ``overrides`` replace single fields, e.g. ``growth=8``; unknown presets or fields raise
    :class:`ComirError`.
    """
    if preset not in PRESETS:
        raise ComirError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(TiramisuConfig)} - {"in_channels", "out_channels"}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ComirError(f"unknown model option(s) {bad}; valid options are {sorted(names)}")
    d = {**PRESETS[preset], **overrides, "in_channels": in_channels, "out_channels": out_channels}
    return TiramisuConfig.from_dict(d)


# --------------------------------------------------------------------------- building blocks
class DenseLayer(nn.Sequential):
    """BN → ReLU → 3×3 conv → dropout: ``(B, C_in, H, W) -> (B, growth, H, W)``."""

    def __init__(self, in_channels: int, growth: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth, 3, padding=1),
        )
        if dropout > 0:
            self.append(nn.Dropout(dropout))


class DenseBlock(nn.Module):
    """``n`` dense layers with dense connectivity.

    ``(B, C_in, H, W) -> (B, C_in + n·growth, H, W)`` when ``keep_input``, otherwise only the
    new maps ``(B, n·growth, H, W)``.
    """

    def __init__(
        self, in_channels: int, n_layers: int, growth: int, dropout: float, keep_input: bool
    ) -> None:
        super().__init__()
        self.keep_input = keep_input
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth, growth, dropout) for i in range(n_layers)
        )
        self.out_channels = (in_channels if keep_input else 0) + n_layers * growth

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return self._forward_buffer(x)
        feats = [x]
        for layer in self.layers:
            inp = feats[0] if len(feats) == 1 else torch.cat(feats, 1)
            feats.append(layer(inp))
        return torch.cat(feats if self.keep_input else feats[1:], 1)

    def _forward_buffer(self, x: Tensor) -> Tensor:
        # Inference only: layers write into one preallocated output instead of re-concatenating
        # the growing feature list (measured ~10 % faster for the paper preset on CPU, a few %
        # for small). Not usable under autograd: the in-place writes would invalidate inputs
        # saved for backward.
        c0, n = x.shape[1], len(self.layers)
        g = (self.out_channels - (c0 if self.keep_input else 0)) // n
        buf = torch.empty(
            (x.shape[0], c0 + n * g, *x.shape[2:]),
            dtype=x.dtype,
            device=x.device,
            memory_format=_memory_format(x),
        )
        buf[:, :c0] = x
        c = c0
        for layer in self.layers:
            buf[:, c : c + g] = layer(buf[:, :c])
            c += g
        return buf if self.keep_input else buf[:, c0:]


class TransitionDown(nn.Sequential):
    """BN → ReLU → 1×1 conv → dropout → 2×2 max-pool: ``(B, C, H, W) -> (B, C', H/2, W/2)``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1),
        )
        if dropout > 0:
            self.append(nn.Dropout(dropout))
        self.append(nn.MaxPool2d(2))


class TransitionUp(nn.Module):
    """Nearest ×2 upsample → 3×3 conv → ReLU, then concatenation with the skip.

    ``(B, C, h, w), skip (B, S, 2h, 2w) -> (B, C + S, 2h, 2w)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = F.relu(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), inplace=True)
        return torch.cat([up, skip], 1)


def _memory_format(x: Tensor) -> torch.memory_format:
    """``channels_last`` for an NHWC-strided 4-D tensor, else ``contiguous_format``."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


# ------------------------------------------------------------------------------- networks
class Tiramisu(nn.Module):
    """FC-DenseNet encoder: ``(B, C, H, W) -> (B, L, H, W)`` for any ``H, W``.

    Inputs whose size is not a multiple of :attr:`multiple` are reflect-padded at the bottom
    and right (replicate-padded when too small for reflection) and the output is cropped
    back, so no border pixel is lost.

    On CPU the input is processed in ``channels_last`` memory format (measured 1.2-1.5×
    faster for training and inference with oneDNN convolutions); the output keeps the input's
    memory format. On CUDA the caller chooses (``model.to(memory_format=torch.channels_last)``
    with autocast is the fast path there).
    """

    #: Convert CPU inputs to ``channels_last`` internally (see class docstring).
    cpu_channels_last: bool = True

    def __init__(self, config: TiramisuConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        g, p = config.growth, config.dropout
        self.first = nn.Conv2d(config.in_channels, config.first_filters, 3, padding=1)
        c = config.first_filters
        self.down_blocks = nn.ModuleList()
        self.trans_down = nn.ModuleList()
        skips: list[int] = []
        for n in config.down_layers:
            block = DenseBlock(c, n, g, p, keep_input=True)
            self.down_blocks.append(block)
            c = block.out_channels
            skips.append(c)
            c_out = max(1, int(c * config.compression))
            self.trans_down.append(TransitionDown(c, c_out, p))
            c = c_out
        self.bottleneck = DenseBlock(c, config.bottleneck_layers, g, p, keep_input=False)
        c = self.bottleneck.out_channels
        self.trans_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        up = config.resolved_up_layers
        for i, (n, s) in enumerate(zip(up, reversed(skips))):
            self.trans_up.append(TransitionUp(c))
            block = DenseBlock(c + s, n, g, p, keep_input=i == len(up) - 1)
            self.up_blocks.append(block)
            c = block.out_channels
        self.final = nn.Conv2d(c, config.out_channels, 1, bias=False)

    @property
    def multiple(self) -> int:
        """Spatial size divisor required internally, ``2 ** len(down_layers)``."""
        return 2 ** len(self.config.down_layers)

    def forward(self, x: Tensor) -> Tensor:
        """Encode ``x`` of shape ``(B, C, H, W)`` into ``(B, L, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        in_format = _memory_format(x)
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        if self.cpu_channels_last and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.first(x)
        skips = []
        for block, down in zip(self.down_blocks, self.trans_down):
            y = block(y)
            skips.append(y)
            y = down(y)
        y = self.bottleneck(y)
        for up, block, skip in zip(self.trans_up, self.up_blocks, reversed(skips)):
            y = block(up(y, skip))
        y = self.final(y)
        if ph or pw:
            y = y[..., :h, :w]
        return y.contiguous(memory_format=in_format)


class EncoderPair(nn.Module):
    """One :class:`Tiramisu` per modality (no weight sharing), keys ``"a"`` and ``"b"``.

    The network trained by :func:`comir.train.train`; :func:`comir.embed.load_model` wraps it
    with its input preparation as a :class:`comir.embed.ComirModel`.
    """

    def __init__(self, config_a: TiramisuConfig, config_b: TiramisuConfig) -> None:
        super().__init__()
        if config_a.out_channels != config_b.out_channels:
            raise ComirError(
                f"model config: both modalities need the same out_channels, got "
                f"{config_a.out_channels} (a) and {config_b.out_channels} (b)"
            )
        self.encoders = nn.ModuleDict({"a": Tiramisu(config_a), "b": Tiramisu(config_b)})

    def forward(self, x: Tensor, modality: str) -> Tensor:
        """Encode ``x`` ``(B, C_m, H, W)`` of modality ``"a"`` or ``"b"`` into ``(B, L, H, W)``."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be 'a' or 'b', got {modality!r}")
        return self.encoders[modality](x)

    def config_dict(self) -> dict:
        """``{"a": config_a, "b": config_b}`` as JSON-able dicts."""
        return {m: self.encoders[m].config.to_dict() for m in MODALITIES}

    @classmethod
    def from_config_dict(cls, d: dict) -> EncoderPair:
        """Inverse of :meth:`config_dict` (weights are freshly initialised)."""
        missing = [m for m in MODALITIES if m not in d]
        if missing:
            raise ComirError(f"model config: missing modality section(s) {missing}")
        return cls(TiramisuConfig.from_dict(d["a"]), TiramisuConfig.from_dict(d["b"]))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
