"""Optional ONNX Runtime back-end for inference (``pip install onnxruntime onnx``).

An encoder is exported once per modality with dynamic batch and spatial axes and run by
an ``onnxruntime.InferenceSession`` on CPU. The export traces the network on an input
whose sides are multiples of the pooling factor, so the session only takes such inputs:
tiles always are (:mod:`comir.tiling`); other shapes go through torch
(:meth:`comir.embed.ComirModel._forward`). Measured on this CPU (``small`` preset, 776²
tiles, fp32): 1.9× the eager torch speed, max |ORT − torch| / std = 2.7e-6, within the
1e-5 tiling tolerance (benchmarks/notes.md). Neither package is a dependency of comir.
"""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import torch

from comir.errors import ComirError

__all__ = ["OrtEncoder", "available", "session_for"]

_EXPORT_LOCK = threading.Lock()


def available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OrtEncoder:
    """An exported :class:`comir.model.Tiramisu` run by ONNX Runtime.

    ``encoder(x)``: ``(B, C, H, W)`` float32 tensor with ``H``, ``W`` multiples of
    :attr:`multiple` -> ``(B, L, H, W)`` float32 tensor.
    """

    def __init__(self, net: torch.nn.Module, threads: int | None = None) -> None:
        if not available():
            raise ComirError(
                "runtime 'onnx' needs onnxruntime and onnx; install them with "
                "`pip install onnxruntime onnx` or use the default runtime 'torch'"
            )

        self.multiple = int(net.multiple)
        c = int(net.config.in_channels)
        buf = io.BytesIO()
        axes = {0: "batch", 2: "height", 3: "width"}
        was_training = net.training
        net.eval()
        # traced with autograd on: the inference-only buffer path of comir.model.DenseBlock
        # writes in place, which tracing does not follow
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings: shape checks become constants
            example = torch.zeros(1, c, 2 * self.multiple, 2 * self.multiple)
            torch.onnx.export(
                net, (example,), buf, input_names=["x"], output_names=["z"],
                dynamic_axes={"x": axes, "z": axes}, dynamo=False, opset_version=17,
            )  # fmt: skip
        net.train(was_training)
        self.graph = buf.getvalue()
        self.threads = int(threads or torch.get_num_threads())
        self.session = self._session()

    def _session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(self.graph, options, providers=["CPUExecutionProvider"])

    def __getstate__(self) -> dict:
        # an InferenceSession cannot be pickled: a model sent to Dask workers carries the
        # exported graph and each worker opens its own session from it
        return {"multiple": self.multiple, "graph": self.graph, "threads": self.threads}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.session = self._session()

    def accepts(self, x: torch.Tensor) -> bool:
        """Whether ``x``'s spatial size is on the pooling grid (the exported graph)."""
        return x.shape[-2] % self.multiple == 0 and x.shape[-1] % self.multiple == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"x": arr})[0])


def session_for(net: torch.nn.Module) -> OrtEncoder:
    """The :class:`OrtEncoder` of encoder ``net``, exported on first use and kept on the
    module, so copies of a :class:`comir.embed.ComirModel` (e.g. the evaluation's
    ``patch_encoder``) share it. Inference only: the export freezes the weights."""
    with _EXPORT_LOCK:  # torch.onnx.export is not thread-safe (parallel encode streams)
        enc = net.__dict__.get("_comir_ort")
        if enc is None:
            enc = OrtEncoder(net)
            net.__dict__["_comir_ort"] = enc
    return enc
