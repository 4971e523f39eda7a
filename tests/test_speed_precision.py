"""Speed that must not change the maths: bf16 autocast (the policy's heads stay fp32), fused Adam,
torch.compile against eager, and where each is chosen."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from dlswm.config import resolve
from dlswm.errors import UserError
from dlswm.models import System



def test_mixed_precision_path_trains(fresh):
    """The bf16 autocast used on CUDA, exercised with CPU autocast: finite losses, fp32 weights."""
    from dlswm.train.imagine import PolicyTrainer
    from dlswm.train.speed import Speed
    from dlswm.train.world_model import WorldModelTrainer

    cfg, system, buffer = fresh
    speed = Speed(torch.device("cpu"), amp=True, fused_adam=True, threads=torch.get_num_threads())
    wm, pt = WorldModelTrainer(system, cfg, speed), PolicyTrainer(system, cfg, speed)
    rng = np.random.default_rng(0)
    metrics = wm.train(buffer, 0.1, rng, lambda n: None)
    metrics.update(pt.update(buffer, rng))
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in system.parameters())


def _teacher_forced_dynamics(cfg, system, buffer, amp):
    """The world-model losses on 8 real windows and a VQ-VAE batch, every dynamics input real (no
    sampled codes, so both precisions see the same inputs), and next-code probabilities, with or
    without CPU bf16 autocast."""
    from dlswm.train.speed import Speed, bf16_autocast
    from dlswm.train.world_model import WorldModelTrainer

    cfg = copy.deepcopy(cfg)  # the module's shared config stays as it was
    cfg.dynamics.teacher_forcing_steps = cfg.dynamics.seq_len
    wm = WorldModelTrainer(system, cfg, Speed(torch.device("cpu"), amp, fused_adam=True, threads=1))
    seq = buffer.sequence_tensors(np.arange(8) * 20, cfg.dynamics.seq_len, torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad(), bf16_autocast(torch.device("cpu"), amp):
        _, m = wm._dynamics_loss(seq)
        vq = wm._vqvae_loss(buffer, np.random.default_rng(0))[1]
        frames = torch.from_numpy(buffer.observations(np.arange(0, 160, 10)))
        z = system.vqvae.codebook.embed(system.vqvae.codebook.lookup(system.vqvae.encoder(frames)))
        actions = torch.zeros(len(frames), dtype=torch.long)
        logits, _, _ = system.dynamics.step(z, actions, system.dynamics.initial_state(len(frames), z))
    return m, vq, logits.float().softmax(1)  # (B, K, 6, 6)


def test_bf16_autocast_keeps_losses_and_next_code_probabilities_close_to_fp32(fresh):
    """The CUDA path's precision, run with CPU autocast: the dynamics and VQ-VAE losses within 2%
    and the next-code distributions within 0.02 total variation per cell of fp32's. Mutation caught:
    the VQ-VAE's outputs not cast back to fp32 before the pixel likelihood (world_model.py)."""
    cfg, system, buffer = fresh
    system.eval()
    fp32 = _teacher_forced_dynamics(cfg, system, buffer, amp=False)
    bf16 = _teacher_forced_dynamics(cfg, system, buffer, amp=True)
    for key in ("dynamics/latent_ce", "dynamics/reward_ce"):
        assert bf16[0][key] == pytest.approx(fp32[0][key], rel=0.02), key
    for key in ("vqvae/recon_nll", "vqvae/commitment"):
        assert bf16[1][key] == pytest.approx(fp32[1][key], rel=0.02), key
    tv = 0.5 * (bf16[2] - fp32[2]).abs().sum(1)  # (B, 6, 6)
    assert tv.max() < 0.02, tv.max()


