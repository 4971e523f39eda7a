"""Learning curves of one or more runs from their `metrics.jsonl`: the real score, and what shows a
policy exploiting its world model (imagined vs real reward, entropies, the model on new data)."""

from __future__ import annotations

from pathlib import Path

from dlswm.atomic import save_figure
from dlswm.errors import UserError
from dlswm.run_dir import RunDir

# One panel each: (title, [(metric key, label suffix)]); a key a run lacks is skipped.
PANELS = [
    ("real eval score (mean of full games)", [("eval/mean_score", "")]),
    ("reward sign per step", [("imagined/sign_return_per_step", "imagined"),
                              ("collect/sign_return_per_step", "real (collection)")]),
    ("entropy (nats)", [("ppo/entropy", "policy, imagined"), ("eval/action_entropy", "actions played, eval")]),
    ("world model on the new real data", [("new_data/latent_acc", "next-code acc"),
                                          ("new_data/reward_precision", "reward precision"),
                                          ("new_data/reward_recall", "reward recall"),
                                          ("new_data/reward_lift", "reward lift (1: blind)")]),
]


def read_metrics(run: Path) -> list[dict]:
    """A run's metrics lines for a report of it: a one-line error without any."""
    run_dir = RunDir(run)
    if not run_dir.metrics.is_file():
        raise UserError(f"{run} is not a dlswm run (no {run_dir.metrics.name})")
    lines = run_dir.metrics_lines()
    if not lines:
        raise UserError(f"{run_dir.metrics} has no finished iteration yet")
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
            for (key, suffix), style in zip(keys, ("-", "--", ":", "-.")):
                points = [(m["real_steps"], m[key]) for m in lines if key in m]
                if points:
                    x, y = zip(*points)
                    ax.plot(x, y, style, marker="o", color=colors[r % len(colors)], label=f"{label} {suffix}".strip())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("real interactions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out, dpi=90)


# The per-iteration table: (column, metric key, format); "next:" takes the key from the next
# iteration's line (the real collection that follows the policy an iteration trained).
TABLE = [
    ("real steps", "real_steps", "{:,.0f}"),
    ("eval", "eval/mean_score", "{:,.1f}"),
    ("imagined / real reward sign per step", ("imagined/sign_return_per_step", "next:collect/sign_return_per_step"),
     "{:.4f}"),
    ("model on new data: next-code acc", "new_data/latent_acc", "{:.3f}"),
    ("reward precision / recall", ("new_data/reward_precision", "new_data/reward_recall"), "{:.2f}"),
    ("reward lift", "new_data/reward_lift", "{:.2f}"),
    ("imagined / real life losses per step", ("imagined/life_loss_rate", "next:collect/life_loss_rate"), "{:.4f}"),
    ("PPO entropy", "ppo/entropy", "{:.3f}"),
    ("anchor KL", "ppo/anchor_kl", "{:.4f}"),
    ("PPO on real steps: approx KL / clip frac", ("real_ppo/approx_kl", "real_ppo/clip_frac"), "{:.4f}"),
    ("eval action entropy", "eval/action_entropy", "{:.3f}"),
    ("wall min", "time/iteration_s", "{:.1f}"),
    ("min: collect / world model / policy / eval", ("time/collect_s", "time/world_model_s", "time/policy_s",
                                                   "time/evaluate_s"), "{:.1f}"),
]


def _cell(lines: list[dict], i: int, key: str, fmt: str) -> str | None:
    line = lines[i + 1] if key.startswith("next:") and i + 1 < len(lines) else (None if key.startswith("next:") else lines[i])
    value = None if line is None else line.get(key.removeprefix("next:"))
    if value is None:
        return None
    return fmt.format(value / 60 if key.startswith("time/") else value)  # seconds logged, minutes shown


def iteration_table(runs: list[Path], labels: list[str] | None = None) -> str:
    """The runs' iterations side by side as a markdown table: a row per (iteration, run), a column per
    row of TABLE that some run logs ("-" where a run lacks it)."""
    data = [read_metrics(r) for r in runs]
    labels = labels or [r.name for r in runs]
    rows, used = [], [False] * len(TABLE)
    for it in range(max(len(lines) for lines in data)):
        for label, lines in zip(labels, data):
            if it >= len(lines):
                continue
            cells = []
            for c, (_, keys, fmt) in enumerate(TABLE):
                parts = [_cell(lines, it, key, fmt) for key in ((keys,) if isinstance(keys, str) else keys)]
                used[c] |= any(p is not None for p in parts)
                cells.append(" / ".join(p or "-" for p in parts))
            rows.append([str(lines[it]["iteration"]), label, *cells])
    columns = [name for (name, _, _), u in zip(TABLE, used) if u]
    keep = [True, True, *used]
    lines_out = ["| iteration | run | " + " | ".join(columns) + " |", "|---:|---|" + "---:|" * len(columns)]
    lines_out += ["| " + " | ".join(cell for cell, k in zip(row, keep) if k) + " |" for row in rows]
    return "\n".join(lines_out) + "\n"
