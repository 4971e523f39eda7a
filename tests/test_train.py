import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dlswm.config import resolve
from dlswm.errors import UserError
from dlswm.models import System
from dlswm.models.dynamics import dynamics_loss
from dlswm.models.vqvae import vqvae_loss
from dlswm.runtime.atari import make_env
from dlswm.train.buffer import ReplayBuffer, StreamRecorder
from dlswm.train.checkpoint import RunState
from dlswm.train.ppo import gae

THREE_ITERATIONS = ["--set", "schedule.iterations=3", "--set", "schedule.wm_epochs=2,1,1",
                    "--set", "schedule.ppo_updates=3,3,3"]


def dlswm(*args, **kwargs):
    return subprocess.run([sys.executable, "-c", "from dlswm.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kwargs)


def test_tiny_run_leaves_checkpoint_metrics_and_pictures(tiny_run_dir):
    state = RunState.load(tiny_run_dir)
    cfg = resolve("tiny")
    assert state.iteration == cfg.schedule.iterations
    assert state.real_steps >= cfg.schedule.initial_steps + cfg.schedule.steps_per_iteration
    lines = [json.loads(line) for line in (tiny_run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2]
    for m in lines:
        assert np.isfinite(m["eval/mean_score"]) and m["throughput/env_steps_per_s"] > 0
        assert m["throughput/wm_samples_per_s"] > 0 and m["throughput/imagined_steps_per_s"] > 0
        assert 0 <= m["dynamics/reward_acc"] <= 1 and m["vqvae/perplexity"] >= 1
    assert 0 < lines[0]["time/iteration_s"] == lines[0]["time/total_s"] < lines[1]["time/total_s"]
    assert state.wall_s == lines[1]["time/total_s"]  # carried over by a resume
    assert_best_is_the_highest_eval(tiny_run_dir, lines)
    media = sorted(p.name for p in (tiny_run_dir / "media").iterdir())
    assert media == ["imagined_001.gif", "imagined_002.gif", "recon_001.png", "recon_002.png"]
    assert list((tiny_run_dir / "tb").iterdir())
    assert not list(tiny_run_dir.rglob("*.tmp*"))


def test_second_run_into_the_same_dir_refuses_and_finished_run_says_so(tiny_run_dir):
    again = dlswm("train", "Pong", "--preset", "tiny", "--out", tiny_run_dir)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--resume" in again.stderr
    finished = dlswm("train", "--out", tiny_run_dir, "--resume")
    assert finished.returncode == 0 and "finished" in finished.stdout
    unknown = dlswm("train", "Breakoot", "--preset", "tiny", "--out", tiny_run_dir.parent / "x")
    assert unknown.returncode == 2 and "Breakout" in unknown.stderr and "Traceback" not in unknown.stderr
    short = dlswm("train", "Pong", "--preset", "tiny", "--out", tiny_run_dir.parent / "y", "--set", "schedule.iterations=3")
    assert short.returncode == 2 and short.stderr.count("\n") == 1 and "one per iteration" in short.stderr
    assert not (tiny_run_dir.parent / "y").exists()  # refused before anything was written
    if not torch.cuda.is_available():
        no_gpu = dlswm("train", "Pong", "--preset", "tiny", "--device", "cuda", "--out", tiny_run_dir.parent / "z")
        assert no_gpu.returncode == 2 and "no CUDA device" in no_gpu.stderr and not (tiny_run_dir.parent / "z").exists()


def test_resume_after_a_kill_finishes_without_redoing_finished_iterations(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "from dlswm.cli import main; main()", "train", "Pong",
                             "--preset", "tiny", "--out", str(out), *THREE_ITERATIONS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the worst case: no cleanup at all
    proc.wait()
    saved = RunState.load(out).iteration
    assert saved >= 1
    chunk_1 = out / "buffer" / "chunk_001.npz"
    stamp = os.stat(chunk_1).st_mtime_ns
    resumed = dlswm("train", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"iterations {saved + 1}..3" in resumed.stdout or saved == 3
    assert RunState.load(out).iteration == 3
    assert os.stat(chunk_1).st_mtime_ns == stamp  # finished work is not redone
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2, 3]
    assert lines[2]["time/total_s"] == pytest.approx(sum(m["time/iteration_s"] for m in lines))
    assert_best_is_the_highest_eval(out, lines)


def assert_best_is_the_highest_eval(run_dir, lines):
    """best.pt is the checkpoint of the first iteration with the highest eval score."""
    scores = [m["eval/mean_score"] for m in lines]
    best = RunState.load(run_dir / "best.pt")
    assert best.iteration == 1 + int(np.argmax(scores)) and best.eval["mean_score"] == max(scores)
    assert RunState.load(run_dir).best == {"iteration": best.iteration, "mean_score": max(scores)}


def test_gae_matches_a_hand_worked_example():
    # gamma 0.9, lambda 0.8; rewards [1, 0], values [0.5, 0.2], bootstrap value 1.0:
    # delta_1 = 0 + 0.9 * 1.0 - 0.2 = 0.7;  A_1 = 0.7
    # delta_0 = 1 + 0.9 * 0.2 - 0.5 = 0.68; A_0 = 0.68 + 0.9 * 0.8 * 0.7 = 1.184
    adv, ret = gae(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.5], [0.2]]), torch.tensor([1.0]), 0.9, 0.8)
    assert torch.allclose(adv.squeeze(1), torch.tensor([1.184, 0.7]))
    assert torch.allclose(ret.squeeze(1), torch.tensor([1.684, 0.9]))


@pytest.fixture(scope="module")
def real_chunk():
    """A chunk of real Pong with random actions, and the stacked observations the env returned."""
    cfg = resolve("tiny")
    env = make_env(cfg.env, 2)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    recorder, seen = StreamRecorder(2), [obs.copy()]
    recorder.start(obs)
    for _ in range(300):
        actions = rng.integers(0, 6, 2)
        obs, rewards, terminated, truncated, _ = env.step(actions)
        recorder.step(actions, obs, rewards, terminated | truncated)
        seen.append(obs.copy())
    env.close()
    # Stored frames are copies: a view would keep every step's whole (N, S, H, W) batch alive.
    assert all(f.base is None for s in recorder.streams for f in s["frames"])
    return cfg, recorder.chunk(), np.stack(seen)  # seen: (T + 1, 2, S, H, W)


def test_buffer_rebuilds_exactly_the_stacks_the_env_showed(real_chunk, tmp_path):
    cfg, chunk, seen = real_chunk
    path = ReplayBuffer.chunk_path(tmp_path, 1)
    ReplayBuffer.save_chunk(chunk, path)
    buffer = ReplayBuffer.load(tmp_path, 1, cfg.env.frame_stack)
    per_env = len(buffer) // 2
    assert len(buffer) == 2 * len(seen)  # no episode ended in 300 Pong steps: one entry per observation
    assert buffer.first[0] and buffer.first[per_env] and buffer.done[per_env - 1] and buffer.done[-1]
    np.testing.assert_array_equal(buffer.observations(np.arange(per_env)), seen[:, 0])
    np.testing.assert_array_equal(buffer.observations(np.arange(per_env, 2 * per_env)), seen[:, 1])
    starts = buffer.sequence_starts(cfg.dynamics.seq_len)
    seq = buffer.sequences(starts[:3], cfg.dynamics.seq_len)
    assert seq["obs"].shape == (3, cfg.dynamics.seq_len, 4, 96, 96) and not seq["first"][:, 1:].any()
    assert per_env - cfg.dynamics.seq_len + 1 not in starts  # no window crosses into the next stream


def test_buffer_mirrored_on_a_device_gathers_the_same_batches(real_chunk):
    """`buffer_on_device`: stacks gathered from the mirrored frames equal the host's, across the
    zeroed frames before each stream's start and a chunk added after the mirror was made (CPU
    stands in for CUDA)."""
    cfg, chunk, _ = real_chunk
    host, mirrored = ReplayBuffer(cfg.env.frame_stack), ReplayBuffer(cfg.env.frame_stack)
    mirrored.keep_on(torch.device("cpu"))
    for buffer in (host, mirrored):
        buffer.add_chunk(chunk)
    idx = np.arange(len(host))
    torch.testing.assert_close(mirrored.observation_tensor(idx, torch.device("cpu")),
                               torch.from_numpy(host.observations(idx)))
    for buffer in (host, mirrored):
        buffer.add_chunk(chunk)
    starts = host.sequence_starts(cfg.dynamics.seq_len)[::7]
    want = host.sequences(starts, cfg.dynamics.seq_len)
    got = mirrored.sequence_tensors(starts, cfg.dynamics.seq_len, torch.device("cpu"))
    assert mirrored._mirror.shape[0] == len(mirrored)  # the new chunk was copied when next read
    assert sorted(got) == sorted(want) and len(starts) > 20 and starts.max() > len(chunk["frames"])
    for key in want:
        torch.testing.assert_close(got[key], torch.from_numpy(want[key]), msg=key)


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


@pytest.fixture
def fresh(real_chunk):
    """A seeded untrained tiny system and a buffer holding the real chunk."""
    cfg, chunk, _ = real_chunk
    torch.manual_seed(0)
    buffer = ReplayBuffer(cfg.env.frame_stack)
    buffer.add_chunk(chunk)
    return cfg, System(cfg, 6).train(), buffer


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


def test_a_resumed_run_matches_an_uninterrupted_one(tiny_run_dir, tmp_path, monkeypatch):
    """Interrupted as iteration 2 starts collecting, then resumed: iteration 2's metrics equal those
    of the uninterrupted run to the last digit. Catches any state a checkpoint forgets (numpy or torch
    RNG, optimizer moments, the persistent env's episodes, which a resume replays)."""
    from dlswm.train import loop
    from dlswm.train.real_env import Collector

    calls = {"n": 0}
    collect = Collector.collect

    def interrupt_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return collect(self, *args, **kwargs)

    monkeypatch.setattr(Collector, "collect", interrupt_second)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="interrupted"):
        loop.train(resolve("tiny", "Pong"), out, device_name="cpu")
    monkeypatch.setattr(Collector, "collect", collect)
    loop.train(None, out, device_name="cpu", resume=True)

    def comparable(run_dir):
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in m.items() if not k.startswith(("time/", "throughput/"))} for m in lines]

    assert comparable(out) == comparable(tiny_run_dir)
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[1])["collect/continued"] == 1.0


