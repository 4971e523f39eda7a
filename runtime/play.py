"""`dlswm play`: an exported agent plays full Atari games, measured.

The environment comes from the model's own card (the observation spec it was trained with), so a
model file is all that is needed. Per step: the model call is timed alone and with the emulator.
"""

from __future__ import annotations

import importlib.resources
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import dlswm
from dlswm.config import EnvConfig
from dlswm.errors import UserError
from dlswm.runtime.atari import make_env
from dlswm.runtime.gif import GifWriter
from dlswm.runtime.latency import percentiles
from dlswm.runtime.machine import machine, peak_rss_mb, release_free_heap, rss_mb
from dlswm.runtime.contract import action_probs, choose  # noqa: F401 (action_probs: re-exported)
from dlswm.runtime.reference_scores import RANDOM_HUMAN, human_normalized
from dlswm.runtime.runtimes import RUNTIMES, file_mb
from dlswm.runtime.session import Agent


DEFAULT_GAME = "CrazyClimber"  # what `dlswm play` with neither a model nor --game plays
GameDone = Callable[[int, dict[str, Any]], None]  # (game number from 1, its result), as each game ends
PlayerGameDone = Callable[[str, int, dict[str, Any]], None]  # the same, after "agent" or "random agent"


def _agent_key(game: str) -> str:
    """'CrazyClimber', 'crazy_climber' or 'crazy-climber' -> 'crazyclimber', a shipped file's stem."""
    return "".join(ch for ch in game.lower() if ch.isalnum())


def shipped_agents() -> dict[str, Path]:
    """The agents shipped in the package (runtime/agents/`<game>.<variant>.onnx`), by game key."""
    files = importlib.resources.files("dlswm.runtime.agents").iterdir()
    return {p.name.split(".")[0]: Path(str(p)) for p in sorted(files, key=lambda p: p.name) if p.name.endswith(".onnx")}


def default_agent(game: str | None = None) -> Path:
    """The shipped agent of `game` (default: CrazyClimber)."""
    shipped = shipped_agents()
    if not shipped:
        raise UserError("no trained agent is shipped with this dlswm yet: pass a model exported by "
                        "`dlswm export`, e.g. `dlswm play runs/pong/export/pong.int8.onnx`")
    key = _agent_key(game or DEFAULT_GAME)
    if key not in shipped:
        if game is None:
            return next(iter(shipped.values()))
        raise UserError(f"no agent for '{game}' is shipped (shipped: {', '.join(shipped)}): pass a model "
                        f"exported by `dlswm export`")
    return shipped[key]


def export_report_path(agent: Path) -> Path:
    """The export report shipped beside an agent: `<game>.export-report.json`."""
    return agent.with_name(f"{agent.name.split('.')[0]}.export-report.json")


def check(agent: Agent, episodes: int, max_steps: int | None) -> None:
    """The options, before the first step (`open_agent` has checked the model card against the
    graph and the game)."""
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {max_steps}")


@dataclass
class Episodes:
    """What one policy did over a run of episodes; times in seconds, per step."""

    results: list[dict[str, Any]] = field(default_factory=list)
    # Compact float32 arrays, not lists: a 30-game play holds ~90k steps of each.
    model_s: array = field(default_factory=lambda: array("f"))
    step_s: array = field(default_factory=lambda: array("f"))
    rss_after_mb: list[float] = field(default_factory=list)

    def score(self) -> dict[str, float]:
        scores = np.array([r["score"] for r in self.results])
        return {"mean": float(scores.mean()), "std": float(scores.std()), "min": float(scores.min()),
                "max": float(scores.max())}


