"""The edge runtime on real parts: exported tiny agents, real Pong, real onnxruntime sessions."""

import json
import shutil
import signal
import subprocess
import sys
import time
from array import array
from pathlib import Path

import numpy as np
import onnx
import pytest

from dlswm.errors import UserError
from dlswm.runtime.bench import bench, median_round
from dlswm.runtime.contract import policy_overlap
from dlswm.runtime.gif import GifWriter
from dlswm.runtime.latency import percentiles
import dlswm.runtime.machine as machine_module
from dlswm.runtime.machine import int8_saturates
from dlswm.runtime.model_card import METADATA_KEY
from dlswm.runtime.play import (action_probs, choose, default_agent, export_report_path, random_baseline, run_episodes,
                                shipped_agents)
from dlswm.runtime.reference_scores import RANDOM_HUMAN, human_normalized
from dlswm.runtime.session import open_agent

NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def dlswm(*args, block_torch=True):
    code = (NO_TORCH if block_torch else "") + "import sys; from dlswm.cli import main; sys.argv = ['dlswm'] + sys.argv[1:]; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_play_with_torch_unimportable_reports_every_field(tiny_export, tmp_path):
    paths, _ = tiny_export
    report_path, gif = tmp_path / "play.json", tmp_path / "play.gif"
    result = dlswm("play", paths["int8"], "--episodes", 2, "--max-steps", 150, "--seed", 3,
                   "--json", report_path, "--record", gif, "--vs-random")
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert set(report) >= {"model", "settings", "episodes", "score", "latency_model", "latency_step", "steps",
                           "steps_per_s", "memory", "machine", "dlswm_version"}
    assert [e["length"] for e in report["episodes"]] == [150, 150] and report["steps"] == 300
    import imageio.v3 as iio

    assert iio.imread(gif, index=None).shape[0] == 302  # every observation, each episode's last one too
    assert all(e["truncated"] for e in report["episodes"])
    for lat in (report["latency_model"], report["latency_step"]):
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert report["latency_model"]["p50_ms"] < report["latency_step"]["p50_ms"]
    assert report["memory"]["peak_rss_mb"] > 0 and len(report["memory"]["rss_after_episode_mb"]) == 2
    assert report["model"]["variant"] == "int8" and report["settings"]["temperature"] == 0.5
    assert report["machine"]["onnxruntime"] and report["machine"]["cpu"]
    assert "model call" in result.stdout and "human-normalized" in result.stdout  # the table
    games = [line for line in result.stderr.splitlines() if " game " in line]  # one line as each game ends
    assert games == [f"{who} game {n}/2: {e['score']:g} in 150 steps"
                     for who, run in (("agent", report), ("random agent", report["random_agent"]))
                     for n, e in enumerate(run["episodes"], 1)]
    # --vs-random: the random agent plays the same protocol; both on the human-normalized scale
    assert [e["length"] for e in report["random_agent"]["episodes"]] == [150, 150]
    hn, (random, human) = report["human_normalized"], RANDOM_HUMAN["Pong"]
    assert hn["reference"] == {"random": random, "human": human}
    assert hn["gain"] == pytest.approx((report["score"]["mean"] - report["random_agent"]["score"]["mean"]) / (human - random))
    assert gif.read_bytes()[:6] == b"GIF89a"


def test_play_runs_a_full_episode_to_its_end(tiny_export):
    from dlswm.runtime.play import play

    report = play(open_agent(tiny_export[0]["fp32"]), episodes=1, seed=0, temperature=0)
    episode = report["episodes"][0]
    # Pong ends when one side reaches 21 points; the untrained agent loses almost every point.
    assert not episode["truncated"] and episode["length"] > 500 and -21 <= episode["score"] <= -15