def test_collection_and_evaluation_never_share_an_env_seed(tmp_path, monkeypatch):
    """ale_py seeds env e of a block seeded s with s + e. An evaluation game that shared a seed with
    a collection game would replay a no-op start the buffer already holds. Mutations caught: the
    evaluation offset in `env_seed` set to the collection's, or the trainer passing the collection
    seed to `evaluate`."""
    from dlswm.train import loop, trainer
    from dlswm.train.real_env import Collector

    blocks = []  # (purpose, first seed, envs)
    collect, evaluate = Collector.collect, trainer.evaluate

    def spy_collect(self, policy, steps, seed, progress):
        blocks.append(("collect", seed, self.num_envs))
        return collect(self, policy, steps, seed, progress)

    def spy_evaluate(env_cfg, policy, episodes, seed, num_actions=None):
        blocks.append(("evaluate", seed, episodes))
        return evaluate(env_cfg, policy, episodes, seed=seed, num_actions=num_actions)

    monkeypatch.setattr(Collector, "collect", spy_collect)
    monkeypatch.setattr(trainer, "evaluate", spy_evaluate)
    loop.train(resolve("tiny", "Pong", ["schedule.eval_episodes=2"]), tmp_path / "run", device_name="cpu")
    assert [b[0] for b in blocks] == ["collect", "evaluate"] * 2
    seeds = {purpose: set() for purpose in ("collect", "evaluate")}
    for purpose, first, envs in blocks:
        seeds[purpose] |= set(range(first, first + envs))
    assert len(seeds["evaluate"]) == 2 * 2  # two iterations' games, none repeated
    assert not seeds["collect"] & seeds["evaluate"]


