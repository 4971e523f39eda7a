"""`dlswm bench`: latency and memory of agent variants on the machine at hand, comparable across
boards. Each (variant, threads) runs in a fresh subprocess; results carry the machine they ran on.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import dlswm
from dlswm.atomic import save_figure
from dlswm.errors import UserError
from dlswm.runtime.atari import make_env
from dlswm.runtime.machine import machine
from dlswm.runtime.model_card import ModelCard
from dlswm.runtime.peak import matmul_peak_gmacs
from dlswm.runtime.runtimes import file_mb
from dlswm.runtime.session import open_agent

FRAMES = 256  # real observations for the action-agreement column


def real_frames(card: ModelCard, n: int, seed: int = 0) -> np.ndarray:
    """n observations of the model's game, played with random actions (seeded)."""
    env = make_env(card.env_config, 1)
    rng = np.random.default_rng(seed)
    frames = []
    try:
        obs, _ = env.reset(seed=seed)
        for _ in range(n):
            frames.append(obs[0])
            obs, *_ = env.step(rng.integers(0, card.num_actions, 1))
    finally:
        env.close()
    return np.stack(frames)


def _measure(kind: str, target: Path, threads: int, batch: int, warmup: int, duration: float,
             frames_path: Path) -> dict[str, Any]:
    args = [kind, str(target.resolve()), str(threads), str(batch), str(warmup), str(duration),
            str(frames_path.resolve())]
    # `python -m` puts the working directory first on sys.path: run from a checkout's root, its
    # `dlswm/` folder (the CLI alone) would shadow the installed package. An empty folder cannot.
    with tempfile.TemporaryDirectory(prefix="dlswm-bench-") as cwd:
        proc = subprocess.run([sys.executable, "-m", "dlswm.runtime.bench_worker", *args], capture_output=True,
                              text=True, cwd=cwd)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        message = lines[-1].removeprefix("error: ")
        raise UserError(f"measuring {target} ({kind}, {threads} thread(s)) failed: {message}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(label: str, runtime: str, variant: str, threads: int, batch: int, card: ModelCard, size_mb: float | None,
         result: dict[str, Any]) -> dict[str, Any]:
    lat = result["latency"]
    return {"machine": label, "runtime": runtime, "variant": variant, "threads": threads, "batch": batch, "size_mb": size_mb,
            "params": card.params, "mmacs": card.macs / 1e6, **lat,
            "inferences_per_s": result["inferences_per_s"],
            "gmacs_per_s": card.macs * batch / (lat["p50_ms"] / 1e3) / 1e9,
            "peak_rss_mb": result["peak_rss_mb"], "actions": result["actions"]}


def check_same_agent(run: Path, card: ModelCard, source: str) -> None:
    """`--torch RUN` must hold the network the ONNX file was exported from (its game and the
    sections that shape the inference path), or the speed-up compares two different models."""
    from dlswm.config import Config
    from dlswm.train.checkpoint import RunState

    state = RunState.load(run)
    ours, theirs = state.config.to_dict(), Config.from_dict(card.config).to_dict()
    if state.game.name != card.game or any(ours[k] != theirs[k] for k in ("env", "vqvae", "policy")):
        raise UserError(f"--torch {run}: a {state.game.name} run of preset {ours['preset']}, not the network "
                        f"{source} was exported from ({card.game}, preset {theirs['preset']})")


class _Job(NamedTuple):
    name: str  # what the progress line calls it
    runtime: str  # the worker's kind: a runtime, or "torch"
    path: Path
    variant: str
    card: ModelCard
    size_mb: float | None


