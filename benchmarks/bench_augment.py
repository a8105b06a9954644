"""Throughput of comir.data's batched patch augmentation against per-sample loops.

Prints one JSON line per figure: ``{"name", "value", "unit", "baseline", "ratio", "notes"}``.
Patches of 128×128, batches of 32, 3-channel modality A and 1-channel modality B, drawn
from four 512×512 images; one torch / OpenCV thread (as in a DataLoader
worker). Throughput is the
best of several timed rounds, in patches per second.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from comir import data

B, P, ROUNDS = 32, 128, 5


def pair_set() -> data.PairSet:
    rng = np.random.default_rng(0)
    imgs_a = [rng.random((512, 512, 3), dtype=np.float32) for _ in range(4)]
    imgs_b = [im.mean(axis=2, keepdims=True) for im in imgs_a]
    spec = data.DataSpec("folders", "A", "B", None, None, 3, 1, 3, 1, "none", "none")
    pairs = [data.PairSpec(f"i{i}", Path(f"a{i}"), Path(f"b{i}")) for i in range(4)]
    return data.PairSet(pairs, imgs_a, imgs_b, spec)


def best_rate(fn: Callable[[], object], n_patches: int) -> float:
    """Patches per second of the fastest of ``ROUNDS`` calls (after one warm-up)."""
    fn()
    best = math.inf
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_patches / best


def padded_images(ps: data.PairSet, m: int) -> list[np.ndarray]:
    """Each pair as one ``(H + 2m, W + 2m, Ca + Cb)`` array, symmetrically padded."""
    return [
        np.pad(np.concatenate([a, b], 2), ((m, m), (m, m), (0, 0)), "symmetric")
        for a, b in zip(ps.images_a, ps.images_b)
    ]


def torch_loop(stream: data.PatchStream, padded: list[torch.Tensor], g: torch.Generator) -> list:
    """Reference: the same crop + flip + rotation, one ``grid_sample`` call per sample."""
    m = stream.margin
    s = P + 2 * m
    idx, rows, cols = stream._sampler.draw(B, P, g)
    u = torch.rand(B, 2, generator=g, dtype=torch.float64)
    out = []
    for i, r, c, uu in zip(idx.tolist(), rows.tolist(), cols.tolist(), u):
        w = padded[i][None, :, r : r + s, c : c + s]
        angle = (2 * uu[0:1] - 1) * math.pi
        out.append(data.rotate_crop(w, angle, uu[1:2] < 0.5, P))
    return out


def cv2_loop(stream: data.PatchStream, windows: list[np.ndarray], g: torch.Generator) -> list:
    """Reference: per-sample OpenCV flip + ``warpAffine`` (channel-last numpy windows)."""
    m = stream.margin
    s = P + 2 * m
    idx, rows, cols = stream._sampler.draw(B, P, g)
    u = torch.rand(B, 2, generator=g, dtype=torch.float64).numpy()
    out = []
    for i, r, c, uu in zip(idx.tolist(), rows.tolist(), cols.tolist(), u):
        w = windows[i][r : r + s, c : c + s]
        if uu[1] < 0.5:
            w = w[:, ::-1]
        angle = (2 * uu[0] - 1) * 180.0  # OpenCV: positive = counter-clockwise on screen
        rot = cv2.getRotationMatrix2D(((s - 1) / 2, (s - 1) / 2), -angle, 1.0)
        rot[:, 2] -= m  # cut the central P×P patch directly
        out.append(cv2.warpAffine(np.ascontiguousarray(w), rot, (P, P), flags=cv2.INTER_LINEAR))
    return out


def intensity_loop(xa: torch.Tensor, xb: torch.Tensor, cfg, g: torch.Generator) -> None:
    """Reference: :func:`data.augment_batch` called once per sample."""
    for i in range(xa.shape[0]):
        data.augment_batch(xa[i : i + 1], xb[i : i + 1], cfg, g)


def main() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    ps = pair_set()
    geo = data.AugmentConfig(flip=True, rotate=True)
    stream = data.PatchStream(ps, P, B, geo, seed=0)
    g = torch.Generator().manual_seed(0)
    conditions = f"B={B}, P={P}, A 3ch + B 1ch float32, 1 torch/OpenCV thread, best of {ROUNDS}"

    batched = best_rate(lambda: stream.sample_batch(g), B)
    padded = padded_images(ps, stream.margin)
    planar = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in padded]
    rows = [
        (
            "crop+flip+rotate, batched grid_sample vs per-sample grid_sample loop",
            torch_loop,
            planar,
        ),
        (
            "crop+flip+rotate, batched grid_sample vs per-sample cv2.warpAffine loop",
            cv2_loop,
            padded,
        ),
    ]
    for name, ref, imgs in rows:
        base = best_rate(lambda ref=ref, imgs=imgs: ref(stream, imgs, g), B)
        print(
            json.dumps(
                {
                    "name": name,
                    "value": round(batched, 1),
                    "unit": "patches/s",
                    "baseline": round(base, 1),
                    "ratio": round(batched / base, 2),
                    "notes": conditions,
                }
            )
        )

    cfg = data.AugmentConfig(
        noise_a=0.05, noise_b=0.05, blur_a=1.5, blur_b=1.5, contrast_a=0.3, contrast_b=0.3
    )
    xa, xb = stream.sample_batch(g)
    batched = best_rate(lambda: data.augment_batch(xa, xb, cfg, g), B)
    base = best_rate(lambda: intensity_loop(xa, xb, cfg, g), B)
    print(
        json.dumps(
            {
                "name": "noise+blur+contrast, augment_batch batched vs per-sample loop",
                "value": round(batched, 1),
                "unit": "patches/s",
                "baseline": round(base, 1),
                "ratio": round(batched / base, 2),
                "notes": conditions + "; blur σ≤1.5, noise 0.05, contrast 0.3",
            }
        )
    )


if __name__ == "__main__":
    main()
