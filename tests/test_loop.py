"""The SimPLe loop end to end on real games: a tiny run's files, resume after a kill, a damaged or
live run directory refused in one line, seeds kept apart, `profile` and `curves` on real runs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dlswm.config import resolve
from dlswm.errors import UserError
from dlswm.train.checkpoint import RunState



THREE_ITERATIONS = ["--set", "schedule.iterations=3", "--set", "schedule.wm_epochs=2,1,1",
                    "--set", "schedule.ppo_updates=3,3,3"]


def dlswm(*args, **kwargs):
    return subprocess.run([sys.executable, "-c", "from dlswm.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kwargs)


def test_tiny_run_leaves_checkpoint_metrics_and_pictures(tiny_run_dir):
    state = RunState.load(tiny_run_dir)
    cfg = resolve("tiny")
    assert state.iteration == cfg.schedule.iterations
    assert state.real_steps >= cfg.schedule.initial_steps + cfg.schedule.steps_per_iteration
    lines = [json.loads(line) for line in (tiny_run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2]
    for m in lines:
        assert np.isfinite(m["eval/mean_score"]) and m["throughput/env_steps_per_s"] > 0
        assert m["throughput/wm_samples_per_s"] > 0 and m["throughput/imagined_steps_per_s"] > 0
        assert 0 <= m["dynamics/reward_acc"] <= 1 and m["vqvae/perplexity"] >= 1
    assert 0 < lines[0]["time/iteration_s"] == lines[0]["time/total_s"] < lines[1]["time/total_s"]
    for m in lines:  # each phase timed on its own, inside its iteration (caught: a phase left untimed)
        phases = [m[f"time/{name}_s"] for name in ("collect", "world_model", "policy", "evaluate")]
        assert all(t > 0 for t in phases) and sum(phases) <= m["time/iteration_s"]
    assert state.wall_s == lines[1]["time/total_s"]  # carried over by a resume
    assert_best_is_the_highest_eval(tiny_run_dir, lines)
    media = sorted(p.name for p in (tiny_run_dir / "media").iterdir())
    assert media == ["imagined_001.gif", "imagined_002.gif", "recon_001.png", "recon_002.png"]
    assert list((tiny_run_dir / "tb").iterdir())
    assert not list(tiny_run_dir.rglob("*.tmp*"))


def test_second_run_into_the_same_dir_refuses_and_finished_run_says_so(tiny_run_dir):
    again = dlswm("train", "Pong", "--preset", "tiny", "--out", tiny_run_dir)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--resume" in again.stderr
    finished = dlswm("train", "--out", tiny_run_dir, "--resume")
    assert finished.returncode == 0 and "finished" in finished.stdout
    unknown = dlswm("train", "Breakoot", "--preset", "tiny", "--out", tiny_run_dir.parent / "x")
    assert unknown.returncode == 2 and "Breakout" in unknown.stderr and "Traceback" not in unknown.stderr
    short = dlswm("train", "Pong", "--preset", "tiny", "--out", tiny_run_dir.parent / "y", "--set", "schedule.iterations=3")
    assert short.returncode == 2 and short.stderr.count("\n") == 1 and "one per iteration" in short.stderr
    assert not (tiny_run_dir.parent / "y").exists()  # refused before anything was written
    if not torch.cuda.is_available():
        no_gpu = dlswm("train", "Pong", "--preset", "tiny", "--device", "cuda", "--out", tiny_run_dir.parent / "z")
        assert no_gpu.returncode == 2 and "no CUDA device" in no_gpu.stderr and not (tiny_run_dir.parent / "z").exists()


def test_resume_after_a_kill_finishes_without_redoing_finished_iterations(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "from dlswm.cli import main; main()", "train", "Pong",
                             "--preset", "tiny", "--out", str(out), *THREE_ITERATIONS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the worst case: no cleanup at all
    proc.wait()
    saved = RunState.load(out).iteration
    assert saved >= 1
    chunk_1 = out / "buffer" / "chunk_001.npz"
    stamp = os.stat(chunk_1).st_mtime_ns
    resumed = dlswm("train", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"iterations {saved + 1}..3" in resumed.stdout or saved == 3
    assert RunState.load(out).iteration == 3
    assert os.stat(chunk_1).st_mtime_ns == stamp  # finished work is not redone
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2, 3]
    assert lines[2]["time/total_s"] == pytest.approx(sum(m["time/iteration_s"] for m in lines))
    assert_best_is_the_highest_eval(out, lines)


def test_a_finished_run_extended_by_resume_runs_only_its_new_iterations(tiny_run_dir, tmp_path):
    """`--resume --set schedule.iterations=3 ...` on a finished 2-iteration run. Caught: the extended
    config written to config.json but the saved one handed to the loop (it ends at 2, "finished"), and
    an extension that rewrites a finished iteration's schedule or changes the networks accepted."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run_dir, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    for bad, words in ((["--set", "ppo.lr=0.001"], "only schedule.iterations"),
                       (["--set", "schedule.iterations=3", "--set", "schedule.wm_epochs=1,1,1",
                         "--set", "schedule.ppo_updates=3,3,3"], "first 2 entries are the finished iterations' (2,1)"),
                       (["--set", "schedule.iterations=1"], "already finished 2")):
        refused = dlswm("train", "--out", out, "--resume", *bad)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and words in refused.stderr, refused.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before
    extended = dlswm("train", "--out", out, "--resume", *THREE_ITERATIONS)
    assert extended.returncode == 0, extended.stderr
    assert "iterations 3..3" in extended.stdout
    assert (out / "buffer" / "chunk_001.npz").read_bytes() == before[out / "buffer" / "chunk_001.npz"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2, 3]
    assert RunState.load(out).iteration == 3 and RunState.load(out).config.schedule.ppo_updates == (3, 3, 3)
    assert json.loads((out / "config.json").read_text())["schedule"]["iterations"] == 3
    assert "finished" in dlswm("train", "--out", out, "--resume").stdout


