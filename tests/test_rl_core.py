"""The training maths, pinned down on hand-worked numbers.

Each test names the one-line break of the source it exists to catch ("mutation: ..."); every one of
them was applied and seen to fail the test. Everything here is tiny and seeded: no training runs,
no emulator. Systems use 32x32 frames (a 2x2 latent grid) where the frame size does not matter.
"""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlswm.config import PPOConfig, resolve
from dlswm.models import System
from dlswm.models.dynamics import Dynamics, dynamics_loss, sample_categorical
from dlswm.models.vqvae import Codebook, motion_weights, vqvae_loss
from dlswm.runtime.play import action_probs, choose
from dlswm.train import real_env
from dlswm.train.buffer import ReplayBuffer
from dlswm.train.imagine import PolicyTrainer, imagine
from dlswm.train.ppo import gae, ppo_loss
from dlswm.train.real_env import Collector
from dlswm.train.real_ppo import RealRollout, importance_weights, ppo_inputs
from dlswm.train.speed import Speed
from dlswm.train.trainer import Trainer
from dlswm.train.world_model import WorldModelTrainer

CPU = torch.device("cpu")
FP32 = Speed(CPU, amp=False, fused_adam=True, threads=1)  # as on a CPU without native bf16


def small_cfg():
    return resolve("tiny", "Pong", ["env.frame_size=32"])


def small_system(num_actions=4, seed=0):
    torch.manual_seed(seed)
    return System(small_cfg(), num_actions)


def synthetic_buffer(cfg, n=40, seed=0):
    """One stream of n random frames (a single episode) with random actions and reward signs."""
    rng = np.random.default_rng(seed)
    size = cfg.env.frame_size
    first, done = np.zeros(n, bool), np.zeros(n, bool)
    first[0], done[-1] = True, True
    buffer = ReplayBuffer(cfg.env.frame_stack)
    buffer.add_chunk({"frames": rng.integers(0, 256, (n, size, size), dtype=np.uint8),
                      "actions": rng.integers(0, 4, n).astype(np.int64),
                      "rewards": rng.choice([-1.0, 0.0, 1.0], n).astype(np.float32),
                      "first": first, "done": done})
    return buffer


# ---- PPO losses ------------------------------------------------------------------------------------

HAND_CFG = PPOConfig(clip_coef=0.2, value_clip_coef=0.2, value_coef=0.5, entropy_coef=0.1,
                     normalize_advantages=False)
LN3 = math.log(3.0)
# Every row's policy: p = softmax([0, ln 3]) = [1/4, 3/4].
ENTROPY = math.log(4.0) - 0.75 * LN3  # -(1/4 ln 1/4 + 3/4 ln 3/4)
RATIOS = [1.5, 0.5, 1.5, 0.5, 1.1]  # outside the clip range above and below, and one inside
ADVANTAGES = [2.0, 1.0, -1.0, -3.0, 4.0]
# Clipped surrogate, max(-A r, -A clip(r, 0.8, 1.2)) per sample:
#   max(-3, -2.4) = -2.4;  max(-0.5, -0.8) = -0.5;  max(1.5, 1.2) = 1.5;  max(1.5, 2.4) = 2.4;  -4.4
POLICY_LOSS = (-2.4 - 0.5 + 1.5 + 2.4 - 4.4) / 5  # -0.68 (with torch.min it would be -1.1)
OLD_VALUES = [0.0, 0.0, 0.0, 1.0, 1.0]
NEW_VALUES = [1.0, -1.0, 0.1, 1.5, 0.5]
RETURNS = [1.0, 1.0, 0.5, 0.0, 1.0]
# Squared errors (unclipped, clipped to old +- 0.2) -> the larger:
#   (0, 0.64) -> 0.64;  (4, 1.44) -> 4;  (0.16, 0.16);  (2.25, 1.44) -> 2.25;  (0.25, 0.04) -> 0.25
VALUE_LOSS = 0.5 * (0.64 + 4 + 0.16 + 2.25 + 0.25) / 5  # 0.73 (no clipping: 0.666, min: 0.308)


def hand_minibatch():
    M = len(RATIOS)
    logits = torch.tensor([[0.0, LN3]] * M, dtype=torch.float64, requires_grad=True)
    actions = torch.tensor([1, 0, 1, 0, 1])
    new_log_probs = torch.log(torch.tensor([0.75, 0.25, 0.75, 0.25, 0.75], dtype=torch.float64))
    mb = {"actions": actions,
          "log_probs": new_log_probs - torch.log(torch.tensor(RATIOS, dtype=torch.float64)),  # ratio = RATIOS
          "advantages": torch.tensor(ADVANTAGES, dtype=torch.float64),
          "values": torch.tensor(OLD_VALUES, dtype=torch.float64),
          "returns": torch.tensor(RETURNS, dtype=torch.float64)}
    return logits, torch.tensor(NEW_VALUES, dtype=torch.float64), mb


def test_ppo_clipped_surrogate_on_hand_numbers():
    """Mutation caught: ppo_loss's `torch.max(-adv * ratio, ...)` -> `torch.min` (pessimistic bound
    lost), or the clip range applied wrongly (-1.1 / other values instead of -0.68)."""
    logits, values, mb = hand_minibatch()
    _, m = ppo_loss(logits, values, mb, HAND_CFG)
    assert m["ppo/policy_loss"] == pytest.approx(POLICY_LOSS, abs=1e-9)
    assert m["ppo/clip_frac"] == pytest.approx(0.8)  # 4 of 5 ratios outside [0.8, 1.2]
    kl = np.mean([(r - 1) - math.log(r) for r in RATIOS])
    assert m["ppo/approx_kl"] == pytest.approx(kl, abs=1e-9)


def test_ppo_clipped_value_loss_on_hand_numbers():
    """Mutations caught: value clipping dropped (plain MSE: 0.666), `torch.max` -> `torch.min`
    (0.308), or only the clipped term kept; the minibatch has samples where the clipped loss is
    larger (0, 3) and where the unclipped is larger (1, 4)."""
    logits, values, mb = hand_minibatch()
    _, m = ppo_loss(logits, values, mb, HAND_CFG)
    assert m["ppo/value_loss"] == pytest.approx(VALUE_LOSS, abs=1e-9)


def test_ppo_total_loss_subtracts_the_entropy_bonus():
    """Mutation caught: entropy bonus sign flipped (`- entropy_coef * entropy` -> `+`), or a
    coefficient dropped: the total is policy + 0.5 * value - 0.1 * entropy on hand numbers."""
    logits, values, mb = hand_minibatch()
    loss, m = ppo_loss(logits, values, mb, HAND_CFG)
    assert m["ppo/entropy"] == pytest.approx(ENTROPY, abs=1e-9)
    assert loss.item() == pytest.approx(POLICY_LOSS + 0.5 * VALUE_LOSS - 0.1 * ENTROPY, abs=1e-9)


