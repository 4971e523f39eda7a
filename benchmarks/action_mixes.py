"""What fixed action mixes score in a game: a floor and a map for the policies PPO can reach.

Each mix is a distribution over the game's minimal action set, sampled independently every step
(no memory, no view of the screen), played for full games under `dlswm play`'s protocol and seeds
(`dlswm.runtime.play.run_episodes`, the `cpu` preset's env settings). A mix of action names with
weights, `UP:3,DOWN:1`, or `uniform`:

    python benchmarks/action_mixes.py CrazyClimber --games 8 --mix uniform --mix UP --mix UP,DOWN
"""

from __future__ import annotations

import argparse

import numpy as np

from dlswm.config import PRESETS
from dlswm.errors import UserError
from dlswm.runtime.atari import resolve_game
from dlswm.runtime.play import Episodes, run_episodes


def parse_mix(text: str, actions: list[str]) -> np.ndarray:
    """'UP:3,DOWN' -> probabilities over `actions` (3/4 UP, 1/4 DOWN); 'uniform' -> all equal."""
    if text == "uniform":
        return np.full(len(actions), 1 / len(actions))
    weights = np.zeros(len(actions))
    for part in text.split(","):
        name, _, weight = part.partition(":")
        try:
            weights[actions.index(name)] += float(weight or 1)
        except ValueError:
            raise SystemExit(f"error: '{part}' is not ACTION[:WEIGHT]; this game's actions: {', '.join(actions)}")
    if not (weights >= 0).all() or weights.sum() <= 0:
        raise SystemExit(f"error: the weights of '{text}' must be >= 0 and not all 0")
    return weights / weights.sum()


def play(game: str, probs: np.ndarray, games: int, seed: int) -> Episodes:
    """`games` full games through `dlswm play`'s loop and seeds (a mix's log-probabilities as the
    policy's logits at temperature 1): `uniform` is `play --vs-random`'s random agent."""
    env = PRESETS["cpu"]().env
    env.game = game
    with np.errstate(divide="ignore"):  # an action left out of the mix: logit -inf, probability 0
        logits = np.log(probs)[None].astype(np.float32)
    return run_episodes(env, lambda obs: logits, games, seed, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("game")
    parser.add_argument("--mix", action="append", required=True, help="'uniform' or NAME[:WEIGHT],...")
    parser.add_argument("--games", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        actions = list(resolve_game(args.game).action_meanings)
    except UserError as e:
        raise SystemExit(f"error: {e}")
    print(f"{args.game}, {args.games} full games per mix, seed {args.seed}; actions {', '.join(actions)}")
    print("| mix | mean score | std | min | max | mean game length (steps) |\n|---|---:|---:|---:|---:|---:|")
    for mix in args.mix:
        run = play(args.game, parse_mix(mix, actions), args.games, args.seed)
        score, length = run.score(), np.mean([r["length"] for r in run.results])
        print(f"| {mix} | {score['mean']:,.1f} | {score['std']:,.1f} | {score['min']:,.0f} | {score['max']:,.0f} "
              f"| {length:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
