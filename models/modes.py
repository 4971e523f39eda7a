"""train/eval mode as a pair: set for a block, then every submodule's flag back as it was."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def in_mode(module: torch.nn.Module, training: bool) -> Iterator[torch.nn.Module]:
    """`with in_mode(system, False):` runs the block with BatchNorm on its running statistics and
    restores each submodule's own flag afterwards (a phase never leaves a mode behind for the next)."""
    before = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        for m, flag in before:
            m.training = flag
