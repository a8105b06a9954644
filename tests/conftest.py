"""Shared fixtures: textured images, tiny model runs, evaluation-set helpers.

Factories are fixtures that return a function, so tests build exactly the images and
runs they need (sizes, seeds) without importing each other.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

#: One pooling level: receptive radius 8 px; builds and runs in milliseconds.
TINY1 = {"first_filters": 4, "down_layers": [1], "bottleneck_layers": 1, "growth": 4}
#: Two pooling levels: receptive radius 20 px.
TINY2 = {"first_filters": 4, "down_layers": [1, 1], "bottleneck_layers": 1, "growth": 4}


# ----------------------------------------------------------------------------- images
def make_textured(shape, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Smooth random texture in [0, 1], float64; ``shape`` ``(H, W)`` or ``(H, W, C)``
    (channels filtered independently)."""
    rng = np.random.default_rng(seed)
    sig = (sigma, sigma, 0)[: len(shape)]
    img = gaussian_filter(rng.random(shape), sig)
    lo = img.min(axis=(0, 1))
    return (img - lo) / (img.max(axis=(0, 1)) - lo)


def make_scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """4-channel uint8 image ``(H, W, 4)`` with structure at several scales (RGB + NIR)."""
    rng = np.random.default_rng(seed)
    img = np.stack([gaussian_filter(rng.random((h, w)), s) for s in (1, 2, 4, 3)], -1)
    img = (img - img.min((0, 1))) / np.ptp(img, (0, 1))
    return (img * 255).astype(np.uint8)


@pytest.fixture
def textured():
    """``textured(shape, seed=0, sigma=2.0)`` → smooth texture in [0, 1]."""
    return make_textured


@pytest.fixture
def scene():
    """``scene(h, w, seed=0)`` → uint8 ``(H, W, 4)`` RGB + NIR test scene."""
    return make_scene


# ----------------------------------------------------------------------------- models
def make_tiny_run(run: Path, overrides: dict | None = None, latent: int = 1, seed: int = 0):
    """A run folder for RGB (A = channels 0:3) / NIR (B = channel 3) of 4-channel uint8
    files, random weights and non-trivial BN statistics; returns the model in eval mode."""
    import torch

    from comir.data import DataSpec
    from comir.model import EncoderPair, tiramisu_config
    from comir.runtime import save_weights

    overrides = TINY1 if overrides is None else overrides
    torch.manual_seed(seed)
    model = EncoderPair(
        tiramisu_config("small", 3, latent, **overrides),
        tiramisu_config("small", 1, latent, **overrides),
    )
    with torch.no_grad():  # move BN away from identity so the stored buffers matter
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    spec = DataSpec(
        layout="channels", a="0:3", b="3", channels_a=[0, 1, 2], channels_b=[3],
        file_channels_a=4, file_channels_b=4, in_channels_a=3, in_channels_b=1,
        norm_a="bits:8", norm_b="bits:8",
    )  # fmt: skip
    info = {"comir_version": "test", "model": model.config_dict(), "data": spec.to_dict()}
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(info))
    save_weights(model, run / "model.safetensors")
    return model.eval()


@pytest.fixture
def tiny_run():
    """``tiny_run(run_dir, overrides=TINY1, latent=1, seed=0)`` → model; writes the run."""
    return make_tiny_run


# ----------------------------------------------------------------------------- evaluation
def write_pairs(root: Path, images_a, images_b) -> Path:
    """``folders`` layout: root/A/img<i>.png, root/B/img<i>.png (16-bit) of [0, 1] floats."""
    from comir.io import write_image

    for m, imgs in (("A", images_a), ("B", images_b)):
        (root / m).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(imgs):
            write_image(root / m / f"img{i}.png", np.rint(img * 65535).astype(np.uint16))
    return root


@pytest.fixture
def pair_folder():
    """``pair_folder(root, images_a, images_b)`` → root in the ``folders`` layout."""
    return write_pairs


def public_transform(q: np.ndarray, tx: float, ty: float, deg: float, w: int) -> np.ndarray:
    """The MultiRegEval generator, written out: T(q) = R(θ)(q + t − c) + c, c = (w−1)/2."""
    th = math.radians(deg)
    c = (w - 1) / 2.0
    x, y = q[..., 0] + tx - c, q[..., 1] + ty - c
    return np.stack(
        [math.cos(th) * x - math.sin(th) * y + c, math.sin(th) * x + math.cos(th) * y + c], -1
    )


def oracle(fixed, moving, info, **_):
    """Evaluation back-end returning the ground-truth moving → fixed transform of the CSV
    row, built independently of comir's geometry (three mapped points)."""
    from comir.register.base import RegistrationResult
    from comir.transform import RigidTransform

    q = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = public_transform(
        q, float(info["Tx"]), float(info["Ty"]), float(info["AngleDegree"]), fixed.shape[1]
    )
    m = np.eye(3)
    m[:2, 0], m[:2, 1], m[:2, 2] = p[1] - p[0], p[2] - p[0], p[0]
    return RegistrationResult(RigidTransform(m), 1.0, 0.0, "ok", "oracle")


@pytest.fixture
def truth_oracle():
    """The :func:`oracle` back-end (picklable: a module-level function)."""
    return oracle


# ----------------------------------------------------------------------------- training data
def write_train_pairs(root: Path, n: int = 3, size: int = 48, seed: int = 0) -> Path:
    """``folders`` layout of aligned training pairs: A smooth RGB uint8, B a non-monotonic
    function of A (grey uint8)."""
    from comir.io import write_image

    for i in range(n):
        a = make_textured((size, size, 3), seed=seed + i, sigma=2.5)
        b = np.sin(3.0 * np.pi * a.mean(-1)) ** 2
        write_image(root / "A" / f"im{i}.tif", (a * 255).astype(np.uint8))
        write_image(root / "B" / f"im{i}.tif", (b * 255).astype(np.uint8))
    return root