def test_collector_records_each_life_lost_on_the_step_that_lost_it():
    """Real CrazyClimber games (5 lives) under a random policy: every episode that ends inside the
    collection lost exactly 5 lives, the last on its final step (the entry before the terminal
    observation). Mutations caught: the flag put on the new observation's entry, `lives` not tracked
    from step to step."""
    from dlswm.train.real_env import Collector, random_policy

    cfg = resolve("tiny", "CrazyClimber")
    collector = Collector(cfg.env, 2, persistent=False)
    try:
        chunk, _, stats = collector.collect(random_policy(9, np.random.default_rng(0)), 8_000, seed=3,
                                            progress=lambda n: None)
    finally:
        collector.close()
    # Streams stop mid-episode too; an episode that ended lost its last life on its final step.
    ended = [(start, end) for start, end in zip(np.flatnonzero(chunk["first"]), np.flatnonzero(chunk["done"]))
             if chunk["life_lost"][end - 1]]
    assert len(ended) == stats["collect/episodes"] >= 2
    for start, end in ended:
        assert chunk["life_lost"][start:end + 1].sum() == 5 and not chunk["life_lost"][end]
    assert stats["collect/life_loss_rate"] == pytest.approx(chunk["life_lost"].sum() / stats["collect/steps"])


@pytest.mark.parametrize("first_steps", [40, 50])
def test_buffer_keeps_obs_action_reward_alignment_across_episode_ends_and_chunks(tmp_path, first_steps):
    """Two collections from a persistent env of 2 games cut at 25 steps: the second chunk continues
    the first's episodes mid-way (40 interactions) or right after both ended (50). Every observation the
    env showed is rebuilt exactly, in order, with the action taken there and the reward that followed;
    the continued stream's context entries are never sampled and start no training window."""
    from dlswm.train.real_env import Collector

    cfg = resolve("tiny", "Pong")
    cfg.env.max_episode_steps = 25
    collector = Collector(cfg.env, 2, persistent=True)
    shown, sent, rewards = [], [], []
    step = Collector._step

    def spy(self, actions):
        out = step(self, actions)
        rewards.append(out[0].copy())
        return out

    rng = np.random.default_rng(0)

    def policy(obs):
        shown.append(obs.copy())
        sent.append(rng.integers(0, 6, len(obs)))
        return sent[-1]

    boundaries = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Collector, "_step", spy)
        for it, steps in enumerate([first_steps, 60], start=1):
            resetting = collector.resetting.copy()
            chunk, env_actions, stats = collector.collect(policy, steps, seed=7, progress=lambda n: None)
            np.testing.assert_array_equal(env_actions, np.stack(sent[len(sent) - len(env_actions):]))
            ReplayBuffer.save_chunk(chunk, ReplayBuffer.chunk_path(tmp_path, it), env_actions)
            boundaries.append((len(shown) - len(env_actions), len(shown), resetting, collector.obs.copy()))
            assert stats["collect/continued"] == float(it == 2)
    collector.close()
    buffer = ReplayBuffer.load(tmp_path, 2, 4)
    assert buffer.done.sum() > 4  # episodes did end inside the streams
    ends = np.cumsum([len(np.load(ReplayBuffer.chunk_path(tmp_path, i))["actions"]) for i in (1, 2)])
    starts = buffer.sequence_starts(cfg.dynamics.seq_len)
    for c, (lo, hi, resetting, final) in enumerate(boundaries):
        chunk_idx = buffer.sample_idx[(buffer.sample_idx >= (ends[c - 1] if c else 0)) & (buffer.sample_idx < ends[c])]
        per_env = np.array_split(chunk_idx, 2)
        for e in range(2):
            skip = int(resetting[e])  # the terminal observation was the last chunk's
            expected = np.stack([s[e] for s in shown[lo + skip:hi]] + [final[e]])
            idx = per_env[e]
            assert len(idx) == len(expected)
            np.testing.assert_array_equal(buffer.observations(idx), expected)
            moved = ~buffer.done[idx[:-1]]  # entries with a transition: the action was played, the reward followed
            np.testing.assert_array_equal(buffer.actions[idx[:-1]][moved], np.stack(sent[lo + skip:hi])[moved, e])
            np.testing.assert_array_equal(buffer.rewards[idx[:-1]][moved], np.stack(rewards[lo + skip:hi])[moved, e])
    context = np.setdiff1d(np.arange(len(buffer)), buffer.sample_idx)
    assert boundaries[1][2].all() == (first_steps == 50)  # both envs reset as the second chunk starts
    assert len(context) == (6 if first_steps == 40 else 0)
    assert not np.isin(context, starts).any() and not np.isin(buffer.sample(rng, 1000), context).any()


