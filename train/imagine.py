"""Policy training inside the world model: imagined rollouts from real observations, then PPO."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch

from dlswm.config import Config
from dlswm.models import System, in_mode
from dlswm.models.dynamics import State, nonzero_reward_mass, sample_categorical, split_outcome
from dlswm.models.vqvae import continuous_bernoulli_mean
from dlswm.train.buffer import ReplayBuffer
from dlswm.train.ppo import gae, ppo_loss
from dlswm.train.speed import Speed, bf16_autocast


def start_context(buffer: ReplayBuffer, cfg: Config, n: int, rng: np.random.Generator,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """n real windows of `teacher_forcing_steps` observations: the dynamics model reads them as it
    does in training before the rollouts go on from the last one."""
    length = cfg.dynamics.teacher_forcing_steps
    starts = buffer.sample_starts(buffer.sequence_starts(length), n, rng, cfg.schedule.recent_fraction)
    seq = buffer.sequence_tensors(starts, length, device)
    return {k: seq[k] for k in ("obs", "actions", "first")}


def warm_start(system: System, context: dict[str, torch.Tensor]) -> tuple[torch.Tensor, State, torch.Tensor]:
    """Where imagined rollouts go on from: the context's windows encoded and quantized, the dynamics
    model run teacher-forced over their first C - 1 steps (as in training). Returns the last real
    embeddings z (N, D, 6, 6), the recurrent state after them and their reset flags (N,)."""
    codebook, dynamics = system.vqvae.codebook, system.dynamics
    N, C = context["actions"].shape
    z_e = system.vqvae.encoder(context["obs"].flatten(0, 1)).float()  # (N * C, D, 6, 6)
    real = codebook.quantize(z_e)[1].view(N, C, *z_e.shape[1:])  # (N, C, D, 6, 6)
    state = dynamics.initial_state(N, real[:, 0])
    for t in range(C - 1):
        _, _, state = dynamics.step(real[:, t], context["actions"][:, t], state, reset=context["first"][:, t])
    return real[:, -1], state, context["first"][:, -1]


@torch.no_grad()
def imagine(system: System, context: dict[str, torch.Tensor], horizon: int, decode: bool = False,
            amp: bool = False, expected_reward: bool = False) -> dict[str, torch.Tensor]:
    """Roll the policy through the dynamics model for `horizon` steps.

    context: real obs uint8 (N, C, S, 96, 96), actions and first (N, C) (`start_context`). The first
    C - 1 steps are teacher-forced, as in training, to build the recurrent state; the rollouts start
    from the last observation. Returns z (T, N, D, 6, 6),
    actions, log_probs, values, rewards (T, N) (a sampled sign, or with `expected_reward` the head's
    expected sign), reward_rate (T, N) (the head's probability of a non-zero reward), last_value (N,);
    with the life-loss head, also
    life_lost (T, N), sampled as the rewards are (the rollout goes on past one, as the game
    does, and the returns end there); with `decode`, also the decoder's
    mean frames (T + 1, N, S, 96, 96) for pictures. `amp` runs the dynamics model and the policy's
    body in bf16 (the policy's heads stay fp32); PPO then evaluates the policy the same way, so its
    old and new log-probs compare like with like.
    """
    codebook, dynamics, policy = system.vqvae.codebook, system.dynamics, system.policy
    # One autocast region for the whole rollout: autocast then casts each weight to bf16 once,
    # not once per step (its cache lives until the outermost region exits). The context is encoded
    # in it too, as world-model training encodes its windows.
    with bf16_autocast(context["obs"].device, amp):
        z, state, reset = warm_start(system, context)
        out = defaultdict(list)
        for _ in range(horizon):
            logits, value = policy(z, amp)  # (N, A), (N,): fp32 heads
            # No argument validation: its check of the logits is a host sync on CUDA, once per step.
            dist = torch.distributions.Categorical(logits=logits, validate_args=False)
            action = dist.sample()
            out["z"].append(z)
            out["actions"].append(action)
            out["log_probs"].append(dist.log_prob(action))
            out["values"].append(value)
            if decode:
                out["frames"].append(_decode(system, z))
            code_logits, outcome, state = dynamics.step(z, action, state, reset=reset)
            reset = None
            reward_logits, life_logit = split_outcome(outcome)
            codes = sample_categorical(code_logits)  # (N, 6, 6)
            reward_probs = reward_logits.float().softmax(1)  # (N, 3): signs -1, 0, +1
            if expected_reward:
                out["rewards"].append(reward_probs[:, 2] - reward_probs[:, 0])
            else:
                reward_class = sample_categorical(reward_logits)  # (N,)
                out["rewards"].append(reward_class.float() - 1)  # classes {0, 1, 2} -> reward sign {-1, 0, +1}
            out["reward_rate"].append(nonzero_reward_mass(reward_probs))
            if life_logit is not None:
                out["life_lost"].append(torch.rand_like(life_logit, dtype=torch.float32) < torch.sigmoid(life_logit.float()))
            z = codebook.embed(codes)
    if decode:
        out["frames"].append(_decode(system, z))
    result = {k: torch.stack(v) for k, v in out.items()}
    result["last_value"] = policy(z, amp)[1]
    return result


def _decode(system: System, z: torch.Tensor) -> torch.Tensor:
    return continuous_bernoulli_mean(system.vqvae.decoder(z).float())


class PolicyTrainer:
    def __init__(self, system: System, cfg: Config, speed: Speed):
        self.system, self.cfg, self.speed, self.device = system, cfg, speed, speed.device
        self.optimizer = speed.adam(system.policy.parameters(), lr=cfg.ppo.lr, eps=1e-5)
        self.anchor: torch.nn.Module | None = None

    def set_anchor(self) -> None:
        """Freeze a copy of the policy as it is now (the imagined phase's start) for `ppo.anchor_kl_coef`."""
        if self.cfg.ppo.anchor_kl_coef > 0:
            # A new module with the weights, not a deep copy: that would inherit `compile`, and
            # torch.compile would then keep a graph for every iteration's anchor.
            policy = self.system.policy
            self.anchor = type(policy)(self.cfg, self.system.num_actions).to(self.device)
            self.anchor.load_state_dict(policy.state_dict())
            self.anchor.eval().requires_grad_(False)

    def train(self, buffer: ReplayBuffer, updates: int, rng: np.random.Generator,
              progress: Callable[[int], None]) -> dict[str, float]:
        """The policy phase of an iteration: anchor to the policy as it is now, then `updates` PPO
        updates; the means of their metrics and the imagined steps per second."""
        self.set_anchor()
        t0, per_update = time.perf_counter(), []
        for _ in range(updates):
            per_update.append(self.update(buffer, rng))
            progress(1)
        seconds = time.perf_counter() - t0
        summary = {k: float(np.mean([m[k] for m in per_update])) for k in (per_update or [{}])[0]}
        imagined = updates * self.cfg.ppo.num_envs * self.cfg.ppo.rollout_steps
        summary["throughput/imagined_steps_per_s"] = imagined / max(seconds, 1e-9)
        return summary

    def optimize(self, b_z: torch.Tensor, b: dict[str, torch.Tensor], epochs: int, amp: bool) -> dict[str, float]:
        """`epochs` passes of PPO minibatches over one batch: b_z (M, D, H, W) the policy's inputs,
        b the `ppo_loss` fields, each (M,) or (M, A); the means of the minibatches' metrics."""
        p = self.cfg.ppo
        metrics: dict[str, list[float]] = defaultdict(list)
        with in_mode(self.system.policy, True):
            for _ in range(epochs):
                order = torch.randperm(len(b_z), device=self.device)
                for mb_idx in order.split(p.minibatch_size):
                    mb = {k: v[mb_idx] for k, v in b.items()}
                    logits, values = self.system.policy(b_z[mb_idx], amp)
                    loss, mb_metrics = ppo_loss(logits, values, mb, p)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.system.policy.parameters(), p.max_grad_norm)
                    self.optimizer.step()
                    for k, v in mb_metrics.items():
                        metrics[k].append(v)
        return {k: float(np.mean(v)) for k, v in metrics.items()}

    def update(self, buffer: ReplayBuffer, rng: np.random.Generator) -> dict[str, float]:
        """One PPO update: an imagined rollout of `num_envs` x `rollout_steps`, then `epochs` passes."""
        p = self.cfg.ppo
        context = start_context(buffer, self.cfg, p.num_envs, rng, self.device)
        with in_mode(self.system, False):  # BatchNorm statistics stay as the world model learnt them
            roll = imagine(self.system, context, p.rollout_steps, amp=self.speed.amp,
                           expected_reward=p.expected_reward)
        last_value = roll["last_value"] if p.bootstrap_horizon else torch.zeros_like(roll["last_value"])
        advantages, returns = gae(roll["rewards"], roll["values"], last_value, p.gamma, p.gae_lambda,
                                  ends=roll.get("life_lost"))
        b_z = roll["z"].flatten(0, 1)  # (T * N, D, 6, 6)
        batch = {"actions": roll["actions"], "log_probs": roll["log_probs"], "values": roll["values"],
                 "advantages": advantages, "returns": returns}
        b = {k: v.reshape(-1) for k, v in batch.items()}  # each (T * N,)
        if p.anchor_kl_coef > 0:
            assert self.anchor is not None, "anchor_kl_coef > 0: call set_anchor() (or train()) first"
            with torch.no_grad():
                b["anchor_logits"] = self.anchor(b_z, self.speed.amp)[0]  # (T * N, A)
        summary = self.optimize(b_z, b, p.epochs, self.speed.amp)
        summary["imagined/return"] = roll["rewards"].sum(0).mean().item()
        # The head's expected rate (the mean of what sampling gives), comparable with collect/reward_rate.
        summary["imagined/reward_rate"] = roll["reward_rate"].mean().item()
        # Comparable with collect/sign_return_per_step: a policy exploiting the model inflates this.
        summary["imagined/sign_return_per_step"] = roll["rewards"].mean().item()
        if "life_lost" in roll:  # comparable with collect/life_loss_rate
            summary["imagined/life_loss_rate"] = roll["life_lost"].float().mean().item()
        return summary
