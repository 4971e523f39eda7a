"""What fixed action mixes score in a game: a floor and a map for the policies PPO can reach.

Each mix is a distribution over the game's minimal action set, sampled independently every step
(no memory, no view of the screen), played for full games under the run's protocol
(`dlswm.runtime.atari.make_env`, the `cpu` preset's env settings). A mix of action names with
weights, `UP:3,DOWN:1`, or `uniform`:

    python benchmarks/action_mixes.py CrazyClimber --games 8 --mix uniform --mix UP --mix UP,DOWN
"""

from __future__ import annotations

import argparse

import numpy as np

from dlswm.config import PRESETS
from dlswm.runtime.atari import make_env, resolve_game


def parse_mix(text: str, actions: list[str]) -> np.ndarray:
    """'UP:3,DOWN' -> probabilities over `actions` (3/4 UP, 1/4 DOWN); 'uniform' -> all equal."""
    if text == "uniform":
        return np.full(len(actions), 1 / len(actions))
    weights = np.zeros(len(actions))
    for part in text.split(","):
        name, _, weight = part.partition(":")
        if name not in actions:
            raise SystemExit(f"error: '{name}' is not an action of this game ({', '.join(actions)})")
        weights[actions.index(name)] += float(weight or 1)
    return weights / weights.sum()


def play(game: str, probs: np.ndarray, games: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`games` full games at once, one per env: their scores and lengths in agent steps."""
    cfg = PRESETS["cpu"]().env
    cfg.game = game
    env = make_env(cfg, games)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    scores, steps = np.zeros(games), np.zeros(games, dtype=int)
    done = np.zeros(games, dtype=bool)
    while not done.all():
        _, rewards, terminated, truncated, _ = env.step(rng.choice(len(probs), size=games, p=probs))
        scores += np.where(done, 0, rewards)
        steps += ~done
        done |= terminated | truncated  # each env's first game only: autoreset starts another
    env.close()
    return scores, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("game")
    parser.add_argument("--mix", action="append", required=True, help="'uniform' or NAME[:WEIGHT],...")
    parser.add_argument("--games", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    actions = list(resolve_game(args.game).action_meanings)
    print(f"{args.game}, {args.games} full games per mix, seed {args.seed}; actions {', '.join(actions)}")
    print("| mix | mean score | std | min | max | mean game length (steps) |\n|---|---:|---:|---:|---:|---:|")
    for mix in args.mix:
        scores, steps = play(args.game, parse_mix(mix, actions), args.games, args.seed)
        print(f"| {mix} | {scores.mean():,.1f} | {scores.std():,.1f} | {scores.min():,.0f} | {scores.max():,.0f} "
              f"| {steps.mean():,.0f} |", flush=True)


if __name__ == "__main__":
    main()