def test_curves_draws_a_png_of_runs_and_refuses_bad_input_in_one_line(tiny_run_dir, tmp_path):
    out = tmp_path / "c.png"
    ok = dlswm("curves", tiny_run_dir, tiny_run_dir, "--label", "a", "--label", "b", "-o", out)
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp*"))
    for args, words in [((tmp_path / "none",), "no metrics.jsonl"), ((tiny_run_dir, "--label", "a", "--label", "b"), "one per run")]:
        bad = dlswm("curves", *args, "-o", tmp_path / "d.png")
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1 and words in bad.stderr
        assert not (tmp_path / "d.png").exists()


def test_curves_markdown_puts_runs_side_by_side_with_the_real_rate_that_followed_each_policy(tmp_path):
    """Hand-made metrics of two runs: a row per (iteration, run); the "real" reward rate of iteration
    i is the collection of iteration i + 1 (the policy i trained, played for real); a column no run
    logs is left out. Mutation caught: the real rate taken from the same iteration's line."""
    from dlswm.experiments.curves import iteration_table

    runs = []
    for name, lines in {"a": [{"iteration": 1, "real_steps": 100, "eval/mean_score": 5.0, "imagined/sign_return_per_step": 0.5},
                              {"iteration": 2, "real_steps": 200, "eval/mean_score": 7.0, "collect/sign_return_per_step": 0.25}],
                        "b": [{"iteration": 1, "real_steps": 100, "eval/mean_score": 6.0}]}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
        runs.append(tmp_path / name)
    table = iteration_table(runs, ["A", "B"]).splitlines()
    assert table[0] == "| iteration | run | real steps | eval | imagined / real reward sign per step |"
    assert table[2:] == ["| 1 | A | 100 | 5.0 | 0.5000 / 0.2500 |", "| 1 | B | 100 | 6.0 | - / - |",
                         "| 2 | A | 200 | 7.0 | - / - |"]


