"""Latency measurement and reporting conventions: warm-up, then percentiles (p50/p90/p99) in ms."""

from __future__ import annotations

import time
from array import array
from typing import Callable

import numpy as np


def percentiles(samples: list[float] | np.ndarray | array, scale_to_ms: float = 1.0) -> dict[str, float]:
    """p50/p90/p99/max of `samples` * `scale_to_ms` (1e3 for seconds), numpy's default (linear)
    percentiles. On one sorted copy, scaled after, and not through `np.percentile`: that imports
    `numpy.ma` on first use, and both it and a scaled copy of a long play's samples would raise
    `dlswm play`'s peak memory (docs/performance.md)."""
    a = np.sort(np.asarray(samples, dtype=np.float64), axis=None)
    if a.size == 0:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    rank = np.array([0.50, 0.90, 0.99]) * (a.size - 1)  # linear: between the two nearest order statistics
    low = np.floor(rank).astype(np.int64)
    high = np.minimum(low + 1, a.size - 1)
    p50, p90, p99 = (a[low] + (a[high] - a[low]) * (rank - low)) * scale_to_ms
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(a[-1] * scale_to_ms)}


def time_calls(call: Callable[[], object], warmup: int, duration_s: float, min_calls: int = 20) -> np.ndarray:
    """Milliseconds of each call after `warmup` untimed calls, for `duration_s` (at least `min_calls`)."""
    for _ in range(warmup):
        call()
    samples = []
    clock = time.perf_counter
    end = clock() + duration_s
    while clock() < end or len(samples) < min_calls:
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return np.asarray(samples) * 1e3
