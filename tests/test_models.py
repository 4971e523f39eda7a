"""The networks: shapes and parameter counts at every preset, resets, and losses that fall when
they overfit one real batch."""

import numpy as np
import pytest
import torch

from dlswm.config import resolve
from dlswm.models import System
from dlswm.models.dynamics import dynamics_loss
from dlswm.models.summary import summarize
from dlswm.models.vqvae import vqvae_loss
from dlswm.runtime.atari import resolve_game


def frames(cfg, batch):
    return torch.randint(0, 256, (batch, cfg.env.frame_stack, cfg.env.frame_size, cfg.env.frame_size),
                         dtype=torch.uint8)


def test_shapes_through_every_module(cfg):
    A, B, n = 6, 3, cfg.latent_size
    system = System(cfg, A)
    x = frames(cfg, B)
    out = system.vqvae(x)
    D, K = cfg.vqvae.embedding_dim, cfg.vqvae.codebook_size
    assert n == 6
    assert out["z_e"].shape == out["z_q"].shape == (B, D, n, n)
    assert out["indices"].shape == (B, n, n) and int(out["indices"].max()) < K
    assert out["recon_logits"].shape == x.shape
    state = system.dynamics.initial_state(B, out["z_q"])
    logits, reward_logits, state = system.dynamics.step(out["z_q"], torch.zeros(B, dtype=torch.long), state)
    assert logits.shape == (B, K, n, n) and reward_logits.shape == (B, 3)
    assert [h.shape for h, _ in state] == [(B, cfg.dynamics.hidden_channels, n, n)] * cfg.dynamics.layers
    policy_logits, value = system.policy(out["z_q"])
    assert policy_logits.shape == (B, A) and value.shape == (B,)
    agent_logits, agent_value, codes = system.inference_agent().eval()(x)
    assert agent_logits.shape == (B, A) and agent_value.shape == (B,) and codes.shape == (B, n, n)
    assert codes.dtype == torch.int64


def test_inference_agent_matches_the_training_path():
    cfg = resolve("tiny")
    system = System(cfg, 4).eval()
    x = frames(cfg, 2)
    with torch.no_grad():
        out = system.vqvae(x)
        logits, value = system.policy(out["z_q"])
        agent_logits, agent_value, codes = system.inference_agent()(x)
    assert torch.equal(codes, out["indices"])
    # The training path's straight-through z_q equals the codebook's z up to float rounding (which
    # the default atol of 1e-8 missed on an AVX2 CPU); the policy on the unquantized z_e is off by
    # orders of magnitude more.
    assert torch.allclose(agent_logits, logits, atol=1e-6) and torch.allclose(agent_value, value, atol=1e-6)