def bench(models: list[Path], threads: list[int], batch: int, warmup: int, duration: float,
          torch_run: Path | None, peak: bool = False, progress=lambda msg: None,
          runtime: str | None = None, rounds: int = 1) -> dict[str, Any]:
    """Every file on its runtime (or all on `runtime`), side by side, each (file, threads) in a
    fresh process. With `rounds` > 1 every measurement is repeated that many times, the files taken
    in turn within each round (A B A B, not A A B B), and each row reports the median round: on a
    shared or throttling machine the p50 drifts between processes as much as files differ, and
    interleaving spreads that drift over all of them."""
    if not models:
        raise UserError("give at least one agent file")
    if any(t < 1 for t in threads) or batch < 1 or duration <= 0 or warmup < 0 or rounds < 1:
        raise UserError("--threads, --batch and --rounds must be at least 1, --duration positive, --warmup not negative")
    agents = [open_agent(m, runtime=runtime) for m in models]  # validates every file before any measurement
    card = agents[0].card
    for a in agents[1:]:
        if (a.card.game, a.card.action_ids, a.card.env) != (card.game, card.action_ids, card.env):
            raise UserError(f"{a.path} is an agent for another game or observation spec than {agents[0].path}")
    if torch_run is not None:
        if importlib.util.find_spec("torch") is None:  # the worker imports it, not us
            raise UserError("--torch needs torch: pip install 'dlswm[train]'", code=1)
        check_same_agent(torch_run, card, str(agents[0].path))
    # What is measured, in table order: each file, then torch's eager fp32 of --torch
    jobs = [_Job(f"{a.card.variant} ({a.path.name}) on {a.runtime}", a.runtime, a.path, a.card.variant, a.card,
                 file_mb(a.path)) for a in agents]
    if torch_run is not None:
        jobs.append(_Job(f"torch eager fp32 ({torch_run})", "torch", torch_run, "torch-fp32", card, None))
    host = machine()
    label = str(host["hostname"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        frames_path = Path(tmp) / "frames.npy"
        np.save(frames_path, real_frames(card, max(FRAMES, batch)))
        for t in threads:
            results: list[list[dict[str, Any]]] = [[] for _ in jobs]
            for r in range(rounds):
                for job, done in zip(jobs, results):
                    progress(f"{job.name}, {t} thread(s)" + (f", round {r + 1}/{rounds}" if rounds > 1 else ""))
                    done.append(_measure(job.runtime, job.path, t, batch, warmup, duration, frames_path))
            for job, done in zip(jobs, results):
                rows.append(_row(label, job.runtime, job.variant, t, batch, job.card, job.size_mb, median_round(done)))
    _relate(rows)
    peaks = {}
    if peak:
        for t in threads:
            progress(f"matrix-multiply peaks, {t} thread(s)")
            peaks[t] = {kind: matmul_peak_gmacs(kind, t) for kind in ("int8", "fp32")}
        for r in rows:
            kind = "fp32" if r["variant"] in ("fp32", "torch-fp32") else "int8"
            floor_ms = r["mmacs"] * 1e6 * batch / (peaks[r["threads"]][kind] * 1e9) * 1e3
            r["floor_ms"], r["x_floor"] = floor_ms, r["p50_ms"] / floor_ms
    return {"dlswm_version": dlswm.__version__, "machine": host, "game": card.game,
            "settings": {"threads": threads, "batch": batch, "warmup": warmup, "duration_s": duration, "rounds": rounds},
            "peak_gmacs": peaks, "rows": rows}


def median_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose p50 is the median of the rounds' (the lower middle one for an even count),
    whole, so its percentiles stay one measurement's; with the rounds' p50s beside it."""
    ordered = sorted(results, key=lambda r: r["latency"]["p50_ms"])
    middle = ordered[(len(ordered) - 1) // 2]
    p50s = [r["latency"]["p50_ms"] for r in results]
    spread = max(p50s) - min(p50s) if len(p50s) > 1 else None
    return {**middle, "latency": {**middle["latency"], "p50_ms_rounds": p50s, "p50_spread_ms": spread}}


def _relate(rows: list[dict[str, Any]]) -> None:
    """Greedy-action agreement with the fp32 variant (torch if no fp32 file), speed-up over torch."""
    for t in {r["threads"] for r in rows}:
        group = [r for r in rows if r["threads"] == t]
        reference = next((r for r in group if r["variant"] == "fp32"),
                         next((r for r in group if r["variant"] == "torch-fp32"), group[0]))
        baseline = next((r for r in group if r["variant"] == "torch-fp32"), None)
        for r in group:
            r["agreement"] = float(np.mean(np.array(r["actions"]) == np.array(reference["actions"])))
            r["speedup"] = baseline["p50_ms"] / r["p50_ms"] if baseline else None
    for r in rows:
        del r["actions"]


def merge(results: list[Path]) -> dict[str, Any]:
    """Results from several machines (each `--json` of a bench run) as one set of rows."""
    rows = []
    for path in results:
        try:
            data = json.loads(Path(path).read_text())
            cpu = data["machine"]["cpu"]
            rows += [{**r, "machine": f"{r['machine']} ({cpu})"} for r in data["rows"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path} is not a `dlswm bench --json` result ({type(e).__name__})") from None
    return {"dlswm_version": dlswm.__version__, "merged_from": [str(p) for p in results], "rows": rows}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['machine']}\n{r['variant']}, {r['threads']} thr" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    ax.barh(labels, [r["p50_ms"] for r in rows], xerr=[[0] * len(rows),
                                                        [r["p90_ms"] - r["p50_ms"] for r in rows]])
    ax.invert_yaxis()
    ax.set_xlabel("latency per call, ms (bar p50, whisker p90)")
    ax.set_title(f"dlswm bench, batch {rows[0]['batch']}")
    save_figure(fig, path, dpi=100)
