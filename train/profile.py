"""`dlswm profile`: a few timed batches of each phase of the SimPLe loop at a preset's real sizes,
their throughput, and the preset's whole schedule projected phase by phase.

Each phase runs the training loop's own code (Collector, WorldModelTrainer, PolicyTrainer, the
torch policy) on real frames of the game, after one untimed call that pays for first-call costs.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dlswm.config import Config
from dlswm.runtime.atari import make_env
from dlswm.train.real_env import random_policy, torch_policy
from dlswm.train.trainer import Trainer
from dlswm.train.world_model import dynamics_batches, warmup_batches

EVAL_STEPS = 5_000  # assumed vector steps of one evaluation: a game's length depends on the agent


def schedule_work(cfg: Config, eval_steps: int = EVAL_STEPS) -> dict[str, float]:
    """What the whole schedule asks of each phase, in the unit each is timed in. The buffer is
    counted as the real steps collected so far (it also holds a few reset entries)."""
    s = cfg.schedule
    steps = [s.initial_steps] + [s.steps_per_iteration] * (s.iterations - 1)
    buffered = np.cumsum(steps)
    return {
        "collect (random)": s.initial_steps,
        "collect (agent)": sum(steps[1:]),
        "vq-vae warm-up": warmup_batches(cfg, s.initial_steps),
        "world model": sum(dynamics_batches(cfg, int(n), e) for e, n in zip(s.wm_epochs[:s.iterations], buffered)),
        "policy (imagined)": sum(s.ppo_updates[:s.iterations]) * cfg.ppo.num_envs * cfg.ppo.rollout_steps,
        "evaluate": s.iterations * eval_steps,
    }


UNITS = {"collect (random)": "env steps", "collect (agent)": "env steps", "vq-vae warm-up": "batches",
         "world model": "batches", "policy (imagined)": "imagined steps", "evaluate": "vector steps"}


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _counted(fn: Callable[[], Any]) -> float:
    """FLOPs torch counts while `fn` runs (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def profile(cfg: Config, device: torch.device, batches: int = 4, eval_steps: int = EVAL_STEPS,
            progress: Callable[[str], None] = lambda msg: None, threads: int | None = None) -> dict[str, Any]:
    """Time `batches` batches of each phase; returns per-phase rows and the projected schedule."""
    trainer = Trainer(cfg, device, threads)  # as `dlswm train` builds it, without a run directory
    game, rng, system, speed = trainer.game, trainer.rng, trainer.system, trainer.speed
    wm, pt, s, quiet = trainer.world_model, trainer.policy, cfg.schedule, (lambda n: None)
    measured: dict[str, tuple[float, float]] = {}  # phase -> (units done, seconds)

    progress("collect")
    # Enough data for the sequences every phase samples, from the trainer's collection envs.
    try:
        n = s.collect_envs * max(64, 4 * cfg.dynamics.seq_len)
        buffer = trainer.buffer
        for phase, policy in (("collect (random)", random_policy(game.num_actions, rng)),
                              ("collect (agent)", torch_policy(system, device, cfg.policy.collect_temperature, cfg.seed))):
            chunk, _, stats = trainer.collector.collect(policy, n, cfg.seed, quiet)
            steps = stats["collect/steps"]
            measured[phase] = (steps, steps / stats["throughput/env_steps_per_s"])
            buffer.add_chunk(chunk)
    finally:
        trainer.close()

    # The first, untimed call of each training phase pays for first-call costs and counts the FLOPs.
    flops: dict[str, float] = {}  # phase -> FLOPs per unit
    progress("vq-vae warm-up")
    flops["vq-vae warm-up"] = _counted(lambda: wm.warmup(buffer, rng, quiet, n_batches=1))
    measured["vq-vae warm-up"] = (batches, _timed(lambda: wm.warmup(buffer, rng, quiet, n_batches=batches), device))

    progress("world model")
    cycle = cfg.dynamics.vqvae_every  # whole cycles: the VQ-VAE's share is the run's
    flops["world model"] = _counted(lambda: wm.train(buffer, 0, rng, quiet, n_batches=cycle)) / cycle
    measured["world model"] = (batches * cycle, _timed(lambda: wm.train(buffer, 0, rng, quiet, n_batches=batches * cycle), device))

    progress("policy (imagined)")
    per_update = cfg.ppo.num_envs * cfg.ppo.rollout_steps
    flops["policy (imagined)"] = _counted(lambda: pt.train(buffer, 1, rng, quiet)) / per_update
    seconds = _timed(lambda: pt.train(buffer, batches, rng, quiet), device)
    measured["policy (imagined)"] = (batches * per_update, seconds)

    progress("evaluate")
    env = make_env(cfg.env, s.eval_episodes)
    try:
        obs, _ = env.reset(seed=cfg.seed)
        act = torch_policy(system, device, cfg.policy.eval_temperature, seed=cfg.seed)
        obs, *_ = env.step(act(obs))
        k = 16 * batches

        def play() -> None:
            nonlocal obs
            for _ in range(k):
                obs, *_ = env.step(act(obs))

        measured["evaluate"] = (k, _timed(play, device))
    finally:
        env.close()

    work = schedule_work(cfg, eval_steps)
    rows = []
    for phase, (units, seconds) in measured.items():
        per_s = units / max(seconds, 1e-9)
        rows.append({"phase": phase, "unit": UNITS[phase], "measured_units": units, "seconds": seconds,
                     "per_s": per_s, "schedule_units": work[phase], "projected_s": work[phase] / per_s,
                     # torch's count of the phase's FLOPs (forward and backward): how close to the
                     # device's peak the phase runs, i.e. what is left to gain without changing the maths
                     "gflop_per_unit": flops[phase] / 1e9 if phase in flops else None,
                     "gflops": flops[phase] * per_s / 1e9 if phase in flops else None})
    d = cfg.dynamics
    wm_row = next(r for r in rows if r["phase"] == "world model")
    return {"game": game.name, "preset": cfg.preset, "config_digest": cfg.digest(), "device": str(device),
            "torch_threads": speed.threads, "amp": speed.amp, "fused_adam": speed.fused_adam, "speed": speed.describe(),
            "eval_steps_assumed": eval_steps,
            "rows": rows, "projected_total_s": sum(r["projected_s"] for r in rows),
            # the units the training loop logs (throughput/*)
            "wm_sample_steps_per_s": wm_row["per_s"] * d.batch_size * d.seq_len,
            "imagined_steps_per_s": next(r for r in rows if r["phase"] == "policy (imagined)")["per_s"]}
