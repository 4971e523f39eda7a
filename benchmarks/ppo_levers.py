"""PPO levers side by side from one checkpoint, in minutes instead of a two-hour run.

Loads a run's last checkpoint (networks, optimizers, buffer, random streams) as `--resume` would,
applies `--set` overrides to the PPO section, and runs N policy updates from the iteration's
anchor: the imagined return and reward rate, PPO entropy and the KL from the anchor, as means over
thirds of the updates. Same start and seed for every variant, so two calls compare like with like.
A proxy, not a score: the real eval of a full run decides.

    python benchmarks/ppo_levers.py RUN --updates 60 --set ppo.anchor_kl_coef=0.1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from dlswm.run_dir import RunDir
from dlswm.train.trainer import Trainer

KEYS = ("imagined/return", "imagined/sign_return_per_step", "ppo/entropy", "ppo/anchor_kl", "ppo/clip_frac")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="ppo.* overrides")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if any(not o.startswith("ppo.") for o in args.overrides):
        parser.error("only ppo.* settings change what this measures")
    trainer, state = Trainer.from_checkpoint(RunDir(args.run), args.overrides, args.threads)
    trainer.close()
    cfg = trainer.cfg
    for group in trainer.policy.optimizer.param_groups:  # the checkpoint's optimizer state carries its lr
        group["lr"] = cfg.ppo.lr
    trainer.policy.set_anchor()
    started, per_update = time.perf_counter(), []
    for _ in range(args.updates):
        per_update.append(trainer.policy.update(trainer.buffer, trainer.rng))
    seconds = time.perf_counter() - started
    thirds = np.array_split(np.arange(args.updates), 3)
    print(f"{args.run} iteration {state.iteration}, {' '.join(args.overrides) or 'as trained'}, "
          f"{args.updates} updates in {seconds:.0f} s; means over updates {' / '.join(f'{t[0] + 1}-{t[-1] + 1}' for t in thirds)}:")
    for key in KEYS:
        if key in per_update[0]:
            print(f"  {key}: " + " / ".join(f"{np.mean([per_update[i][key] for i in t]):.4f}" for t in thirds))


if __name__ == "__main__":
    main()
