"""Result tables, one per run: rich for the terminal, Markdown for README and issues."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table


def play_table(report: dict[str, Any]) -> Table:
    m, s = report["model"], report["settings"]
    table = Table(title=f"dlswm play: {m['game']} {m['variant']} ({m['size_mb']:.2f} MB), "
                        f"{s['device']}, {s['threads']} thread(s), temperature {s['temperature']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    sc = report["score"]
    rows = [
        ("episodes", f"{len(report['episodes'])} ({report['steps']:,} steps)"),
        ("score mean +- std", _score(sc)),
        *_versus_random(report),
        ("model call p50 / p90 / p99 / max ms", _ms(report["latency_model"])),
        ("whole step p50 / p90 / p99 / max ms", _ms(report["latency_step"])),
        ("steps per second", f"{report['steps_per_s']:.0f}"),
        ("peak RSS MB", f"{report['memory']['peak_rss_mb']:.1f}"),
        ("RSS after each episode MB", " ".join(f"{x:.1f}" for x in report["memory"]["rss_after_episode_mb"][:12])),
        ("CPU", escape(f"{report['machine']['cpu']} [{' '.join(report['machine']['flags'])}]")),
        ("onnxruntime", report["machine"]["onnxruntime"]),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _versus_random(report: dict[str, Any]) -> list[tuple[str, str]]:
    if "random_agent" not in report:
        return []
    sc, hn = report["random_agent"]["score"], report["human_normalized"]
    rows = [("random agent score mean +- std", _score(sc))]
    if hn is not None:
        rows.append(("human-normalized: agent / random / gain", f"{hn['agent']:.3f} / {hn['random_agent']:.3f} / {hn['gain']:+.3f}"))
    return rows


def _score(sc: dict[str, float]) -> str:
    return f"{sc['mean']:.1f} +- {sc['std']:.1f} (min {sc['min']:g}, max {sc['max']:g})"


def _ms(lat: dict[str, float]) -> str:
    return " / ".join(f"{lat[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))


BENCH_COLUMNS = [  # (header, row key, format)
    ("machine", "machine", "{}"), ("variant", "variant", "{}"), ("thr", "threads", "{}"),
    ("MB", "size_mb", "{:.2f}"), ("params", "params", "{:,}"), ("MMACs", "mmacs", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.3f}"), ("p90 ms", "p90_ms", "{:.3f}"), ("p99 ms", "p99_ms", "{:.3f}"),
    ("inf/s", "inferences_per_s", "{:.0f}"), ("GMAC/s", "gmacs_per_s", "{:.1f}"),
    ("RSS MB", "peak_rss_mb", "{:.0f}"), ("agree", "agreement", "{:.3f}"), ("speed-up", "speedup", "{:.2f}x"),
    ("x floor", "x_floor", "{:.2f}"),
]
# A terminal is ~80 columns: the model's size columns are in the title, the machine only when merged.
TERMINAL_DROP = {"params", "mmacs"}


def _cells(row: dict[str, Any], columns: list[tuple[str, str, str]]) -> list[str]:
    return ["-" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in columns]


def bench_table(rows: list[dict[str, Any]], title: str) -> Table:
    drop = TERMINAL_DROP | ({"machine"} if len({r["machine"] for r in rows}) == 1 else set())
    drop |= {"x_floor"} if all(r.get("x_floor") is None for r in rows) else set()
    columns = [c for c in BENCH_COLUMNS if c[1] not in drop]
    table = Table(title=title)
    for header, key, _ in columns:
        table.add_column(header, justify="left" if key in ("machine", "variant") else "right")
    for row in rows:
        table.add_row(*_cells(row, columns))
    return table


def bench_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in BENCH_COLUMNS) + " |",
             "|" + "|".join("---" if k in ("machine", "variant") else "---:" for _, k, _ in BENCH_COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(row, BENCH_COLUMNS)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