def test_ppo_step_with_zero_advantages_raises_the_entropy():
    """Mutation caught: entropy sign flipped. With zero advantages and values on their returns, the
    only gradient is the bonus's: one gradient step must make the policy more random."""
    logits, values, mb = hand_minibatch()
    mb["advantages"] = torch.zeros_like(mb["advantages"])
    mb["returns"] = mb["values"] = values.clone()
    loss, _ = ppo_loss(logits, values, mb, HAND_CFG)
    loss.backward()
    stepped = (logits - 10.0 * logits.grad).detach()
    assert torch.distributions.Categorical(logits=stepped).entropy().mean() > ENTROPY + 1e-3


def test_ppo_anchor_kl_adds_coef_times_kl_from_the_anchor_on_hand_numbers():
    """ppo.anchor_kl_coef: the loss grows by exactly coef * mean KL(anchor || current), in that
    direction (mutation caught: the KL's arguments swapped, or the term's sign flipped)."""
    logits, values, mb = hand_minibatch()
    anchor = torch.zeros_like(logits)  # a uniform anchor u: KL(u || p) by hand below
    base, _ = ppo_loss(logits, values, mb, HAND_CFG)
    cfg = PPOConfig(**{**HAND_CFG.__dict__, "anchor_kl_coef": 0.5})
    loss, m = ppo_loss(logits, values, dict(mb, anchor_logits=anchor), cfg)
    log_p = torch.log_softmax(logits, -1)
    u = 1 / logits.shape[-1]
    kl = (u * (math.log(u) - log_p)).sum(-1).mean().item()  # sum_a u_a (log u_a - log p_a)
    assert m["ppo/anchor_kl"] == pytest.approx(kl, abs=1e-9) and kl > 0
    assert loss.item() == pytest.approx(base.item() + 0.5 * kl, abs=1e-9)
    same, m0 = ppo_loss(logits, values, dict(mb, anchor_logits=logits.detach()), cfg)
    assert m0["ppo/anchor_kl"] == pytest.approx(0, abs=1e-12) and same.item() == pytest.approx(base.item())


def test_ppo_normalized_advantages_match_normalizing_by_hand():
    """normalize_advantages=True is the same loss as passing (A - mean) / std (population std)."""
    logits, values, mb = hand_minibatch()
    adv = mb["advantages"]
    on = PPOConfig(**{**HAND_CFG.__dict__, "normalize_advantages": True})
    loss_on, _ = ppo_loss(logits, values, mb, on)
    by_hand = dict(mb, advantages=(adv - adv.mean()) / adv.std(unbiased=False))
    loss_off, _ = ppo_loss(logits, values, by_hand, HAND_CFG)
    assert loss_on.item() == pytest.approx(loss_off.item(), abs=1e-6)


# ---- GAE ---------------------------------------------------------------------------------------------

def test_gae_returns_and_monte_carlo_limit():
    """returns == advantages + values; at gamma = lambda = 1 the return is the reward-to-go plus the
    bootstrap value, at lambda = 1 it is the discounted return minus the value, and at lambda = 0
    each advantage is its one-step TD error.
    Mutations caught: the bootstrap `next_value = last_value` dropped, `next_value = values[t]` not
    advanced, gamma or lambda left out of the advantage recursion, returns not advantages + values."""
    g = torch.Generator().manual_seed(0)
    T, N = 5, 3
    rewards = torch.randint(-1, 2, (T, N), generator=g).double()
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    last = torch.randn(N, generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, last, 0.9, 0.8)
    assert torch.allclose(ret, adv + values)
    adv1, ret1 = gae(rewards, values, last, 1.0, 1.0)
    to_go = rewards.flip(0).cumsum(0).flip(0)
    assert torch.allclose(ret1, to_go + last)
    assert torch.allclose(adv1, to_go + last - values)
    adv_mc, _ = gae(rewards, values, last, 0.9, 1.0)  # lambda 1: discounted Monte Carlo return - value
    for t in range(T):
        discounted = sum(0.9 ** k * rewards[t + k] for k in range(T - t)) + 0.9 ** (T - t) * last
        assert torch.allclose(adv_mc[t], discounted - values[t])
    adv0, _ = gae(rewards, values, last, 0.9, 0.0)
    next_values = torch.cat([values[1:], last[None]])
    assert torch.allclose(adv0, rewards + 0.9 * next_values - values)


def test_gae_matches_a_hand_worked_example():
    # gamma 0.9, lambda 0.8; rewards [1, 0], values [0.5, 0.2], bootstrap value 1.0:
    # delta_1 = 0 + 0.9 * 1.0 - 0.2 = 0.7;  A_1 = 0.7
    # delta_0 = 1 + 0.9 * 0.2 - 0.5 = 0.68; A_0 = 0.68 + 0.9 * 0.8 * 0.7 = 1.184
    adv, ret = gae(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.5], [0.2]]), torch.tensor([1.0]), 0.9, 0.8)
    assert torch.allclose(adv.squeeze(1), torch.tensor([1.184, 0.7]))
    assert torch.allclose(ret.squeeze(1), torch.tensor([1.684, 0.9]))


def test_gae_ends_the_return_at_a_life_loss():
    """Hand-worked, gamma 0.9, lambda 0.8, one rollout of 3 steps whose step 1 lost a life:
    A2 = 2 + 0.9 * 1.0 - 0.3 = 2.6; A1 = 0 - 0.4 = -0.4 (nothing after the loss counts);
    A0 = (1 + 0.9 * 0.4 - 0.5) + 0.9 * 0.8 * -0.4 = 0.572. Without ends: A1 = 1.472.
    Mutations caught: the end masking only the value (not the advantage recursion: A0 = 1.0168 ...
    A1 = 1.472), the end read at t + 1 instead of t, the mask inverted."""
    rewards = torch.tensor([[1.0], [0.0], [2.0]], dtype=torch.float64)
    values = torch.tensor([[0.5], [0.4], [0.3]], dtype=torch.float64)
    last = torch.tensor([1.0], dtype=torch.float64)
    ends = torch.tensor([[False], [True], [False]])
    adv, ret = gae(rewards, values, last, 0.9, 0.8, ends=ends)
    assert torch.allclose(adv[:, 0], torch.tensor([0.572, -0.4, 2.6], dtype=torch.float64))
    assert torch.allclose(ret, adv + values)
    no_ends, _ = gae(rewards, values, last, 0.9, 0.8, ends=torch.zeros_like(ends))
    assert torch.allclose(no_ends, gae(rewards, values, last, 0.9, 0.8)[0])


# ---- sampling temperature ------------------------------------------------------------------------------

LOGITS = np.array([1.0, 0.0, -0.5, 0.5])


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def assert_frequencies(actions, probs):
    """Empirical action frequencies within 5 binomial standard deviations of `probs`."""
    n = len(actions)
    freq = np.bincount(actions, minlength=len(probs)) / n
    tol = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-3
    assert (np.abs(freq - probs) <= tol).all(), (freq, probs)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_torch_sampler_draws_from_softmax_of_logits_over_temperature(temperature):
    """Mutation caught: train/real_env.py torch_policy `logits / temperature` -> `logits * temperature`.
    The actor is set to output LOGITS whatever the frames; 4000 identical observations in one batch."""
    system = small_system()
    with torch.no_grad():
        system.policy.actor.weight.zero_()
        system.policy.actor.bias.copy_(torch.tensor(LOGITS))
    act = real_env.torch_policy(system, CPU, temperature, seed=0)
    obs = np.zeros((4000, 4, 32, 32), np.uint8)
    actions = np.asarray(act(obs))
    assert actions.shape == (4000,)
    assert_frequencies(actions, softmax(LOGITS / temperature))
    greedy = np.asarray(real_env.torch_policy(system, CPU, 0, seed=0)(obs[:8]))
    assert (greedy == LOGITS.argmax()).all()


