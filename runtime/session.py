"""Opening a dlswm agent: a validated file -> a call on its runtime and its model card.

`runtimes.py` says which runtime opens which file; this checks the card against the graph and the
game before any work, whatever the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlswm.errors import UserError
from dlswm.runtime.machine import release_free_heap
from dlswm.runtime.model_card import ModelCard
from dlswm.runtime.runtimes import Outputs, runtime_for


@dataclass
class Agent:
    """A loaded agent: logits, value and codes from uint8 frame stacks."""

    run: Outputs
    card: ModelCard
    path: Path
    threads: int
    runtime: str  # RUNTIMES key
    device: str  # what runs it, in the runtime's words

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """frames uint8 (B, S, H, W) -> logits (B, A)."""
        return self.run(frames)[0]

    def outputs(self, frames: np.ndarray) -> list[np.ndarray]:
        """logits (B, A), value (B,), codes (B, n, n): `contract.OUTPUT_NAMES`, in that order."""
        return self.run(frames)


def open_agent(path: str | Path, device: str = "cpu", threads: int = 1, runtime: str | None = None) -> Agent:
    """One-line UserErrors for every way a path can fail to be a usable dlswm agent."""
    path = Path(path)
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass an agent file exported by `dlswm export`")
    chosen = runtime_for(path, runtime)
    loaded = chosen.open(path, threads, device)
    release_free_heap()  # what loading freed (the parsed graph, optimizer scratch) leaves the RSS
    card = ModelCard.from_metadata(loaded.metadata, str(path))
    card.check(str(path), loaded.input_shape, loaded.logits_width)
    return Agent(loaded.outputs, card, path, threads, chosen.name, loaded.device)