def test_profile_times_every_phase_and_projects_the_tiny_schedule(tmp_path):
    """The projection is each phase's measured seconds per unit times the schedule's units, worked by
    hand for `tiny`: world-model batches ceil(2 * 256 / 48) + ceil(1 * 384 / 48) = 11 + 8, PPO 2 x 3
    updates of 8 envs x 10 steps, warm-up ceil(1 * 256 / 16)."""
    out = tmp_path / "p.json"
    result = dlswm("profile", "Pong", "--preset", "tiny", "--device", "cpu", "--batches", "2", "--eval-steps", "100",
                   "--json", out)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    rows = {r["phase"]: r for r in data["rows"]}
    assert list(rows) == ["collect (random)", "collect (agent)", "vq-vae warm-up", "world model", "policy (imagined)",
                          "evaluate"]
    expected = {"collect (random)": 256, "collect (agent)": 128, "vq-vae warm-up": 16, "world model": 19,
                "policy (imagined)": 480, "evaluate": 200}
    assert {k: r["schedule_units"] for k, r in rows.items()} == expected
    assert rows["world model"]["measured_units"] == 4 and rows["policy (imagined)"]["measured_units"] == 160
    for r in rows.values():
        assert r["seconds"] > 0 and r["projected_s"] == pytest.approx(r["schedule_units"] * r["seconds"] / r["measured_units"])
    assert data["projected_total_s"] == pytest.approx(sum(r["projected_s"] for r in rows.values()))
    assert data["wm_sample_steps_per_s"] == pytest.approx(rows["world model"]["per_s"] * 8 * 6)
    for phase, r in rows.items():  # FLOPs counted for the training phases only, rates consistent
        if phase in ("vq-vae warm-up", "world model", "policy (imagined)"):
            assert r["gflop_per_unit"] > 0 and r["gflops"] == pytest.approx(r["gflop_per_unit"] * r["per_s"])
        else:
            assert r["gflop_per_unit"] is None and r["gflops"] is None


