"""PPO on the real game's own steps (`ppo.real_epochs`): each iteration's collection, recorded as
the agent played it, updates the policy before the world model learns from it.

The policy otherwise learns only inside the world model, and where the model over-rewards a move
the policy follows (docs/experiments.md: the collapsed CrazyClimber runs imagined twice the real
reward rate). The real steps' advantages cannot be exploited that way, and they cost no extra
interaction: they are the steps collected for the model anyway.
"""

from __future__ import annotations

import numpy as np
import torch

from dlswm.config import PPOConfig
from dlswm.models import System, in_mode
from dlswm.train.imagine import PolicyTrainer
from dlswm.train.ppo import gae
from dlswm.train.real_env import sample_actions


class RealRollout:
    """The agent collecting at `temperature`, recording what PPO needs of every step in CleanRL's
    (T, N) layout: `act` is the collector's policy, `observe` its step observer.

    Recorded per step t and env n: the codes the agent read, its logits (the policy PPO optimizes,
    temperature 1), value and action; the reward's sign (imagined rewards are signs, so the critic
    keeps one scale); `ends`, the step ended the episode (or a life, with `life_loss_ends`, as
    imagination does with the life-loss head); `valid`, a real transition: an autoreset step
    ignores its action, is masked out and, by convention, ends too (nothing flows through it).
    """

    def __init__(self, system: System, device: torch.device, temperature: float, seed: int,
                 life_loss_ends: bool = False):
        assert temperature > 0, "PPO needs the probability of each action played"
        self.agent, self.device, self.temperature = system.inference_agent(), device, temperature
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.life_loss_ends = life_loss_ends
        self.steps: dict[str, list[torch.Tensor]] = {k: [] for k in ("codes", "logits", "values", "actions")}
        self.outcomes: dict[str, list[np.ndarray]] = {k: [] for k in ("rewards", "ends", "valid")}

    @torch.no_grad()
    def _agent(self, obs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with in_mode(self.agent, False):
            return self.agent(torch.from_numpy(obs).to(self.device))  # (N, A), (N,), (N, H, W)

    def act(self, obs: np.ndarray) -> np.ndarray:
        logits, values, codes = self._agent(obs)
        actions = sample_actions(logits, self.temperature, self.generator)  # (N,), as torch_policy draws
        for name, x in zip(self.steps, (codes, logits, values, actions)):
            self.steps[name].append(x)
        return actions.cpu().numpy()

    def observe(self, rewards: np.ndarray, ended: np.ndarray, life_lost: np.ndarray, autoreset: np.ndarray) -> None:
        ends = ended | autoreset | (life_lost if self.life_loss_ends else False)
        for name, x in zip(self.outcomes, (np.sign(rewards), ends, ~autoreset)):
            self.outcomes[name].append(np.asarray(x))

    def batch(self, last_obs: np.ndarray) -> dict[str, torch.Tensor]:
        """The recorded steps as tensors (T, N, ...), and last_value (N,): the critic after the last
        step, where the collection cut the envs' episodes (their value stands in for the rest)."""
        assert len(self.steps["actions"]) == len(self.outcomes["rewards"]) > 0, "act and observe once per step"
        out = {k: torch.stack(v) for k, v in self.steps.items()}
        out.update({k: torch.from_numpy(np.stack(v)).to(self.device) for k, v in self.outcomes.items()})
        out["rewards"] = out["rewards"].float()
        out["last_value"] = self._agent(last_obs)[1]
        return out


def log_prob_played(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log softmax(logits) (M, A) at each played action (M,)."""
    return logits.log_softmax(1).gather(1, actions[:, None]).squeeze(1)


def importance_weights(logits: torch.Tensor, actions: torch.Tensor, temperature: float) -> torch.Tensor:
    """min(1, p(a) / p_T(a)) (M,): the policy's probability of each action played (logits (M, A))
    over the one it was drawn with at `temperature`, capped at 1 (V-trace caps its weights so)."""
    log_ratio = log_prob_played(logits, actions) - log_prob_played(logits / temperature, actions)
    return log_ratio.exp().clamp(max=1.0)


def ppo_inputs(system: System, batch: dict[str, torch.Tensor], cfg: PPOConfig, temperature: float
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One collection's real transitions (`RealRollout.batch`) as `PolicyTrainer.optimize` takes
    them: the embeddings the policy read (M, D, H, W) and the `ppo_loss` fields of the M valid steps.

    The old policy is the one that played, at temperature 1 (as PPO optimizes it); the steps were
    drawn at the collection `temperature`, so each one's policy term carries `importance_weights`
    (1 exactly when the collection plays at temperature 1). Only the policy term is corrected: the
    returns (GAE over the reward signs, cut at the episodes' ends) are those of the policy that
    played, so at a collection temperature above 1 the critic's real targets are a flatter policy's.
    With the KL anchor on, these steps anchor to the policy that played them.
    """
    T, N = batch["actions"].shape
    advantages, returns = gae(batch["rewards"], batch["values"], batch["last_value"], cfg.gamma, cfg.gae_lambda,
                              ends=batch["ends"])  # (T, N) each
    valid = batch["valid"].reshape(-1)  # (T * N,)
    logits = batch["logits"].reshape(T * N, -1)[valid]  # (M, A)
    actions = batch["actions"].reshape(-1)[valid]  # (M,)
    b = {"actions": actions, "log_probs": log_prob_played(logits, actions),
         "values": batch["values"].reshape(-1)[valid], "advantages": advantages.reshape(-1)[valid],
         "returns": returns.reshape(-1)[valid], "weights": importance_weights(logits, actions, temperature)}
    if cfg.anchor_kl_coef > 0:
        b["anchor_logits"] = logits
    with torch.no_grad():
        z = system.vqvae.codebook.embed(batch["codes"].flatten(0, 1)[valid])  # (M, D, H, W)
    return z, b


def train_on_real(trainer: PolicyTrainer, batch: dict[str, torch.Tensor], temperature: float,
                  epochs: int) -> dict[str, float]:
    """`epochs` PPO passes over one collection's real transitions (`ppo_inputs`), the policy in
    fp32 as it played; its metrics as `real_ppo/*`."""
    z, b = ppo_inputs(trainer.system, batch, trainer.cfg.ppo, temperature)
    metrics = trainer.optimize(z, b, epochs, amp=False)
    return {**{f"real_ppo/{k.partition('/')[2]}": v for k, v in metrics.items()},
            "real_ppo/transitions": float(len(b["actions"])), "real_ppo/weight_mean": b["weights"].mean().item()}
