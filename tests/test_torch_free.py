"""The base install is the edge runtime: it must import and run with torch unimportable."""

import subprocess
import sys

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120)


def test_runtime_imports_without_torch():
    result = run("import dlswm.runtime, dlswm.runtime.atari, dlswm.config, dlswm.cli\n"
                 "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\nprint('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_cli_help_and_games_without_torch():
    result = run("import sys; from dlswm.cli import main; sys.argv = ['dlswm', 'games']; main()")
    assert result.returncode == 0 and "Pong" in result.stdout.split(), result.stderr


def test_torch_command_says_how_to_get_torch():
    result = run("import sys; from dlswm.cli import main; sys.argv = ['dlswm', 'info']; main()")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: `dlswm info` needs torch: pip install 'dlswm[train]'"
