"""What a measurement ran on: CPU model and the instruction-set flags that decide int8 speed, and
the process's memory. Works on Linux (x86, Raspberry Pi, Jetson) and falls back to `platform`."""

from __future__ import annotations

import functools
import os
import platform
import resource
import socket
import sys
from pathlib import Path
from typing import Callable

import onnxruntime as ort

# Flags that change which int8/fp32 kernels onnxruntime can use.
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                "asimd", "asimddp", "i8mm", "sve")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in info:
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _flags(info: dict[str, str]) -> frozenset[str]:
    return frozenset((info.get("flags") or info.get("Features") or "").split())  # x86 / Arm Linux


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where the file is absent (macOS, Windows)."""
    return _flags(_cpuinfo(path))


def machine() -> dict[str, object]:
    info = _cpuinfo()
    flags = _flags(info)
    model = info.get("model name") or info.get("Model") or platform.processor() or platform.machine()
    return {"hostname": socket.gethostname(), "cpu": model, "arch": platform.machine(),
            "cores": os.cpu_count(), "flags": [f for f in KERNEL_FLAGS if f in flags],
            "os": platform.platform(terse=True), "python": platform.python_version(),
            "onnxruntime": ort.__version__}


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 int8 dot products that sum in int32


def int8_saturates(quantization: dict[str, object], runtime: str, info: dict[str, object] | None = None) -> bool:
    """Whether onnxruntime on this CPU sums a quantized file's products with saturation: x86
    without VNNI multiplies uint8 activations by int8 weights into int16 pairs (255 x 127 x 2 >
    32,767), so full-range int8 weights compute something off their graph; weights within +-64
    (`reduce_range`) do not (docs/int8.md). ARM's dot products and VNNI sum in int32."""
    full_range = quantization.get("weight_type") == "QInt8" and not quantization.get("reduce_range", False)
    if runtime != "onnxruntime" or not full_range:
        return False  # without reading the CPU
    info = info or machine()
    flags = set(info["flags"])  # type: ignore[arg-type]
    return str(info["arch"]).lower() in ("x86_64", "amd64") and not flags & set(VNNI_FLAGS)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, looked up once; None where the C library has none (musl, macOS)."""
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc `malloc_trim`; elsewhere nothing). Called
    at points outside the timed loop (after a session is built, after each game): the model
    loader's freed buffers otherwise stay resident for the whole play (docs/performance.md)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (Linux) in MB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process image. Linux: VmHWM, which exec resets (ru_maxrss
    keeps the parent's peak across fork + exec). Elsewhere ru_maxrss: bytes on macOS."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def rss_mb() -> float:
    """Resident memory now; psutil (~3 MB of imports) only where /proc is missing."""
    rss = _proc_status_mb("VmRSS")
    if rss is not None:
        return rss
    import psutil

    return psutil.Process().memory_info().rss / (1024 * 1024)
