"""Learning curves of one or more runs from their `metrics.jsonl`: the real score, and what shows a
policy exploiting its world model (imagined vs real reward, entropies, the model on new data)."""

from __future__ import annotations

import json
from pathlib import Path

from dlswm.errors import UserError

# One panel each: (title, [(metric key, label suffix)]); a key a run lacks is skipped.
PANELS = [
    ("real eval score (mean of full games)", [("eval/mean_score", "")]),
    ("reward sign per step", [("imagined/sign_return_per_step", "imagined"),
                              ("collect/sign_return_per_step", "real (collection)")]),
    ("entropy (nats)", [("ppo/entropy", "policy, imagined"), ("eval/action_entropy", "actions played, eval")]),
    ("world model on the new real data", [("new_data/latent_acc", "next-code acc"),
                                          ("new_data/reward_precision", "reward precision"),
                                          ("new_data/reward_recall", "reward recall")]),
]


def parse_metrics_line(line: str) -> dict | None:
    """One line of metrics.jsonl, or None for a line torn by a kill mid-append."""
    try:
        return json.loads(line)
    except ValueError:
        return None


def metrics_lines(run: Path) -> list[dict]:
    """A run's finished iterations from its metrics.jsonl; [] before the first (or with no file)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [m for line in path.read_text().splitlines() if (m := parse_metrics_line(line)) is not None]


def read_metrics(run: Path) -> list[dict]:
    if not (run / "metrics.jsonl").is_file():
        raise UserError(f"{run} is not a dlswm run (no metrics.jsonl)")
    lines = metrics_lines(run)
    path = run / "metrics.jsonl"
    if not lines:
        raise UserError(f"{path} has no finished iteration yet")
    return lines


def plot_runs(runs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    """One PNG: a panel per row of PANELS, a line per run (and per key), x = real interactions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [read_metrics(r) for r in runs]  # every run checked before anything is drawn
    labels = labels or [r.name for r in runs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys) in zip(axes, PANELS):
        for r, (label, lines) in enumerate(zip(labels, data)):  # a color per run, a line style per key
            for (key, suffix), style in zip(keys, ("-", "--", ":")):
                points = [(m["real_steps"], m[key]) for m in lines if key in m]
                if points:
                    x, y = zip(*points)
                    ax.plot(x, y, style, marker="o", color=colors[r % len(colors)], label=f"{label} {suffix}".strip())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("real interactions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_png(fig, out)


def save_png(fig, out: Path) -> Path:
    """Write a matplotlib figure whole or not at all, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=90)
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out
