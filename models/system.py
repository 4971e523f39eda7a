"""All three networks of one agent, and the names `dlswm info` and export count them by."""

from __future__ import annotations

from torch import nn

from dlswm.config import Config
from dlswm.models.agent import InferenceAgent
from dlswm.models.dynamics import Dynamics
from dlswm.models.policy import ActorCritic
from dlswm.models.vqvae import VQVAE


class System(nn.Module):
    def __init__(self, cfg: Config, num_actions: int):
        super().__init__()
        self.cfg = cfg
        self.num_actions = num_actions
        self.vqvae = VQVAE(cfg.env, cfg.vqvae)
        self.dynamics = Dynamics(cfg, num_actions)
        self.policy = ActorCritic(cfg, num_actions)

    def components(self) -> dict[str, nn.Module]:
        return {"encoder": self.vqvae.encoder, "codebook": self.vqvae.codebook, "decoder": self.vqvae.decoder,
                "dynamics": self.dynamics, "policy": self.policy}

    def inference_agent(self) -> InferenceAgent:
        """Shares weights with this system: export it after training, in eval mode."""
        return InferenceAgent(self.vqvae.encoder, self.vqvae.codebook, self.policy)


INFERENCE_COMPONENTS = ("encoder", "codebook", "policy")
