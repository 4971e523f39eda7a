"""Run directories and checkpoints.

RUN_DIR/
  config.json          the resolved config (written at start)
  checkpoint.pt        the last finished iteration: models, optimizers, RNG states, counters
  best.pt              the same for the iteration with the highest eval score so far
  buffer/chunk_NNN.npz real experience collected in iteration NNN (see buffer.py)
  metrics.jsonl        one line per finished iteration
  tb/                  TensorBoard logs;  media/  per-iteration pictures

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written checkpoint; `--resume` continues after the last finished iteration.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from dlswm.atomic import atomic_write_bytes
from dlswm.config import Config
from dlswm.errors import UserError

FORMAT = "dlswm-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"


def save_checkpoint(state: dict[str, Any], *paths: Path) -> None:
    """`state` holds tensors, plain containers and numbers only (loadable with weights_only=True);
    serialized once, written to each path."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    for path in paths:
        atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint dict, or a one-line UserError for a missing, truncated or foreign file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many types for a damaged file)
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a dlswm checkpoint")
    if state.get("version", 0) > VERSION:
        raise UserError(f"{path} is checkpoint version {state['version']}; this dlswm reads up to {VERSION}")
    return state


def checkpoint_config(state: dict[str, Any]) -> Config:
    return Config.from_dict(state["config"])


def game_of(state: dict[str, Any]) -> dict[str, Any]:
    """{'name', 'rom_id', 'action_ids', 'action_meanings'} of the run's game."""
    return state["game"]


def load_system(state: dict[str, Any]):
    """The trained System of a checkpoint, in eval mode."""
    from dlswm.models import System

    system = System(checkpoint_config(state), len(game_of(state)["action_ids"]))
    system.load_state_dict(state["models"])
    return system.eval()