def run_episodes(env_config: EnvConfig, policy: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int,
                 temperature: float, max_steps: int | None = None, record: GifWriter | None = None,
                 progress: GameDone = lambda n, result: None, timed: bool = True) -> Episodes:
    """`policy` (uint8 frame stacks -> logits) plays `episodes` full games (or `max_steps` each).
    With `record`, the newest frame of every observation is added to it; with `timed` off, no
    per-step times are kept (`model_s` and `step_s` stay empty). `progress` hears of each game as it
    ends (its number from 1 and its result), never inside the steps."""
    env = make_env(env_config, 1)
    rng = np.random.default_rng(seed)
    clock = time.perf_counter
    out = Episodes()
    action = np.zeros(1, np.int64)
    try:
        obs, _ = env.reset(seed=seed)
        game_over = False
        for episode in range(episodes):
            if game_over:  # the vector env resets on the step after a terminal; not an interaction
                obs, *_ = env.step(action)
            elif episode > 0:  # cut by max_steps: the game is still on
                obs, _ = env.reset()
            score, length, ended = 0.0, 0, False
            while not ended:
                if record is not None:
                    record.add(obs[0, -1])
                t0 = clock()
                logits = policy(obs)[0]
                t1 = clock()
                action[0] = choose(logits, temperature, rng)
                obs, reward, terminated, truncated, _ = env.step(action)
                t2 = clock()
                if timed:
                    out.model_s.append(t1 - t0)
                    out.step_s.append(t2 - t0)
                score += float(reward[0])
                length += 1
                game_over = bool(terminated[0] or truncated[0])
                ended = game_over or (max_steps is not None and length >= max_steps)
            if record is not None:
                record.add(obs[0, -1])  # how the episode ended
            out.results.append({"score": score, "length": length, "truncated": not game_over or bool(truncated[0])})
            progress(episode + 1, out.results[-1])
            release_free_heap()  # between games, outside the timed steps
            out.rss_after_mb.append(rss_mb())
    finally:
        env.close()
    return out


def play(agent: Agent, episodes: int, seed: int, temperature: float, max_steps: int | None = None,
         record: GifWriter | None = None, progress: PlayerGameDone = lambda who, n, result: None,
         vs_random: bool = False) -> dict[str, Any]:
    """Play `episodes` games with the agent; returns the report. With `vs_random`, a uniformly random
    agent then plays the same games (same env seed, same protocol) and both are human-normalized.
    `progress` hears of each game as it ends, after whose it was."""
    check(agent, episodes, max_steps)
    card = agent.card
    run = run_episodes(card.env_config, agent.logits, episodes, seed, temperature, max_steps, record,
                       lambda n, result: progress("agent", n, result))
    total_s = float(np.sum(run.step_s))
    report = {
        "dlswm_version": dlswm.__version__,
        "model": {"path": str(agent.path), "size_mb": file_mb(agent.path), "game": card.game,
                  "variant": card.variant, "params": card.params, "macs": card.macs,
                  "provenance": card.provenance},
        "settings": {"episodes": episodes, "seed": seed, "temperature": temperature, "max_steps": max_steps,
                     "runtime": agent.runtime, "runtime_version": RUNTIMES[agent.runtime].version(), "device": agent.device, "threads": agent.threads},
        "episodes": run.results,
        "score": run.score(),
        "latency_model": percentiles(run.model_s, scale_to_ms=1e3),
        "latency_step": percentiles(run.step_s, scale_to_ms=1e3),
        "steps": len(run.step_s),
        "steps_per_s": len(run.step_s) / total_s if total_s > 0 else float("nan"),
        "memory": {"peak_rss_mb": peak_rss_mb(), "rss_after_episode_mb": run.rss_after_mb},
        "machine": machine(),
    }
    del run  # its per-step times are in the report now; the random agent's games need none of it
    if vs_random:
        report["random_agent"] = random_baseline(card.env_config, card.num_actions, episodes, seed, max_steps,
                                                 lambda n, result: progress("random agent", n, result))
        report["human_normalized"] = _normalized(card.game, report["score"]["mean"],
                                                 report["random_agent"]["score"]["mean"])
    return report


def random_baseline(env_config: EnvConfig, num_actions: int, episodes: int, seed: int, max_steps: int | None,
                    progress: GameDone = lambda n, result: None) -> dict[str, Any]:
    """Uniformly random actions (equal logits at temperature 1) through the same loop and seeds."""
    uniform = np.zeros((1, num_actions), np.float32)
    run = run_episodes(env_config, lambda obs: uniform, episodes, seed, 1.0, max_steps, progress=progress, timed=False)
    return {"episodes": run.results, "score": run.score()}


def _normalized(game: str, agent_mean: float, random_mean: float) -> dict[str, Any] | None:
    """Both means on the human-normalized scale; `gain` is the agent's lead over the random agent
    measured in this run, in units of (human - random)."""
    if game not in RANDOM_HUMAN:
        return None
    agent, random = human_normalized(game, agent_mean), human_normalized(game, random_mean)
    return {"agent": agent, "random_agent": random, "gain": agent - random,
            "reference": dict(zip(("random", "human"), RANDOM_HUMAN[game]))}
