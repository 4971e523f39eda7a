"""The ceiling the loop's shapes put on training throughput: the dynamics model's gate convolutions,
timed alone at the batch sizes the `paper` schedule runs them at, against a large matrix product.

    .venv/bin/python benchmarks/conv_ceiling.py [--threads N] [--game Pong]

The ConvLSTM's two gate convolutions (5x5, 512 output channels on the 6x6 grid) are most of the
arithmetic of both training phases: world-model batches run them at batch 4 (forward and backward,
10 steps per sequence), imagination at batch 16 (forward only, 53 steps per PPO update). However
fast the rest of the loop gets, a phase cannot beat its convolutions at these sizes.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from dlswm.config import resolve


def _rate(flop: float, fn, seconds: float = 2.0) -> float:
    """GFLOP/s of fn, timed for about `seconds` after a warm-up."""
    for _ in range(3):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return flop * n / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--actions", type=int, default=6, help="the game's action count (Pong: 6)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve("paper")  # the shapes of the paper preset's dynamics model
    hidden, embed, kernel, grid = (cfg.dynamics.hidden_channels, cfg.vqvae.embedding_dim, cfg.dynamics.kernel_size,
                                   cfg.latent_size)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    for dtype in (torch.bfloat16, torch.float32):
        n = 4096
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        print(f"{str(dtype)[6:]:>8} matmul {n}^3: {_rate(2 * n ** 3, lambda a=a, b=b: a @ b):6.0f} GFLOP/s")
        for c_in in (embed + args.actions + hidden, 2 * hidden + args.actions):  # layer 1, layer 2
            w = torch.randn(4 * hidden, c_in, kernel, kernel, dtype=dtype)
            for batch in (4, 16, 64):
                x = torch.randn(batch, c_in, grid, grid, dtype=dtype)
                grad = torch.randn(batch, 4 * hidden, grid, grid, dtype=dtype)
                flop = 2 * batch * grid * grid * 4 * hidden * c_in * kernel * kernel  # counted as torch does
                fwd = _rate(flop, lambda x=x, w=w: F.conv2d(x, w, padding=kernel // 2))
                bwd = _rate(2 * flop, lambda x=x, w=w, grad=grad: torch.ops.aten.convolution_backward(
                    grad, x, w, None, [1, 1], [kernel // 2] * 2, [1, 1], False, [0, 0], 1, [True, True, False]))
                print(f"{str(dtype)[6:]:>8} gate conv {c_in:3d} -> {4 * hidden} ch, batch {batch:2d}: "
                      f"forward {fwd:6.0f} GFLOP/s, backward {bwd:6.0f} GFLOP/s")


if __name__ == "__main__":
    main()