def assert_best_is_the_highest_eval(run_dir, lines):
    """best.pt is the checkpoint of the first iteration with the highest eval score."""
    scores = [m["eval/mean_score"] for m in lines]
    best = RunState.load(run_dir / "best.pt")
    assert best.iteration == 1 + int(np.argmax(scores)) and best.eval["mean_score"] == max(scores)
    assert RunState.load(run_dir).best == {"iteration": best.iteration, "mean_score": max(scores)}


def test_a_resumed_run_matches_an_uninterrupted_one(tiny_run_dir, tmp_path, monkeypatch):
    """Interrupted as iteration 2 starts collecting, then resumed: iteration 2's metrics equal those
    of the uninterrupted run to the last digit. Catches any state a checkpoint forgets (numpy or torch
    RNG, optimizer moments, the persistent env's episodes, which a resume replays)."""
    from dlswm.train import loop
    from dlswm.train.real_env import Collector

    calls = {"n": 0}
    collect = Collector.collect

    def interrupt_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return collect(self, *args, **kwargs)

    monkeypatch.setattr(Collector, "collect", interrupt_second)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="interrupted"):
        loop.train(resolve("tiny", "Pong"), out, device_name="cpu")
    monkeypatch.setattr(Collector, "collect", collect)
    loop.train(None, out, device_name="cpu", resume=True)

    def comparable(run_dir):
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in m.items() if not k.startswith(("time/", "throughput/"))} for m in lines]

    assert comparable(out) == comparable(tiny_run_dir)
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[1])["collect/continued"] == 1.0


def test_collection_and_evaluation_never_share_an_env_seed(tmp_path, monkeypatch):
    """ale_py seeds env e of a block seeded s with s + e. An evaluation game that shared a seed with
    a collection game would replay a no-op start the buffer already holds. Mutations caught: the
    evaluation offset in `env_seed` set to the collection's, or the trainer passing the collection
    seed to `evaluate`."""
    from dlswm.train import loop, trainer
    from dlswm.train.real_env import Collector

    blocks = []  # (purpose, first seed, envs)
    collect, evaluate = Collector.collect, trainer.evaluate

    def spy_collect(self, policy, steps, seed, progress, observe=None):
        blocks.append(("collect", seed, self.num_envs))
        return collect(self, policy, steps, seed, progress, observe)

    def spy_evaluate(env_cfg, policy, episodes, seed, num_actions=None):
        blocks.append(("evaluate", seed, episodes))
        return evaluate(env_cfg, policy, episodes, seed=seed, num_actions=num_actions)

    monkeypatch.setattr(Collector, "collect", spy_collect)
    monkeypatch.setattr(trainer, "evaluate", spy_evaluate)
    loop.train(resolve("tiny", "Pong", ["schedule.eval_episodes=2"]), tmp_path / "run", device_name="cpu")
    assert [b[0] for b in blocks] == ["collect", "evaluate"] * 2
    seeds = {purpose: set() for purpose in ("collect", "evaluate")}
    for purpose, first, envs in blocks:
        seeds[purpose] |= set(range(first, first + envs))
    assert len(seeds["evaluate"]) == 2 * 2  # two iterations' games, none repeated
    assert not seeds["collect"] & seeds["evaluate"]