def test_profile_runs_the_cpu_presets_ppo_with_its_kl_anchor():
    """`dlswm profile` with no arguments (the `cpu` preset) ended in `KeyError: 'anchor_logits'`: it
    ran PPO updates without the anchor the loop sets at the start of each policy phase. The `cpu`
    preset's whole PPO section (anchor included) on tiny networks, through the loop's policy phase."""
    from dlswm.config import load_preset
    from dlswm.train.profile import profile

    cfg = resolve("tiny", "Pong")
    cfg.ppo = load_preset("cpu").ppo
    assert cfg.ppo.anchor_kl_coef > 0  # else this test no longer tests the anchor
    result = profile(cfg, torch.device("cpu"), batches=1, eval_steps=10, threads=1)
    policy = next(r for r in result["rows"] if r["phase"] == "policy (imagined)")
    assert policy["measured_units"] == cfg.ppo.num_envs * cfg.ppo.rollout_steps and policy["gflops"] > 0


def test_a_live_run_directory_is_refused_to_a_second_process(tmp_path):
    """Before the lock, a `--resume` beside a live run went ahead and both wrote every iteration."""
    from dlswm.train.loop import prepare_run

    out = tmp_path / "run"
    _, _, lock = prepare_run(out, resolve("tiny", "Pong"), resume=False)  # this process holds the run
    try:
        result = dlswm("train", "--out", out, "--resume")
    finally:
        lock.close()
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"in use by a running dlswm train (pid {os.getpid()})" in result.stderr


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A tiny run stopped as iteration 2 began: iteration 1's checkpoint and chunk on disk."""
    from dlswm.train import loop
    from dlswm.train.real_env import Collector

    collect, calls = Collector.collect, {"n": 0}

    def interrupt_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return collect(self, *args, **kwargs)

    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Collector, "collect", interrupt_second)
        with pytest.raises(UserError, match="interrupted"):
            loop.train(resolve("tiny", "Pong"), out, device_name="cpu")
    return out


def _damage(run, case):
    chunk = run / "buffer" / "chunk_001.npz"
    if case == "no checkpoint":
        (run / "checkpoint.pt").unlink()
    elif case == "truncated config":
        (run / "config.json").write_text((run / "config.json").read_text()[:100])
    elif case == "truncated chunk":
        chunk.write_bytes(chunk.read_bytes()[:1000])
    elif case == "random chunk":
        chunk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif case == "out is a file":
        return run / "config.json"
    return run


@pytest.mark.parametrize("case, words", [
    ("no checkpoint", "has no checkpoint.pt but holds finished work (chunk_001.npz"),  # restarted silently
    ("truncated config", "config.json is damaged (JSONDecodeError)"),  # traceback
    ("truncated chunk", "missing or damaged (BadZipFile)"),  # traceback
    ("random chunk", "missing or damaged ("),  # advised allow_pickle
    ("out is a file", "is a file, not a run directory"),  # traceback
])
def test_resume_of_a_damaged_or_incomplete_run_is_one_line_and_changes_nothing(interrupted_run, tmp_path, case, words):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    target = _damage(run, case)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = dlswm("train", "--out", target, "--resume")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and "allow_pickle" not in result.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == \
        {p: b for p, b in before.items() if p.name != ".lock"}


def test_resume_with_a_game_argument_is_refused(interrupted_run):
    result = dlswm("train", "Breakout", "--out", interrupted_run, "--resume")
    assert result.returncode == 2 and "drop GAME" in result.stderr