def test_held_random_actions_hold_each_draw_for_one_to_twice_the_mean_less_one_steps():
    """Mutations caught in train/real_env.py random_policy: holds drawn from 1..2h (`2 * mean_hold + 1`)
    or from 0 (a zero hold never ends, as with a dropped `left -= 1`); the held array returned without
    a copy (the collector keeps every step's actions, so later draws would rewrite earlier steps); one
    hold shared by all envs; mean_hold 1 no longer the per-step uniform stream that the article's runs
    (and every run before the option) collected. 2**40 actions, so a redraw never repeats the action
    and every change of action is a new draw."""
    hold, envs = 4, 6
    act = real_env.random_policy(2**40, np.random.default_rng(0), hold)
    obs = np.zeros((envs, 1, 1, 1), np.uint8)
    taken = [act(obs) for _ in range(3000)]
    actions = np.stack(taken)  # (steps, envs)
    assert taken[0] is not taken[1]
    runs = []  # hold lengths; each env's first and last (possibly unfinished) ones left out
    for e in range(envs):
        runs += np.diff(np.flatnonzero(np.diff(actions[:, e]) != 0)).tolist()
    assert set(runs) == set(range(1, 2 * hold)), sorted(set(runs))
    assert abs(np.mean(runs) - hold) < 0.15, np.mean(runs)
    assert len({tuple(np.flatnonzero(np.diff(actions[:, e]) != 0)[:5]) for e in range(envs)}) == envs
    per_step = real_env.random_policy(5, np.random.default_rng(2))
    rng = np.random.default_rng(2)
    for _ in range(3):
        np.testing.assert_array_equal(per_step(obs), rng.integers(0, 5, envs))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_runtime_sampler_draws_from_softmax_of_logits_over_temperature(temperature):
    """Mutation caught: runtime/play.py action_probs `logits / temperature` -> `logits * temperature`:
    the exact probabilities, and `choose`'s empirical frequencies over 4000 draws."""
    expected = softmax(LOGITS / temperature)
    np.testing.assert_allclose(action_probs(LOGITS, temperature), expected, rtol=1e-12)
    np.testing.assert_allclose(action_probs(np.stack([LOGITS, LOGITS[::-1]]), temperature),
                               np.stack([expected, expected[::-1]]), rtol=1e-12)
    rng = np.random.default_rng(0)
    assert_frequencies(np.array([choose(LOGITS, temperature, rng) for _ in range(4000)]), expected)
    assert choose(LOGITS, 0, rng) == LOGITS.argmax()


def test_code_sampler_draws_each_cell_from_the_softmax_over_the_code_axis():
    """Mutations caught in models/dynamics.py sample_categorical: the softmax over another axis than
    `dim`; `cumsum` dropped; `right=True` -> `right=False` (a zero-probability first code drawn at
    u = 0); searching all K boundaries instead of the K - 1 inner ones (code K, past the end, when u
    rounds up to the total). Two cells of one (B, K, H, W) batch carry different distributions."""
    cell_a = np.array([0.0, 1.0, 2.0, -1.0])
    cell_b = np.array([-np.inf, 2.0, -np.inf, 0.5])
    logits = torch.from_numpy(np.stack([cell_a, cell_b], -1)).float()  # (K=4, W=2)
    logits = logits.view(1, 4, 1, 2).expand(4000, 4, 1, 2)  # (B, K, H, W)
    torch.manual_seed(0)
    codes = sample_categorical(logits).numpy()  # (B, H, W)
    assert codes.shape == (4000, 1, 2)
    assert_frequencies(codes[:, 0, 0], softmax(cell_a))
    assert_frequencies(codes[:, 0, 1], np.exp(cell_b - cell_b.max()) / np.exp(cell_b - cell_b.max()).sum())
    assert set(np.unique(codes[:, 0, 1])) <= {1, 3}  # zero-probability codes are never drawn
    # The edges of the uniform, by hand: u = 0 and u = the total.
    rows = torch.tensor([[-np.inf, 0.0, 0.0], [0.0, 0.0, 0.0]])
    for u, expected in ((0.0, [1, 0]), (1.0, [2, 2])):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape, u))
            assert sample_categorical(rows).tolist() == expected


# ---- imagination -------------------------------------------------------------------------------------

def context_for(cfg, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, S, H = cfg.dynamics.teacher_forcing_steps, cfg.env.frame_stack, cfg.env.frame_size
    first = torch.zeros(N, C, dtype=torch.bool)
    first[:, 0] = True
    return {"obs": torch.randint(0, 256, (N, C, S, H, H), generator=g, dtype=torch.uint8),
            "actions": torch.randint(0, 4, (N, C), generator=g), "first": first}


@pytest.mark.parametrize("reward_class,reward", [(0, -1.0), (1, 0.0), (2, 1.0)])
def test_imagined_rewards_are_the_sign_of_the_predicted_class(reward_class, reward):
    """Mutation caught: imagine's `reward_class.float() - 1` -> `reward_class.float()` (classes
    {0, 1, 2} not shifted back to signs {-1, 0, +1}). The reward head is forced to one class."""
    system = small_system().eval()
    last = system.dynamics.reward_head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.full((3,), -30.0))
        last.bias[reward_class] = 30.0
    torch.manual_seed(0)
    roll = imagine(system, context_for(system.cfg), horizon=5)
    assert roll["rewards"].shape == (5, 3)
    assert (roll["rewards"] == reward).all()


def test_expected_imagined_rewards_are_the_heads_mean_sign_and_the_rate_its_nonzero_mass():
    """Reward head forced to p(-1, 0, +1) = (0.1, 0.6, 0.3): with `expected_reward` every imagined
    reward is 0.3 - 0.1 = 0.2, sampled ones are signs whose mean is near 0.2, and the reported rate
    is 0.4 either way. Mutations caught: p(0) or p(+1) alone for the mean sign; the signs swapped
    (-0.2); the rate as p(0); the flag not reaching `imagine` from PolicyTrainer."""
    system = small_system().eval()
    last = system.dynamics.reward_head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.log(torch.tensor([0.1, 0.6, 0.3])))
    torch.manual_seed(0)
    roll = imagine(system, context_for(system.cfg, N=64), horizon=20, expected_reward=True)
    assert roll["rewards"].shape == (20, 64) and torch.allclose(roll["rewards"], torch.tensor(0.2), atol=1e-5)
    assert torch.allclose(roll["reward_rate"], torch.tensor(0.4), atol=1e-5)
    sampled = imagine(system, context_for(system.cfg, N=64), horizon=20)["rewards"]
    assert set(sampled.unique().tolist()) == {-1.0, 0.0, 1.0} and abs(sampled.mean().item() - 0.2) < 0.06
    cfg = system.cfg
    cfg.ppo.expected_reward = True
    metrics = PolicyTrainer(system, cfg, FP32).update(synthetic_buffer(cfg), np.random.default_rng(0))
    assert metrics["imagined/sign_return_per_step"] == pytest.approx(0.2, abs=1e-5)
    assert metrics["imagined/reward_rate"] == pytest.approx(0.4, abs=1e-5)


