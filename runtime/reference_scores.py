"""Published per-game reference scores for human-normalized results.

Random and human scores of the Atari 100k benchmark for the article's six games, as tabulated in
the project's reference (the same numbers TWM, IRIS and DIAMOND normalize with).
"""

from __future__ import annotations

# game -> (random, human), full-game scores
RANDOM_HUMAN: dict[str, tuple[float, float]] = {
    "BankHeist": (14.2, 753.1),
    "Breakout": (1.7, 30.5),
    "CrazyClimber": (10780.5, 35829.4),
    "Freeway": (0.0, 29.6),
    "Pong": (-20.7, 14.6),
    "Seaquest": (68.4, 42054.7),
}


def human_normalized(game: str, score: float) -> float | None:
    """(score - random) / (human - random), or None for a game without reference scores."""
    if game not in RANDOM_HUMAN:
        return None
    random, human = RANDOM_HUMAN[game]
    return (score - random) / (human - random)
