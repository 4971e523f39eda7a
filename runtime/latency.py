"""Latency measurement and reporting conventions: warm-up, then percentiles (p50/p90/p99) in ms."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def percentiles(samples_ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(a.max())}


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