def test_curves_draws_a_png_of_runs_and_refuses_bad_input_in_one_line(tiny_run_dir, tmp_path):
    out = tmp_path / "c.png"
    ok = dlswm("curves", tiny_run_dir, tiny_run_dir, "--label", "a", "--label", "b", "-o", out)
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp*"))
    for args, words in [((tmp_path / "none",), "no metrics.jsonl"), ((tiny_run_dir, "--label", "a", "--label", "b"), "one per run")]:
        bad = dlswm("curves", *args, "-o", tmp_path / "d.png")
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1 and words in bad.stderr
        assert not (tmp_path / "d.png").exists()


def test_curves_markdown_puts_runs_side_by_side_with_the_real_rate_that_followed_each_policy(tmp_path):
    """Hand-made metrics of two runs: a row per (iteration, run); the "real" reward rate of iteration
    i is the collection of iteration i + 1 (the policy i trained, played for real); a column no run
    logs is left out; phase seconds are shown in minutes. Mutations caught: the real rate taken from
    the same iteration's line; a phase's seconds shown as minutes unconverted."""
    from dlswm.experiments.curves import iteration_table

    runs = []
    for name, lines in {"a": [{"iteration": 1, "real_steps": 100, "eval/mean_score": 5.0, "imagined/sign_return_per_step": 0.5},
                              {"iteration": 2, "real_steps": 200, "eval/mean_score": 7.0, "collect/sign_return_per_step": 0.25}],
                        "b": [{"iteration": 1, "real_steps": 100, "eval/mean_score": 6.0, "time/policy_s": 90.0}]}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
        runs.append(tmp_path / name)
    table = iteration_table(runs, ["A", "B"]).splitlines()
    assert table[0] == ("| iteration | run | real steps | eval | imagined / real reward sign per step "
                        "| min: collect / world model / policy / eval |")
    assert table[2:] == ["| 1 | A | 100 | 5.0 | 0.5000 / 0.2500 | - / - / - / - |",
                         "| 1 | B | 100 | 6.0 | - / - | - / - / 1.5 / - |",
                         "| 2 | A | 200 | 7.0 | - / - | - / - / - / - |"]


def test_profile_times_every_phase_and_projects_the_tiny_schedule(tmp_path):
    """The projection is each phase's measured seconds per unit times the schedule's units, worked by
    hand for `tiny`: world-model batches ceil(2 * 256 / 48) + ceil(1 * 384 / 48) = 11 + 8, PPO 2 x 3
    updates of 8 envs x 10 steps, warm-up ceil(1 * 256 / 16)."""
    out = tmp_path / "p.json"
    result = dlswm("profile", "Pong", "--preset", "tiny", "--device", "cpu", "--batches", "2", "--eval-steps", "100",
                   "--json", out)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    rows = {r["phase"]: r for r in data["rows"]}
    assert list(rows) == ["collect (random)", "collect (agent)", "vq-vae warm-up", "world model", "policy (imagined)",
                          "evaluate"]
    expected = {"collect (random)": 256, "collect (agent)": 128, "vq-vae warm-up": 16, "world model": 19,
                "policy (imagined)": 480, "evaluate": 200}
    assert {k: r["schedule_units"] for k, r in rows.items()} == expected
    assert rows["world model"]["measured_units"] == 4 and rows["policy (imagined)"]["measured_units"] == 160
    for r in rows.values():
        assert r["seconds"] > 0 and r["projected_s"] == pytest.approx(r["schedule_units"] * r["seconds"] / r["measured_units"])
    assert data["projected_total_s"] == pytest.approx(sum(r["projected_s"] for r in rows.values()))
    assert data["wm_sample_steps_per_s"] == pytest.approx(rows["world model"]["per_s"] * 8 * 6)
    for phase, r in rows.items():  # FLOPs counted for the training phases only, rates consistent
        if phase in ("vq-vae warm-up", "world model", "policy (imagined)"):
            assert r["gflop_per_unit"] > 0 and r["gflops"] == pytest.approx(r["gflop_per_unit"] * r["per_s"])
        else:
            assert r["gflop_per_unit"] is None and r["gflops"] is None


