"""How a run uses its machine: precision, optimizer kernels, compiled graphs, threads. None of it
changes the algorithm.

`Speed.choose` makes each choice once per run from the config and the hardware; the training loop
and `dlswm profile` print it at start (`Speed.describe`), and each is a config value to turn off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from dlswm.config import Config
from dlswm.runtime.machine import cpu_flags
from dlswm.train.buffer import ReplayBuffer


# CPU flags (Linux's names) of bf16 arithmetic in hardware: x86 AVX512-BF16 and AMX, Arm's BF16.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def bf16_native_cpu(onednn_bf16: bool, flags: frozenset[str]) -> bool:
    """oneDNN's own check also says yes on AVX512-BW without bf16 instructions (Ice Lake and
    Cascade Lake Xeons), where it emulates bf16, slower than fp32 (docs/performance.md): so where the
    CPU's flags can be read, they must name bf16 hardware; where they cannot, oneDNN's answer stands."""
    return onednn_bf16 and (not flags or bool(flags & BF16_CPU_FLAGS))


def bf16_native(device: torch.device) -> bool:
    """bf16 at full speed: CUDA GPUs from Ampere on, CPUs with AVX512-BF16, AMX or Arm BF16.
    Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bf16_native_cpu(torch.ops.mkldnn._is_mkldnn_bf16_supported(), cpu_flags())


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 mixed precision: no loss scaling needed, and fp32 where autocast keeps it (losses)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass(frozen=True)
class Speed:
    device: torch.device
    amp: bool  # bf16 autocast of the world model and of imagination (`Config.amp`, where native)
    fused_adam: bool  # Adam's update in one kernel over all tensors (`Config.fused_adam`)
    threads: int  # torch intra-op threads
    compile: bool = False  # torch.compile of the dynamics step and the policy (`Config.compile`)
    buffer_on_device: bool = False  # batches gathered from a mirror of the frames on the device

    @classmethod
    def choose(cls, cfg: Config, device: torch.device, threads: int | None = None) -> Speed:
        """`threads`: torch's intra-op threads, set here; None keeps torch's choice (OMP_NUM_THREADS
        where set, else one per core)."""
        if threads is not None:
            torch.set_num_threads(threads)
        return cls(device, amp=cfg.amp and bf16_native(device), fused_adam=cfg.fused_adam,
                   threads=torch.get_num_threads(),
                   compile=_switch(cfg.compile, device), buffer_on_device=_switch(cfg.buffer_on_device, device))

    def prepare_buffer(self, buffer: ReplayBuffer) -> ReplayBuffer:
        if self.buffer_on_device:
            buffer.keep_on(self.device)
        return buffer

    def prepare(self, system: torch.nn.Module) -> None:
        """Compile, in place, the two modules the loop calls step by step (imagination's horizon, the
        dynamics loss's sequence, PPO's minibatches). `Module.compile` leaves the parameters and
        their state_dict names as they are, so checkpoints do not change."""
        if self.compile:
            # The dynamics step compiles ~12 variants over a run (with and without resets, gradients,
            # autocast; its inputs' layouts), more than torch's default limit of 8 per function,
            # past which it would fall back to eager.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            system.dynamics.compile()
            system.policy.compile()

    def autocast(self) -> torch.autocast:
        return bf16_autocast(self.device, self.amp)

    def adam(self, params: Iterable, **kwargs) -> torch.optim.Adam:
        # The fused kernel reads and writes each parameter's state once per step instead of once per
        # elementwise op: the same update up to float rounding.
        return torch.optim.Adam(params, fused=self.fused_adam or None, **kwargs)

    def describe(self) -> str:
        return (f"device {self.device}, {self.threads} torch thread(s), bf16 autocast {'on' if self.amp else 'off'}, "
                f"fused Adam {'on' if self.fused_adam else 'off'}, torch.compile {'on' if self.compile else 'off'}, "
                f"buffer on device {'on' if self.buffer_on_device else 'off'}")


def _switch(value: str, device: torch.device) -> bool:
    """A config auto / on / off choice: auto means on CUDA only."""
    return value == "on" or (value == "auto" and device.type == "cuda")
