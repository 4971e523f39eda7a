"""Actor-critic CNN on the quantized 6x6 embeddings: the only network the agent needs besides the
encoder and the codebook."""

from __future__ import annotations

import torch
from torch import nn

from dlswm.config import Config


class ActorCritic(nn.Module):
    def __init__(self, cfg: Config, num_actions: int):
        super().__init__()
        p, n, c = cfg.policy, cfg.latent_size, cfg.policy.conv_channels
        self.body = nn.Sequential(
            nn.Conv2d(cfg.vqvae.embedding_dim, c, 1), nn.LayerNorm([c, n, n]), nn.LeakyReLU(),
            nn.Conv2d(c, c, p.kernel_size, padding=p.kernel_size // 2), nn.LayerNorm([c, n, n]), nn.LeakyReLU(),
            nn.Flatten(), nn.Linear(c * n * n, p.hidden), nn.LeakyReLU(),
        )
        self.actor = nn.Linear(p.hidden, num_actions)
        self.critic = nn.Linear(p.hidden, 1)
        # A near-uniform first policy explores evenly (the usual PPO initialisation of the heads).
        nn.init.orthogonal_(self.actor.weight, gain=0.01)
        nn.init.orthogonal_(self.critic.weight, gain=1.0)
        nn.init.zeros_(self.actor.bias)
        nn.init.zeros_(self.critic.bias)

    def forward(self, z_q: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """z_q (B, D, 6, 6) -> action logits (B, A), value (B,), both fp32. With `amp` (training on
        hardware with native bf16) the body runs in bf16 autocast, where the arithmetic is; the two
        heads stay fp32, whatever the caller's autocast, so log-probs and values keep fp32 precision."""
        if not amp:
            return self._heads(self.body(z_q))
        with torch.autocast(z_q.device.type, dtype=torch.bfloat16):
            x = self.body(z_q)  # (B, hidden), bf16
        with torch.autocast(z_q.device.type, enabled=False):
            return self._heads(x.float())

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(x), self.critic(x).squeeze(-1)
