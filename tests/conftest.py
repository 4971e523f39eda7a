"""Shared fixtures: a real tiny training run and its exports, a chunk of real Pong."""

import os
from pathlib import Path

# One torch thread per test process (subprocesses inherit it): on 2 shared cores, torch's OpenMP
# threads spin against anything else running and a batch-1 forward pass slows down 50-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dlswm.config import Config, resolve  # noqa: E402
from dlswm.models import System  # noqa: E402
from dlswm.runtime.atari import make_env  # noqa: E402
from dlswm.train.buffer import ReplayBuffer, StreamRecorder  # noqa: E402


@pytest.fixture(params=["tiny", "paper"])
def cfg(request) -> Config:
    return resolve(request.param, "Pong")


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """A real `tiny` training run on Pong (2 iterations, ~15 s): checkpoint, buffer, metrics, media."""
    from dlswm.train.loop import train

    return train(resolve("tiny", "Pong"), tmp_path_factory.mktemp("runs") / "pong-tiny", device_name="cpu")


@pytest.fixture(scope="session")
def tiny_export(tiny_run_dir):
    """fp32 and int8 exports of the tiny run: {variant: path}, plus the report."""
    from dlswm.export.pipeline import export_run
    from dlswm.export.variants import parse_variants

    report = export_run(tiny_run_dir, None, parse_variants("fp32,int8"), 256, force=False, min_overlap=None,
                        allow_low_agreement=False, progress=lambda msg: None)
    return {row["variant"]: Path(row["path"]) for row in report["variants"]}, report


@pytest.fixture(scope="module")
def real_chunk():
    """A chunk of real Pong with random actions, and the stacked observations the env returned."""
    cfg = resolve("tiny")
    env = make_env(cfg.env, 2)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    recorder, seen = StreamRecorder(2), [obs.copy()]
    recorder.start(obs)
    for _ in range(300):
        actions = rng.integers(0, 6, 2)
        obs, rewards, terminated, truncated, _ = env.step(actions)
        recorder.step(actions, obs, rewards, terminated | truncated)
        seen.append(obs.copy())
    env.close()
    # Stored frames are copies: a view would keep every step's whole (N, S, H, W) batch alive.
    assert all(f.base is None for s in recorder.streams for f in s["frames"])
    return cfg, recorder.chunk(), np.stack(seen)  # seen: (T + 1, 2, S, H, W)


@pytest.fixture
def fresh(real_chunk):
    """A seeded untrained tiny system and a buffer holding the real chunk."""
    cfg, chunk, _ = real_chunk
    torch.manual_seed(0)
    buffer = ReplayBuffer(cfg.env.frame_stack)
    buffer.add_chunk(chunk)
    return cfg, System(cfg, 6).train(), buffer
