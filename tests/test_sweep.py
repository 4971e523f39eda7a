"""`dlswm sweep` and `dlswm report` on real tiny runs: the local process pool (killed with -9 and run
again), Ray and submitit's local executor on the same grid, the results table and its intervals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlswm.errors import UserError
from dlswm.runtime.reference_scores import RANDOM_HUMAN, human_normalized
from dlswm.experiments import report as results

GRID = ["--games", "Pong,Breakout", "--seeds", "0,1", "--preset", "tiny", "--set", "schedule.iterations=1"]


def dlswm(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "dlswm", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kwargs)


def manifest(out):
    return json.loads((out / "sweep.json").read_text())


def finals(out):
    """Run key -> its eval scores, read from the run directories themselves."""
    return {f"{g.name}/{s.name}": [json.loads(line)["eval/mean_score"] for line in (s / "metrics.jsonl").read_text().splitlines()]
            for g in sorted(out.iterdir()) if g.is_dir() and g.name not in ("logs", ".submitit") for s in sorted(g.iterdir())}


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The grid on the local backend, one run at a time, killed with -9 once the first run has
    finished, then run again: (sweep dir, the first run's checkpoint bytes and mtime, the re-run)."""
    out = tmp_path_factory.mktemp("sweeps") / "local"
    proc = subprocess.Popen([sys.executable, "-m", "dlswm", "sweep", *GRID, "--out", str(out), "--max-parallel", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "sweep.json").exists() and any(r["state"] == "done" for r in manifest(out)["runs"].values()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [k for k, r in manifest(out)["runs"].items() if r["state"] == "done"]
    first = out / done[0] / "checkpoint.pt"
    before = (first.read_bytes(), first.stat().st_mtime_ns)
    time.sleep(1)  # the in-flight run dies with the sweep (no orphan holding its lock)
    rerun = dlswm("sweep", *GRID, "--out", out, "--max-parallel", "1")
    return out, done, first, before, rerun


def test_a_killed_local_sweep_run_again_finishes_without_redoing_finished_runs(local_sweep):
    out, done, first, before, rerun = local_sweep
    assert rerun.returncode == 0, rerun.stderr
    assert f"{4 - len(done)} of 4 runs to do ({len(done)} finished)" in rerun.stdout
    assert all(r["state"] == "done" for r in manifest(out)["runs"].values())
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before  # the finished run was not touched
    assert sorted(finals(out)) == ["Breakout/seed_0", "Breakout/seed_1", "Pong/seed_0", "Pong/seed_1"]
    again = dlswm("sweep", *GRID, "--out", out)  # a third time: nothing to do
    assert again.returncode == 0 and "all 4 runs are finished" in again.stdout


@pytest.mark.parametrize("backend, extra", [("ray", "ray"), ("slurm", "submitit")])
def test_ray_and_submitit_backends_run_the_same_sweep_to_the_same_results(local_sweep, tmp_path, backend, extra):
    pytest.importorskip(extra, reason=f"the {backend} backend needs {extra}: pip install 'dlswm[sweep]'")
    out = tmp_path / backend
    result = dlswm("sweep", *GRID, "--out", out, "--backend", backend, "--max-parallel", "2")
    assert result.returncode == 0, result.stderr
    assert all(r["state"] == "done" for r in manifest(out)["runs"].values())
    assert finals(out) == finals(local_sweep[0])  # the same runs, seeded alike, whatever ran them


def test_a_changed_set_or_a_foreign_run_directory_is_refused_in_one_line(local_sweep, tmp_path):
    out = local_sweep[0]
    changed = dlswm("sweep", *GRID[:-1], "schedule.iterations=2", "--out", out)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "is a sweep of --preset tiny --set schedule.iterations=1" in changed.stderr
    foreign = tmp_path / "foreign"
    shutil.copytree(out / "Pong", foreign / "Pong")  # runs of another config, without the manifest
    refused = dlswm("sweep", *GRID[:-1], "schedule.eval_episodes=2", "--out", foreign)
    assert refused.returncode == 2 and "was trained with another config (schedule.eval_episodes: 1 there, 2 here)" in refused.stderr
    bad = dlswm("sweep", "--games", "Pong,NoSuchGame", "--out", tmp_path / "x")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and not (tmp_path / "x").exists()


def test_report_gives_the_table_the_intervals_and_the_plot_and_marks_incomplete_runs(local_sweep, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(local_sweep[0], out)
    unfinished = out / "Pong" / "seed_9"  # a run of 2 iterations with 1 finished
    shutil.copytree(out / "Pong" / "seed_0", unfinished)
    cfg = json.loads((unfinished / "config.json").read_text())
    cfg["schedule"]["iterations"], cfg["seed"] = 2, 9
    (unfinished / "config.json").write_text(json.dumps(cfg))
    result = dlswm("report", out, "--markdown", tmp_path / "t.md", "--json", tmp_path / "t.json", "--plot", tmp_path / "c.png")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "t.json").read_text())
    rows = {r["game"]: r for r in summary["rows"]}
    assert (rows["Pong"]["runs"], rows["Pong"]["complete"], rows["Breakout"]["complete"]) == (3, 2, 2)
    scores = finals(local_sweep[0])
    pong = [scores["Pong/seed_0"][-1], scores["Pong/seed_1"][-1]]
    assert rows["Pong"]["final_mean"] == pytest.approx(np.mean(pong)) and rows["Pong"]["final_std"] == pytest.approx(np.std(pong))
    assert summary["incomplete"] == [{"run": str(unfinished.resolve()), "game": "Pong", "seed": 9, "iterations": "1/2"}]
    agg = summary["aggregate"]
    assert agg["runs_per_game"] == 2
    for name in ("mean", "median", "iqm"):
        low, high = agg[name]["ci95"]
        assert low <= agg[name]["value"] <= high
    assert "| Pong | 2/3 |" in (tmp_path / "t.md").read_text() and "incomplete, not averaged" in result.stdout
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run(game, seed, finals_, iterations=None):
    evals = [(100 * (i + 1), s) for i, s in enumerate(finals_)]
    return results.RunResult(None, game, seed, "cpu", iterations or len(evals), evals)


def test_aggregates_on_hand_numbers():
    """Three games x two seeds, human-normalized finals Pong 0, 0.5; Breakout 1, 2; Freeway 3, 3.
    rliable's aggregates: mean of the game means (0.25, 1.5, 3) = 1.5833, their median 1.5, and the
    IQM of all six cells (the middle four: 0.5, 1, 2, 3) 1.625. Final is the last iteration, best the best."""
    def at(game, hns):
        random, human = RANDOM_HUMAN[game]
        return random + hns * (human - random)

    runs = [run("Pong", 0, [at("Pong", 0.9), at("Pong", 0)]), run("Pong", 1, [at("Pong", 0.5)]),
            run("Breakout", 0, [at("Breakout", 1)]), run("Breakout", 1, [at("Breakout", 2)]),
            run("Freeway", 0, [at("Freeway", 3)]), run("Freeway", 1, [at("Freeway", 3)]),
            run("Breakout", 2, [at("Breakout", 0)], iterations=3)]  # incomplete: left out
    summary = results.summarize(runs)
    agg = summary["aggregate"]
    assert agg["runs_per_game"] == 2 and agg["games"] == ["Breakout", "Freeway", "Pong"]
    assert agg["mean"]["value"] == pytest.approx((0.25 + 1.5 + 3) / 3)
    assert agg["median"]["value"] == pytest.approx(1.5)
    assert agg["iqm"]["value"] == pytest.approx(1.625)
    rp, hp = RANDOM_HUMAN["Pong"]
    pong = {r["game"]: r for r in summary["rows"]}["Pong"]
    assert pong["final_mean"] == pytest.approx(rp + 0.25 * (hp - rp)) and pong["best_mean"] == pytest.approx(rp + 0.7 * (hp - rp))
    assert pong["hns_final"] == pytest.approx(human_normalized("Pong", pong["final_mean"]))
    assert pong["wins_vs_DLSWM"] is False and len(summary["incomplete"]) == 1


def test_report_of_nothing_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no dlswm run under"):
        results.find_runs([tmp_path])
    result = dlswm("report", tmp_path / "missing")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