def test_policy_under_amp_runs_its_body_in_bf16_and_its_heads_in_fp32():
    """`ActorCritic(z, amp=True)`: the body in bf16, the heads in fp32 even inside a caller's bf16
    region (imagination's rollout is one). Mutations caught: `amp` ignored (the fp32 result), the
    heads left to the caller's autocast (bf16 logits)."""
    from dlswm.models.policy import ActorCritic
    from dlswm.train.speed import bf16_autocast

    cfg, cpu = resolve("tiny"), torch.device("cpu")
    torch.manual_seed(0)
    policy = ActorCritic(cfg, 6).eval()
    torch.nn.init.orthogonal_(policy.actor.weight, gain=1.0)  # logits of order 1, not 0.01
    z = torch.randn(64, cfg.vqvae.embedding_dim, cfg.latent_size, cfg.latent_size)
    with torch.no_grad():
        fp32_logits, fp32_values = policy(z)
        with bf16_autocast(cpu, True):
            logits, values = policy(z, amp=True)
            body = policy.body(z)
        expected = policy.actor(body.float()), policy.critic(body.float()).squeeze(-1)
    assert logits.dtype == values.dtype == torch.float32
    assert torch.equal(logits, expected[0]) and torch.equal(values, expected[1])
    assert not torch.equal(logits, fp32_logits)
    torch.testing.assert_close(logits, fp32_logits, atol=0.05, rtol=0.05)
    torch.testing.assert_close(values, fp32_values, atol=0.05, rtol=0.05)


def test_ppo_under_amp_starts_from_the_rollouts_own_log_probs(fresh):
    """With bf16 on, PPO re-evaluates the policy in the precision the rollout sampled it in, so
    before any step the ratio is 1 to float rounding. One epoch, one minibatch, lr 0: the approximate
    KL is then that mismatch alone. Mutation caught: PPO evaluating the policy in fp32 against bf16
    rollout log-probs (an approximate KL of ~5e-7 here)."""
    from dlswm.train.imagine import PolicyTrainer
    from dlswm.train.speed import Speed

    cfg, system, buffer = fresh
    cfg = copy.deepcopy(cfg)  # the module's shared config stays as it was
    torch.nn.init.orthogonal_(system.policy.actor.weight, gain=1.0)
    cfg.ppo.epochs, cfg.ppo.minibatch_size, cfg.ppo.lr = 1, cfg.ppo.num_envs * cfg.ppo.rollout_steps, 0.0
    speed = Speed(torch.device("cpu"), amp=True, fused_adam=True, threads=torch.get_num_threads())
    metrics = PolicyTrainer(system, cfg, speed).update(buffer, np.random.default_rng(0))
    assert 0 <= metrics["ppo/approx_kl"] < 1e-9, metrics["ppo/approx_kl"]


def test_fused_adam_takes_the_same_steps_as_the_default_one():
    """`fused_adam` changes kernels, not maths: 5 steps of both on the same gradients agree to float
    rounding (a wrong lr, eps or betas in one of them would not)."""
    from dlswm.train.speed import Speed

    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    results = []
    for fused in (False, True):
        params = [p.clone().requires_grad_() for p in start]
        opt = Speed(torch.device("cpu"), amp=False, fused_adam=fused, threads=1).adam(params, lr=1e-3, eps=1e-5)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, start[0] if a.shape == start[0].shape else start[1])


def test_speed_turns_bf16_on_only_where_it_is_native_and_sets_the_threads(monkeypatch):
    from dlswm.train import speed

    cfg, cpu = resolve("tiny"), torch.device("cpu")
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(speed, "bf16_native", lambda device: False)
        chosen = speed.Speed.choose(cfg, cpu, threads=1)
        assert not chosen.amp and torch.get_num_threads() == 1
        assert "1 torch thread(s), bf16 autocast off, fused Adam on" in chosen.describe()
        monkeypatch.setattr(speed, "bf16_native", lambda device: True)
        assert speed.Speed.choose(cfg, cpu, threads=1).amp
        cfg.amp, cfg.fused_adam = False, False
        assert speed.Speed.choose(cfg, cpu, threads=1) == speed.Speed(cpu, False, False, 1)
    finally:
        torch.set_num_threads(before)


def test_compile_is_chosen_per_device_and_named_at_start():
    from dlswm.train.speed import Speed

    cfg, before = resolve("tiny"), torch.get_num_threads()
    try:
        auto = Speed.choose(cfg, torch.device("cpu"), threads=1)
        assert not auto.compile and "torch.compile off" in auto.describe()
        cfg.compile = "on"
        assert Speed.choose(cfg, torch.device("cpu"), threads=1).compile
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UserError, match="compile=fast is not one of auto, on, off"):
        resolve("tiny", overrides=["compile=fast"])


