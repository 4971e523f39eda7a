"""The run's state: one typed, versioned object saved after every iteration (checkpoint.pt, and
best.pt for the best one; the run directory's format is dlswm/run_dir.py). Written whole or not at
all; it holds tensors, plain containers and numbers only, so it loads with `weights_only=True`.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dlswm
from dlswm.atomic import atomic_write_bytes
from dlswm.config import Config
from dlswm.errors import UserError
from dlswm.run_dir import CHECKPOINT_NAME
from dlswm.runtime.atari import Game

FORMAT = "dlswm-checkpoint"
# 1: the first runs (a dict; wall_s, eval, best and dlswm_version may be missing). 2: RunState, every
# field present. A reader takes any version up to VERSION (`_migrate`); a newer one is refused.
VERSION = 2


@dataclasses.dataclass
class RunState:
    """What a finished iteration leaves to resume, export or benchmark from."""

    config: Config
    game: Game
    iteration: int  # finished iterations
    real_steps: int  # real env interactions so far
    models: dict[str, torch.Tensor]  # System.state_dict()
    optimizers: dict[str, dict[str, Any]]  # "world_model", "policy": optimizer state dicts
    rng: dict[str, Any]  # "numpy": bit-generator state, "torch": CPU RNG state, "cuda": per-device states
    wall_s: float  # training time of the finished iterations
    eval: dict[str, float] | None  # this iteration's {"mean_score", "episodes"}
    best: dict[str, float] | None  # {"iteration", "mean_score"} of the best iteration so far
    dlswm_version: str  # the dlswm that wrote it

    # ---- the loop's side: capture after an iteration, restore on resume --------------------------
    @classmethod
    def capture(cls, config: Config, game: Game, iteration: int, real_steps: int, wall_s: float, system: torch.nn.Module,
                optimizers: dict[str, torch.optim.Optimizer], rng: np.random.Generator, device: torch.device,
                evaluation: dict[str, float], best: dict[str, float] | None) -> RunState:
        return cls(config=config, game=game, iteration=iteration, real_steps=real_steps, models=system.state_dict(),
                   optimizers={k: o.state_dict() for k, o in optimizers.items()},
                   rng={"numpy": rng.bit_generator.state, "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
                   wall_s=wall_s, eval=evaluation, best=best, dlswm_version=dlswm.__version__)

    def restore(self, system: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                rng: np.random.Generator, device: torch.device) -> None:
        """Put networks, optimizer moments and every RNG back as they were when this was captured."""
        system.load_state_dict(self.models)
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(self.optimizers[name])
        rng.bit_generator.state = self.rng["numpy"]
        torch.set_rng_state(self.rng["torch"])
        if device.type == "cuda" and self.rng.get("cuda"):
            torch.cuda.set_rng_state_all(self.rng["cuda"])

    def system(self):
        """The trained System, in eval mode."""
        from dlswm.models import System

        system = System(self.config, self.game.num_actions)
        system.load_state_dict(self.models)
        return system.eval()

    # ---- the file ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["config"] = self.config.to_dict()
        data["game"] = {"name": self.game.name, "rom_id": self.game.rom_id, "action_ids": list(self.game.action_ids),
                        "action_meanings": list(self.game.action_meanings)}
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        data = _migrate(dict(data))
        game = data.pop("game")
        names = {f.name for f in dataclasses.fields(cls)} - {"config", "game"}
        return cls(**{k: data[k] for k in names},
                   config=Config.from_dict(data["config"]),
                   game=Game(game["name"], game["rom_id"], tuple(game["action_ids"]), tuple(game["action_meanings"])))

    def save(self, *paths: Path) -> None:
        """Serialized once, written whole to each path."""
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)
        for path in paths:
            atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> RunState:
        """The state in `path` (a file, or a run directory's checkpoint), or a one-line UserError for a
        missing, truncated, foreign or newer file."""
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        if not path.is_file():
            raise UserError(f"no checkpoint at {path}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (torch raises many types for a damaged file)
            raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path} is not a dlswm checkpoint")
        if not isinstance(data.get("version"), int) or data["version"] > VERSION:
            raise UserError(f"{path} is checkpoint version {data.get('version')}; this dlswm reads up to {VERSION}")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{path} is a damaged dlswm checkpoint ({type(e).__name__}: {e})") from None


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older file's fields to this version's (config keys renamed since are mapped by
    `Config.from_dict`)."""
    if data["version"] < 2:
        data.setdefault("wall_s", 0.0)
        data.setdefault("eval", None)
        data.setdefault("best", None)
        data.setdefault("dlswm_version", "0.1.0")
    return data
