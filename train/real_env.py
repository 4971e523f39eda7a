"""Acting in the real game: collecting experience for the buffer, and evaluating the policy."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from dlswm.config import EnvConfig
from dlswm.models import System
from dlswm.runtime.atari import make_env
from dlswm.train.buffer import StreamRecorder

Policy = Callable[[np.ndarray], np.ndarray]  # uint8 observations (N, S, H, W) -> actions (N,)


def torch_policy(system: System, device: torch.device, temperature: float, seed: int) -> Policy:
    """The agent's inference path, sampling at `temperature` (0: greedy)."""
    agent = system.inference_agent()
    generator = torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        agent.eval()
        logits, _, _ = agent(torch.from_numpy(obs).to(device))  # (N, A)
        if temperature == 0:
            return logits.argmax(1).cpu().numpy()
        probs = torch.softmax(logits / temperature, 1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).cpu().numpy()

    return act


def random_policy(num_actions: int, rng: np.random.Generator) -> Policy:
    return lambda obs: rng.integers(0, num_actions, len(obs))


def collect(env_cfg: EnvConfig, policy: Policy, steps: int, num_envs: int, seed: int,
            progress: Callable[[int], None]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """`steps` real interactions from fresh episodes -> one buffer chunk and collection stats."""
    env = make_env(env_cfg, num_envs)
    try:
        obs, _ = env.reset(seed=seed)
        recorder = StreamRecorder(num_envs)
        recorder.start(obs)
        returns, episode_return = [], np.zeros(num_envs)
        interactions, t0 = 0, time.perf_counter()
        while interactions < steps:
            actions = policy(obs)
            obs, rewards, terminated, truncated, _ = env.step(actions)
            ended = terminated | truncated
            n = recorder.step(actions, obs, rewards, ended)
            episode_return += rewards
            returns.extend(episode_return[ended].tolist())
            episode_return[ended] = 0
            interactions += n
            progress(n)
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    stats = {"collect/steps": interactions, "throughput/env_steps_per_s": interactions / max(seconds, 1e-9),
             "collect/episodes": len(returns)}
    if returns:
        stats["collect/mean_return"] = float(np.mean(returns))
    return recorder.chunk(), stats


def evaluate(env_cfg: EnvConfig, policy: Policy, episodes: int, seed: int) -> list[float]:
    """Scores of `episodes` full games (no life-loss ends), played in parallel, one per env."""
    env = make_env(env_cfg, episodes)
    try:
        obs, _ = env.reset(seed=seed)
        scores = np.zeros(episodes)
        finished = np.zeros(episodes, bool)
        while not finished.all():
            obs, rewards, terminated, truncated, _ = env.step(policy(obs))
            scores += rewards * ~finished  # an env that finished keeps playing; its score is frozen
            finished |= terminated | truncated
    finally:
        env.close()
    return scores.tolist()