def test_compiled_dynamics_and_policy_give_the_eager_outputs():
    """`compile`: the same maths as one graph each, through inductor's CPU code (the GPU path's
    stand-in): every dynamics output with and without episode resets, the policy in both modes and
    its gradients agree with eager; checkpoints keep their keys; the PPO anchor holds its own copy
    of the weights."""
    import copy

    from dlswm.train.imagine import PolicyTrainer
    from dlswm.train.speed import Speed

    cfg = resolve("tiny")
    torch.manual_seed(0)
    eager = System(cfg, 6).eval()
    compiled = copy.deepcopy(eager)
    Speed(torch.device("cpu"), amp=False, fused_adam=True, threads=1, compile=True).prepare(compiled)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    B, n = 5, cfg.latent_size
    z = torch.randn(B, cfg.vqvae.embedding_dim, n, n)
    action = torch.randint(0, 6, (B,))
    state = [(torch.randn(B, cfg.dynamics.hidden_channels, n, n), torch.randn(B, cfg.dynamics.hidden_channels, n, n))
             for _ in range(cfg.dynamics.layers)]
    with torch.no_grad():
        for reset in (None, torch.tensor([True, False, False, True, False])):
            want, got = eager.dynamics.step(z, action, state, reset), compiled.dynamics.step(z, action, state, reset)
            torch.testing.assert_close(got[:2], want[:2], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got[2], want[2], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(compiled.policy(z), eager.policy(z), atol=1e-5, rtol=1e-4)
    for system in (eager, compiled):
        system.policy.train()
        logits, value = system.policy(z)
        (logits.logsumexp(1) + value).sum().backward()
    for (name, p), q in zip(eager.policy.named_parameters(), compiled.policy.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    from torch._dynamo.utils import counters
    assert counters["stats"]["unique_graphs"] >= 3  # the compiled side ran compiled graphs
    # PPO's anchor: a frozen copy of the compiled policy's weights, not of its parameters
    cfg.ppo.anchor_kl_coef = 0.3
    trainer = PolicyTrainer(compiled, cfg, Speed(torch.device("cpu"), False, True, 1, compile=True))
    trainer.set_anchor()
    with torch.no_grad():
        torch.testing.assert_close(trainer.anchor(z), compiled.policy.eval()(z))
        for p in compiled.policy.parameters():
            p.zero_()
        assert trainer.anchor(z)[0].abs().max() > 0


def test_bf16_counts_as_native_on_a_cpu_only_where_its_flags_name_bf16_hardware(tmp_path):
    """Catches trusting oneDNN's check alone: it says yes on Ice Lake / Cascade Lake Xeons (AVX512-BW,
    no bf16 instructions), where emulated bf16 trains slower than fp32 (docs/performance.md);
    and catches reading the wrong line of /proc/cpuinfo (x86 `flags`, Arm `Features`)."""
    from dlswm.runtime.machine import cpu_flags
    from dlswm.train.speed import bf16_native_cpu

    def cpuinfo(text: str):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return cpu_flags(path)

    ice_lake = cpuinfo("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n"
                       "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_vbmi2\n\n")
    zen4 = cpuinfo("flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni avx512_bf16\n")
    sapphire_rapids = cpuinfo("flags\t\t: fpu avx512f avx512bw amx_bf16 amx_tile amx_int8\n")
    graviton3 = cpuinfo("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert "avx512bw" in ice_lake and "bf16" in graviton3
    assert not bf16_native_cpu(True, ice_lake)
    assert bf16_native_cpu(True, zen4) and bf16_native_cpu(True, sapphire_rapids) and bf16_native_cpu(True, graviton3)
    assert not bf16_native_cpu(False, zen4)  # oneDNN without bf16 kernels: no
    unreadable = cpu_flags(tmp_path / "absent")
    assert unreadable == frozenset() and bf16_native_cpu(True, unreadable) and not bf16_native_cpu(False, unreadable)
    if Path("/proc/cpuinfo").exists():  # the real file parses (x86 and Arm Linux both list flags)
        assert cpu_flags()