def test_policy_update_leaves_the_world_models_batchnorm_statistics_alone():
    """Mutation caught: PolicyTrainer.update without `self.system.eval()` before imagine: the
    encoder would run in train mode (batch statistics, and its BatchNorm running stats updated by
    imagined-rollout contexts). The system is handed over in train mode, as after world-model training."""
    system = small_system()
    cfg = system.cfg
    buffer = synthetic_buffer(cfg)
    system.train()
    before = {k: v.clone() for k, v in system.vqvae.state_dict().items()}
    policy_before = [p.clone() for p in system.policy.parameters()]
    torch.manual_seed(0)
    metrics = PolicyTrainer(system, cfg, FP32).update(buffer, np.random.default_rng(0))
    assert all(np.isfinite(v) for v in metrics.values())
    after = system.vqvae.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert any(not torch.equal(a, b) for a, b in zip(policy_before, system.policy.parameters()))


# ---- dynamics loss -------------------------------------------------------------------------------------

def tiny_dynamics(num_actions=4, seed=0, **overrides):
    cfg = resolve("tiny", "Pong", [f"dynamics.{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(seed)
    return cfg, Dynamics(cfg, num_actions), Codebook(cfg.vqvae)


def test_dynamics_latent_loss_skips_targets_across_an_episode_boundary():
    """Mutation caught: dynamics_loss without the `valid` mask (`(ce * valid).sum() / ...` ->
    `ce.mean()`), or the mask taken at t instead of t + 1. The latent head always predicts code 0
    (logit 10 against 0); every target is code 0 except the first observation of a new episode
    (code 1), which has no prediction to be judged against. Also: the reward of the step that ends
    an episode counts, and the window's last reward does not."""
    cfg, dyn, codebook = tiny_dynamics()
    K, n = cfg.vqvae.codebook_size, cfg.latent_size
    with torch.no_grad():
        dyn.latent_head.weight.zero_()
        dyn.latent_head.bias.zero_()
        dyn.latent_head.bias[0] = 10.0
        dyn.reward_head[-1].weight.zero_()
        dyn.reward_head[-1].bias.copy_(torch.tensor([0.0, 10.0, 0.0]))
    B, T = 2, cfg.dynamics.seq_len  # 6
    codes = torch.zeros(B, T, n, n, dtype=torch.long)
    codes[0, 3] = 1
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    first[0, 3] = True
    rewards = torch.zeros(B, T)
    rewards[0, 2] = 1.0  # received on the step that ends sample 0's first episode
    rewards[1, T - 1] = -1.0  # after the window's last observation: no transition of this window
    actions = torch.randint(0, 4, (B, T), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    loss, m = dynamics_loss(dyn, codebook.embed, codebook.embed(codes), codes, actions, rewards, first, cfg)
    ce_right = math.log(1 + (K - 1) * math.exp(-10))  # target code 0
    assert m["dynamics/latent_ce"] == pytest.approx(ce_right, abs=1e-5)  # unmasked: ce_right + 1.0
    assert m["dynamics/latent_acc"] == 1.0
    r_right = math.log(1 + 2 * math.exp(-10))  # target class 1 (reward 0)
    # 2 x 5 transitions, one of them with target class 2 (ce 10 + r_right)
    assert m["dynamics/reward_ce"] == pytest.approx(r_right + 10 / 10, abs=1e-5)
    assert loss.item() == pytest.approx(m["dynamics/latent_ce"] + m["dynamics/reward_ce"], rel=1e-6)
    p_nonzero = 2 * math.exp(-10) / (1 + 2 * math.exp(-10))  # the head's non-zero mass on every step
    assert m["dynamics/reward_steps"] == 10 and m["dynamics/reward_true_nonzero"] == 1
    assert m["dynamics/reward_mass_rewarded"] == pytest.approx(p_nonzero, rel=1e-4)
    assert m["dynamics/reward_mass_unrewarded"] == pytest.approx(9 * p_nonzero, rel=1e-4)


def test_reward_lift_is_the_mass_on_rewarded_over_unrewarded_steps():
    """Mutations caught: the ratio inverted, the unrewarded mean taken over all steps (0.1 -> lift
    4.0), or a lift reported where no step carried a reward. Two batches of 10 steps, one reward each:
    mean non-zero mass 0.8 / 2 = 0.4 on rewarded steps, 2.0 / 18 on the others -> lift 3.6."""
    from dlswm.train.world_model import _summary

    batches = {"reward_hits": [0, 0], "reward_predicted_nonzero": [0, 0], "reward_true_nonzero": [1, 1],
               "reward_mass_rewarded": [0.5, 0.3], "reward_mass_unrewarded": [1.0, 1.0], "reward_steps": [10, 10]}
    summary = _summary({f"dynamics/{k}": list(v) for k, v in batches.items()}, "dynamics")
    assert summary["dynamics/reward_lift"] == pytest.approx(3.6)
    assert "dynamics/reward_mass_rewarded" not in summary  # sums, not per-batch means
    batches["reward_true_nonzero"] = [0, 0]
    assert "dynamics/reward_lift" not in _summary({f"dynamics/{k}": list(v) for k, v in batches.items()}, "dynamics")


def test_dynamics_loss_teacher_forces_exactly_the_first_steps():
    """Mutations caught: always teacher forcing (`if t + 1 < teacher_forcing_steps` -> always true),
    never teacher forcing, an off-by-one in that condition, and the free-running part not feeding
    the real observation at an episode start (`torch.where(restart, ...)` -> `embed(sampled)`).
    With teacher_forcing_steps = 2 the inputs are z[:, 0], z[:, 1], then samples, except z[0, 4]
    (sample 0's new episode). NaN anywhere else in z[:, 2:] must not change the loss."""
    cfg, dyn, codebook = tiny_dynamics()
    assert cfg.dynamics.teacher_forcing_steps == 2
    B, T, n = 2, cfg.dynamics.seq_len, cfg.latent_size
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, cfg.vqvae.codebook_size, (B, T, n, n), generator=g)
    z = codebook.embed(codes)
    actions = torch.randint(0, 4, (B, T), generator=g)
    rewards = torch.randint(-1, 2, (B, T), generator=g).float()
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    first[0, 4] = True

    def loss(z_in):
        torch.manual_seed(0)  # the same samples wherever the logits are the same
        with torch.no_grad():
            return dynamics_loss(dyn, codebook.embed, z_in, codes, actions, rewards, first, cfg)[0].item()

    base = loss(z)
    assert math.isfinite(base)
    unused = z.clone()
    unused[1, 2:] = float("nan")
    unused[0, 2:4] = float("nan")
    unused[0, 5] = float("nan")
    assert loss(unused) == base  # free-running inputs are samples, not the real embeddings
    prefix = z.clone()
    prefix[:, 1] += 1.0
    assert loss(prefix) != base  # the teacher-forced prefix is read
    restart = z.clone()
    restart[0, 4] += 1.0
    assert loss(restart) != base  # an episode start is read even when free-running


def test_reward_loss_reaches_the_lstm_only_scaled_by_reward_trunk_grad():
    """Mutation caught: Dynamics.step `x_reward = x * g + x.detach() * (1 - g)` -> `x_reward = x`.
    Two identical models with g = 1e-6 and g = 1: the same reward logits; the reward loss's gradient
    on the LSTM weights is 1e-6 times as large; the reward head's own gradient is the same."""
    _, small, _ = tiny_dynamics(reward_trunk_grad=1e-6)
    full = copy.deepcopy(small)
    full.reward_trunk_grad = 1.0
    g = torch.Generator().manual_seed(0)
    B, D, n = 3, 8, 6
    zs = [torch.randn(B, D, n, n, generator=g, dtype=torch.float64) for _ in range(2)]
    action, target = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])
    logits = []
    for dyn in (small, full):
        dyn.double()
        state = dyn.initial_state(B, zs[0])
        _, _, state = dyn.step(zs[0], action, state)
        _, reward_logits, _ = dyn.step(zs[1], action, state)
        F.cross_entropy(reward_logits, target).backward()
        logits.append(reward_logits.detach())
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-12, atol=1e-15)
    for cell_s, cell_f in zip(small.cells, full.cells):
        grad_s, grad_f = cell_s.gates.weight.grad, cell_f.gates.weight.grad
        assert grad_f.abs().max() > 1e-4
        torch.testing.assert_close(grad_s, 1e-6 * grad_f, rtol=1e-6, atol=1e-18)
    for p_s, p_f in zip(small.reward_head.parameters(), full.reward_head.parameters()):
        torch.testing.assert_close(p_s.grad, p_f.grad, rtol=1e-9, atol=1e-15)
    assert small.latent_head.weight.grad is None


