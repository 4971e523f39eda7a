"""Per-iteration pictures: what the VQ-VAE keeps of real frames, and what the world model dreams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlswm.atomic import atomic_path, save_figure
from dlswm.models import System, in_mode
from dlswm.models.vqvae import continuous_bernoulli_mean


@torch.no_grad()
def reconstruction_png(system: System, obs: np.ndarray, path: Path) -> None:
    """Rows: real frames (newest of each stack), reconstructions, 6x6 code maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = next(system.parameters()).device
    with in_mode(system, False):
        out = system.vqvae(torch.from_numpy(obs).to(device))
    recon = continuous_bernoulli_mean(out["recon_logits"])[:, -1].cpu().numpy()
    codes = out["indices"].cpu().numpy()
    n = len(obs)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(obs[i, -1], cmap="gray", vmin=0, vmax=255)
        axes[1, i].imshow(recon[i], cmap="gray", vmin=0, vmax=1)
        axes[2, i].imshow(codes[i], cmap="tab20", vmin=0, vmax=system.cfg.vqvae.codebook_size - 1)
    for row, label in zip(axes, ["real", "reconstruction", "codes"]):
        row[0].set_ylabel(label)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    save_figure(fig, path, dpi=80)


def rollout_gif(frames: torch.Tensor, path: Path, scale: int = 2) -> None:
    """Decoded imagined frames (T, N, S, H, W) in [0, 1] -> an animation of the first rollout."""
    import imageio.v3 as iio

    video = (frames[:, 0, -1].clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()  # (T, H, W)
    video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, video, extension=".gif", duration=80, loop=0)