def test_per_step_times_are_float32_and_an_untimed_run_keeps_none(tiny_export):
    # Catches the times stored as float64 again (twice the memory over a 30-game play) or the
    # `timed=False` (the random agent's games) keeping times nobody reads.
    card = open_agent(tiny_export[0]["int8"]).card
    uniform = np.zeros((1, card.num_actions), np.float32)
    timed = run_episodes(card.env_config, lambda obs: uniform, 1, 0, 1.0, max_steps=40)
    assert len(timed.model_s) == len(timed.step_s) == 40 and timed.model_s.itemsize == timed.step_s.itemsize == 4
    untimed = random_baseline(card.env_config, card.num_actions, 1, seed=0, max_steps=40)
    assert untimed["episodes"] == timed.results  # the same games, played through the same loop
    assert len(run_episodes(card.env_config, lambda obs: uniform, 1, 0, 1.0, max_steps=40, timed=False).step_s) == 0


@pytest.mark.skipif(machine_module._malloc_trim() is None, reason="glibc's malloc_trim")
def test_release_free_heap_returns_freed_pages_inside_the_heap():
    # Catches a release that hands nothing back (the call lost, or the wrong C library's symbol
    # swallowed by its except): the blocks freed here lie under a live one, so no heap shrinking
    # from the top (glibc's own trim threshold) returns them either.
    import ctypes

    from dlswm.runtime.machine import release_free_heap, rss_mb

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 * 1024) for _ in range(400)]  # 25 MB under the mmap threshold: heap
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)  # resident
    keep = libc.malloc(64 * 1024)  # above them: the freed blocks are not the heap's top
    for b in blocks:
        libc.free(b)
    before = rss_mb()
    release_free_heap()
    assert before - rss_mb() > 15  # most of the 25 MB
    libc.free(keep)


def test_play_releases_the_free_heap_once_per_game_and_after_loading(tiny_export, monkeypatch):
    # Catches the release unwired from `open_agent` or from the end of a game (docs/performance.md:
    # ~2-3 MB of a 30-game play's RSS), or moved inside the timed per-step loop.
    import dlswm.runtime.play as play_module
    import dlswm.runtime.session as session_module

    calls = []
    monkeypatch.setattr(session_module, "release_free_heap", lambda: calls.append("load"))
    monkeypatch.setattr(play_module, "release_free_heap", lambda: calls.append("game"))
    agent = open_agent(tiny_export[0]["int8"])
    play_module.play(agent, episodes=2, seed=0, temperature=1.0, max_steps=30)
    assert calls == ["load", "game", "game"]


def test_random_baseline_is_uniform_and_repeatable_per_seed(tiny_export):
    card = open_agent(tiny_export[0]["int8"]).card
    first, again = (random_baseline(card.env_config, card.num_actions, 2, seed=5, max_steps=80) for _ in range(2))
    assert first == again  # same seed: the same no-op starts and the same actions
    assert human_normalized("Pong", 14.6) == pytest.approx(1.0) and human_normalized("Pong", -20.7) == 0.0
    assert human_normalized("NotAGame", 1.0) is None
    rng = np.random.default_rng(0)
    counts = np.bincount([choose(np.zeros(6), 1.0, rng) for _ in range(6000)], minlength=6)
    assert counts.min() > 850  # equal logits at temperature 1: every action ~1/6 of the time


def test_action_probs_at_temperature_zero_is_greedy_so_overlap_is_greedy_agreement():
    a, b = np.random.default_rng(1).normal(size=(2, 500, 6))
    p, q = action_probs(a, 0), action_probs(b, 0)
    np.testing.assert_array_equal(p.argmax(1), a.argmax(1))
    assert p.sum(1).tolist() == [1.0] * 500 and np.isfinite(action_probs(a * 1e3, 1.0)).all()
    assert policy_overlap(a, b, 0).mean() == (a.argmax(1) == b.argmax(1)).mean()
    # Hand-worked: p = (1/4, 3/4), q = (3/4, 1/4): min summed = 1/4 + 1/4 (np.maximum would give 3/2).
    np.testing.assert_allclose(policy_overlap(np.log([[1.0, 3.0]]), np.log([[3.0, 1.0]]), 1.0), [0.5])


