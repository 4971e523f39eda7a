"""The run's state as a typed, versioned file: round trip, older versions, newer versions, renamed
config keys, and export refusing a checkpoint that sits in another game's run directory."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from dlswm import config
from dlswm.config import Config, resolve
from dlswm.errors import UserError
from dlswm.train.checkpoint import VERSION, RunState


def test_a_run_state_round_trips_through_its_file(tiny_run_dir, tmp_path):
    state = RunState.load(tiny_run_dir)
    state.save(tmp_path / "a.pt", tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    again = RunState.load(tmp_path / "a.pt")
    for field in ("config", "game", "iteration", "real_steps", "wall_s", "eval", "best", "dlswm_version", "rng"):
        if field == "rng":
            assert again.rng["numpy"] == state.rng["numpy"] and torch.equal(again.rng["torch"], state.rng["torch"])
        else:
            assert getattr(again, field) == getattr(state, field), field
    assert state.models.keys() == again.models.keys()
    assert all(torch.equal(state.models[k], again.models[k]) for k in state.models)
    assert torch.load(tmp_path / "a.pt", weights_only=True)["version"] == VERSION


def version_1(state: RunState) -> dict:
    """What the first dlswm wrote: a dict without the fields added since."""
    data = state.to_dict()
    data["version"] = 1
    for key in ("wall_s", "eval", "best", "dlswm_version"):
        del data[key]
    return data


def test_a_version_1_checkpoint_loads_with_the_fields_added_since(tiny_run_dir, tmp_path):
    """Mutation caught: `_migrate` dropped (every field is required from version 2 on)."""
    torch.save(version_1(RunState.load(tiny_run_dir)), tmp_path / "old.pt")
    old = RunState.load(tmp_path / "old.pt")
    assert (old.wall_s, old.eval, old.best, old.dlswm_version) == (0.0, None, None, "0.1.0")
    assert old.iteration == RunState.load(tiny_run_dir).iteration


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(version=VERSION + 1), f"this dlswm reads up to {VERSION}"),
    (lambda d: d.update(format="other"), "is not a dlswm checkpoint"),
    (lambda d: d.pop("iteration"), "is a damaged dlswm checkpoint (KeyError"),
    (lambda d: d.update(game=None), "is a damaged dlswm checkpoint (TypeError"),
])
def test_a_newer_foreign_or_damaged_checkpoint_is_one_user_error(tiny_run_dir, tmp_path, change, words):
    data = RunState.load(tiny_run_dir).to_dict()
    change(data)
    torch.save(data, tmp_path / "x.pt")
    with pytest.raises(UserError) as e:
        RunState.load(tmp_path / "x.pt")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_renamed_config_keys_are_read_under_their_new_names(tiny_run_dir, tmp_path, monkeypatch):
    """A key renamed after a run was saved must not strand the run. Mutation caught: `rename_keys`
    not applied in `Config.from_dict` ('unknown config key')."""
    monkeypatch.setattr(config, "RENAMED_KEYS", {"ppo.learning_rate": "ppo.lr", "eval.episodes": "schedule.eval_episodes"})
    data = resolve("tiny", "Pong").to_dict()
    data["ppo"]["learning_rate"] = 1.25e-4
    del data["ppo"]["lr"]
    data["eval"] = {"episodes": 7}  # a key moved to another section
    del data["schedule"]["eval_episodes"]
    cfg = Config.from_dict(data)
    assert (cfg.ppo.lr, cfg.schedule.eval_episodes) == (1.25e-4, 7)
    state = RunState.load(tiny_run_dir).to_dict()
    state["config"]["ppo"]["learning_rate"] = state["config"]["ppo"].pop("lr")
    torch.save(state, tmp_path / "renamed.pt")
    assert RunState.load(tmp_path / "renamed.pt").config == RunState.load(tiny_run_dir).config


def test_export_refuses_a_checkpoint_in_another_games_run_directory(tiny_run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run, ignore=shutil.ignore_patterns("export", "tb", "media"))
    cfg = json.loads((run / "config.json").read_text())
    cfg["env"]["game"] = "Breakout"
    (run / "config.json").write_text(json.dumps(cfg))
    result = subprocess.run([sys.executable, "-m", "dlswm", "export", str(run)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "the checkpoint is a Pong agent but the run directory (config.json, buffer) is Breakout's" in result.stderr
    assert not (run / "export").exists()
