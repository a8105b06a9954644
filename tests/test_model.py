"""FC-DenseNet encoders: shapes, padding, parameter counts, configs, gradients."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from comir.errors import ComirError
from comir.model import (
    PRESETS,
    EncoderPair,
    Tiramisu,
    TiramisuConfig,
    count_parameters,
    tiramisu_config,
)


def tiny(in_channels: int = 2, **kw) -> TiramisuConfig:
    d = dict(first_filters=4, down_layers=(1, 2), bottleneck_layers=1, growth=3)
    return TiramisuConfig(in_channels=in_channels, **{**d, **kw})


def expected_parameters(cfg: TiramisuConfig) -> int:
    """Parameter count derived by hand from the architecture (Jégou et al. 2017, Table 1)."""
    g = cfg.growth

    def dense(c: int, n: int) -> int:  # BN (2c') + 3x3 conv (c'·g·9 + g) for each layer
        return sum(2 * (c + i * g) + (c + i * g) * g * 9 + g for i in range(n))

    total = cfg.in_channels * cfg.first_filters * 9 + cfg.first_filters
    c, skips = cfg.first_filters, []
    for n in cfg.down_layers:
        total += dense(c, n)
        c += n * g
        skips.append(c)
        c_out = int(c * cfg.compression)
        total += 2 * c + c * c_out + c_out  # BN, 1x1 conv
        c = c_out
    total += dense(c, cfg.bottleneck_layers)
    c = cfg.bottleneck_layers * g
    ups = cfg.up_layers or tuple(reversed(cfg.down_layers))
    for i, (n, s) in enumerate(zip(ups, reversed(skips))):
        total += c * c * 9 + c  # transition-up 3x3 conv
        total += dense(c + s, n)
        c = (c + s + n * g) if i == len(ups) - 1 else n * g
    return total + c * cfg.out_channels  # final 1x1 conv, no bias


@pytest.mark.parametrize(
    "preset, in_channels, out_channels, count",
    [("small", 3, 1, 164_888), ("small", 1, 3, 164_776), ("paper", 3, 1, 1_053_820)],
)
def test_preset_parameter_counts(preset, in_channels, out_channels, count, capsys) -> None:
    cfg = tiramisu_config(preset, in_channels, out_channels)
    model = Tiramisu(cfg)
    n = count_parameters(model)
    with capsys.disabled():
        print(f"\n{preset} preset, C={in_channels}, L={out_channels}: {n} parameters")
    assert n == expected_parameters(cfg)
    assert n == count  # stable across versions: changing it breaks shipped weights


def test_final_conv_has_no_bias_and_blocks_follow_spec() -> None:
    model = Tiramisu(tiramisu_config("paper", 3, 1))
    assert model.final.bias is None
    assert model.final.kernel_size == (1, 1)
    assert model.multiple == 64
    assert len(model.down_blocks) == 6 and len(model.up_blocks) == 6
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) > 0
    assert (
        sum(isinstance(m, nn.Dropout) for m in Tiramisu(tiramisu_config("small", 3)).modules()) == 0
    )
    # up-path blocks return only their new maps, except the last one
    assert [b.keep_input for b in model.up_blocks] == [False] * 5 + [True]
    assert model.bottleneck.out_channels == 4 * 12


def test_odd_size_output_and_borders_are_kept() -> None:
    torch.manual_seed(0)
    model = Tiramisu(tiramisu_config("small", 3, 2)).eval()
    x = torch.rand(2, 3, 37, 50, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 2, 37, 50)
    # the bottom-right output pixel depends on the input pixels right there
    y[0, :, 36, 49].sum().backward()
    g = x.grad[0].abs().sum(0)
    assert g[36, 49] > 0 and g[34:, 47:].sum() > 0.1 * g.sum()
    assert x.grad[1].abs().sum() == 0  # eval mode: samples are independent


def test_padding_is_reflect_then_crop() -> None:
    torch.manual_seed(1)
    model = Tiramisu(tiny()).eval()  # multiple 4
    x = torch.rand(1, 2, 9, 14)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 3), (0, 2)), mode="reflect")
    with torch.no_grad():
        ref = model(torch.from_numpy(padded))[..., :9, :14]
        torch.testing.assert_close(model(x), ref)
        # too small to reflect: replicate (edge) padding
        small = torch.rand(1, 2, 2, 3)
        padded = np.pad(small.numpy(), ((0, 0), (0, 0), (0, 2), (0, 1)), mode="edge")
        ref = model(torch.from_numpy(padded))[..., :2, :3]
        torch.testing.assert_close(model(small), ref)


def test_memory_formats_and_inference_path_agree() -> None:
    torch.manual_seed(2)
    model = Tiramisu(tiramisu_config("small", 3, 3)).eval()
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        ref = model(x)  # preallocated-buffer path
    torch.testing.assert_close(model(x).detach(), ref, rtol=1e-5, atol=1e-5)  # autograd path
    with torch.no_grad():
        cl = model(x.contiguous(memory_format=torch.channels_last))
        assert cl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
        model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
        model.cpu_channels_last = False
        out = model(x)
        assert out.is_contiguous()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_gradient_flows_to_every_parameter() -> None:
    torch.manual_seed(3)
    model = Tiramisu(tiny(dropout=0.1, compression=0.5)).train()
    y = model(torch.rand(2, 2, 12, 12))
    (y**2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_paper_preset_runs() -> None:
    torch.manual_seed(4)
    model = Tiramisu(tiramisu_config("paper", 1, 1)).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 1, 70, 65))
    assert y.shape == (1, 1, 70, 65) and torch.isfinite(y).all() and y.std() > 0


def test_config_roundtrip_and_comir_model() -> None:
    cfg_a = tiramisu_config("small", 3, 1, growth=8)
    cfg_b = tiramisu_config("small", 1, 1, up_layers=(1, 2, 3))
    model = EncoderPair(cfg_a, cfg_b)
    d = json.loads(json.dumps(model.config_dict()))
    assert d["a"]["growth"] == 8 and d["b"]["up_layers"] == [1, 2, 3]
    clone = EncoderPair.from_config_dict(d)
    assert clone.config_dict() == model.config_dict()
    assert {k: v.shape for k, v in clone.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    # no weight sharing between the modalities
    ids_a = {id(p) for p in model.encoders["a"].parameters()}
    assert ids_a.isdisjoint(id(p) for p in model.encoders["b"].parameters())
    assert count_parameters(model) == sum(count_parameters(e) for e in model.encoders.values())
    x = torch.rand(2, 1, 16, 16)
    assert model(x, "b").shape == (2, 1, 16, 16)
    with pytest.raises(ValueError):
        model(x, "c")


def test_config_errors() -> None:
    with pytest.raises(ComirError, match="unknown model preset"):
        tiramisu_config("huge", 3)
    with pytest.raises(ComirError, match="unknown model option"):
        tiramisu_config("small", 3, groth=4)
    with pytest.raises(ComirError, match="up_layers"):
        tiramisu_config("small", 3, up_layers=(2, 2))
    with pytest.raises(ComirError, match="compression"):
        tiramisu_config("small", 3, compression=0.0)
    with pytest.raises(ComirError, match="down_layers"):
        tiramisu_config("small", 3, down_layers=("2", 2))
    with pytest.raises(ComirError, match="dropout"):
        tiramisu_config("small", 3, dropout="high")
    with pytest.raises(ComirError, match="unknown key"):
        TiramisuConfig.from_dict({"in_channels": 3, "colour": 1})
    assert set(PRESETS) == {"small", "paper"}
    assert PRESETS["paper"]["first_filters"] == 32 and PRESETS["small"]["growth"] == 12
