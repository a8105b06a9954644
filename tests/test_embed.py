"""Inference: loading runs, whole vs tiled embedding, batching, 8-bit export, file output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY1, TINY2

from comir.embed import embed_files, load_model, to_uint8
from comir.errors import ComirError
from comir.io import read_image, write_image
from comir.model import EncoderPair, tiramisu_config
from comir.tiling import receptive_radius


def naive_embed(model: EncoderPair, img: np.ndarray, modality: str) -> np.ndarray:
    """Independent reference: select channels by hand, /255, one forward in eval mode."""
    x = img[..., :3] if modality == "a" else img[..., 3:]
    t = torch.from_numpy(x.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model(t, modality)[0].permute(1, 2, 0).numpy()


def test_load_model_matches_in_memory_model(tmp_path, tiny_run, scene):
    ref = tiny_run(tmp_path / "run", TINY2, latent=3)
    m = load_model(tmp_path / "run", device="cpu")
    assert m.latent_channels == 3 and m.device == torch.device("cpu")
    img = scene(40, 52)
    for mod in ("a", "b"):
        z = m.embed(img, mod)
        assert z.shape == (40, 52, 3) and z.dtype == np.float32
        np.testing.assert_allclose(z, naive_embed(ref, img, mod), rtol=0, atol=1e-6)
    # an image that already has the network's channel count is taken as is
    np.testing.assert_array_equal(m.embed(img[..., 3], "b"), m.embed(img, "b"))


def test_tiled_equals_whole(tmp_path, tiny_run, scene):
    """160×200 image, tile 64 / overlap 24 with a one-pooling model (receptive radius 8)."""
    tiny_run(tmp_path / "run", TINY1)
    m = load_model(tmp_path / "run", device="cpu")
    assert receptive_radius(m.model.encoders["a"].config) == 8
    img = scene(160, 200)
    for mod in ("a", "b"):
        whole = m.embed(img, mod)
        tiled = m.embed(img, mod, tile=64, overlap=24)
        err = np.abs(tiled - whole).max() / whole.std()
        assert err < 1e-4, err
        # too little overlap for the receptive field: seams show, so the check has teeth
        rough = m.embed(img, mod, tile=64, overlap=4)
        assert np.abs(rough - whole).max() / whole.std() > 1e-3


def test_receptive_radius_bounds_measured_extent():
    """Perturb one input pixel; outputs change only within the computed radius."""
    torch.manual_seed(0)
    net = EncoderPair(
        tiramisu_config("small", 1, 1, **TINY2), tiramisu_config("small", 1, 1, **TINY2)
    ).encoders["a"]
    net = net.double().eval()
    x = torch.rand(1, 1, 72, 72, dtype=torch.float64)
    extent = 0
    for c in (36, 37, 38, 39):
        x2 = x.clone()
        x2[0, 0, c, c] += 10.0
        with torch.no_grad():
            changed = torch.nonzero((net(x2) - net(x))[0, 0].abs() > 0)
        extent = max(extent, int((changed - c).abs().max()))
    assert 0 < extent <= receptive_radius(net.config)
    assert extent >= receptive_radius(net.config) - 4  # the bound is not loose


def test_tiled_equals_whole_deeper_model_odd_size(tmp_path, tiny_run, scene):
    """Two poolings (radius 20), size not a multiple of 4: overlap 2·20 + ramp suffices."""
    tiny_run(tmp_path / "run", TINY2)
    m = load_model(tmp_path / "run", device="cpu")
    assert receptive_radius(m.model.encoders["b"].config) == 20
    img = scene(157, 203, seed=1)
    whole = m.embed(img, "b")
    tiled = m.embed(img, "b", tile=96, overlap=56)
    assert tiled.shape == whole.shape == (157, 203, 1)
    assert np.abs(tiled - whole).max() / whole.std() < 1e-4


def test_embed_batch_matches_single(tmp_path, tiny_run, scene):
    tiny_run(tmp_path / "run", TINY1)
    m = load_model(tmp_path / "run", device="cpu")
    imgs = [scene(32, 40, 0), scene(24, 24, 1), scene(32, 40, 2)]
    out = m.embed_batch(imgs, "a")
    assert [o.shape for o in out] == [(32, 40, 1), (24, 24, 1), (32, 40, 1)]
    for o, im in zip(out, imgs):
        np.testing.assert_allclose(o, m.embed(im, "a"), atol=1e-5)


def test_to_uint8():
    z = np.array([[[-2.0], [0.0]], [[1.0], [3.0]]])
    s = 1.0 / (1.0 + np.exp(-z / 2.0))
    expect = np.round(255 * (s - s.min()) / (s.max() - s.min())).astype(np.uint8)[..., 0]
    out = to_uint8(z, temperature=2.0)
    assert out.dtype == np.uint8 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, expect)
    assert out.min() == 0 and out.max() == 255
    assert to_uint8(np.zeros((3, 3, 3))).shape == (3, 3, 3)
    assert not to_uint8(np.full((2, 2, 1), 5.0)).any()  # constant -> 0, no NaN


def test_embed_files_formats_and_skip(tmp_path, tiny_run, scene):
    tiny_run(tmp_path / "run", TINY1)
    m = load_model(tmp_path / "run", device="cpu")
    img = scene(36, 44)
    src = write_image(tmp_path / "in" / "x.tif", img)
    z = m.embed(img, "b")
    (tif,) = embed_files(m, [src], "b", tmp_path / "out")
    np.testing.assert_array_equal(read_image(tif), z[..., 0])
    assert read_image(tif).dtype == np.float32
    (png,) = embed_files(m, [src], "b", tmp_path / "out", fmt="png")
    np.testing.assert_array_equal(read_image(png), to_uint8(z))
    (npy,) = embed_files(m, [src], "b", tmp_path / "out", fmt="npy")
    np.testing.assert_array_equal(np.load(npy), z)
    # existing outputs are kept unless skip_existing=False
    np.save(npy, np.zeros(1))
    embed_files(m, [src], "b", tmp_path / "out", fmt="npy")
    assert np.load(npy).shape == (1,)
    embed_files(m, [src], "b", tmp_path / "out", fmt="npy", skip_existing=False)
    assert np.load(npy).shape == z.shape
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_errors(tmp_path, monkeypatch, tiny_run, scene):
    tiny_run(tmp_path / "run", TINY1)
    m = load_model(tmp_path / "run", device="cpu")
    with pytest.raises(ComirError, match="x.tif: has 2 channel"):
        m.embed(np.zeros((16, 16, 2), np.uint8), "a", where="x.tif")
    with pytest.raises(ComirError, match="modality"):
        m.embed(scene(16, 16), "c")
    with pytest.raises(ComirError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(ComirError, match="unsupported output format"):
        embed_files(m, [tmp_path / "x.tif"], "a", tmp_path / "o", fmt="jpg")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tmp_path / "run" / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(ComirError, match="corrupt weights"):
        load_model(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ComirError, match="corrupt run configuration"):
        load_model(bad)
    # weights of a different architecture
    tiny_run(tmp_path / "other", TINY2)
    (bad / "config.json").write_text((tmp_path / "run" / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ComirError, match="do not match"):
        load_model(bad)


def test_sample_reference(tmp_path, monkeypatch, tiny_run):
    from comir import samples

    tiny_run(tmp_path / "run", TINY1)
    monkeypatch.setattr(samples, "model_dir", lambda name: tmp_path / "run")
    m = load_model("sample:whatever", device="cpu")
    assert m.latent_channels == 1


def test_inference_does_not_import_training():
    """Every ``comir`` module that ``comir.embed`` can import (also lazily, inside
    functions), followed transitively through the source: ``comir.train`` is not one."""
    import ast
    import importlib.util

    def spec(name: str):
        try:
            return importlib.util.find_spec(name)
        except (ImportError, AttributeError):  # "package.function": not a module
            return None

    def imports(name: str) -> set[str]:
        tree = ast.parse(open(spec(name).origin).read())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        return {n for n in found if n.startswith("comir") and spec(n)}

    seen, todo = set(), ["comir.embed"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imports(name)
    assert {"comir.runtime", "comir.model", "comir.input_stats"} <= seen
    assert not {"comir.train", "comir.train_config", "comir.run_files"} & seen
