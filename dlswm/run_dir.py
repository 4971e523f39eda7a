"""A training run's directory, its format in one place: what each file is called, and how the config,
the lock and the metrics lines are written and read. Everyone who reads or writes a run comes here
(the loop, resume, export, sweep, report, curves). Torch-free: `dlswm report` reads runs without it.

RUN_DIR/
  config.json          the resolved config (written at start)
  .lock                held by the live `dlswm train` (an OS lock, dropped on any exit)
  checkpoint.pt        the last finished iteration's RunState (train/checkpoint.py)
  best.pt              the same for the iteration with the highest eval score so far
  buffer/chunk_NNN.npz real experience collected in iteration NNN (train/buffer.py)
  metrics.jsonl        one line per finished iteration
  tb/                  TensorBoard logs;  media/  per-iteration pictures

Every file is written whole or not at all (dlswm/atomic.py), so an interrupted run never leaves a
half-written one; `--resume` continues after the last finished iteration.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlswm.atomic import atomic_write_bytes
from dlswm.errors import UserError

CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
METRICS_NAME = "metrics.jsonl"


def parse_metrics_line(line: str) -> dict | None:
    """One line of metrics.jsonl, or None for a line torn by a kill mid-append."""
    try:
        return json.loads(line)
    except ValueError:
        return None


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ---- names -------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def best(self) -> Path:
        return self.path / BEST_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def buffer(self) -> Path:
        return self.path / "buffer"

    @property
    def media(self) -> Path:
        return self.path / "media"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    def chunk(self, iteration: int) -> Path:
        return chunk_path(self.buffer, iteration)

    def chunks(self) -> list[Path]:
        return sorted(self.buffer.glob("chunk_*.npz"))

    # ---- the config --------------------------------------------------------------------------------
    def is_run(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> dict[str, Any]:
        """config.json as a dict; a damaged one is a one-line UserError."""
        try:
            data = json.loads(self.config.read_text())
        except ValueError as e:  # JSONDecodeError is a ValueError
            raise UserError(f"{self.config} is damaged ({type(e).__name__})") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.config} is damaged (not a JSON object)")
        return data

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_bytes(self.config, json.dumps(config, indent=2).encode())

    # ---- metrics.jsonl -----------------------------------------------------------------------------
    def metrics_lines(self) -> list[dict]:
        """The finished iterations' lines; [] before the first (or with no file)."""
        if not self.metrics.is_file():
            return []
        return [m for line in self.metrics.read_text().splitlines() if (m := parse_metrics_line(line)) is not None]

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def truncate_metrics(self, iterations: int) -> None:
        """Drop the lines of an iteration that never reached its checkpoint."""
        if self.metrics.exists():
            kept = [m for m in self.metrics_lines() if m["iteration"] <= iterations]
            atomic_write_bytes(self.metrics, "".join(json.dumps(m) + "\n" for m in kept).encode())

    # ---- the lock ----------------------------------------------------------------------------------
    def lock(self) -> Any:
        """An exclusive lock on `.lock` held while this process lives (the OS drops it on any exit,
        kill -9 included), so a second `train` on a live run directory is refused instead of both
        writing. Keep the returned file open for the run's life."""
        f = open(self.path / ".lock", "a+")
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks, run unguarded
            return f
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(f"{self.path} is in use by a running dlswm train ({holder}); wait for it or stop it") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}")
        f.flush()
        return f


def chunk_path(buffer_dir: Path, iteration: int) -> Path:
    """Iteration `iteration`'s chunk of real experience in a run's buffer folder."""
    return Path(buffer_dir) / f"chunk_{iteration:03d}.npz"
