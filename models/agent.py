"""The inference path, exactly what export writes: uint8 frames -> action logits, value, codes.

Encoder + codebook lookup + policy. No decoder, no dynamics: about a quarter of the training size.
"""

from __future__ import annotations

import torch
from torch import nn

from dlswm.models.policy import ActorCritic
from dlswm.models.vqvae import Codebook, Encoder


class InferenceAgent(nn.Module):
    def __init__(self, encoder: Encoder, codebook: Codebook, policy: ActorCritic):
        super().__init__()
        self.encoder = encoder
        self.codebook = codebook
        self.policy = policy

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """frames uint8 (B, S, 96, 96) -> logits (B, A), value (B,), codes int64 (B, 6, 6)."""
        codes, z = self.codebook.quantize(self.encoder(frames))  # (B, 6, 6), (B, D, 6, 6)
        logits, value = self.policy(z)  # (B, A), (B,)
        return logits, value, codes
