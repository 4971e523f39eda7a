"""Acting in the real game: collecting experience for the buffer, and evaluating the policy."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from dlswm.config import EnvConfig
from dlswm.models import System, in_mode
from dlswm.runtime.atari import make_env
from dlswm.train.buffer import StreamRecorder

Policy = Callable[[np.ndarray], np.ndarray]  # uint8 observations (N, S, H, W) -> actions (N,)
# After each env step: rewards (N,), episodes ended, lives lost, and which envs' step was an
# autoreset (their action ignored: no transition).
StepObserver = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


def torch_policy(system: System, device: torch.device, temperature: float, seed: int) -> Policy:
    """The agent's inference path, sampling at `temperature` (0: greedy)."""
    agent = system.inference_agent()
    generator = torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        with in_mode(agent, False):
            logits, _, _ = agent(torch.from_numpy(obs).to(device))  # (N, A)
        return sample_actions(logits, temperature, generator).cpu().numpy()

    return act


def sample_actions(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Actions (N,) drawn from softmax(logits / temperature) (N, A); temperature 0: greedy."""
    if temperature == 0:
        return logits.argmax(1)
    return torch.multinomial(torch.softmax(logits / temperature, 1), 1, generator=generator).squeeze(1)


def random_policy(num_actions: int, rng: np.random.Generator, mean_hold: int = 1) -> Policy:
    """Uniformly random actions; with `mean_hold` > 1 each env keeps its action for a number of
    steps drawn uniformly from 1..2*mean_hold-1 before drawing the next (`schedule.random_hold`)."""
    if mean_hold == 1:
        return lambda obs: rng.integers(0, num_actions, len(obs))
    actions: np.ndarray | None = None  # (N,) the action each env holds
    left: np.ndarray | None = None  # (N,) steps it still holds it, this one included

    def act(obs: np.ndarray) -> np.ndarray:
        nonlocal actions, left
        if actions is None:
            actions, left = np.zeros(len(obs), np.int64), np.zeros(len(obs), np.int64)
        new = left == 0
        actions[new] = rng.integers(0, num_actions, new.sum())
        left[new] = rng.integers(1, 2 * mean_hold, new.sum())
        left -= 1
        return actions.copy()

    return act


class Collector:
    """Real experience from `num_envs` games for the replay buffer.

    `persistent` (the released code's single env): the games run on across iterations, so an
    episode longer than one iteration's share of steps continues in the next and the buffer reaches
    states deep in the game; without it every collection resets its envs and only ever sees the
    first steps/num_envs of each episode. `replay` rebuilds a persistent env after a resume by
    sending it the recorded actions again, so a resumed run collects what an uninterrupted one would.
    """

    def __init__(self, env_cfg: EnvConfig, num_envs: int, persistent: bool):
        self.env = make_env(env_cfg, num_envs)
        self.num_envs, self.persistent = num_envs, persistent
        self.obs: np.ndarray | None = None  # (N, S, H, W), None until the first reset
        self.resetting = np.zeros(num_envs, bool)  # the env's next step is an autoreset
        self.episode_return = np.zeros(num_envs)
        self.lives = np.zeros(num_envs, np.int64)  # as the env reported them on its last step

    def _reset(self, seed: int) -> None:
        self.obs, info = self.env.reset(seed=seed)
        self.resetting[:] = False
        self.episode_return[:] = 0
        self.lives = np.asarray(info["lives"], np.int64)

    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step the env; returns rewards, the episodes that ended and the steps that lost a life (the
        last one included; an autoreset step refills the lives, which is no loss), and keeps the
        running returns."""
        self.obs, rewards, terminated, truncated, info = self.env.step(actions)
        ended = terminated | truncated
        self.episode_return += rewards
        lives = np.asarray(info["lives"], np.int64)
        life_lost, self.lives = lives < self.lives, lives
        return rewards, ended, life_lost

    def collect(self, policy: Policy, steps: int, seed: int, progress: Callable[[int], None],
                observe: StepObserver | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, float]]:
        """`steps` real interactions -> one buffer chunk, the actions sent to the env (for `replay`)
        and collection stats. `seed` seeds the no-op starts when the envs are reset; `observe` hears
        of every step's outcome (`real_ppo.RealRollout`)."""
        continuing = self.persistent and self.obs is not None
        if not continuing:
            self._reset(seed)
        recorder = StreamRecorder(self.num_envs, self.resetting)
        (recorder.resume if continuing else recorder.start)(self.obs)
        returns, sent = [], []
        interactions, t0 = 0, time.perf_counter()
        while interactions < steps:
            actions = policy(self.obs)
            sent.append(actions)
            rewards, ended, life_lost = self._step(actions)
            if observe is not None:
                observe(rewards, ended, life_lost, recorder.resetting.copy())
            n = recorder.step(actions, self.obs, rewards, ended, life_lost)
            returns.extend(self.episode_return[ended].tolist())
            self.episode_return[ended] = 0
            interactions += n
            progress(n)
        seconds = time.perf_counter() - t0
        self.resetting = recorder.resetting.copy()
        chunk = recorder.chunk()
        # Per real step (every transition's reward is in the chunk): what imagined rewards compare with.
        signs = np.sign(chunk["rewards"])
        stats = {"collect/steps": interactions, "throughput/env_steps_per_s": interactions / max(seconds, 1e-9),
                 "collect/episodes": len(returns), "collect/continued": float(continuing),
                 "collect/reward_rate": float(np.count_nonzero(signs)) / max(interactions, 1),
                 "collect/life_loss_rate": float(chunk["life_lost"].sum()) / max(interactions, 1),
                 "collect/sign_return_per_step": float(signs.sum()) / max(interactions, 1),
                 "collect/mean_running_return": float(np.mean(self.episode_return))}  # unfinished episodes
        if returns:
            stats["collect/mean_return"] = float(np.mean(returns))
        return chunk, np.stack(sent), stats

    def replay(self, seed: int, env_actions: list[np.ndarray]) -> None:
        """Bring a persistent env to where the recorded collections left it: reset with the first
        collection's seed, then every recorded action again (the env is deterministic)."""
        self._reset(seed)
        for actions in env_actions:
            for row in actions:
                _, ended, _ = self._step(row)
                self.resetting = ~self.resetting & ended  # as StreamRecorder.step tracks it
                self.episode_return[ended] = 0

    def close(self) -> None:
        self.env.close()


def evaluate(env_cfg: EnvConfig, policy: Policy, episodes: int, seed: int, num_actions: int | None = None
             ) -> tuple[list[float], np.ndarray]:
    """Scores of `episodes` full games (no life-loss ends), played in parallel, one per env, and how
    often each action was taken in them (a policy collapsing onto few actions shows here first)."""
    env = make_env(env_cfg, episodes)
    counts = np.zeros(num_actions or 1, np.int64)
    try:
        obs, _ = env.reset(seed=seed)
        scores = np.zeros(episodes)
        finished = np.zeros(episodes, bool)
        while not finished.all():
            actions = policy(obs)
            if num_actions:
                counts += np.bincount(actions[~finished], minlength=num_actions)
            obs, rewards, terminated, truncated, _ = env.step(actions)
            scores += rewards * ~finished  # an env that finished keeps playing; its score is frozen
            finished |= terminated | truncated
    finally:
        env.close()
    return scores.tolist(), counts
