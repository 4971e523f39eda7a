"""Everything a run trains with, built once from its config, and the loop's phases as its methods:
collect real experience, train the world model, train the policy in imagination, evaluate.
`dlswm train` (loop.py) and `dlswm profile` (profile.py) build it the same way.
"""

from __future__ import annotations

import zipfile
from typing import Any, Callable

import numpy as np
import torch

from dlswm.config import Config, apply_overrides
from dlswm.errors import UserError
from dlswm.models import System, in_mode
from dlswm.run_dir import RunDir
from dlswm.runtime.atari import resolve_game
from dlswm.train.buffer import ReplayBuffer
from dlswm.train.checkpoint import RunState
from dlswm.train.imagine import PolicyTrainer, imagine, start_context
from dlswm.train.media import reconstruction_png, rollout_gif
from dlswm.train.real_env import Collector, evaluate, random_policy, torch_policy
from dlswm.train.real_ppo import RealRollout, train_on_real
from dlswm.train.speed import Speed
from dlswm.train.world_model import WorldModelTrainer

Phase = Callable[[str, int], Callable[[int], None]]  # (description, total units) -> advance(n)


class Trainer:
    """The game, the networks and their two trainers, the replay buffer, the collection envs and
    the run's random streams. `run` (optional) is where chunks and pictures go."""

    def __init__(self, cfg: Config, device: torch.device, threads: int | None = None, run: RunDir | None = None):
        self.cfg, self.device, self.run = cfg, device, run
        self.game = resolve_game(cfg.env.game, cfg.env.full_action_space)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.system = System(cfg, self.game.num_actions).to(device)
        self.speed = Speed.choose(cfg, device, threads)
        self.speed.prepare(self.system)
        self.world_model = WorldModelTrainer(self.system, cfg, self.speed)
        self.policy = PolicyTrainer(self.system, cfg, self.speed)
        self.buffer = self.speed.prepare_buffer(ReplayBuffer(cfg.env.frame_stack))
        self.real_steps = 0
        self.collector = Collector(cfg.env, cfg.schedule.collect_envs, cfg.schedule.persistent_envs)
        self.real_rollout: RealRollout | None = None

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"world_model": self.world_model.optimizer, "policy": self.policy.optimizer}

    def close(self) -> None:
        self.collector.close()

    def _tag(self, it: int) -> str:
        return f"iter {it}/{self.cfg.schedule.iterations}"

    # ---- resume ----------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, run: RunDir, overrides: list[str], threads: int | None = None) -> tuple[Trainer, RunState]:
        """On the CPU, where the run's last checkpoint left it, with `overrides` applied to its config:
        the common start of the levers benchmarks. The collection envs stay open (`close` them)."""
        state = RunState.load(run.checkpoint)
        trainer = cls(apply_overrides(state.config, overrides), torch.device("cpu"), threads, run)
        try:
            trainer.restore(state)
        except BaseException:
            trainer.close()
            raise
        return trainer, state

    def restore(self, state: RunState) -> None:
        """Where `state` left the run: networks, optimizers, random streams, the buffer from the
        run's chunks, and the persistent collection envs replayed to where they were."""
        assert self.run is not None
        done = state.iteration
        state.restore(self.system, self.optimizers, self.rng, self.device)
        try:
            self.buffer = self.speed.prepare_buffer(ReplayBuffer.load(self.run.buffer, done, self.cfg.env.frame_stack))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            # Only the type: numpy's own text for a foreign file suggests allow_pickle, never advisable.
            raise UserError(f"{self.run.buffer}: a chunk of a finished iteration is missing or damaged "
                            f"({type(e).__name__}); the run cannot resume without it") from None
        self.real_steps = state.real_steps
        if self.cfg.schedule.persistent_envs:
            recorded = [ReplayBuffer.env_actions(self.run.buffer, i) for i in range(1, done + 1)]
            if all(a is not None for a in recorded):  # else (an older run): fresh episodes from here
                self.collector.replay(env_seed(self.cfg.seed, 1, "collect"), recorded)

    # ---- the phases, each returning its metrics ---------------------------------------------------
    def collect(self, it: int, phase: Phase) -> dict[str, float]:
        """Real experience (a random policy first, then the agent) into the buffer and the run."""
        s = self.cfg.schedule
        steps = s.initial_steps if it == 1 else s.steps_per_iteration
        temperature, seed = self.cfg.policy.collect_temperature, self.cfg.seed + it
        self.real_rollout = None  # the agent's steps as it played them, for `ppo.real_epochs`
        if it == 1:
            policy = random_policy(self.game.num_actions, self.rng, s.random_hold)
        elif self.cfg.ppo.real_epochs > 0:
            self.real_rollout = RealRollout(self.system, self.device, temperature, seed,
                                            life_loss_ends=self.cfg.dynamics.life_loss_head)
            policy = self.real_rollout.act
        else:
            policy = torch_policy(self.system, self.device, temperature, seed=seed)
        chunk, env_actions, stats = self.collector.collect(
            policy, steps, env_seed(self.cfg.seed, it, "collect"), phase(f"{self._tag(it)} collect", steps),
            observe=self.real_rollout.observe if self.real_rollout else None)
        if self.run is not None:
            ReplayBuffer.save_chunk(chunk, self.run.chunk(it), env_actions)
        metrics = {}
        if it > 1:  # how well the model knows the policy's own new trajectories, before it learns them
            metrics.update(self.world_model.score(chunk, self.rng))
        self.buffer.add_chunk(chunk)
        self.real_steps += int(stats["collect/steps"])
        return {**metrics, **stats, "real_steps": self.real_steps, "buffer_frames": len(self.buffer)}

    def train_policy_real(self, it: int, phase: Phase) -> dict[str, float]:
        """PPO on the steps the agent just played (`ppo.real_epochs`; nothing when off or in
        iteration 1), while the VQ-VAE still codes frames as it did when they were played."""
        if self.real_rollout is None:
            return {}
        rollout, self.real_rollout = self.real_rollout, None
        trained = phase(f"{self._tag(it)} policy (real)", 1)
        metrics = train_on_real(self.policy, rollout.batch(self.collector.obs), rollout.temperature,
                                self.cfg.ppo.real_epochs)
        trained(1)
        return metrics

    def train_world_model(self, it: int, phase: Phase) -> dict[str, float]:
        """The VQ-VAE alone on the first data (warm-up), then VQ-VAE and dynamics together."""
        wm, metrics, tag = self.world_model, {}, self._tag(it)
        if it == 1 and self.cfg.vqvae.warmup_epochs > 0:
            metrics.update(wm.warmup(self.buffer, self.rng, phase(f"{tag} vq-vae warm-up", wm.warmup_batches(self.buffer))))
        epochs = self.cfg.schedule.wm_epochs[it - 1]
        return {**metrics, **wm.train(self.buffer, epochs, self.rng, phase(f"{tag} world model", wm.batches(self.buffer, epochs)))}

    def train_policy(self, it: int, phase: Phase) -> dict[str, float]:
        updates = self.cfg.schedule.ppo_updates[it - 1]
        return self.policy.train(self.buffer, updates, self.rng, phase(f"{self._tag(it)} policy (imagined)", updates))

    def evaluate(self, it: int, phase: Phase) -> dict[str, float]:
        """Full real games (no life-loss ends) at the eval temperature, and the action mix played."""
        cfg, game = self.cfg, self.game
        evaluated, seed = phase(f"{self._tag(it)} evaluate", 1), env_seed(cfg.seed, it, "evaluate")
        scores, action_counts = evaluate(
            cfg.env, torch_policy(self.system, self.device, cfg.policy.eval_temperature, seed=seed),
            cfg.schedule.eval_episodes, seed=seed, num_actions=game.num_actions)
        evaluated(1)
        freq = action_counts / max(action_counts.sum(), 1)
        return {"eval/mean_score": float(np.mean(scores)), "eval/std_score": float(np.std(scores)),
                "eval/episodes": len(scores), "eval/steps": int(action_counts.sum()),
                "eval/action_entropy": float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum()),
                **{f"eval/action_{name}": float(f) for name, f in zip(game.action_meanings, freq)}}

    def pictures(self, it: int) -> None:
        """Reconstructions of real frames and one imagined rollout decoded to pixels, into the run's media/."""
        if self.run is None:
            return
        media, system = self.run.media, self.system
        media.mkdir(exist_ok=True)
        obs = self.buffer.observations(self.buffer.sample(self.rng, 8))
        reconstruction_png(system, obs, media / f"recon_{it:03d}.png")
        context = start_context(self.buffer, self.cfg, 1, self.rng, self.device)
        with in_mode(system, False):
            rollout = imagine(system, context, self.cfg.ppo.rollout_steps, decode=True)
        rollout_gif(rollout["frames"], media / f"imagined_{it:03d}.gif")

    def capture(self, it: int, wall_s: float, evaluation: dict[str, Any], best: dict[str, Any]) -> RunState:
        return RunState.capture(self.cfg, self.game, it, self.real_steps, wall_s, self.system, self.optimizers,
                                self.rng, self.device, evaluation=evaluation, best=best)


def env_seed(seed: int, iteration: int, purpose: str) -> int:
    """Distinct no-op starts for every run seed, iteration and purpose (ale_py seeds env e with
    seed + e, so the blocks are spaced far apart)."""
    return seed * 1_000_000 + iteration * 1_000 + {"collect": 0, "evaluate": 500}[purpose]
