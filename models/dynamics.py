"""Dynamics: a convolutional LSTM on the latent grid predicts the next grid of codes and the reward.

Two layer-normalized ConvLSTM cells run on the 6x6 grid of quantized embeddings; the action, as a
one-hot broadcast over the grid, joins the input of every layer and of both heads. The next latent
is an independent categorical over K codes per cell; the reward is its sign, {-1, 0, +1}. With
`life_loss_head` the reward head has one more output, the logit of a life lost on the step; else,
as in the article, there is no terminal head and imagined episodes are cut at a fixed horizon only.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dlswm.config import Config

State = list[tuple[torch.Tensor, torch.Tensor]]  # (h, c) per layer, each (B, H, 6, 6)


class ConvLSTMCell(nn.Module):
    def __init__(self, in_channels: int, hidden: int, kernel_size: int):
        super().__init__()
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)
        self.gate_norm = nn.GroupNorm(4, 4 * hidden)  # a layer norm per gate (Ba et al., 2016)
        self.cell_norm = nn.GroupNorm(1, hidden)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        i, f, g, o = self.gate_norm(self.gates(torch.cat([x, h], 1))).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.cell_norm(c))
        return h, c


class Dynamics(nn.Module):
    def __init__(self, cfg: Config, num_actions: int):
        super().__init__()
        d, n = cfg.dynamics, cfg.latent_size
        self.num_actions = num_actions
        self.reward_trunk_grad = d.reward_trunk_grad
        self.life_loss_head = d.life_loss_head
        self.hidden = d.hidden_channels
        widths = [cfg.vqvae.embedding_dim] + [d.hidden_channels] * (d.layers - 1)
        self.cells = nn.ModuleList(ConvLSTMCell(w + num_actions, d.hidden_channels, d.kernel_size) for w in widths)
        head_in = d.hidden_channels + num_actions
        self.latent_head = nn.Conv2d(head_in, cfg.vqvae.codebook_size, 1)
        self.reward_head = nn.Sequential(
            nn.Conv2d(head_in, d.reward_channels, 1), nn.LayerNorm([d.reward_channels, n, n]), nn.LeakyReLU(),
            nn.Flatten(), nn.Linear(d.reward_channels * n * n, d.reward_hidden), nn.LeakyReLU(),
            nn.Linear(d.reward_hidden, 3 + int(d.life_loss_head)),  # reward sign classes (+ life-loss logit)
        )
        if d.life_loss_head:  # start at a rare loss (1%), not at a coin flip every imagined step
            with torch.no_grad():
                self.reward_head[-1].bias[3] = math.log(0.01 / 0.99)

    def initial_state(self, batch: int, like: torch.Tensor) -> State:
        zeros = like.new_zeros(batch, self.hidden, *like.shape[-2:])
        return [(zeros, zeros) for _ in self.cells]

    def step(self, z: torch.Tensor, action: torch.Tensor, state: State,
             reset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One transition: embeddings z (B, D, 6, 6) and actions (B,) -> next-code logits (B, K, 6, 6),
        reward-sign logits (B, 3) (with `life_loss_head`: (B, 4), `split_outcome` parts them), new state. Where `reset` (B,) is true, z starts a new episode:
        the state is zeroed first, so nothing leaks across episode boundaries. It goes through
        `__call__`, so `Module.compile()` (config `compile`) compiles the whole step as one graph."""
        return self(z, action, state, reset)

    def forward(self, z: torch.Tensor, action: torch.Tensor, state: State,
                reset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        B = z.shape[0]
        assert action.shape == (B,), action.shape
        if reset is not None:
            keep = (~reset).to(z.dtype).view(B, 1, 1, 1)
            state = [(h * keep, c * keep) for h, c in state]
        a = F.one_hot(action, self.num_actions).to(z.dtype)[:, :, None, None].expand(-1, -1, *z.shape[-2:])
        x, new_state = z, []
        for cell, layer_state in zip(self.cells, state):
            h, c = cell(torch.cat([x, a], 1), layer_state)
            new_state.append((h, c))
            x = h
        x = torch.cat([x, a], 1)  # (B, H + A, 6, 6)
        # The reward head learns at full strength, but its errors reach the shared LSTM only scaled
        # down: same forward value, gradient times `reward_trunk_grad`.
        x_reward = x * self.reward_trunk_grad + x.detach() * (1 - self.reward_trunk_grad)
        return self.latent_head(x), self.reward_head(x_reward), new_state


def sample_categorical(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """One draw per distribution from categorical `logits` over `dim`: (B, K, ...) -> (B, ...).

    By inverse CDF (a uniform against the cumulative probabilities), which draws from the same
    distribution as `Categorical(logits).sample()`; that one goes through `torch.multinomial`,
    whose exponential draws per logit cost ~20x more on CPU at the next-code logits' size.
    """
    probs = logits.float().movedim(dim, -1).softmax(-1)  # (..., K)
    cdf = probs.cumsum(-1)
    u = torch.rand(*cdf.shape[:-1], 1, device=cdf.device) * cdf[..., -1:]  # (..., 1) in [0, total]
    # The code is the number of inner boundaries cdf[0..K-2] at or below u: a zero-probability code
    # has an empty interval, and a u rounded up to the total still lands on code K - 1.
    return torch.searchsorted(cdf[..., :-1].contiguous(), u, right=True).squeeze(-1)


def split_outcome(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reward head's output (B, 3) or (B, 4) -> reward-sign logits (B, 3), life-loss logit (B,) or None."""
    return logits[:, :3], (logits[:, 3] if logits.shape[1] == 4 else None)


def _hit_counts(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(hits, predicted, true) counts of a rare event: precision = hits / predicted, recall = hits / true."""
    return torch.stack([(predicted & target).sum(), predicted.sum(), target.sum()])


def reward_to_class(reward: torch.Tensor) -> torch.Tensor:
    """Reward sign {-1, 0, +1} -> class {0, 1, 2}."""
    return (torch.sign(reward) + 1).long()


def nonzero_reward_mass(reward_probs: torch.Tensor) -> torch.Tensor:
    """The reward head's probability of a non-zero reward, (..., 3) -> (...): p(-1) + p(+1), not
    1 - p(0), which float32 rounds where p(0) is near 1."""
    return reward_probs[..., 0] + reward_probs[..., 2]


def dynamics_loss(dynamics: Dynamics, embed: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                  codes: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, first: torch.Tensor,
                  cfg: Config, life_lost: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the next codes and of the reward sign along real sequences; with the life-loss
    head, + the binary cross-entropy of a life lost (B, T) on each step.

    z (B, T, D, 6, 6): quantized embeddings of the real observations (with gradient unless
    `stop_embedding_grad`: the article lets dynamics errors shape the embedding);
    codes (B, T, 6, 6): their indices, the targets; actions, rewards (B, T): taken and received at
    step t; first (B, T): observation t starts an episode. The first `teacher_forcing_steps` inputs
    are real, later ones are the model's own samples embedded by `embed`, as in imagination.
    """
    B, T = actions.shape
    assert z.shape[:2] == (B, T) and codes.shape[:2] == (B, T) and rewards.shape == (B, T), (z.shape, codes.shape)
    d = cfg.dynamics
    if d.stop_embedding_grad:
        z = z.detach()
    state = dynamics.initial_state(B, z[:, 0])
    x = z[:, 0]
    if dynamics.life_loss_head:
        assert life_lost is not None and life_lost.shape == (B, T), "the life-loss head needs its targets"
    latent_losses, reward_losses, latent_acc, reward_acc, reward_hits, reward_mass = [], [], [], [], [], []
    life_losses, life_hits = [], []
    for t in range(T - 1):
        logits, outcome, state = dynamics.step(x, actions[:, t], state, reset=first[:, t])
        reward_logits, life_logit = split_outcome(outcome)
        if life_logit is not None:  # like the reward: the step's life loss is real even when t ends an episode
            target = life_lost[:, t]
            life_losses.append(F.binary_cross_entropy_with_logits(life_logit.float(), target.float()))
            life_hits.append(_hit_counts(life_logit > 0, target))
        valid = (~first[:, t + 1]).float()  # no target across an episode boundary
        ce = F.cross_entropy(logits, codes[:, t + 1], reduction="none").mean((1, 2))  # (B,)
        r_target = reward_to_class(rewards[:, t])
        r_ce = F.cross_entropy(reward_logits, r_target, reduction="none")  # (B,)
        latent_losses.append((ce * valid).sum() / valid.sum().clamp(min=1))
        reward_losses.append(r_ce.mean())  # the reward of step t is real even when t ends an episode
        latent_acc.append(((logits.argmax(1) == codes[:, t + 1]).float().mean((1, 2)) * valid).sum()
                          / valid.sum().clamp(min=1))
        predicted = reward_logits.argmax(1)
        reward_acc.append((predicted == r_target).float().mean())
        rewarded = r_target != 1  # (B,)
        # Non-zero rewards are rare (2% in CrazyClimber): accuracy hides a head that never predicts one.
        reward_hits.append(torch.stack([((predicted == r_target) & rewarded).sum(), (predicted != 1).sum(),
                                        rewarded.sum()]))
        # ... nor whether its non-zero mass (what expected and sampled imagined rewards follow) is
        # higher on the steps that carry a reward: summed here, `reward_lift` in the summaries.
        nonzero = nonzero_reward_mass(reward_logits.detach().float().softmax(1))  # (B,)
        reward_mass.append(torch.stack([(nonzero * rewarded).sum(), (nonzero * ~rewarded).sum()]))  # no mask indexing: no sync
        if t + 1 < d.teacher_forcing_steps:
            x = z[:, t + 1]
        else:
            sampled = sample_categorical(logits)  # (B, 6, 6)
            # An episode start cannot be predicted: feed the real observation there.
            restart = first[:, t + 1].view(B, 1, 1, 1)
            x = torch.where(restart, z[:, t + 1], embed(sampled))
    latent_loss = torch.stack(latent_losses).mean()
    reward_loss = torch.stack(reward_losses).mean()
    loss = latent_loss + reward_loss
    hits, predicted_nonzero, true_nonzero = torch.stack(reward_hits).sum(0).tolist()
    mass_rewarded, mass_unrewarded = torch.stack(reward_mass).sum(0).tolist()
    metrics = {}
    if life_losses:
        life_loss = torch.stack(life_losses).mean()
        loss = loss + life_loss
        life = torch.stack(life_hits).sum(0).tolist()
        metrics = {"dynamics/life_ce": life_loss.item(), "dynamics/life_hits": life[0],
                   "dynamics/life_predicted": life[1], "dynamics/life_true": life[2]}
    return loss, {
        **metrics,
        "dynamics/reward_hits": hits,  # counts: precision = hits / predicted, recall = hits / true
        "dynamics/reward_predicted_nonzero": predicted_nonzero,
        "dynamics/reward_true_nonzero": true_nonzero,
        "dynamics/reward_mass_rewarded": mass_rewarded,  # summed non-zero mass on steps with a reward
        "dynamics/reward_mass_unrewarded": mass_unrewarded,  # ... and on steps without
        "dynamics/reward_steps": float(B * (T - 1)),
        "dynamics/latent_ce": latent_loss.item(),
        "dynamics/reward_ce": reward_loss.item(),
        "dynamics/latent_acc": torch.stack(latent_acc).mean().item(),
        "dynamics/reward_acc": torch.stack(reward_acc).mean().item(),
    }
