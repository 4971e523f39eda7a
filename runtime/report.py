"""Result tables, one per command's result: rich for the terminal, Markdown for README and issues.
They read plain result dicts, so this module stays torch-free."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table


def play_table(report: dict[str, Any]) -> Table:
    m, s = report["model"], report["settings"]
    table = Table(title=f"dlswm play: {m['game']} {m['variant']} ({m['size_mb']:.2f} MB), "
                        f"{s.get('runtime', 'onnxruntime')} {s['device']}, {s['threads']} thread(s), temperature {s['temperature']}")
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
        (s.get("runtime", "onnxruntime"), s.get("runtime_version", report["machine"]["onnxruntime"])),
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
    ("machine", "machine", "{}"), ("runtime", "runtime", "{}"), ("variant", "variant", "{}"), ("thr", "threads", "{}"),
    ("MB", "size_mb", "{:.2f}"), ("params", "params", "{:,}"), ("MMACs", "mmacs", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.3f}"), ("p50 spread", "p50_spread_ms", "{:.3f}"),  # max - min over --rounds
    ("p90 ms", "p90_ms", "{:.3f}"), ("p99 ms", "p99_ms", "{:.3f}"),
    ("inf/s", "inferences_per_s", "{:.0f}"), ("GMAC/s", "gmacs_per_s", "{:.1f}"),
    ("RSS MB", "peak_rss_mb", "{:.0f}"), ("agree", "agreement", "{:.3f}"), ("speed-up", "speedup", "{:.2f}x"),
    ("x floor", "x_floor", "{:.2f}"),
]
TEXT_COLUMNS = ("machine", "runtime", "variant")
# A terminal is ~80 columns: the model's size columns are in the title, the machine only when merged.
TERMINAL_DROP = {"params", "mmacs"}


def _cells(row: dict[str, Any], columns: list[tuple[str, str, str]]) -> list[str]:
    return ["-" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in columns]


def bench_table(rows: list[dict[str, Any]], title: str) -> Table:
    drop = TERMINAL_DROP | ({"machine"} if len({r["machine"] for r in rows}) == 1 else set())
    drop |= {key for key in ("x_floor", "p50_spread_ms") if all(r.get(key) is None for r in rows)}
    columns = [c for c in BENCH_COLUMNS if c[1] not in drop]
    table = Table(title=title)
    for header, key, _ in columns:
        table.add_column(header, justify="left" if key in TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*_cells(row, columns))
    return table


def bench_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in BENCH_COLUMNS) + " |",
             "|" + "|".join("---" if k in TEXT_COLUMNS else "---:" for _, k, _ in BENCH_COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(row, BENCH_COLUMNS)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def info_table(report: dict[str, Any]) -> Table:
    """`dlswm info`: parameters of every network, the totals and the inference MACs."""
    table = Table(title=f"dlswm {report['preset']} on {report['game']} ({report['num_actions']} actions)")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("at inference", justify="center")
    for name, count in report["components"].items():
        table.add_row(name, f"{count:,}", "yes" if name in report["inference_components"] else "")
    table.add_section()
    table.add_row("training total", f"{report['training_params']:,}", "")
    table.add_row("inference total", f"{report['inference_params']:,}", "")
    table.add_row("inference MACs (batch 1)", f"{report['inference_macs']:,}", "")
    return table


def profile_table(result: dict[str, Any]) -> Table:
    """`dlswm profile`: each phase timed, its rate, and the whole schedule projected."""
    table = Table(title=f"dlswm profile: {result['game']}, preset {result['preset']}, {result['speed']}")
    for col in ("phase", "timed", "per second", "GFLOP/s", "whole schedule", "projected h"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for r in result["rows"]:
        table.add_row(r["phase"], f"{r['measured_units']:,} {r['unit']} in {r['seconds']:.2f} s", f"{r['per_s']:,.1f}",
                      "-" if r["gflops"] is None else f"{r['gflops']:,.0f}",
                      f"{r['schedule_units']:,.0f}", f"{r['projected_s'] / 3600:.2f}")
    table.add_section()
    table.add_row("total", "", "", "", "", f"{result['projected_total_s'] / 3600:.2f}")
    return table


def export_table(report: dict[str, Any]) -> Table:
    """`dlswm export`: each variant's size, float layers, agreement with torch and latency."""
    table = Table(title=f"dlswm export: {report['game']}, iteration {report['iteration']}, "
                        f"{report['inference_params']:,} parameters ({report['graph_params']:,} in the graph), "
                        f"{report['inference_macs'] / 1e6:.1f}M MACs")
    for column in ["format", "variant", "MB", "fp32 layers", "act agree", "policy overlap", "code agree", "max dlogit", "p50 ms",
                   "written"]:
        table.add_column(column, justify="left" if column in ("format", "variant", "written") else "right")
    for row in report["variants"]:
        table.add_row(row.get("format", "onnx"), row["variant"], f"{row['size_mb']:.2f}", str(len(row["fp32_layers"])) if "tries" in row else "-",
                      f"{row['action_agreement']:.3f}",
                      f"{row['policy_overlap']:.3f}", f"{row['code_agreement']:.3f}", f"{row['max_logit_diff']:.4f}",
                      f"{row['latency_batch1_1thread']['p50_ms']:.3f}", "yes" if row["written"] else "NO")
    return table
