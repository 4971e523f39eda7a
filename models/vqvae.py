"""VQ-VAE: a stack of frames -> a grid of codebook indices -> the frames again.

Encoder: 4x4 stride-2 convs (BatchNorm, LeakyReLU) halve 96 -> 6, two residual blocks, a 1x1 conv
to the embedding size. Codebook: K vectors updated by exponential moving averages, straight-through
gradient, commitment loss. Decoder: the mirror image; each pixel is a continuous Bernoulli.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlswm.config import EnvConfig, VQVAEConfig


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.leaky_relu(self.conv3(F.leaky_relu(x))))


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU())


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.LeakyReLU())


class Encoder(nn.Module):
    """uint8 frames (B, S, 96, 96) -> continuous embeddings z_e (B, D, 6, 6)."""

    def __init__(self, env: EnvConfig, cfg: VQVAEConfig):
        super().__init__()
        widths = (env.frame_stack, *cfg.channels)
        self.down = nn.Sequential(*(_down(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.res = nn.Sequential(*(ResidualBlock(cfg.channels[-1]) for _ in range(cfg.res_blocks)))
        self.proj = nn.Sequential(nn.LeakyReLU(), nn.Conv2d(cfg.channels[-1], cfg.embedding_dim, 1, bias=False),
                                  nn.BatchNorm2d(cfg.embedding_dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float() / 255.0  # pixels to [0, 1] inside the network: callers pass raw uint8
        return self.proj(self.res(self.down(x)))  # (B, D, 6, 6)


class Decoder(nn.Module):
    """Quantized embeddings (B, D, 6, 6) -> continuous-Bernoulli logits of the frames (B, S, 96, 96)."""

    def __init__(self, env: EnvConfig, cfg: VQVAEConfig):
        super().__init__()
        widths = (*reversed(cfg.channels), env.frame_stack)
        self.proj = nn.Sequential(nn.Conv2d(cfg.embedding_dim, widths[0], 1, bias=False), nn.BatchNorm2d(widths[0]))
        self.res = nn.Sequential(*(ResidualBlock(widths[0]) for _ in range(cfg.res_blocks)))
        ups = [_up(a, b) for a, b in zip(widths[:-2], widths[1:-1])]
        # The last layer outputs logits: no norm, no activation.
        ups.append(nn.ConvTranspose2d(widths[-2], widths[-1], 4, stride=2, padding=1))
        self.up = nn.Sequential(nn.LeakyReLU(), *ups)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.up(self.res(self.proj(z_q)))  # (B, S, 96, 96)


class Codebook(nn.Module):
    """K embedding vectors of size D, learnt by exponential moving averages of their assignments.

    The entries are buffers, not parameters: no optimizer touches them. They still belong to the
    inference path (the lookup that turns encoder output into the policy's input).
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.decay = cfg.ema_decay
        self.epsilon = cfg.ema_epsilon
        embedding = torch.randn(cfg.codebook_size, cfg.embedding_dim)
        self.register_buffer("embedding", embedding)  # (K, D)
        # Start as if every entry had been assigned once to itself: with zero counts the first
        # updates would divide the unused entries by ~0 and throw them far away.
        self.register_buffer("cluster_size", torch.ones(cfg.codebook_size))  # (K,)
        self.register_buffer("embedding_sum", embedding.clone())  # (K, D)

    @property
    def size(self) -> int:
        return self.embedding.shape[0]

    def lookup(self, z_e: torch.Tensor) -> torch.Tensor:
        """Nearest entry of each cell: z_e (B, D, H, W) -> indices (B, H, W).

        Written as ||z||^2 - 2 z.C^T + ||C||^2 with a plain MatMul: it exports to ONNX and
        quantizes, where cdist does neither well.
        """
        B, D, H, W = z_e.shape
        z = z_e.float().permute(0, 2, 3, 1).reshape(B * H * W, D)  # (N, D)
        with torch.autocast(z.device.type, enabled=False):  # bf16 would flip nearest codes
            distances = (z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embedding.t()
                         + self.embedding.pow(2).sum(1))  # (N, K)
        return distances.argmin(1).view(B, H, W)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (..., H, W) -> embeddings (..., D, H, W)."""
        return F.embedding(indices, self.embedding).movedim(-1, -3)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output -> (codes (B, H, W), their embeddings (B, D, H, W)): the path every reader of
        the latent grid takes (the exported agent, imagination, world-model training)."""
        codes = self.lookup(z_e)
        return codes, self.embed(codes)

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_e (B, D, H, W) -> (straight-through z_q (B, D, H, W), indices (B, H, W)).

        In training mode this also moves the used entries towards the mean of their assignments.
        """
        indices = self.lookup(z_e)
        if self.training:
            self._ema_update(z_e.detach(), indices)
        z_q = self.embed(indices)
        return z_e + (z_q - z_e).detach(), indices  # straight-through: gradients skip the argmin

    @torch.no_grad()
    def _ema_update(self, z_e: torch.Tensor, indices: torch.Tensor) -> None:
        z = z_e.float().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])  # (N, D)
        onehot = F.one_hot(indices.reshape(-1), self.size).float()  # (N, K)
        with torch.autocast(z.device.type, enabled=False):  # running sums stay fp32
            self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
            self.embedding_sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
        # Laplace smoothing keeps unused entries from dividing by zero.
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.epsilon) / (n + self.size * self.epsilon) * n
        self.embedding.copy_(self.embedding_sum / size.unsqueeze(1))


class VQVAE(nn.Module):
    def __init__(self, env: EnvConfig, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(env, cfg)
        self.codebook = Codebook(cfg)
        self.decoder = Decoder(env, cfg)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        z_e = self.encoder(frames)  # (B, D, 6, 6)
        z_q, indices = self.codebook(z_e)  # (B, D, 6, 6), (B, 6, 6)
        return {"z_e": z_e, "z_q": z_q, "indices": indices, "recon_logits": self.decoder(z_q)}


# The continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019) in its logits l: the same density as
# torch.distributions.ContinuousBernoulli(logits=l), in fewer passes over the 36,864 pixels of a
# stack (that class works in probabilities: about twice the elementwise ops per pixel).
# With p = sigmoid(l): 1 - 2p = -tanh(l/2) and atanh(1 - 2p) = -l/2, so the normalizer
# 2 atanh(1 - 2p) / (1 - 2p) is l / tanh(l/2) (-> 2 at l = 0) and the mean is 1 / (1 - e^-l) - 1 / l.
_CB_EPS = torch.finfo(torch.float32).eps
_CB_MAX_LOGIT = math.log((1 - _CB_EPS) / _CB_EPS)  # torch clamps p to [eps, 1 - eps]: so do we
_CB_TAYLOR = 4e-3  # |l| below this (torch's p in (0.499, 0.501)): the series, not 0 / 0


def _cb_parts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    l = logits.clamp(-_CB_MAX_LOGIT, _CB_MAX_LOGIT)
    near_zero = l.abs() < _CB_TAYLOR
    return l, near_zero, torch.where(near_zero, 1.0, l)  # a safe l where the series is used


def continuous_bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x) of a continuous Bernoulli per element, x in [0, 1]."""
    l, near_zero, safe = _cb_parts(logits)
    log_norm = torch.where(near_zero, math.log(2.0) + l * l / 12, torch.log(safe / torch.tanh(safe / 2)))
    return x * logits - F.softplus(logits) + log_norm  # x log p + (1 - x) log(1 - p) + log normalizer


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    l, near_zero, safe = _cb_parts(logits)
    return torch.where(near_zero, 0.5 + l / 12, -1 / torch.expm1(-safe) - 1 / safe)


MOVED = 0.1  # a pixel moved if it changed by more than this (in [0, 1]) since the previous frame


def frame_change(target: torch.Tensor) -> torch.Tensor:
    """|x_s - x_(s-1)| (B, S, H, W) of a stack in [0, 1], the first frame given its change to the second."""
    change = (target[:, 1:] - target[:, :-1]).abs()  # (B, S - 1, H, W): frame s against s - 1
    return torch.cat([change[:, :1], change], 1)  # (B, S, H, W)


def motion_weights(target: torch.Tensor, motion_weight: float) -> torch.Tensor:
    """Per-pixel weights (B, S, H, W) of a stack in [0, 1]: 1 + motion_weight * `frame_change`, each
    sample's weights scaled to mean 1 (so the loss keeps its size and only moves weight onto what moved)."""
    w = 1 + motion_weight * frame_change(target)
    return w / w.mean((1, 2, 3), keepdim=True)


def vqvae_loss(out: dict[str, torch.Tensor], frames: torch.Tensor, cfg: VQVAEConfig
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative ELBO per sample (continuous-Bernoulli reconstruction + the constant KL of a uniform
    prior over K codes per cell) plus the commitment loss; with `cfg.motion_weight` the reconstruction
    term of the loss weighs each pixel by `motion_weights` (the metrics stay the unweighted ELBO). The
    codebook itself learns by EMA."""
    B, S, H, W = frames.shape
    assert out["recon_logits"].shape == (B, S, H, W), out["recon_logits"].shape
    target = frames.float() / 255.0
    log_px = continuous_bernoulli_log_prob(out["recon_logits"], target)  # (B, S, H, W)
    recon = -log_px.sum((1, 2, 3)).mean()
    fit = -(motion_weights(target, cfg.motion_weight) * log_px).sum((1, 2, 3)).mean() if cfg.motion_weight else recon
    cells = out["indices"][0].numel()
    kl = cells * math.log(cfg.codebook_size)  # constant: only reported, it has no gradient
    commitment = F.mse_loss(out["z_e"], out["z_q"].detach())
    loss = fit + cfg.commitment_cost * commitment
    usage = torch.bincount(out["indices"].reshape(-1), minlength=cfg.codebook_size).float()
    probs = usage / usage.sum()
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
    with torch.no_grad():
        sq_err = (continuous_bernoulli_mean(out["recon_logits"]) - target) ** 2  # (B, S, H, W)
        # Where the newest frame changed: the small moving objects `motion_weight` is for.
        moved = frame_change(target)[:, -1] > MOVED if S > 1 else None  # (B, H, W)
    metrics = {
        "vqvae/recon_nll": recon.item(),
        "vqvae/neg_elbo": recon.item() + kl,
        "vqvae/commitment": commitment.item(),
        "vqvae/mse": sq_err.mean().item(),
        "vqvae/perplexity": perplexity.item(),
        "vqvae/codes_used": int((usage > 0).sum().item()),
    }
    if moved is not None and moved.any():  # absent from a batch where nothing moved
        metrics["vqvae/moving_mse"] = sq_err[:, -1][moved].mean().item()
    return loss, metrics
