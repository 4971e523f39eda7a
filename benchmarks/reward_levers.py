"""World-model levers side by side from one checkpoint: does the reward head learn to see rewards?

Loads a run's last checkpoint as `--resume` would, applies `--set dynamics.*` / `vqvae.*` overrides,
collects one held-out chunk the way the next iteration would (the run's persistent envs, its policy
at the collection temperature; never added to the buffer), then trains the world model N batches
on the run's buffer and scores it on the held-out chunk before, along and after: reward lift (the
head's non-zero mass on rewarded over unrewarded steps; 1 = blind), precision / recall, reward and
next-code cross-entropy. Same start, data and seed for every variant, so two calls compare like
with like. A proxy, not a score: the real eval of a full run decides.

    python benchmarks/reward_levers.py RUN --batches 400 --set dynamics.reward_trunk_grad=1.0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dlswm.run_dir import RunDir
from dlswm.train.real_env import torch_policy
from dlswm.train.trainer import Trainer, env_seed

KEYS = ("new_data/reward_lift", "new_data/reward_precision", "new_data/reward_recall", "new_data/reward_ce",
        "new_data/latent_acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--batches", type=int, default=400, help="world-model batches to train")
    parser.add_argument("--scores", type=int, default=4, help="held-out scores along the batches")
    parser.add_argument("--score-batches", type=int, default=64, help="held-out windows per score, in batches")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dynamics.* / vqvae.* overrides")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if any(not o.startswith(("dynamics.", "vqvae.")) for o in args.overrides):
        parser.error("only dynamics.* and vqvae.* settings change what this measures")
    trainer, state = Trainer.from_checkpoint(RunDir(args.run), args.overrides, args.threads)
    cfg, it = trainer.cfg, state.iteration + 1
    try:
        policy = torch_policy(trainer.system, trainer.device, cfg.policy.collect_temperature, seed=cfg.seed + it)
        held_out, _, stats = trainer.collector.collect(policy, cfg.schedule.steps_per_iteration,
                                                       env_seed(cfg.seed, it, "collect"), lambda n: None)
    finally:
        trainer.close()
    wm = trainer.world_model
    print(f"{args.run} iteration {state.iteration}, {' '.join(args.overrides) or 'as trained'}; held out: "
          f"{int(stats['collect/steps'])} steps, reward rate {stats['collect/reward_rate']:.4f}")
    print("batches | seconds | " + " | ".join(k.split("/")[1] for k in KEYS))
    done, seconds = 0, 0.0
    marks = [round(args.batches * (i + 1) / args.scores) for i in range(args.scores)]
    for mark in [0, *marks]:
        if mark > done:
            started = time.perf_counter()
            wm.train(trainer.buffer, 0, trainer.rng, lambda n: None, n_batches=mark - done)
            seconds += time.perf_counter() - started
            done = mark
        scores = wm.score(held_out, trainer.rng, batches=args.score_batches)
        print(f"{done} | {seconds:.0f} | " + " | ".join(f"{scores.get(k, float('nan')):.4f}" for k in KEYS))


if __name__ == "__main__":
    main()