def test_latency_percentiles_are_numpys_linear_ones_scaled_after():
    """Hand-worked: 1..5 s -> p50 3, p90 rank 3.6 -> 4.6, p99 rank 3.96 -> 4.96, in ms. Catches a
    nearest-rank percentile (p90 5), a rank over n instead of n - 1 (p50 3.5) or the scale applied
    twice or not at all; and an `array("d")` of seconds gives numpy's own numbers."""
    got = percentiles(array("d", [5.0, 1.0, 4.0, 2.0, 3.0]), scale_to_ms=1e3)
    assert got == pytest.approx({"p50_ms": 3000.0, "p90_ms": 4600.0, "p99_ms": 4960.0, "max_ms": 5000.0})
    samples = np.random.default_rng(0).exponential(size=1001)
    got = percentiles(array("d", samples), scale_to_ms=1e3)
    assert [got["p50_ms"], got["p90_ms"], got["p99_ms"]] == pytest.approx(np.percentile(samples * 1e3, [50, 90, 99]))
    assert np.isnan(percentiles([])["p50_ms"])


def test_recorded_gif_decodes_to_the_frames(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    frames = np.random.default_rng(0).integers(0, 256, (7, 96, 96), dtype=np.uint8)
    path = tmp_path / "x.gif"
    with GifWriter(path, (96, 96)) as gif:
        for frame in frames:
            gif.add(frame)
    decoded = iio.imread(path, index=None)
    assert np.array_equal(decoded[..., 0] if decoded.ndim == 4 else decoded, frames)
    with pytest.raises(RuntimeError), GifWriter(tmp_path / "failed.gif", (96, 96)) as gif:
        gif.add(frames[0])
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == [path]  # nothing half-written


def test_bench_measures_two_variants_and_compare_merges(tiny_export, tmp_path):
    paths, _ = tiny_export
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    result = dlswm("bench", paths["fp32"], paths["int8"], "--duration", 0.3, "--warmup", 5, "--peak", "--json", a)
    assert result.returncode == 0, result.stderr
    data = json.loads(a.read_text())
    assert data["peak_gmacs"]["1"]["int8"] > 0 and data["peak_gmacs"]["1"]["fp32"] > 0
    assert all(r["x_floor"] > 0 for r in data["rows"])  # p50 over MACs / peak
    assert [r["variant"] for r in data["rows"]] == ["fp32", "int8"]
    for row in data["rows"]:
        assert row["p50_ms"] > 0 and row["inferences_per_s"] > 0 and row["peak_rss_mb"] > 0
        assert 0 <= row["agreement"] <= 1 and row["gmacs_per_s"] > 0
    assert data["rows"][0]["agreement"] == 1.0  # fp32 is the reference
    b.write_text(json.dumps({**data, "machine": {**data["machine"], "cpu": "Other CPU"},
                             "rows": [{**r, "machine": "board"} for r in data["rows"]]}))
    md = tmp_path / "merged.md"
    merged = dlswm("bench", "--compare", a, b, "--markdown", md)
    assert merged.returncode == 0, merged.stderr
    table = md.read_text().splitlines()
    assert len(table) == 2 + 4 and any("board (Other CPU)" in line for line in table)


def test_bench_rounds_take_the_files_in_turn_and_report_the_median_round(tiny_export):
    """Catches: rounds run back to back per file (A A B B, where the machine's drift lands on one
    file), a row per round instead of per file, or a row's p50 not one of its rounds'."""
    paths, _ = tiny_export
    measured = []
    result = bench([paths["fp32"], paths["int8"]], [1], 1, 2, 0.1, None, rounds=3,
                   progress=lambda msg: measured.append(msg.split(" ")[0]))
    assert measured == ["fp32", "int8"] * 3
    assert [r["variant"] for r in result["rows"]] == ["fp32", "int8"] and result["settings"]["rounds"] == 3
    for row in result["rows"]:
        assert len(row["p50_ms_rounds"]) == 3 and row["p50_ms"] == sorted(row["p50_ms_rounds"])[1]
        assert row["p50_spread_ms"] == max(row["p50_ms_rounds"]) - min(row["p50_ms_rounds"])


def test_median_round_keeps_one_rounds_percentiles_whole():
    """Catches: percentiles taken as medians one by one (a p90 from another round than the p50, which
    can put a p90 under its p50) or the mean of the rounds' p50s."""
    rounds = [{"latency": {"p50_ms": p50, "p90_ms": p90}, "peak_rss_mb": rss}
              for p50, p90, rss in [(1.0, 1.1, 80), (3.0, 3.1, 81), (2.0, 5.0, 82), (9.0, 9.5, 83)]]
    row = median_round(rounds)
    assert row["latency"]["p50_ms"] == 2.0 and row["latency"]["p90_ms"] == 5.0 and row["peak_rss_mb"] == 82
    assert row["latency"]["p50_ms_rounds"] == [1.0, 3.0, 2.0, 9.0] and row["latency"]["p50_spread_ms"] == 8.0
    assert median_round(rounds[:1])["latency"]["p50_spread_ms"] is None


def test_bench_torch_baseline_gives_a_speedup(tiny_export, tiny_run_dir, tmp_path):
    paths, _ = tiny_export
    out = tmp_path / "t.json"
    result = dlswm("bench", paths["fp32"], paths["int8"], "--torch", tiny_run_dir, "--duration", 0.3, "--warmup", 5,
                   "--json", out, block_torch=False)
    assert result.returncode == 0, result.stderr
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["torch-fp32"]["speedup"] == 1.0 and rows["int8"]["speedup"] > 0
    # Greedy agreement with torch: the fp32 file computes torch's logits to ~1e-6; the tiny policy's
    # near-tied logits leave the int8 file's argmax anywhere in [0, 1].
    assert rows["fp32"]["agreement"] >= 0.99 and 0 <= rows["int8"]["agreement"] <= 1


def test_bench_from_a_checkout_root_with_a_plain_install(tiny_export, tmp_path):
    """README's install is `pip install .`; from the checkout's root, the worker's `python -m` used to
    import the checkout's `dlswm/` folder (the CLI alone) instead of the installed package."""
    checkout = tmp_path / "checkout"
    shutil.copytree(Path(__file__).resolve().parents[1], checkout,
                    ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info", "__pycache__"))
    # A venv of its own with a plain (non-editable) install of dlswm; the test venv's packages are
    # reached through a .pth path entry, which keeps out the editable install's import hook.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "test-deps.pth").write_text(next(p for p in sys.path if p.endswith("site-packages")) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", site, checkout], check=True, capture_output=True, timeout=300)
    result = subprocess.run([venv / "bin" / "python", "-c", "import dlswm.runtime; print(dlswm.runtime.__file__)"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith(str(site)), result.stderr  # the installed package, not the checkout
    launcher = tmp_path / "bin" / "dlswm"  # as a console script: its folder leads sys.path, not the cwd
    launcher.parent.mkdir()
    launcher.write_text("import sys\nfrom dlswm.cli import main\nsys.exit(main())\n")
    result = subprocess.run([venv / "bin" / "python", launcher, "bench", tiny_export[0]["int8"], "--duration", "0.2",
                             "--warmup", "2", "--json", tmp_path / "b.json"], cwd=checkout,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["p50_ms"] > 0


@pytest.fixture
def bad_models(tiny_export, tmp_path):
    good = onnx.load(tiny_export[0]["fp32"])
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_export[0]["fp32"].read_bytes()[:2000])
    text = tmp_path / "text.onnx"
    text.write_text("hello")
    foreign = tmp_path / "foreign.onnx"
    del good.metadata_props[:]
    onnx.save(good, foreign)
    newer = tmp_path / "newer.onnx"
    card = json.loads(onnx.load(tiny_export[0]["fp32"]).metadata_props[0].value)
    onnx.helper.set_model_props(good, {METADATA_KEY: json.dumps({**card, "format_version": 99})})
    onnx.save(good, newer)
    wrong_actions = tmp_path / "wrong.onnx"
    onnx.helper.set_model_props(good, {METADATA_KEY: json.dumps({**card, "action_ids": card["action_ids"][:3]})})
    onnx.save(good, wrong_actions)
    cases = {"missing": tmp_path / "nope.onnx", "directory": tmp_path, "truncated": truncated, "text": text,
             "foreign": foreign, "newer": newer, "wrong actions": wrong_actions}
    # Cards that hung play and bench, or ended in tracebacks, or were accepted:
    config_without_policy = {k: v for k, v in card["config"].items() if k != "policy"}
    for name, changed in {"other game's env": {"env": {**card["env"], "game": "Seaquest"}},  # hang
                          "same-size game": {"env": {**card["env"], "game": "Tennis"}},  # played Tennis as "Pong"
                          "env null": {"env": None}, "frame_stack 2": {"env": {**card["env"], "frame_stack": 2}},
                          "frame_size 84": {"env": {**card["env"], "frame_size": 84}},
                          "frameskip 0": {"env": {**card["env"], "frameskip": 0}},
                          "no policy config": {"config": config_without_policy},
                          "format 0": {"format_version": 0}}.items():
        path = tmp_path / f"{name.replace(' ', '_')}.onnx"
        onnx.helper.set_model_props(good, {METADATA_KEY: json.dumps({**card, **changed})})
        onnx.save(good, path)
        cases[name] = path
    return cases


@pytest.mark.parametrize("case, words", [
    ("missing", "does not exist"), ("directory", "is a directory"), ("truncated", "not a loadable ONNX"),
    ("text", "not a loadable ONNX"), ("foreign", "not a dlswm agent"), ("newer", "upgrade dlswm"),
    ("wrong actions", "3 actions"), ("other game's env", "names the game Pong but its env plays Seaquest"),
    ("same-size game", "its env plays Tennis"), ("env null", "env and config must be objects"),
    ("frame_stack 2", "reads frames of shape [4, 96, 96]"), ("frame_size 84", "config env.frame_size=84"),
    ("frameskip 0", "env.frameskip=0 is out of range"), ("no policy config", "config is incomplete"),
    ("format 0", "format 0"),
])
@pytest.mark.parametrize("command", ["play", "bench"])
def test_bad_models_give_one_line_errors(bad_models, case, words, command):
    """`play` and `bench` share one check of the model card (`ModelCard.check`), before any work."""
    extra = ["--max-steps", 5] if command == "play" else ["--warmup", 1, "--duration", 0.1]
    result = dlswm(command, bad_models[case], *extra)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and words in result.stderr


def test_a_card_from_a_newer_dlswm_with_extra_fields_plays_with_a_warning(tiny_export, tmp_path):
    """A board's runtime is often older than the trainer: a training option added since (here
    `ppo.future_option`; `ppo.real_epochs` was refused so) must not stop it playing."""
    good = onnx.load(tiny_export[0]["int8"])
    card = json.loads(good.metadata_props[0].value)
    config = {**card["config"], "ppo": {**card["config"]["ppo"], "future_option": 3}, "future_section": {"x": 1}}
    onnx.helper.set_model_props(good, {METADATA_KEY: json.dumps({**card, "env": {**card["env"], "sticky_seed": 1},
                                                                 "made_by": "dlswm 9.1", "config": config})})
    newer = tmp_path / "newer-minor.onnx"
    onnx.save(good, newer)
    result = dlswm("play", newer, "--max-steps", 5)
    assert result.returncode == 0, result.stderr
    assert "warning: " in result.stderr and "env.sticky_seed" in result.stderr and "made_by" in result.stderr
    assert "config.ppo.future_option" in result.stderr and "config.future_section" in result.stderr


@pytest.mark.parametrize("args, words", [
    (["--device", "quantum"], "available: "), (["--episodes", "0"], "--episodes"), (["--threads", "-1"], "--threads"),
    (["--json", "/nonexistent/dir/r.json"], "cannot write"), (["--record", "/nonexistent/dir/r.gif"], "cannot write"),
    # Each of these gave a traceback, or was accepted, before:
    (["--json", "/proc/r.json"], "cannot write"),  # os.access says yes to root there; the results were lost
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--temperature", "1e-300"], "--temperature"), (["--threads", "10000"], "--threads"),
])
def test_bad_options_give_one_line_errors(tiny_export, args, words):
    result = dlswm("play", tiny_export[0]["int8"], "--max-steps", 5, *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, words", [
    (["--threads", ","], "--threads"), (["--threads", "10000"], "--threads"), (["--threads", "0,2"], "--threads"),
    (["--duration", "nan"], "--duration"), (["--duration", "0"], "--duration"), (["--rounds", "0"], "--rounds"),
    (["--markdown", "/proc/b.md"], "cannot write"),
])
def test_bad_bench_options_give_one_line_errors_before_measuring(tiny_export, args, words):
    result = dlswm("bench", tiny_export[0]["int8"], "--warmup", 1, *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr and "measuring" not in result.stderr


def test_play_loads_no_rich_until_its_games_are_over(tiny_export):
    # Catches a live progress display, or a rich import on play's path, coming back: rich and its
    # refresh thread held ~2.5 MB of the main command's peak RSS during the games (docs/performance.md).
    spy = ("import sys, dlswm.runtime.play as p; games = p.run_episodes\n"
           "def run(*a, **k):\n"
           "    out = games(*a, **k); print('rich during games:', any(m.startswith('rich') for m in sys.modules)); return out\n"
           "p.run_episodes = run\n")
    code = NO_TORCH + spy + "from dlswm.cli import main; sys.argv = ['dlswm'] + sys.argv[1:]; main()"
    result = subprocess.run([sys.executable, "-c", code, "play", str(tiny_export[0]["int8"]), "--max-steps", "20",
                             "--vs-random"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("rich during games: False") == 2 and "model call" in result.stdout


def test_play_with_no_model_argument_plays_the_shipped_crazyclimber_agent(tmp_path):
    """`dlswm play` alone plays the shipped CrazyClimber agent."""
    result = dlswm("play", "--max-steps", 100, "--json", tmp_path / "play.json")  # torch unimportable
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "play.json").read_text())
    assert report["model"]["path"] == str(default_agent()) and report["steps"] == 100
    assert open_agent(default_agent()).card.game == "CrazyClimber"


@pytest.mark.parametrize("key", sorted(shipped_agents()))
def test_every_shipped_agent_passed_the_gate_and_plays_its_game_by_name(key, tmp_path):
    """Each shipped agent: an int8 export (x86 `int8` or full-range `int8-arm`) of a trained `cpu` run
    that passed the parity gate, with its export report beside it, and `dlswm play --game G` plays it."""
    path = shipped_agents()[key]
    card = open_agent(path).card
    export = json.loads(export_report_path(path).read_text())
    row = next(r for r in export["variants"] if r["variant"] == card.variant)
    assert card.variant in ("int8", "int8-arm") and path.name == f"{key}.{card.variant}.onnx"
    assert row["written"] and not row["below_threshold"]
    assert card.game == export["game"] and card.provenance["iteration"] == export["iteration"]
    assert card.provenance["preset"] == "cpu" and card.provenance["real_steps"] > 0
    result = dlswm("play", "--game", card.game, "--max-steps", 20, "--json", tmp_path / "play.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "play.json").read_text())["model"]["path"] == str(path)


@pytest.mark.parametrize("args, words", [
    (("--game", "Tennis"), "no agent for 'Tennis' is shipped (shipped: crazyclimber"),
    (("MODEL", "--game", "CrazyClimber"), "not both"),
])
def test_play_game_refuses_an_unshipped_game_or_a_model_beside_it(args, words):
    args = [default_agent() if a == "MODEL" else a for a in args]
    result = dlswm("play", *args, "--max-steps", 10)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


def test_no_shipped_agent_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.resources

    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(UserError, match="dlswm export"):
        default_agent()


def test_bench_torch_refuses_a_run_of_another_game_or_preset(tiny_run_dir):
    """Before, it measured the tiny Pong run against the shipped CrazyClimber agent and reported
    the speed-up of one over the other."""
    result = dlswm("bench", default_agent(), "--torch", tiny_run_dir, "--duration", 0.1, block_torch=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "a Pong run of preset tiny, not the network" in result.stderr and "(CrazyClimber, preset cpu)" in result.stderr


def test_ctrl_c_in_play_ends_with_one_error_line():
    """Before, typer turned the interrupt into a bare exit code 130: the user saw a blank line."""
    code = NO_TORCH + "import sys; from dlswm.cli import main; sys.argv = ['dlswm', 'play', '--episodes', '30']; main()"
    # SIGINT at its default in the child, whatever pytest inherited (a shell's background job ignores it).
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err


def test_the_native_vector_env_steps_exactly_as_ale_pys_gymnasium_env():
    """make_env drives ale_py's ALEVectorInterface itself (play without gymnasium): a renamed or
    dropped argument (frame skip, the episode cap in frames, no-op starts, seeding) changes frames,
    rewards or where episodes end against ale_py's own AtariVectorEnv on the same seed and actions."""
    from ale_py.vector_env import AtariVectorEnv

    from dlswm.config import EnvConfig
    from dlswm.runtime.atari import make_env, resolve_game

    cfg = EnvConfig(game="Breakout", max_episode_steps=60)
    ours = make_env(cfg, 2)
    theirs = AtariVectorEnv(resolve_game(cfg.game).rom_id, 2, img_height=96, img_width=96, stack_num=4, frameskip=4,
                            noop_max=30, max_num_frames_per_episode=60 * 4, reward_clipping=False, use_fire_reset=False)
    assert (ours.reset(seed=5)[0] == theirs.reset(seed=5)[0]).all()
    rng, ends = np.random.default_rng(0), 0
    for _ in range(200):
        actions = rng.integers(0, 4, 2)
        mine, ale = ours.step(actions), theirs.step(actions)
        for a, b in zip(mine[:4], ale[:4]):  # obs, rewards, terminations, truncations
            assert (a == b).all()
        ends += int(mine[3].sum())
    assert ends >= 4  # the 60-step cap cut episodes and both envs reset alike after


AVX2 = {"arch": "x86_64", "flags": ["sse4_2", "avx", "avx2", "fma"]}
FULL_RANGE = {"activation_type": "QUInt8", "weight_type": "QInt8"}  # onnxruntime's defaults


@pytest.mark.parametrize("quantization, runtime, info, saturates, catches", [
    (FULL_RANGE, "onnxruntime", AVX2, True, "the warning never given"),
    ({**FULL_RANGE, "reduce_range": True}, "onnxruntime", AVX2, False, "weights within +-64 not told apart"),
    ({"activation_type": "QInt8", "weight_type": "QInt8"}, "onnxruntime", AVX2, True,
     "int8-arm exempted, though x86 shifts its activations to uint8 and saturates alike (docs/int8.md)"),
    (FULL_RANGE, "onnxruntime", {**AVX2, "flags": AVX2["flags"] + ["avx512_vnni"]}, False, "VNNI not looked for"),
    (FULL_RANGE, "onnxruntime", {"arch": "aarch64", "flags": ["asimd", "asimddp"]}, False, "ARM taken for x86"),
    ({}, "onnxruntime", AVX2, False, "a float file warned about"),
    (FULL_RANGE, "openvino", AVX2, False, "another runtime's kernels judged by onnxruntime's"),
])
def test_int8_saturates_only_full_range_weights_on_x86_without_vnni(quantization, runtime, info, saturates, catches):
    assert int8_saturates(quantization, runtime, info) is saturates, catches


@pytest.mark.parametrize("flags, warned", [(["avx2"], True), (["avx2", "avx512_vnni"], False)])
def test_play_warns_in_one_line_where_the_shipped_full_range_file_saturates(flags, warned):
    """Catches: the warning not wired into `play`, or given on a CPU with VNNI. The CPU's flags are
    patched; the shipped Seaquest file is `int8-arm`, full-range int8 weights and activations."""
    cpu = f"{{**real(), 'arch': 'x86_64', 'flags': {flags!r}}}"
    patch = f"import dlswm.runtime.machine as m; real = m.machine; m.machine = lambda: {cpu}; from dlswm.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", patch, "play", "--game", "Seaquest", "--max-steps", "5"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == int(warned) and all("without VNNI" in w for w in warnings), result.stderr
