"""C4 wrapper and rotation-equivariance measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from comir.equivariance import c4_encode, equivariance_correlation, rot90_batch, rotate_image


def test_rot90_batch_matches_per_sample_rot90() -> None:
    x = torch.randn(9, 2, 5, 5)
    k = torch.tensor([0, 1, 2, 3, 1, 3, -1, 5, 2])
    out = rot90_batch(x, k)
    for i in range(x.shape[0]):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    # one shared k takes the fast path
    assert torch.equal(rot90_batch(x, torch.full((9,), 3)), torch.rot90(x, 3, dims=(2, 3)))
    # rotating back restores the input
    assert torch.equal(rot90_batch(out, -k), x)


def test_rot90_batch_gradient_and_validation() -> None:
    x = torch.randn(4, 1, 3, 3, requires_grad=True)
    w = torch.randn(4, 1, 3, 3)
    k = torch.tensor([0, 1, 2, 3])
    (rot90_batch(x, k) * w).sum().backward()
    # d/dx sum(rot(x) * w) = rot^{-1}(w)
    assert torch.equal(x.grad, rot90_batch(w, -k))
    with pytest.raises(ValueError):
        rot90_batch(torch.zeros(2, 1, 3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        rot90_batch(torch.zeros(2, 1, 3, 3), torch.tensor([0, 1, 2]))


def test_c4_encode_equivariant_encoder_is_unchanged() -> None:
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 2, 1)
    x = torch.randn(16, 3, 8, 8)
    calls = []

    def encoder(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape[0])
        return pointwise(t)

    with torch.no_grad():
        out = c4_encode(encoder, x, torch.Generator().manual_seed(1))
        torch.testing.assert_close(out, pointwise(x))
    assert calls == [16]  # one forward call for the whole batch


def test_c4_encode_rotates_a_non_equivariant_encoder() -> None:
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[0.0, 0.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]]))
    x = torch.randn(32, 1, 8, 8)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        out = c4_encode(conv, x, g)
    # the same draw, reproduced: each sample equals rot_{-k}(conv(rot_k(x)))
    k = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(3))
    assert len(set(k.tolist())) == 4
    with torch.no_grad():
        for i in range(32):
            ref = torch.rot90(
                conv(torch.rot90(x[i : i + 1], int(k[i]), (2, 3))), -int(k[i]), (2, 3)
            )
            torch.testing.assert_close(out[i : i + 1], ref)
        plain = conv(x)
    rotated = k % 2 == 1  # a horizontal gradient becomes a vertical one
    assert not torch.allclose(out[rotated], plain[rotated], atol=1e-3)
    torch.testing.assert_close(out[k == 0], plain[k == 0])


def test_rotate_image_quarter_turn_and_identity(textured) -> None:
    img = textured((33, 33), sigma=3.0).astype(np.float32)
    np.testing.assert_allclose(rotate_image(img, 0.0), img, atol=1e-6)
    # +90° turns clockwise on screen (y down): out[r, c] = img[S-1-c, r]
    np.testing.assert_allclose(rotate_image(img, 90.0), np.rot90(img, -1), atol=1e-5)
    rgb = np.stack([img, 2 * img, 3 * img], axis=-1)
    out = rotate_image(rgb, 30.0)
    assert out.shape == rgb.shape and out.dtype == rgb.dtype


def test_equivariance_correlation_pointwise_vs_gradient(textured) -> None:
    img = textured((64, 72), sigma=3.0).astype(np.float32)
    angles = [0.0, 90.0, 45.0, 17.0]
    corr = equivariance_correlation(lambda a: np.tanh(4.0 * a - 2.0), img, angles)
    assert corr.shape == (4,)
    assert np.all(corr > 0.995), corr

    def grad_x(a: np.ndarray) -> np.ndarray:
        return ndimage.sobel(a, axis=1)

    corr_g = equivariance_correlation(grad_x, img, angles)
    assert corr_g[0] > 0.999  # angle 0 is trivially equivariant
    assert abs(corr_g[1]) < 0.5, corr_g  # x-gradient of the rotated image is the y-gradient
    # multichannel embeddings are compared over all channels
    corr_rgb = equivariance_correlation(lambda a: np.stack([a, a**2], axis=-1), img, [0.0, 33.0])
    assert np.all(corr_rgb > 0.995)
