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


def test_play_imports_neither_gymnasium_nor_pydantic():
    """What `dlswm play` leaves unimported is its memory: gymnasium (~12 MB; ale_py's native vector
    interface is driven directly), pydantic (~9 MB; typer 0.29 imports it on every command) and
    numpy.ma (~2 MB; `np.percentile` imports it on first use)."""
    result = run("from dlswm.cli import main; sys.argv = ['dlswm', 'play', '--max-steps', '20']\n"
                 "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                 "print(sorted({m for m, v in sys.modules.items() if v is not None}"
                 " & {'torch', 'gymnasium', 'pydantic', 'numpy.ma'}))")
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stdout[-300:] + result.stderr
