"""Optional ONNX Runtime inference: tiles through ORT equal the torch result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY2, make_scene

from comir.embed import ComirModel
from comir.errors import ComirError


def _model(runtime: str) -> ComirModel:
    from comir.data import DataSpec
    from comir.model import EncoderPair, tiramisu_config

    torch.manual_seed(0)
    cfg = tiramisu_config("small", 1, 1, **TINY2)
    spec = DataSpec(
        layout="folders", a="A", b="B", channels_a=None, channels_b=None,
        file_channels_a=1, file_channels_b=1, in_channels_a=1, in_channels_b=1,
        norm_a="bits:8", norm_b="bits:8",
    )  # fmt: skip
    return ComirModel(EncoderPair(cfg, cfg).eval(), spec, {}, torch.device("cpu"), runtime=runtime)


def test_unknown_runtime_and_missing_packages(monkeypatch):
    with pytest.raises(ComirError, match="unknown runtime 'tvm'"):
        _model("tvm")
    import comir.ort

    monkeypatch.setattr(comir.ort, "available", lambda: False)
    m = _model("onnx")
    with pytest.raises(ComirError, match="pip install onnxruntime onnx"):
        m.embed(make_scene(64, 64)[..., 0], "a")


def test_onnx_tiles_equal_torch():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ref, fast = _model("torch"), _model("onnx")
    img = make_scene(157, 203, seed=3)[..., 0]
    whole = ref.embed(img, "a", max_pixels=None)
    tiled = fast.embed(img, "a", tile=72)  # tiles on the pooling grid: through ORT
    import dataclasses

    from comir.ort import session_for

    enc = session_for(fast.model.encoders["a"])
    assert session_for(dataclasses.replace(fast).model.encoders["a"]) is enc  # exported once
    assert float(np.abs(tiled - whole).max() / whole.std()) < 1e-5
    # an odd-sized whole image is off the exported grid: torch, bit for bit
    np.testing.assert_array_equal(fast.embed(img, "a", max_pixels=None), whole)


def test_onnx_in_parallel_encode_streams():
    """The evaluation's encode stage runs chunks in threads: both modalities export and
    embed at once, giving the CoMIRs of torch."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from comir.evaluate.encode import _encode_chunks

    ref, fast = _model("torch"), _model("onnx")
    imgs = {k: make_scene(32, 40, seed=k)[..., 0] for k in range(4)}
    chunks = [("a", [0, 1]), ("b", [2, 3])]
    got = {tuple(idx): zs for idx, zs in _encode_chunks(fast, chunks, dict(imgs))}
    for mod, idx in chunks:
        want = ref.embed_batch([imgs[k] for k in idx], mod, check=False)
        for z, w in zip(got[tuple(idx)], want, strict=True):
            assert float(np.abs(z - w).max() / w.std()) < 1e-5


def test_onnx_model_pickles_with_its_graph_for_dask_workers(tmp_path):
    """A model sent to Dask workers is pickled: the ONNX session is rebuilt from the graph."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import pickle

    from comir.ort import session_for

    fast = _model("onnx")
    img = make_scene(96, 96, seed=4)[..., 0]
    before = fast.embed(img, "a", tile=64)  # exports and attaches the session
    copy = pickle.loads(pickle.dumps(fast))
    enc = copy.model.encoders["a"].__dict__["_comir_ort"]
    assert enc.graph == session_for(fast.model.encoders["a"]).graph  # no re-export
    np.testing.assert_array_equal(copy.embed(img, "a", tile=64), before)