# ---- VQ-VAE ------------------------------------------------------------------------------------------

def test_vqvae_loss_adds_the_commitment_term_on_hand_numbers():
    """Mutation caught: vqvae_loss `loss = recon + commitment_cost * commitment` -> `loss = recon`,
    or z_q not detached in the commitment. Zero reconstruction logits give a continuous Bernoulli
    of density 1 (recon 0); z_e = 3, z_q = 1 everywhere: commitment 4, loss 0.25 * 4 = 1."""
    cfg = resolve("tiny").vqvae
    assert cfg.commitment_cost == 0.25
    B, S, H, D, n = 2, 4, 8, 8, 2
    z_e = torch.full((B, D, n, n), 3.0, requires_grad=True)
    z_q = torch.full((B, D, n, n), 1.0, requires_grad=True)
    out = {"z_e": z_e, "z_q": z_q, "indices": torch.zeros(B, n, n, dtype=torch.long),
           "recon_logits": torch.zeros(B, S, H, H)}
    frames = torch.randint(0, 256, (B, S, H, H), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loss, m = vqvae_loss(out, frames, cfg)
    assert m["vqvae/recon_nll"] == pytest.approx(0.0, abs=1e-4)
    assert m["vqvae/commitment"] == pytest.approx(4.0)
    assert loss.item() == pytest.approx(1.0, abs=1e-4)
    loss.backward()
    torch.testing.assert_close(z_e.grad, torch.full_like(z_e, 0.25 * 2 * 2.0 / z_e.numel()))
    assert z_q.grad is None  # the codebook learns by EMA, not from this loss


def test_vqvae_loss_on_a_real_forward_is_recon_plus_quarter_commitment():
    """Mutation caught: commitment dropped from the loss; commitment = mse(z_e, z_q) of the forward."""
    system = small_system()
    cfg = system.cfg
    frames = torch.randint(0, 256, (4, 4, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = system.vqvae.eval()(frames)
    loss, m = vqvae_loss(out, frames, cfg.vqvae)
    commitment = F.mse_loss(out["z_e"], out["z_q"]).item()
    assert commitment > 0.01 and m["vqvae/commitment"] == pytest.approx(commitment, rel=1e-5)
    px = torch.distributions.ContinuousBernoulli(logits=out["recon_logits"].double())  # fp64: accurate
    recon = -px.log_prob(frames.double() / 255).sum((1, 2, 3)).mean().item()
    assert m["vqvae/recon_nll"] == pytest.approx(recon, rel=1e-5)
    assert loss.item() == pytest.approx(recon + 0.25 * commitment, rel=1e-6, abs=1e-4)


def test_motion_weights_on_hand_numbers():
    """Mutations caught: the change taken along the rows (dim 2) instead of the stack (dim 1); the
    weights not scaled to mean 1; the first frame left at weight 1 instead of its change to the second.
    One pixel turns on between frames 0 and 1 and stays on: raw weights 1 + 3 * 1 = 4 there in frames 0
    and 1, 1 elsewhere; mean (7 + 7 + 4) / 12 = 1.5."""
    x = torch.zeros(1, 3, 2, 2)
    x[0, 1:, 0, 0] = 1.0
    w = motion_weights(x, 3.0)
    expected = torch.full((1, 3, 2, 2), 1 / 1.5)
    expected[0, :2, 0, 0] = 4 / 1.5
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(motion_weights(x, 0.0), torch.ones_like(x))


def test_motion_weight_weighs_the_loss_and_leaves_the_elbo_metrics_unweighted():
    """Mutations caught: `cfg.motion_weight` ignored by the loss; the weights applied to the reported
    negative ELBO (whose runs must stay comparable to unweighted ones). loss = -sum(w * log p(x))
    averaged over samples + 0.25 * commitment, checked against torch's ContinuousBernoulli in fp64."""
    system = small_system()
    cfg = system.cfg
    frames = torch.randint(0, 256, (4, 4, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = system.vqvae.eval()(frames)
    plain, m_plain = vqvae_loss(out, frames, cfg.vqvae)
    loss, m = vqvae_loss(out, frames, dataclasses.replace(cfg.vqvae, motion_weight=5.0))
    x = frames.double() / 255
    log_px = torch.distributions.ContinuousBernoulli(logits=out["recon_logits"].double()).log_prob(x)
    fit = -(motion_weights(x, 5.0) * log_px).sum((1, 2, 3)).mean().item()
    assert loss.item() == pytest.approx(fit + 0.25 * m["vqvae/commitment"], rel=1e-5)
    assert abs(loss.item() - plain.item()) > 0.1  # 0.92 against 0.39 here
    assert m["vqvae/recon_nll"] == m_plain["vqvae/recon_nll"] and m["vqvae/neg_elbo"] == m_plain["vqvae/neg_elbo"]
    moved = (x[:, -1] - x[:, -2]).abs() > 0.1
    mean = torch.distributions.ContinuousBernoulli(logits=out["recon_logits"][:, -1].double()).mean
    assert m["vqvae/moving_mse"] == pytest.approx(((mean - x[:, -1]) ** 2)[moved].mean().item(), rel=1e-4)


def test_continuous_bernoulli_in_logits_matches_torch_and_hand_numbers():
    """The logits form of the pixel likelihood and its mean against torch.distributions in float64
    (in float32 its probabilities lose digits near l = 0 and past |l| = 8), gradients included, up to
    the clamp of p to [eps, 1 - eps] that both share, and on hand
    numbers: density 1 (log 0) and mean 1/2 at l = 0; at l = 2 the normalizer is 2 / tanh(1) and the
    mean 1 / (1 - e^-2) - 1/2. Mutations caught: a sign in the normalizer (l / tanh(-l/2)), the
    series used everywhere or nowhere (0 / 0 at l = 0), softplus(-l) for softplus(l)."""
    from dlswm.models.vqvae import continuous_bernoulli_log_prob, continuous_bernoulli_mean

    g = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.linspace(-15, 15, 601), torch.tensor([0.0, 1e-4, -3e-3, 5e-3])])
    logits = logits.repeat(5).requires_grad_()
    x = torch.rand(len(logits), generator=g)
    ref64 = logits.detach().double().requires_grad_()
    ref = torch.distributions.ContinuousBernoulli(logits=ref64)
    ours, theirs = continuous_bernoulli_log_prob(logits, x), ref.log_prob(x.double())
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), logits)[0],
                               torch.autograd.grad(theirs.sum(), ref64)[0].float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(continuous_bernoulli_mean(logits), ref.mean.float(), atol=1e-5, rtol=1e-5)
    zero, two = torch.zeros(3), torch.full((1,), 2.0)
    torch.testing.assert_close(continuous_bernoulli_log_prob(zero, torch.tensor([0.0, 0.3, 1.0])), zero)
    assert continuous_bernoulli_mean(zero).tolist() == [0.5] * 3
    for v in (0.0, 0.25, 1.0):
        expected = v * 2 - math.log1p(math.exp(2)) + math.log(2 / math.tanh(1))
        assert continuous_bernoulli_log_prob(two, torch.tensor([v])).item() == pytest.approx(expected, rel=1e-6)
    assert continuous_bernoulli_mean(two).item() == pytest.approx(1 / (1 - math.exp(-2)) - 0.5, rel=1e-6)
    # Past the clamp (|l| = 15.94, p = 1 - eps) the normalizer stays where torch's stops, log 15.94.
    big = torch.tensor([100.0])
    assert continuous_bernoulli_log_prob(big, torch.tensor([0.5])).item() == pytest.approx(50 - 100 + math.log(15.942385))


def test_codebook_ema_update_on_hand_numbers():
    """Mutations caught in Codebook._ema_update: decay and 1 - decay swapped, the Laplace smoothing
    dropped or changed, the sums not decayed, the wrong vectors summed.
    K = 3 entries e0 = (0, 0), e1 = (10, 0), e2 = (0, 10) with counts 1; decay 0.9, epsilon 0.1.
    Two vectors v1 = (1, 2), v2 = (3, -2), both nearest e0:
      cluster_size = 0.9 * (1, 1, 1) + 0.1 * (2, 0, 0) = (1.1, 0.9, 0.9), n = 2.9
      embedding_sum = 0.9 * E + 0.1 * [(4, 0), 0, 0] = [(0.4, 0), (9, 0), (0, 9)]
      size = (cluster_size + 0.1) / (2.9 + 0.3) * 2.9 = (1.0875, 0.90625, 0.90625)
      embedding = embedding_sum / size."""
    cfg = resolve("tiny", "Pong", ["vqvae.codebook_size=3", "vqvae.embedding_dim=2", "vqvae.ema_decay=0.9",
                                   "vqvae.ema_epsilon=0.1"]).vqvae
    codebook = Codebook(cfg).train()
    E = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    codebook.embedding.copy_(E)
    codebook.embedding_sum.copy_(E)
    codebook.cluster_size.fill_(1.0)
    z_e = torch.tensor([[1.0, 3.0], [2.0, -2.0]]).view(1, 2, 1, 2)  # cells (1, 2) and (3, -2)
    z_q, indices = codebook(z_e)
    assert indices.tolist() == [[[0, 0]]]
    torch.testing.assert_close(codebook.cluster_size, torch.tensor([1.1, 0.9, 0.9]))
    torch.testing.assert_close(codebook.embedding_sum, torch.tensor([[0.4, 0.0], [9.0, 0.0], [0.0, 9.0]]))
    expected = torch.tensor([[0.4 / 1.0875, 0.0], [9 / 0.90625, 0.0], [0.0, 9 / 0.90625]])
    torch.testing.assert_close(codebook.embedding, expected)
    # The straight-through output carries the updated entry's value.
    torch.testing.assert_close(z_q, expected[0].view(1, 2, 1, 1).expand(1, 2, 1, 2))


# ---- world-model warm-up -------------------------------------------------------------------------------

def test_warmup_raises_the_vqvae_lr_and_restores_it():
    """Mutation caught: WorldModelTrainer.warmup without `group["lr"] = self.cfg.vqvae.lr` in its
    `finally` (the VQ-VAE would keep 10x its learning rate for the whole run), or the scale not
    applied. Checked through the progress callback during warm-up, after it, and after an error."""
    system = small_system()
    cfg = system.cfg
    buffer = synthetic_buffer(cfg, n=32)
    wm = WorldModelTrainer(system, cfg, FP32)
    groups = wm.optimizer.param_groups
    seen = []
    torch.manual_seed(0)
    wm.warmup(buffer, np.random.default_rng(0), lambda n: seen.append([g["lr"] for g in groups]))
    assert wm.warmup_batches(buffer) == 2
    warm = cfg.vqvae.lr * cfg.vqvae.warmup_lr_scale
    assert seen == [[pytest.approx(warm), cfg.dynamics.lr, cfg.dynamics.reward_lr]] * 2
    assert [g["lr"] for g in groups] == [cfg.vqvae.lr, cfg.dynamics.lr, cfg.dynamics.reward_lr]

    def interrupt(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wm.warmup(buffer, np.random.default_rng(0), interrupt)
    assert groups[0]["lr"] == cfg.vqvae.lr


def test_dynamics_batches_encode_with_the_running_batchnorm_statistics():
    """The dynamics model learns from the codes imagination and play see: the encoder runs in eval
    mode for its batches (mutation caught: `encoder.eval()` dropped, so batch statistics pick the
    codes and the running statistics move) and is back in train mode afterwards."""
    system = small_system().train()
    cfg = system.cfg
    buffer = synthetic_buffer(cfg, n=40)
    wm = WorldModelTrainer(system, cfg, FP32)
    norms = [m for m in system.vqvae.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    starts = buffer.sequence_starts(cfg.dynamics.seq_len)[:2]
    loss, _ = wm._dynamics_loss(buffer.sequence_tensors(starts, cfg.dynamics.seq_len, torch.device("cpu")))
    loss.backward()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, norms)) and system.vqvae.encoder.training
    assert system.vqvae.encoder.proj[1].weight.grad is not None  # the article's gradient still reaches it


# ---- evaluation on real games ------------------------------------------------------------------------

class ScriptedEnv:
    """A stand-in vector env of 2 games: game 0 ends on step 2 and then keeps paying 5 a step
    (as ale_py's autoreset env plays on); game 1 pays 1 a step and is truncated on step 4."""

    def __init__(self):
        self.t, self.closed = 0, False
        self.rewards = [[1.0, 1.0], [2.0, 1.0], [5.0, 1.0], [5.0, 1.0]]
        self.terminated = [[False, False], [True, False], [False, False], [False, False]]
        self.truncated = [[False, False], [False, False], [False, False], [False, True]]

    def reset(self, seed=None):
        return np.zeros((2, 1)), {}

    def step(self, actions):
        assert len(actions) == 2
        t, self.t = self.t, self.t + 1
        return (np.full((2, 1), self.t), np.array(self.rewards[t]), np.array(self.terminated[t]),
                np.array(self.truncated[t]), {})

    def close(self):
        self.closed = True


def test_evaluate_freezes_a_score_when_its_game_ends(monkeypatch):
    """Mutations caught: evaluate's `scores += rewards * ~finished` -> `scores += rewards` (game 0
    would score 13), or `finished` updated before the rewards are added (the final step's reward
    lost: 1). A scripted env stands in for ale_py: this is the accumulation logic alone."""
    env = ScriptedEnv()
    monkeypatch.setattr(real_env, "make_env", lambda env_cfg, n: env)
    result = real_env.evaluate(resolve("tiny").env, lambda obs: np.zeros(len(obs), np.int64), 2, seed=0)
    scores = result[0] if isinstance(result, tuple) else result  # (scores, action counts) or scores
    assert scores == [3.0, 4.0]
    assert env.t == 4 and env.closed


# ---- life-loss head ----------------------------------------------------------------------------------

def test_life_loss_head_loss_is_the_bce_of_each_steps_own_life_loss():
    """With every input real (teacher forcing over the whole window), the loss's life term is the
    mean over steps t < T-1 of BCE(life logit of step t, life_lost[:, t]), computed here step by step.
    Mutations caught: the target read at t + 1 (the next step's loss), the head's logit taken from a
    reward class (`split_outcome` slicing the wrong column), the term left out of the total loss."""
    cfg, dyn, codebook = tiny_dynamics(life_loss_head="true", teacher_forcing_steps=6)
    g = torch.Generator().manual_seed(1)
    B, T, n = 3, cfg.dynamics.seq_len, cfg.latent_size
    codes = torch.randint(0, cfg.vqvae.codebook_size, (B, T, n, n), generator=g)
    z = codebook.embed(codes)
    actions, rewards = torch.randint(0, 4, (B, T), generator=g), torch.zeros(B, T)
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    life_lost = torch.rand(B, T, generator=g) < 0.4
    with torch.no_grad():
        dyn.reward_head[-1].bias[3] = 1.5  # the life logit apart from the reward classes
        loss, metrics = dynamics_loss(dyn, codebook.embed, z, codes, actions, rewards, first, cfg, life_lost=life_lost)
        state, expected = dyn.initial_state(B, z[:, 0]), []
        for t in range(T - 1):
            _, outcome, state = dyn.step(z[:, t], actions[:, t], state, reset=first[:, t])
            assert outcome.shape == (B, 4)
            expected.append(F.binary_cross_entropy_with_logits(outcome[:, 3], life_lost[:, t].float()))
    assert metrics["dynamics/life_ce"] == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(metrics["dynamics/latent_ce"] + metrics["dynamics/reward_ce"]
                                        + metrics["dynamics/life_ce"], rel=1e-5)
    assert metrics["dynamics/life_true"] == life_lost[:, :-1].sum().item()


@pytest.mark.parametrize("life_logit, lost", [(30.0, True), (-30.0, False)])
def test_imagined_life_losses_follow_the_head_and_end_the_returns(life_logit, lost, monkeypatch):
    """The head forced to a certain loss (logit +30) or none (-30): every imagined step is (not) a
    life lost, PPO's returns end there and its rate metric says so. Mutations caught: sampling
    against sigmoid(-logit); PolicyTrainer not handing the sampled losses to `gae`."""
    from dlswm.train import imagine as imagine_module

    seen = {}

    def spy(*args, ends=None):
        seen["ends"] = ends
        return gae(*args, ends=ends)

    monkeypatch.setattr(imagine_module, "gae", spy)
    system = System(resolve("tiny", "Pong", ["env.frame_size=32", "dynamics.life_loss_head=true"]), 4).eval()
    last = system.dynamics.reward_head[-1]
    with torch.no_grad():
        last.bias[3] = life_logit
        last.weight[3].zero_()
    torch.manual_seed(0)
    roll = imagine(system, context_for(system.cfg), horizon=5)
    assert roll["life_lost"].shape == (5, 3) and (roll["life_lost"] == lost).all()
    metrics = PolicyTrainer(system, system.cfg, FP32).update(synthetic_buffer(system.cfg), np.random.default_rng(0))
    assert metrics["imagined/life_loss_rate"] == float(lost)
    assert seen["ends"].shape == (system.cfg.ppo.rollout_steps, system.cfg.ppo.num_envs) and (seen["ends"] == lost).all()


def test_a_chunk_written_before_life_losses_were_recorded_loads_with_none(tmp_path):
    """Runs from before the field resume: their chunks load with `life_lost` all false."""
    cfg = small_cfg()
    buffer = synthetic_buffer(cfg)
    old = {name: getattr(buffer, name) for name in ("actions", "rewards", "first", "done")}
    np.savez(ReplayBuffer.chunk_path(tmp_path, 1), frames=buffer.chunks[0], **old)
    loaded = ReplayBuffer.load(tmp_path, 1, cfg.env.frame_stack)
    assert len(loaded) == len(buffer) and not loaded.life_lost.any() and loaded.life_lost.shape == loaded.done.shape

# ---- PPO on the real game's steps (`ppo.real_epochs`, train/real_ppo.py) -----------------------------

def no_progress(description, total):
    return lambda n: None


def test_importance_weights_on_hand_numbers():
    """p = softmax([0, ln 3]) = [1/4, 3/4]; at temperature 2 the draw was from softmax([0, ln 3 / 2]) =
    [1 / (1 + sqrt 3), sqrt 3 / (1 + sqrt 3)] = [0.366, 0.634]. Action 0: 0.25 / 0.366 = 0.683; action
    1: 0.75 / 0.634 = 1.183, capped at 1. Mutations caught: the ratio inverted (1 and 0.845), the cap
    dropped (1.183), `logits * temperature` (0.1 / 0.9 ratios), and any weight at temperature 1 not 1."""
    logits = torch.tensor([[0.0, LN3], [0.0, LN3]], dtype=torch.float64)
    actions = torch.tensor([0, 1])
    s3 = math.sqrt(3.0)
    expected = [0.25 * (1 + s3), 1.0]
    assert importance_weights(logits, actions, 2.0).tolist() == pytest.approx(expected, abs=1e-12)
    assert importance_weights(logits, actions, 1.0).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_ppo_weights_scale_each_samples_clipped_policy_term():
    """Per-sample clipped terms of the hand minibatch: -2.4, -0.5, 1.5, 2.4, -4.4; weights 1, 0, 1,
    0.5, 0 give (-2.4 + 1.5 + 1.2) / 5 = 0.06. Mutation caught: `weights` ignored (-0.68)."""
    logits, values, mb = hand_minibatch()
    mb["weights"] = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    _, m = ppo_loss(logits, values, mb, HAND_CFG)
    assert m["ppo/policy_loss"] == pytest.approx(0.06, abs=1e-9)


def test_real_rollout_records_every_real_transition_of_a_real_game_and_masks_autoresets():
    """Pong cut at 12 steps an episode, 2 envs at temperature 1.5: 24 interactions, so both episodes
    end on the collection's last step, then 60 more in the same envs, whose first steps are the
    autoresets. Mutations caught in RealRollout.observe: `valid` inverted or not masking autoresets
    (the count of valid steps is the interactions'), rewards not sign-clipped, life losses ending
    returns with or without `life_loss_ends`; and a step observed out of line with its action (the
    recorded actions of valid steps are the buffer's, env by env)."""
    cfg = resolve("tiny", "Pong", ["env.max_episode_steps=12"])
    system, collector, batches = System(cfg, 6), Collector(cfg.env, 2, persistent=True), []
    try:
        for steps in (24, 60):
            rollout = RealRollout(system, CPU, 1.5, seed=0)
            chunk, _, stats = collector.collect(rollout.act, steps, seed=3, progress=lambda n: None,
                                                observe=rollout.observe)
            batches.append((rollout.batch(collector.obs), chunk, stats))
    finally:
        collector.close()
    for n, (batch, chunk, stats) in zip((24, 60), batches):
        valid, ends = batch["valid"].numpy(), batch["ends"].numpy()  # (T, 2)
        assert valid.sum() == stats["collect/steps"] == n
        assert (ends & valid).sum() == stats["collect/episodes"] >= 2  # each 12-step cut ends one
        assert (ends[~valid]).all()  # autoreset steps end the return (a convention: they are masked)
        assert batch["codes"].shape[:2] == batch["logits"].shape[:2] == valid.shape
        assert batch["last_value"].shape == (2,)
        # The chunk holds stream 0 then stream 1; an entry with a successor is one transition.
        transitions = chunk["actions"][~chunk["done"]]
        per_env = [batch["actions"].numpy()[valid[:, e], e] for e in range(2)]
        assert np.array_equal(transitions, np.concatenate(per_env))
        assert set(np.unique(batch["rewards"].numpy())) <= {-1.0, 0.0, 1.0}
    assert batches[0][0]["ends"][-1].tolist() == [True, True]  # both episodes ended on the last step
    assert batches[1][0]["valid"][0].tolist() == [False, False]  # so the next collection opens with autoresets
    no = np.zeros(2, bool)
    rollout.observe(np.array([100.0, -5.0]), no, no, no)  # CrazyClimber pays 100 a floor
    assert rollout.outcomes["rewards"][-1].tolist() == [1.0, -1.0]
    assert rollout.outcomes["ends"][-1].tolist() == [False, False]  # a life lost ends nothing by default
    with_lives = RealRollout(system, CPU, 1.5, seed=0, life_loss_ends=True)
    with_lives.observe(np.zeros(2), no, np.array([True, False]), no)  # as imagination with the life-loss head
    assert with_lives.outcomes["ends"][-1].tolist() == [True, False]


def test_real_ppo_inputs_on_hand_numbers():
    """One env, 4 steps, gamma 0.5, lambda 1 (so returns are discounted sums): rewards 1, 0, 0, 1;
    step 1 ends the episode, step 2 is its autoreset (masked), the critic says 0.5 everywhere and 2
    after the last step. Returns: G3 = 1 + 0.5 * 2 = 2; G1 = 0 (ended); G0 = 1 + 0.5 * G1 = 1. The
    valid steps 0, 1, 3 give returns 1, 0, 2 and advantages 0.5, -0.5, 1.5. Mutations caught:
    `ends` not passed to GAE (G1 = 0 + 0.5 * G2, G0 = 1.25), the cut not bootstrapped (G3 = 1),
    the masked step kept, embeddings not the codes' own, old log-probs not the played logits'."""
    system = small_system(num_actions=3)
    side = small_cfg().latent_size
    codes = torch.randint(0, small_cfg().vqvae.codebook_size, (4, 1, side, side))
    logits = torch.randn(4, 1, 3)
    batch = {"codes": codes, "logits": logits, "values": torch.full((4, 1), 0.5),
             "actions": torch.tensor([[2], [0], [1], [1]]), "rewards": torch.tensor([[1.0], [0.0], [0.0], [1.0]]),
             "ends": torch.tensor([[False], [True], [True], [False]]),
             "valid": torch.tensor([[True], [True], [False], [True]]), "last_value": torch.tensor([2.0])}
    z, b = ppo_inputs(system, batch, PPOConfig(gamma=0.5, gae_lambda=1.0), temperature=1.0)
    assert b["returns"].tolist() == pytest.approx([1.0, 0.0, 2.0])
    assert b["advantages"].tolist() == pytest.approx([0.5, -0.5, 1.5])
    assert b["actions"].tolist() == [2, 0, 1] and b["weights"].tolist() == [1.0, 1.0, 1.0]
    kept = torch.tensor([0, 1, 3])
    assert torch.equal(z, system.vqvae.codebook.embed(codes[kept, 0]))
    assert torch.allclose(b["log_probs"], logits[kept, 0].log_softmax(1)[torch.arange(3), b["actions"]])


def test_real_ppo_starts_from_the_policy_that_played_at_any_collection_temperature():
    """One epoch, one minibatch: PPO's first (only) ratio is taken before any step, so it must be 1
    everywhere (approx KL 0, nothing clipped) when the old log-probs are the policy's own at
    temperature 1, even though the steps were drawn at 1.5. Mutations caught: old log-probs taken
    at the collection temperature, the policy fed other embeddings than the ones it played on, the
    phase run when off (`ppo.real_epochs=0`) or in iteration 1's random collection; the weights'
    mean below 1 at 1.5 only."""
    overrides = ["ppo.minibatch_size=100000", "schedule.initial_steps=64", "schedule.steps_per_iteration=96"]
    for temperature, epochs in ((1.5, 1), (1.0, 1), (1.5, 0)):
        cfg = resolve("tiny", "Pong", [*overrides, f"policy.collect_temperature={temperature}",
                                       f"ppo.real_epochs={epochs}"])
        trainer = Trainer(cfg, CPU, threads=1)
        try:
            trainer.collect(1, no_progress)
            assert trainer.train_policy_real(1, no_progress) == {}  # random steps: no PPO
            with torch.no_grad():  # a policy far from uniform, so the two temperatures differ
                trainer.system.policy.actor.bias.copy_(torch.linspace(-2.0, 2.0, 6))
            trainer.collect(2, no_progress)
            m = trainer.train_policy_real(2, no_progress)
        finally:
            trainer.close()
        if epochs == 0:
            assert m == {}
            continue
        assert m["real_ppo/transitions"] == 96
        assert m["real_ppo/approx_kl"] == pytest.approx(0.0, abs=1e-6)
        assert m["real_ppo/clip_frac"] == 0.0
        assert (m["real_ppo/weight_mean"] < 0.95) == (temperature == 1.5)
