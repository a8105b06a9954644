"""InfoNCE forward + backward: batched similarity matrix vs the naive double loop.

128×128 maps, float32, CPU. The baseline is the test suite's direct transcription of the
formula (``tests/test_infonce.py::naive_info_nce``: ``(2N)²`` critic evaluations in Python
loops). Prints one JSON line per setting; ``value`` is the batched time, ``baseline`` the
naive loop, ``ratio`` = baseline / value. The default ``mse`` critic is measured at
N = 8, 32, 64 and L = 1, 3; the other critics at N = 32, L = 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from comir.losses import info_nce  # noqa: E402
from tests.test_infonce import naive_info_nce  # noqa: E402

SIZE, TAU = 128, 0.1
SETTINGS = [("mse", n, c) for n in (8, 32, 64) for c in (1, 3)] + [
    (critic, 32, 1) for critic in ("cosine", "l1", "euclidean")
]


def fwd_bwd(fn, z_a: torch.Tensor, z_b: torch.Tensor, critic: str) -> tuple[float, float]:
    za, zb = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    t0 = time.perf_counter()
    loss = fn(za, zb, critic, TAU)
    loss.backward()
    return time.perf_counter() - t0, float(loss.detach())


def main() -> None:
    g = torch.Generator().manual_seed(0)
    for critic, n, channels in SETTINGS:
        z_a = torch.randn(n, channels, SIZE, SIZE, generator=g)
        z_b = 0.8 * z_a + 0.6 * torch.randn(n, channels, SIZE, SIZE, generator=g)
        fwd_bwd(info_nce, z_a, z_b, critic)  # warm-up; min over repeats tames a shared CPU
        t_b, loss_b = min(fwd_bwd(info_nce, z_a, z_b, critic) for _ in range(7))
        t_n, loss_n = min(fwd_bwd(naive_info_nce, z_a, z_b, critic) for _ in range(2))
        print(
            json.dumps(
                {
                    "name": f"info_nce fwd+bwd {critic} N={n} {SIZE}x{SIZE} L={channels}",
                    "value": round(t_b, 5),
                    "unit": "s",
                    "baseline": round(t_n, 5),
                    "ratio": round(t_n / t_b, 1),
                    "notes": f"naive (2N)^2 loop baseline; |loss diff| {abs(loss_b - loss_n):.1e}; "
                    f"{torch.get_num_threads()} threads",
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
