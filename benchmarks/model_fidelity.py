"""Does the world model know where the real game pays? Imagined against real returns, out of sample.

Loads a checkpoint and a buffer that holds real play the checkpoint's world model never trained on
(e.g. the next iteration's collection of a run continued from it: `--data RUN2 --chunks N` loads
RUN2's first N chunks and draws from the N-th). From `--states` real start windows whose next
`--horizon` steps lie in one stream, it compares the reward signs the game paid after each start
(one real sample) with the mean the model imagines from the same window (`--repeats` rollouts, the
policy at `--temperature`: the collection's, so both follow the same policy). Printed: their
correlation and means, the imagined mean per bin of real returns, and for the "stuck" starts (no
real reward and no life lost in the horizon) what the model imagines when the first `--hold` steps
hold one action before the policy plays on: whether the model sees a way out.

    python benchmarks/model_fidelity.py RUN/checkpoint.pt --data RUN2 --chunks 9 --temperature 1.5 --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlswm.models import in_mode
from dlswm.train.buffer import ReplayBuffer
from dlswm.train.checkpoint import RunState
from dlswm.train.imagine import imagine


class Steered(nn.Module):
    """The policy at a temperature; while `hold` is set, its first `hold_steps` calls pick that action."""

    def __init__(self, policy: nn.Module, temperature: float, hold_steps: int):
        super().__init__()
        self.policy, self.temperature, self.hold_steps = policy, temperature, hold_steps
        self.hold: int | None = None
        self.calls = 0

    def forward(self, z: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value = self.policy(z, amp)
        logits = logits / self.temperature
        if self.hold is not None and self.calls < self.hold_steps:
            logits = torch.full_like(logits, -1e4).index_fill_(1, torch.tensor([self.hold]), 0.0)
        self.calls += 1
        return logits, value


def imagined_returns(system, context: dict[str, torch.Tensor], horizon: int, repeats: int, batch: int = 64) -> np.ndarray:
    """Mean imagined reward-sign sum over `repeats` rollouts from each window of `context` (N,)."""
    n = len(context["actions"])
    out = np.zeros(n)
    for b in range(0, n, batch):
        part = {k: v[b:b + batch].repeat_interleave(repeats, 0) for k, v in context.items()}
        system.policy.calls = 0
        with in_mode(system, False):
            roll = imagine(system, part, horizon, amp=True)
        out[b:b + batch] = roll["rewards"].sum(0).view(-1, repeats).mean(1).numpy()  # (T, n*R) -> (n,)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="a run directory whose buffer holds the real play")
    parser.add_argument("--chunks", type=int, required=True, help="load this many chunks; starts come from the last")
    parser.add_argument("--states", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--hold", type=int, default=10, help="steps each action is held from the stuck starts (0: no such table)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    state = RunState.load(args.checkpoint)
    cfg, system = state.config, state.system()
    system.policy = Steered(system.policy, args.temperature, args.hold)
    buffer = ReplayBuffer.load(args.data / "buffer", args.chunks, cfg.env.frame_stack)
    C, H = cfg.dynamics.teacher_forcing_steps, args.horizon
    starts = buffer.sequence_starts(C + H)
    starts = starts[starts >= buffer.newest_chunk_start]  # the newest chunk only
    rng = np.random.default_rng(args.seed)
    starts = np.sort(rng.choice(starts, min(args.states, len(starts)), replace=False))
    seq = buffer.sequence_tensors(starts, C + H, torch.device("cpu"))
    # The window's last observation is where imagination starts; its action's reward is entry C - 1's.
    real = np.sign(seq["rewards"][:, C - 1:C - 1 + H].numpy()).sum(1)  # (N,)
    lost = seq["life_lost"][:, C - 1:C - 1 + H].numpy().sum(1)  # (N,)
    context = {k: seq[k][:, :C] for k in ("obs", "actions", "first")}
    torch.manual_seed(args.seed)
    imagined = imagined_returns(system, context, H, args.repeats)
    print(f"{args.checkpoint} (iteration {state.iteration}) on {args.data} chunk {args.chunks}: {len(starts)} starts "
          f"x {args.repeats} rollouts, horizon {H}, temperature {args.temperature}")
    print(f"reward signs per start: real {real.mean():.2f}, imagined {imagined.mean():.2f}; "
          f"correlation {np.corrcoef(real, imagined)[0, 1]:.3f}")
    print("real return | starts | imagined | starts, no life lost | imagined")
    for lo, hi in ((0, 0), (1, 2), (3, 5), (6, H)):
        m, m_alive = (real >= lo) & (real <= hi), (real >= lo) & (real <= hi) & (lost == 0)
        print(f"{lo}-{hi} | {m.sum()} | {imagined[m].mean() if m.any() else float('nan'):.2f} | "
              f"{m_alive.sum()} | {imagined[m_alive].mean() if m_alive.any() else float('nan'):.2f}")
    stuck = (real == 0) & (lost == 0)
    if not stuck.any() or args.hold == 0:
        return
    stuck_context = {k: v[torch.from_numpy(stuck)] for k, v in context.items()}
    names = state.game.action_meanings
    print(f"stuck starts ({stuck.sum()}): imagined return when the first {args.hold} steps hold one action")
    print("held action | imagined")
    for a in [None, *range(len(names))]:
        system.policy.hold = a
        torch.manual_seed(args.seed)
        print(f"{'none (the policy)' if a is None else names[a]} | "
              f"{imagined_returns(system, stuck_context, H, args.repeats).mean():.2f}")


if __name__ == "__main__":
    main()
