"""PPO's maths, for imagined rollouts and real collections alike: generalized advantage estimation
and the clipped losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlswm.config import PPOConfig


def gae(rewards: torch.Tensor, values: torch.Tensor, last_value: torch.Tensor, gamma: float,
        lam: float, ends: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns of rollouts cut after T steps (the critic's value stands in for the rest).

    rewards, values (T, N); last_value (N,): the critic's estimate after the last step; ends (T, N),
    optional: step t ended the return (a life lost in imagination, an episode's end in the real
    game), so nothing after it counts toward t's return.
    """
    T, N = rewards.shape
    assert values.shape == (T, N) and last_value.shape == (N,), (values.shape, last_value.shape)
    assert ends is None or ends.shape == (T, N), ends.shape
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(T)):
        discount = gamma if ends is None else gamma * (~ends[t]).to(rewards.dtype)  # (N,)
        delta = rewards[t] + discount * next_value - values[t]
        next_advantage = delta + discount * lam * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


def ppo_loss(logits: torch.Tensor, values: torch.Tensor, mb: dict[str, torch.Tensor], cfg: PPOConfig
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy loss + clipped value loss - entropy bonus on one minibatch.

    logits (M, A), values (M,) from the current policy; mb holds the rollout's actions, old
    log-probs, old values, advantages and returns, each (M,); with `cfg.anchor_kl_coef`, also the
    anchor policy's logits (M, A), and the loss adds coef * KL(anchor || current); optionally
    `weights` (M,): per-sample importance weights of the policy term, for steps that a policy other
    than the old one chose (the real game's steps sampled at the collection temperature).
    """
    M = logits.shape[0]
    assert values.shape == (M,) and mb["actions"].shape == (M,), (values.shape, mb["actions"].shape)
    dist = torch.distributions.Categorical(logits=logits)
    log_ratio = dist.log_prob(mb["actions"]) - mb["log_probs"]
    ratio = log_ratio.exp()
    adv = mb["advantages"]
    if cfg.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)  # a 1-sample minibatch gives 0, not NaN
    clipped = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef))  # (M,)
    policy_loss = (clipped * mb["weights"]).mean() if "weights" in mb else clipped.mean()
    values_clipped = mb["values"] + (values - mb["values"]).clamp(-cfg.value_clip_coef, cfg.value_clip_coef)
    value_loss = 0.5 * torch.max(F.mse_loss(values, mb["returns"], reduction="none"),
                                 F.mse_loss(values_clipped, mb["returns"], reduction="none")).mean()
    entropy = dist.entropy().mean()
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
    metrics = {}
    if cfg.anchor_kl_coef > 0:
        anchor = torch.distributions.Categorical(logits=mb["anchor_logits"])
        anchor_kl = torch.distributions.kl_divergence(anchor, dist).mean()
        loss = loss + cfg.anchor_kl_coef * anchor_kl
        metrics["ppo/anchor_kl"] = anchor_kl.item()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_frac = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
    return loss, {"ppo/policy_loss": policy_loss.item(), "ppo/value_loss": value_loss.item(),
                  "ppo/entropy": entropy.item(), "ppo/approx_kl": approx_kl.item(),
                  "ppo/clip_frac": clip_frac.item(), **metrics}
