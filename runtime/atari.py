"""Atari games and their environments, built the same way for training and for play.

Both sides call `make_env` with the run's `EnvConfig`, so an exported agent sees exactly the
frames it was trained on (ale_py does frameskip, max-pool, grayscale, resize and stacking in C++).
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass

import numpy as np

from dlswm.config import EnvConfig
from dlswm.errors import UserError, close_matches_hint


@dataclass(frozen=True)
class Game:
    name: str  # CamelCase, as the literature writes it: "BankHeist"
    rom_id: str  # ale_py's id: "bank_heist"
    action_ids: tuple[int, ...]  # ALE action ids of the action set, in policy-output order
    action_meanings: tuple[str, ...]

    @property
    def num_actions(self) -> int:
        return len(self.action_ids)


def _rom_ids() -> list[str]:
    return list(_ale_py().roms.get_all_rom_ids())


def _camel(rom_id: str) -> str:
    return "".join(part.capitalize() for part in rom_id.split("_"))


def game_names() -> list[str]:
    return [_camel(r) for r in _rom_ids()]


@functools.lru_cache(maxsize=None)
def resolve_game(name: str, full_action_space: bool = False) -> Game:
    """'Pong', 'pong', 'BankHeist' or 'bank_heist' -> Game; unknown names suggest close matches."""
    ale_py = _ale_py()
    rom_id = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip()).lower().replace("-", "_")
    ids = _rom_ids()
    if rom_id not in ids:
        hint = close_matches_hint(name, game_names())
        raise UserError(f"unknown game '{name}'{hint}; `dlswm games` lists all {len(ids)}")
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # before construction: no banner
    ale = ale_py.ALEInterface()
    ale.loadROM(ale_py.roms.get_rom_path(rom_id))
    actions = ale.getLegalActionSet() if full_action_space else ale.getMinimalActionSet()
    return Game(_camel(rom_id), rom_id, tuple(int(a.value) for a in actions), tuple(a.name for a in actions))


def _ale_py():
    """ale_py without gymnasium: its `__init__` imports gymnasium (~12 MB resident) only to offer
    gymnasium envs, and skips them when that import fails. dlswm drives the native vector
    interface itself (`AtariVector`), so play never loads gymnasium; a process that imported it
    first gets ale_py as usual. (Without it, `gymnasium.make("ALE/...")` in the same process needs
    `gymnasium.register_envs` from `ale_py.registration`.)"""
    if "ale_py.roms" in sys.modules:
        return sys.modules["ale_py"]
    block = "gymnasium" not in sys.modules
    if block:
        sys.modules["gymnasium"] = None  # `import gymnasium` raises ImportError while this stands
    try:
        import ale_py
        import ale_py.roms  # noqa: F401 (its submodule; the gymnasium envs imported it before)
    finally:
        if block:
            del sys.modules["gymnasium"]
    # What ale_py's own vector env reads from the package (its module still imports with gymnasium).
    ale_py.ALEVectorInterface = ale_py._ale_py.ALEVectorInterface
    return ale_py


class AtariVector:
    """ale_py's native `ALEVectorInterface` (the engine of its gymnasium `AtariVectorEnv`, with the
    same arguments and autoreset on the next step): `reset(seed=s)` seeds env e with s + e and
    returns (obs, info); `step(actions)` returns (obs, rewards, terminations, truncations, info)."""

    def __init__(self, rom_id: str, num_envs: int, **options):
        ale_py = _ale_py()
        self.num_envs = num_envs
        self.ale = ale_py.ALEVectorInterface(rom_path=ale_py.roms.get_rom_path(rom_id), num_envs=num_envs,
                                             batch_size=0, thread_affinity_offset=-1, autoreset_mode="NextStep",
                                             **options)
        self._paddle = np.ones(num_envs, dtype=np.float32)  # paddle strength: unused by the digital games

    def reset(self, *, seed: int | None = None):
        seeds = np.full(self.num_envs, -1) if seed is None else np.arange(seed, seed + self.num_envs)
        return self.ale.reset(np.arange(self.num_envs), seeds)

    def step(self, actions: np.ndarray):
        self.ale.send(np.asarray(actions, dtype=np.int64), self._paddle)
        return self.ale.recv()

    def close(self) -> None:
        self.ale = None


def make_env(env: EnvConfig, num_envs: int, *, episodic_life: bool = False, num_threads: int = 0) -> AtariVector:
    """ale_py's native vector env with the run's preprocessing; raw (unclipped) rewards.

    Observations are uint8 (num_envs, frame_stack, frame_size, frame_size). `episodic_life` ends an
    episode at a life loss, for training only: evaluation always plays full games.
    """
    game = resolve_game(env.game, env.full_action_space)
    return AtariVector(
        game.rom_id,
        num_envs,
        num_threads=num_threads,
        img_height=env.frame_size,
        img_width=env.frame_size,
        stack_num=env.frame_stack,
        grayscale=env.grayscale,
        frame_skip=env.frameskip,
        maxpool=env.maxpool,
        noop_max=env.noop_max,
        repeat_action_probability=env.repeat_action_probability,
        full_action_space=env.full_action_space,
        max_episode_steps=env.max_episode_steps * env.frameskip,  # ALE counts frames
        episodic_life=episodic_life,
        life_loss_info=False,
        reward_clipping=False,
        use_fire_reset=env.fire_reset,
    )
