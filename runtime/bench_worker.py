"""One measurement in a fresh process, so its peak memory is its own: prints one JSON line.

python -m dlswm.runtime.bench_worker RUNTIME MODEL_FILE THREADS BATCH WARMUP DURATION FRAMES.npy
python -m dlswm.runtime.bench_worker torch   RUN_DIR    THREADS BATCH WARMUP DURATION FRAMES.npy
The torch kind is the baseline a user would otherwise run: the same weights in torch eager fp32.
"""

from __future__ import annotations

import json
import sys
from typing import Callable

import numpy as np

from dlswm.runtime.latency import percentiles, time_calls
from dlswm.runtime.machine import peak_rss_mb


def _agent(runtime: str, model: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from dlswm.runtime.session import open_agent

    return open_agent(model, threads=threads, runtime=runtime).logits


def _torch(run_dir: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    from dlswm.train.checkpoint import RunState

    torch.set_num_threads(threads)
    agent = RunState.load(run_dir).system().inference_agent().eval()

    def logits(frames: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return agent(torch.from_numpy(frames))[0].numpy()

    return logits


def main(argv: list[str]) -> None:
    kind, target, threads, batch, warmup, duration, frames_path = argv
    frames = np.load(frames_path, allow_pickle=False)
    logits = _torch(target, int(threads)) if kind == "torch" else _agent(kind, target, int(threads))
    x = frames[: int(batch)]
    samples = time_calls(lambda: logits(x), int(warmup), float(duration))
    result = {"latency": percentiles(samples), "calls": len(samples),
              "inferences_per_s": int(batch) * len(samples) / (samples.sum() / 1e3),
              "peak_rss_mb": peak_rss_mb(), "actions": logits(frames).argmax(1).tolist()}
    print(json.dumps(result))


if __name__ == "__main__":
    from dlswm.errors import UserError

    try:
        main(sys.argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}")
