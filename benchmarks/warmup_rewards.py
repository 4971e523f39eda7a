"""How many rewards the random warm-up collects, per `schedule.random_hold`.

Iteration 1 of a run fills the buffer with a uniformly random policy; where that policy never
scores, the reward head has nothing to learn. This runs the trainer's own collection (its
`Collector`, `random_policy` and seeds, the `cpu` preset's envs and step count) for each hold and
seed and counts the steps with a reward, without training anything: what iteration 1 of
`dlswm train GAME --preset cpu --seed S --set schedule.random_hold=H` collects.

    python benchmarks/warmup_rewards.py Freeway --holds 1,8,32,64 --seeds 0,1
"""

from __future__ import annotations

import argparse

import numpy as np

from dlswm.config import PRESETS
from dlswm.errors import UserError
from dlswm.runtime.atari import resolve_game
from dlswm.train.real_env import Collector, random_policy
from dlswm.train.trainer import env_seed


def warmup_rewards(game: str, hold: int, seed: int) -> tuple[int, float]:
    """(steps with a nonzero reward, their summed reward) in one `cpu`-preset warm-up collection."""
    cfg = PRESETS["cpu"]()
    cfg.env.game = game
    collector = Collector(cfg.env, cfg.schedule.collect_envs, persistent=True)
    try:
        # The trainer's generator (seeded by the run's seed, nothing drawn before iteration 1) and env seed.
        policy = random_policy(resolve_game(game).num_actions, np.random.default_rng(seed), hold)
        chunk, _, _ = collector.collect(policy, cfg.schedule.initial_steps, env_seed(seed, 1, "collect"), lambda n: None)
    finally:
        collector.close()
    return int(np.count_nonzero(chunk["rewards"])), float(chunk["rewards"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("game")
    parser.add_argument("--holds", default="1,8,32,64", help="comma-separated mean holds (1: per-step)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    args = parser.parse_args()
    try:
        holds = [int(h) for h in args.holds.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        resolve_game(args.game)
    except ValueError:
        raise SystemExit("error: --holds and --seeds take comma-separated integers")
    except UserError as e:
        raise SystemExit(f"error: {e}")
    if min(holds) < 1:
        raise SystemExit("error: a hold is at least 1 step")
    steps = PRESETS["cpu"]().schedule.initial_steps
    print(f"{args.game}: rewarded steps (summed reward) in the `cpu` preset's {steps:,}-step random warm-up\n")
    print("| mean hold | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---:|" + "---:|" * len(seeds))
    for hold in holds:
        cells = [warmup_rewards(args.game, hold, seed) for seed in seeds]
        print(f"| {hold} | " + " | ".join(f"{n} ({total:g})" for n, total in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
