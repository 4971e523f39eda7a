"""Atari games and their environments, built the same way for training and for play.

Both sides call `make_env` with the run's `EnvConfig`, so an exported agent sees exactly the
frames it was trained on (ale_py does frameskip, max-pool, grayscale, resize and stacking in C++).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

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
    from ale_py import roms

    return list(roms.get_all_rom_ids())


def _camel(rom_id: str) -> str:
    return "".join(part.capitalize() for part in rom_id.split("_"))


def game_names() -> list[str]:
    return [_camel(r) for r in _rom_ids()]


@functools.lru_cache(maxsize=None)
def resolve_game(name: str, full_action_space: bool = False) -> Game:
    """'Pong', 'pong', 'BankHeist' or 'bank_heist' -> Game; unknown names suggest close matches."""
    import ale_py

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


def make_env(env: EnvConfig, num_envs: int, *, episodic_life: bool = False, num_threads: int = 0):
    """ale_py's native vector env with the run's preprocessing; raw (unclipped) rewards.

    Observations are uint8 (num_envs, frame_stack, frame_size, frame_size). `episodic_life` ends an
    episode at a life loss, for training only: evaluation always plays full games.
    """
    from ale_py.vector_env import AtariVectorEnv

    game = resolve_game(env.game, env.full_action_space)
    return AtariVectorEnv(
        game.rom_id,
        num_envs,
        num_threads=num_threads,
        img_height=env.frame_size,
        img_width=env.frame_size,
        stack_num=env.frame_stack,
        grayscale=env.grayscale,
        frameskip=env.frameskip,
        maxpool=env.maxpool,
        noop_max=env.noop_max,
        repeat_action_probability=env.repeat_action_probability,
        full_action_space=env.full_action_space,
        max_num_frames_per_episode=env.max_episode_steps * env.frameskip,
        episodic_life=episodic_life,
        reward_clipping=False,
        use_fire_reset=env.fire_reset,
    )