def test_profile_runs_the_cpu_presets_ppo_with_its_kl_anchor():
    """`dlswm profile` with no arguments (the `cpu` preset) ended in `KeyError: 'anchor_logits'`: it
    ran PPO updates without the anchor the loop sets at the start of each policy phase. The `cpu`
    preset's whole PPO section (anchor included) on tiny networks, through the loop's policy phase."""
    from dlswm.config import load_preset
    from dlswm.train.profile import profile

    cfg = resolve("tiny", "Pong")
    cfg.ppo = load_preset("cpu").ppo
    assert cfg.ppo.anchor_kl_coef > 0  # else this test no longer tests the anchor
    result = profile(cfg, torch.device("cpu"), batches=1, eval_steps=10, threads=1)
    policy = next(r for r in result["rows"] if r["phase"] == "policy (imagined)")
    assert policy["measured_units"] == cfg.ppo.num_envs * cfg.ppo.rollout_steps and policy["gflops"] > 0


def test_a_live_run_directory_is_refused_to_a_second_process(tmp_path):
    """Before the lock, a `--resume` beside a live run went ahead and both wrote every iteration."""
    from dlswm.train.loop import prepare_run

    out = tmp_path / "run"
    _, _, lock = prepare_run(out, resolve("tiny", "Pong"), resume=False)  # this process holds the run
    try:
        result = dlswm("train", "--out", out, "--resume")
    finally:
        lock.close()
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"in use by a running dlswm train (pid {os.getpid()})" in result.stderr


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A tiny run stopped as iteration 2 began: iteration 1's checkpoint and chunk on disk."""
    from dlswm.train import loop
    from dlswm.train.real_env import Collector

    collect, calls = Collector.collect, {"n": 0}

    def interrupt_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return collect(self, *args, **kwargs)

    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Collector, "collect", interrupt_second)
        with pytest.raises(UserError, match="interrupted"):
            loop.train(resolve("tiny", "Pong"), out, device_name="cpu")
    return out


def _damage(run, case):
    chunk = run / "buffer" / "chunk_001.npz"
    if case == "no checkpoint":
        (run / "checkpoint.pt").unlink()
    elif case == "truncated config":
        (run / "config.json").write_text((run / "config.json").read_text()[:100])
    elif case == "truncated chunk":
        chunk.write_bytes(chunk.read_bytes()[:1000])
    elif case == "random chunk":
        chunk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif case == "out is a file":
        return run / "config.json"
    return run


@pytest.mark.parametrize("case, words", [
    ("no checkpoint", "has no checkpoint.pt but holds finished work (chunk_001.npz"),  # restarted silently
    ("truncated config", "config.json is damaged (JSONDecodeError)"),  # traceback
    ("truncated chunk", "missing or damaged (BadZipFile)"),  # traceback
    ("random chunk", "missing or damaged ("),  # advised allow_pickle
    ("out is a file", "is a file, not a run directory"),  # traceback
])
def test_resume_of_a_damaged_or_incomplete_run_is_one_line_and_changes_nothing(interrupted_run, tmp_path, case, words):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    target = _damage(run, case)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = dlswm("train", "--out", target, "--resume")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and "allow_pickle" not in result.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == \
        {p: b for p, b in before.items() if p.name != ".lock"}


def test_resume_with_a_game_argument_is_refused(interrupted_run):
    result = dlswm("train", "Breakout", "--out", interrupted_run, "--resume")
    assert result.returncode == 2 and "drop GAME" in result.stderr