def test_straight_through_gradient_reaches_the_encoder(cfg):
    system = System(cfg, 4)
    x = frames(cfg, 2)
    loss, metrics = vqvae_loss(system.vqvae(x), x, cfg.vqvae)
    loss.backward()
    first_conv = system.vqvae.encoder.down[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert torch.isfinite(loss) and metrics["vqvae/codes_used"] >= 1


def test_ema_step_moves_only_the_used_codebook_entries():
    cfg = resolve("tiny")
    system = System(cfg, 4)
    codebook = system.vqvae.codebook.train()
    before = codebook.embedding.clone()
    z_e = system.vqvae.encoder(frames(cfg, 4)).detach() + 5.0  # far from the initial entries
    _, indices = codebook(z_e)
    used = torch.unique(indices)
    unused = torch.tensor([k for k in range(codebook.size) if k not in used.tolist()])
    moved = (codebook.embedding - before).norm(dim=1)
    assert (moved[used] > 1e-3).all()
    # Unused entries only feel the tiny renormalisation of the Laplace smoothing.
    assert moved[unused].max() < moved[used].min()
    codebook.eval()
    frozen = codebook.embedding.clone()
    codebook(z_e)
    assert torch.equal(frozen, codebook.embedding)  # no EMA update at inference


def test_convlstm_state_resets_where_an_episode_ends():
    cfg = resolve("tiny")
    dyn = System(cfg, 4).dynamics
    B, n, D = 2, cfg.latent_size, cfg.vqvae.embedding_dim
    z = torch.randn(B, D, n, n)
    a = torch.tensor([1, 2])
    state = dyn.initial_state(B, z)
    for _ in range(3):  # build up a non-zero state
        _, _, state = dyn.step(torch.randn(B, D, n, n), a, state)
    reset = torch.tensor([True, False])
    logits, reward_logits, _ = dyn.step(z, a, state, reset=reset)
    fresh_logits, fresh_reward, _ = dyn.step(z, a, dyn.initial_state(B, z))
    assert torch.allclose(logits[0], fresh_logits[0]) and torch.allclose(reward_logits[0], fresh_reward[0])
    assert not torch.allclose(logits[1], fresh_logits[1])


def test_dynamics_loss_reaches_the_embedding_unless_stopped():
    for stop in (False, True):
        cfg = resolve("tiny")
        cfg.dynamics.stop_embedding_grad = stop
        system = System(cfg, 4)
        B, T = 2, cfg.dynamics.seq_len
        x = frames(cfg, B * T)
        z_q, codes = system.vqvae.codebook(system.vqvae.encoder(x))
        z = z_q.view(B, T, *z_q.shape[1:])
        first = torch.zeros(B, T, dtype=torch.bool)
        first[0, 3] = True  # an episode boundary inside the first sequence
        loss, metrics = dynamics_loss(system.dynamics, system.vqvae.codebook.embed, z, codes.view(B, T, 6, 6),
                                      torch.randint(0, 4, (B, T)), torch.tensor([[0.0, 1, -1] * 2] * B)[:, :T],
                                      first, cfg)
        loss.backward()
        assert torch.isfinite(loss) and 0 <= metrics["dynamics/latent_acc"] <= 1
        encoder_grad = system.vqvae.encoder.down[0][0].weight.grad
        reaches = encoder_grad is not None and bool(encoder_grad.abs().sum() > 0)
        assert reaches is (not stop)


def test_parameter_counts_at_paper_size_with_the_full_action_set():
    cfg = resolve("paper", "Seaquest")
    game = resolve_game(cfg.env.game)
    assert game.num_actions == 18
    s = summarize(System(cfg, game.num_actions))
    assert 11_000_000 <= s["training_params"] <= 13_000_000
    assert 2_800_000 <= s["inference_params"] <= 3_600_000
    assert "decoder" not in s["inference_components"] and "dynamics" not in s["inference_components"]
    assert s["inference_params"] == sum(s["components"][c] for c in ("encoder", "codebook", "policy"))
    # Same order as the reference's stand-in of this agent (113.8M multiply-accumulates).
    assert 100e6 <= s["inference_macs"] <= 130e6


def test_in_mode_sets_a_mode_for_a_block_and_restores_every_submodules_own_flag():
    """Mutation caught: restoring with `module.train(old_top_level_flag)`, which would put a policy
    left in train mode inside an eval-mode system back into eval mode (or the reverse)."""
    from dlswm.models import in_mode

    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Sequential(torch.nn.BatchNorm1d(2)))
    net.train()
    net[1].eval()  # mixed, as the system is during PPO epochs (world model eval, policy train)
    with in_mode(net, False):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, False, False]
    with pytest.raises(ZeroDivisionError), in_mode(net, True):
        assert all(m.training for m in net.modules())
        1 / 0
    assert [m.training for m in net.modules()] == [True, True, False, False]  # restored on an exception too


def overfit(loss_fn, params, steps=40, lr=3e-3):
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_vqvae_reconstruction_loss_falls_on_a_fixed_batch(fresh):
    cfg, system, buffer = fresh
    frames = torch.from_numpy(buffer.observations(np.arange(0, 160, 10)))
    losses = overfit(lambda: vqvae_loss(system.vqvae(frames), frames, cfg.vqvae)[0], system.vqvae.parameters())
    assert np.mean(losses[-5:]) < losses[0] - 0.1 * abs(losses[0])


def test_dynamics_loss_falls_when_it_overfits_one_batch(fresh):
    cfg, system, buffer = fresh
    T = cfg.dynamics.seq_len
    seq = buffer.sequences(buffer.sequence_starts(T)[:8:2], T)
    obs = torch.from_numpy(seq["obs"]).flatten(0, 1)
    codebook = system.vqvae.codebook
    with torch.no_grad():
        codes = codebook.lookup(system.vqvae.encoder.eval()(obs)).view(4, T, 6, 6)
    z = codebook.embed(codes)  # fixed inputs: only the dynamics model learns here

    def loss():
        return dynamics_loss(system.dynamics, codebook.embed, z, codes, torch.from_numpy(seq["actions"]),
                             torch.from_numpy(seq["rewards"]), torch.from_numpy(seq["first"]), cfg)[0]

    losses = overfit(loss, system.dynamics.parameters())
    assert np.mean(losses[-5:]) < 0.7 * losses[0]
