"""`dlswm report`: the results table the field uses, from training runs' `metrics.jsonl`.

Per game: the mean and standard deviation over seeds of the final evaluation (the last iteration's
`schedule.eval_episodes` full games, the final policy at the eval temperature, the training env
settings) and of the best iteration's (what `best.pt` holds: early-stopped, so marked), the
human-normalized score, the published reference columns. Over games: mean, median and IQM of the
human-normalized final scores with stratified bootstrap 95% intervals (rliable). Runs that have not
finished every iteration are listed as incomplete and left out of every mean.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dlswm.errors import UserError
from dlswm.runtime.reference_scores import PUBLISHED, RANDOM_HUMAN, human_normalized
from dlswm.atomic import save_figure
from dlswm.run_dir import CONFIG_NAME, RunDir

BOOTSTRAP_REPS = 2000


@dataclasses.dataclass
class RunResult:
    path: Path
    game: str
    seed: int
    preset: str
    iterations: int  # the schedule's
    evals: list[tuple[int, float]]  # (real steps, eval score) per finished iteration

    @property
    def complete(self) -> bool:
        return len(self.evals) >= self.iterations

    @property
    def final(self) -> float:
        return self.evals[-1][1]

    @property
    def best(self) -> float:
        return max(score for _, score in self.evals)


def find_runs(paths: list[Path]) -> list[RunResult]:
    """Every run directory (config.json beside metrics.jsonl or not yet) at or under `paths`."""
    found: dict[Path, RunResult] = {}
    for root in paths:
        if not root.exists():
            raise UserError(f"{root}: no such run or sweep directory")
        configs = [root / CONFIG_NAME] if (root / CONFIG_NAME).is_file() else sorted(root.rglob(CONFIG_NAME))
        for config in configs:
            if ".submitit" in config.parts:
                continue
            run = config.parent.resolve()
            found.setdefault(run, _read_run(run))
    if not found:
        raise UserError(f"no dlswm run under {', '.join(map(str, paths))} (no config.json)")
    return sorted(found.values(), key=lambda r: (r.game, r.seed, str(r.path)))


def _read_run(run: Path) -> RunResult:
    run_dir = RunDir(run)
    try:
        cfg = run_dir.read_config()
        game, seed, preset, iterations = cfg["env"]["game"], int(cfg["seed"]), cfg["preset"], int(cfg["schedule"]["iterations"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{run_dir.config} is damaged") from None
    evals = [(int(m["real_steps"]), float(m["eval/mean_score"])) for m in run_dir.metrics_lines() if "eval/mean_score" in m]
    return RunResult(run, game, seed, preset, iterations, evals)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    return (float(np.mean(values)), float(np.std(values))) if values else (None, None)


def summarize(runs: list[RunResult]) -> dict[str, Any]:
    """The table as data: per-game rows, aggregates with intervals, and the incomplete runs."""
    games = sorted({r.game for r in runs})
    rows = []
    for game in games:
        done = [r for r in runs if r.game == game and r.complete]
        final, final_std = _mean_std([r.final for r in done])
        best, best_std = _mean_std([r.best for r in done])
        random_human = RANDOM_HUMAN.get(game)
        published = {name: scores.get(game) for name, scores in PUBLISHED.items()}
        rows.append({
            "game": game, "runs": len([r for r in runs if r.game == game]), "complete": len(done),
            "seeds": [r.seed for r in done], "final_mean": final, "final_std": final_std,
            "best_mean": best, "best_std": best_std,
            "hns_final": None if final is None else human_normalized(game, final),
            "hns_best": None if best is None else human_normalized(game, best),
            "random": random_human and random_human[0], "human": random_human and random_human[1],
            **{f"{name}": score for name, score in published.items()},
            **{f"wins_vs_{name}": (None if score is None or final is None else bool(final > score))
               for name, score in published.items()},
        })
    return {"presets": sorted({r.preset for r in runs}), "rows": rows, "aggregate": aggregate(runs),
            "incomplete": [{"run": str(r.path), "game": r.game, "seed": r.seed,
                            "iterations": f"{len(r.evals)}/{r.iterations}"} for r in runs if not r.complete],
            "protocol": "final = the last iteration's evaluation: schedule.eval_episodes full games with the final "
                        "policy at policy.eval_temperature, the training env settings; best = the best iteration's "
                        "evaluation (best.pt, early-stopped)"}


def aggregate(runs: list[RunResult]) -> dict[str, Any] | None:
    """Mean, median and IQM of human-normalized final scores over games with reference scores, with
    stratified bootstrap 95% intervals (rliable): a matrix of runs x games, so every game takes the same
    number of complete runs (its lowest seeds)."""
    games = sorted({r.game for r in runs if r.game in RANDOM_HUMAN})
    per_game = {g: sorted((r for r in runs if r.game == g and r.complete), key=lambda r: r.seed) for g in games}
    n = min((len(v) for v in per_game.values()), default=0)
    if n == 0:
        return None
    from rliable import library as rly
    from rliable import metrics

    matrix = np.array([[human_normalized(g, per_game[g][i].final) for g in games] for i in range(n)])  # (runs, games)
    names = ("mean", "median", "iqm")

    def aggregates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_median(x), metrics.aggregate_iqm(x)])

    with warnings.catch_warnings():  # arch, under rliable, deprecates the seeded RandomState rliable passes it
        warnings.simplefilter("ignore", FutureWarning)
        points, intervals = rly.get_interval_estimates({"dlswm": matrix}, aggregates, reps=BOOTSTRAP_REPS,
                                                       random_state=np.random.RandomState(0))
    return {"games": games, "runs_per_game": n, "reps": BOOTSTRAP_REPS,
            **{name: {"value": float(points["dlswm"][i]), "ci95": [float(intervals["dlswm"][0][i]),
                                                                    float(intervals["dlswm"][1][i])]}
               for i, name in enumerate(names)}}


def _fmt(value: float | None, std: float | None = None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}" + ("" if std is None else f" ± {std:,.{digits}f}")


COLUMNS = ["game", "runs", "final", "HNS", "best (early-stopped)", "random", "human", "SimPLe", "DLSWM", "wins vs DLSWM / SimPLe"]


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in summary["rows"]:
        wins = "/".join({True: "yes", False: "no", None: "-"}[r[f"wins_vs_{m}"]] for m in ("DLSWM", "SimPLe"))
        out.append([r["game"], f"{r['complete']}/{r['runs']}", _fmt(r["final_mean"], r["final_std"]), _fmt(r["hns_final"], digits=3),
                    _fmt(r["best_mean"], r["best_std"]), _fmt(r["random"]), _fmt(r["human"]), _fmt(r["SimPLe"]),
                    _fmt(r["DLSWM"]), wins])
    return out


def aggregate_lines(summary: dict[str, Any]) -> list[str]:
    agg = summary["aggregate"]
    if agg is None:
        return ["no game with reference scores has a complete run: no aggregate"]
    return [f"human-normalized {name} over {len(agg['games'])} game(s), {agg['runs_per_game']} run(s) each: "
            f"{agg[name]['value']:.3f} (95% CI {agg[name]['ci95'][0]:.3f} to {agg[name]['ci95'][1]:.3f}, "
            f"stratified bootstrap, {agg['reps']} reps)" for name in ("mean", "median", "iqm")]


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    lines += ["", *[f"- {line}" for line in aggregate_lines(summary)]]
    lines += [f"- incomplete: {i['game']} seed {i['seed']} ({i['iterations']} iterations), not averaged"
              for i in summary["incomplete"]]
    lines += [f"- {summary['protocol']}", ""]
    return "\n".join(lines)


def plot(runs: list[RunResult], out: Path) -> Path:
    """Learning curves: eval score per real step, per game the mean over seeds and their min-max band
    (complete and incomplete runs alike, over the steps every run of the game has reached)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = sorted({r.game for r in runs})
    cols = min(3, len(games))
    rows = math.ceil(len(games) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, game in zip(axes.flat, games):
        curves = [r.evals for r in runs if r.game == game and r.evals]
        if curves:
            n = min(len(c) for c in curves)
            steps = [s for s, _ in curves[0][:n]]
            scores = np.array([[v for _, v in c[:n]] for c in curves])  # (runs, iterations)
            ax.plot(steps, scores.mean(0), marker="o", label=f"mean of {len(curves)} run(s)")
            ax.fill_between(steps, scores.min(0), scores.max(0), alpha=0.25, label="min-max over seeds")
        if game in RANDOM_HUMAN:
            ax.axhline(RANDOM_HUMAN[game][0], color="grey", ls=":", label="random")
        ax.set_title(game, fontsize=10)
        ax.set_xlabel("real interactions")
        ax.set_ylabel("eval score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(games):]:
        ax.set_visible(False)
    return save_figure(fig, out, dpi=90)
