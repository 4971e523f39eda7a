"""The command line: `info`, and bad input refused in one line naming the valid choices, before any work."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dlswm.cli import app

runner = CliRunner()


def test_info_json_reports_training_and_inference_totals():
    result = runner.invoke(app, ["info", "--preset", "paper", "--game", "Breakout", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["game"] == "Breakout" and report["num_actions"] == 4
    assert 11_000_000 <= report["training_params"] <= 13_000_000
    assert 2_800_000 <= report["inference_params"] <= 3_600_000


def test_info_table_and_override():
    result = runner.invoke(app, ["info", "--preset", "tiny", "--set", "policy.hidden=64"])
    assert result.exit_code == 0, result.output
    assert "inference total" in result.stdout and "policy" in result.stdout


def dlswm(*args):
    return subprocess.run([sys.executable, "-c", "from dlswm.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, names", [
    (["info", "--preset", "huge"], ["tiny", "cpu", "paper"]),
    (["info", "--game", "Pongg"], ["Pong"]),
    (["info", "--set", "ppo.lrr=1"], ["lr"]),
])
def test_bad_input_is_one_line_naming_the_valid_choices(args, names):
    result = dlswm(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(n in lines[0] for n in names)
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("override", ["schedule.collect_envs=0", "env.frame_stack=0", "ppo.lr=nan"])
def test_train_refuses_an_out_of_range_config_before_writing_anything(tmp_path, override):
    """These segfaulted, hung or crashed inside a run; now one line, and no run directory."""
    result = dlswm("train", "Pong", "--preset", "tiny", "--set", override, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: config {override.split('=')[0]}="), result.stderr
    assert not (tmp_path / "run").exists()


def test_help_keeps_the_extras_name_in_its_install_hint():
    """Rich reads `[export]` as a markup tag and drops it unless escaped: the hint said `pip install 'dlswm'`."""
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    assert "pip install 'dlswm[export]'" in result.stdout
