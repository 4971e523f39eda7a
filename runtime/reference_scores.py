"""Published per-game reference scores for human-normalized results, and the game suites.

Random and human scores of the 26 Atari 100k games: the table TWM, IRIS, DIAMOND and rliable
normalize with (DQN's human and random). SimPLe and DLSWM (the article) for the article's six games,
from the project's reference (`shared/reference/dlswm-reference.md`), mean over 5 runs at 100k steps.
"""

from __future__ import annotations

# game -> (random, human), full-game scores
RANDOM_HUMAN: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "UpNDown": (533.4, 11693.2),
}

# Published methods at 100k interactions on the article's six games: method -> game -> mean score.
PUBLISHED: dict[str, dict[str, float]] = {
    "SimPLe": {"BankHeist": 34.2, "Breakout": 16.4, "CrazyClimber": 62583.6, "Freeway": 16.7, "Pong": 12.8,
               "Seaquest": 683.3},
    "DLSWM": {"BankHeist": 121.6, "Breakout": 11.6, "CrazyClimber": 59609.4, "Freeway": 29.0, "Pong": 20.2,
              "Seaquest": 635.0},
}

# Named suites for `dlswm sweep --games`.
SUITES: dict[str, tuple[str, ...]] = {
    "atari100k": tuple(RANDOM_HUMAN),
    "article": ("BankHeist", "Breakout", "CrazyClimber", "Freeway", "Pong", "Seaquest"),
}


def human_normalized(game: str, score: float) -> float | None:
    """(score - random) / (human - random), or None for a game without reference scores."""
    if game not in RANDOM_HUMAN:
        return None
    random, human = RANDOM_HUMAN[game]
    return (score - random) / (human - random)
