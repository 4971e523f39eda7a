"""The `dlswm` command. Thin: each command parses its options and calls into a subpackage.

Commands that need torch import it inside their body, so `dlswm --help`, `play` and `bench` work
from the base (torch-free) install.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dlswm.errors import UserError

app = typer.Typer(
    name="dlswm",
    help="Discrete Latent Space World Models: train Atari agents, export them to ONNX, run them on the edge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Preset(str, enum.Enum):
    tiny = "tiny"
    cpu = "cpu"
    paper = "paper"


PresetOption = Annotated[Preset, typer.Option("--preset", "-p", help="Named hyperparameter set.")]
GameOption = Annotated[str, typer.Option("--game", "-g", help="Atari game, e.g. Pong or BankHeist.")]
SetOption = Annotated[list[str], typer.Option("--set", help="Override a config field: section.field=value.")]


def require_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(f"`dlswm {command}` needs torch: pip install 'dlswm[train]'", code=1) from None


def console(stderr: bool = False):
    """Rich console; piped output (logs, CI) gets a width that fits the tables, not 80 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 150)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@app.command()
def info(
    preset: PresetOption = Preset.paper,
    game: GameOption = "Pong",
    overrides: SetOption = [],  # noqa: B006 (typer reads the default, never mutates it)
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Parameters of every network, the training and inference totals, and inference MACs."""
    from dlswm.config import resolve
    from dlswm.runtime.atari import resolve_game

    cfg = resolve(preset.value, game, overrides)
    atari = resolve_game(cfg.env.game, cfg.env.full_action_space)
    require_torch("info")
    from dlswm.models import System
    from dlswm.models.summary import summarize

    summary = summarize(System(cfg, atari.num_actions))
    report = {"preset": cfg.preset, "game": atari.name, "num_actions": atari.num_actions,
              "config_digest": cfg.digest(), **summary}
    if as_json:
        print_json(report)
        return
    from dlswm.runtime.report import info_table

    console().print(info_table(report))


TorchThreadsOption = Annotated[int | None, typer.Option(
    min=1, max=1024, help="torch intra-op threads; fewer than the cores when other work shares them.",
    show_default="OMP_NUM_THREADS, else one per core")]


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def train(
    game: Annotated[str | None, typer.Argument(help="Atari game, e.g. Pong (not needed with --resume).")] = None,
    preset: Annotated[Preset | None, typer.Option("--preset", "-p", help="Named hyperparameter set.", show_default="cpu")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory.", show_default="runs/GAME-PRESET-sSEED")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of networks, environments and sampling.", show_default="0")] = None,
    device: Annotated[Device, typer.Option(help="auto: CUDA when torch sees a GPU.")] = Device.auto,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out after its last finished iteration; "
                                         "with --set schedule.iterations=N (and wm_epochs, ppo_updates, eval_episodes) run on past its end.")] = False,
    overrides: SetOption = [],  # noqa: B006
    threads: TorchThreadsOption = None,
) -> None:
    """Train an agent in the SimPLe loop on a real Atari game; resumable after any interruption."""
    require_torch("train")
    from dlswm.config import resolve
    from dlswm.train.loop import train as run_training

    if resume:
        if out is None:
            raise UserError("--resume needs --out RUN_DIR")
        if preset is not None or seed is not None or game is not None:
            raise UserError("--resume continues a run with its saved config and game: drop GAME, --preset and --seed")
        run_training(None, out, device.value, resume=True, threads=threads, extend=overrides)
        return
    if game is None:
        raise UserError("missing GAME (e.g. `dlswm train Pong`)")
    cfg = resolve((preset or Preset.cpu).value, game, overrides, seed)
    from dlswm.runtime.atari import resolve_game

    cfg.env.game = resolve_game(cfg.env.game).name  # canonical spelling in the config and file names
    run_training(cfg, out or Path("runs") / f"{cfg.env.game}-{cfg.preset}-s{cfg.seed}", device.value, threads=threads)


@app.command()
def profile(
    game: Annotated[str, typer.Argument(help="Atari game, e.g. Pong.")] = "Pong",
    preset: PresetOption = Preset.cpu,
    device: Annotated[Device, typer.Option(help="auto: CUDA when torch sees a GPU.")] = Device.auto,
    overrides: SetOption = [],  # noqa: B006
    batches: Annotated[int, typer.Option(min=1, max=1000, help="Timed batches (PPO updates) per phase.")] = 4,
    eval_steps: Annotated[int, typer.Option(min=1, help="Assumed vector steps of one evaluation, for the projection.")] = 5_000,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON.")] = None,
    threads: TorchThreadsOption = None,
) -> None:
    """Time each phase of the training loop at a preset's sizes; project the whole schedule."""
    require_torch("profile")
    from dlswm.atomic import check_outputs, write_result
    from dlswm.config import resolve
    from dlswm.train.loop import pick_device
    from dlswm.train.profile import profile as run_profile

    cfg = resolve(preset.value, game, overrides)
    check_outputs({"--json": json_out})
    result = run_profile(cfg, pick_device(device.value), batches, eval_steps,
                         progress=lambda msg: console(stderr=True).log(f"timing {msg}"), threads=threads)
    from dlswm.runtime.report import profile_table

    console().print(profile_table(result))
    typer.echo(f"world model {result['wm_sample_steps_per_s']:,.0f} sample-steps/s, imagination "
               f"{result['imagined_steps_per_s']:,.0f} imagined steps/s; evaluation assumes {eval_steps:,} steps a game")
    if json_out is not None:
        write_result(json_out, json.dumps(result, indent=2).encode(), "--json")


@app.command()
def curves(
    runs: Annotated[list[Path], typer.Argument(help="Training run directories.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("curves.png"),
    label: Annotated[list[str], typer.Option("--label", help="A legend name per run, in order.", show_default="the run directory's name")] = [],  # noqa: B006
    markdown: Annotated[Path | None, typer.Option(help="Also write the runs' iterations side by side as a markdown table.")] = None,
) -> None:
    """Learning curves of runs: real score, imagined vs real reward, entropies, the model on new data."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("`dlswm curves` needs matplotlib: pip install 'dlswm[train]'", code=1) from None
    from dlswm.atomic import check_outputs, write_result
    from dlswm.experiments.curves import iteration_table, plot_runs

    if label and len(label) != len(runs):
        raise UserError(f"--label given {len(label)} times for {len(runs)} runs: give one per run")
    check_outputs({"--markdown": markdown})
    typer.echo(plot_runs(runs, out, label or None))
    if markdown is not None:
        write_result(markdown, iteration_table(runs, label or None).encode(), "--markdown")
        typer.echo(markdown)


class Backend(str, enum.Enum):
    local = "local"
    ray = "ray"
    slurm = "slurm"


@app.command()
def sweep(
    games: Annotated[str, typer.Option(help="Comma-separated games, or a suite: atari100k (the 26 games), article (its six).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep directory: a run per DIR/GAME/seed_S, the manifest DIR/sweep.json.")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2,3,4",
    preset: PresetOption = Preset.cpu,
    overrides: SetOption = [],  # noqa: B006
    backend: Annotated[Backend, typer.Option(help="local: a process pool here; ray: Ray tasks; slurm: a SLURM job array (submitit; its local executor without SLURM).")] = Backend.local,
    max_parallel: Annotated[int | None, typer.Option(min=1, max=4096, help="Runs at once.", show_default="K per GPU, else one per core")] = None,
    runs_per_gpu: Annotated[int, typer.Option(min=1, max=64, help="Runs packed onto one GPU (local and ray).")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, max=1024, help="torch threads of each run.", show_default="the cores divided between the parallel runs")] = None,
    device: Annotated[Device, typer.Option(help="Each run's device.")] = Device.auto,
    address: Annotated[str | None, typer.Option(help="ray: an existing cluster's address (default: a local Ray).")] = None,
    timeout_min: Annotated[int, typer.Option(min=1, help="slurm: each job's time limit; a run past it is requeued and resumes.")] = 24 * 60,
) -> None:
    """Train a grid of games x seeds, one ordinary run each; re-run to resume. Then `dlswm report DIR`."""
    require_torch("sweep")
    import os

    from dlswm.experiments import sweep as sweeps

    grid = sweeps.Sweep.plan(out, sweeps.parse_games(games), sweeps.parse_seeds(seeds), preset.value, overrides)
    module = {Backend.ray: "ray", Backend.slurm: "submitit"}.get(backend)
    if module and importlib.util.find_spec(module) is None:
        raise UserError(f"--backend {backend.value} needs {module}: pip install 'dlswm[sweep]'")
    if backend == Backend.slurm and runs_per_gpu > 1:
        raise UserError("--runs-per-gpu > 1 is for the local and ray backends: a SLURM job gets whole GPUs")
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = torch.cuda.device_count() if device != Device.cpu and backend == Backend.local else 0
    todo_count = len(grid.specs(1, device.value))
    parallel = max_parallel or (gpus * runs_per_gpu if gpus else cores)
    threads = threads or max(1, cores // max(1, min(parallel, todo_count)))
    todo = grid.specs(threads, device.value)
    if not todo:
        grid.save(backend.value)
        console().print(_sweep_table(grid, sweeps))
        typer.echo(f"{out}: all {len(grid.runs)} runs are finished; `dlswm report {out}` tabulates them")
        return
    if backend == Backend.local:
        engine: Any = sweeps.LocalBackend(parallel, gpus, runs_per_gpu)
    elif backend == Backend.ray:
        engine = sweeps.RayBackend(address, threads, runs_per_gpu, parallel)
    else:
        engine = sweeps.SlurmBackend(out / ".submitit", threads, parallel, int(device == Device.cuda), timeout_min)
    typer.echo(f"dlswm sweep: {len(todo)} of {len(grid.runs)} runs to do ({len(grid.runs) - len(todo)} finished), "
               f"backend {backend.value}{' (' + engine.cluster + ')' if backend == Backend.slurm else ''}, "
               f"up to {parallel} at once, {threads} torch thread(s) each, {gpus} GPU(s) x {runs_per_gpu} runs")
    from rich.live import Live

    with Live(_sweep_table(grid, sweeps), console=console(), refresh_per_second=1) as live:
        states = sweeps.run_sweep(grid, todo, engine, parallel, show=lambda s: live.update(_sweep_table(s, sweeps)))
    typer.echo("")
    failed = [k for k, state in states.items() if state == "failed"]
    for key in failed:
        typer.echo(f"failed: {key}: {grid.runs[key].get('error', '')} (log: {out / 'logs'})", err=True)
    if failed:
        raise UserError(f"{len(failed)} of {len(states)} runs failed (above); run the same sweep again to retry them", code=1)
    typer.echo(f"{out}: all {len(states)} runs finished; `dlswm report {out}` tabulates them")


def _sweep_table(grid: Any, sweeps: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"dlswm sweep {grid.out}: preset {grid.preset}")
    for col in ("game", "seed", "state", "iteration", "last eval"):
        table.add_column(col, justify="right" if col in ("seed", "iteration", "last eval") else "left")
    for game, seed, state, iteration, score in sweeps.status_rows(grid):
        table.add_row(game, str(seed), state, iteration, score)
    return table


@app.command()
def report(
    dirs: Annotated[list[Path], typer.Argument(help="Sweep or run directories.")],
    markdown: Annotated[Path | None, typer.Option(help="Write the table as Markdown.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the table and aggregates as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the learning curves per game (PNG).")] = None,
) -> None:
    """The results table: per game mean and spread over seeds, human-normalized, aggregates with intervals."""
    from dlswm.atomic import check_outputs, write_result

    for wanted, module in ((True, "rliable"), (plot, "matplotlib")):
        if wanted and importlib.util.find_spec(module) is None:
            raise UserError(f"`dlswm report` needs {module}: pip install 'dlswm[sweep]'", code=1)
    check_outputs({"--markdown": markdown, "--json": json_out, "--plot": plot})
    from rich.table import Table

    from dlswm.experiments import report as results

    runs = results.find_runs(dirs)
    summary = results.summarize(runs)
    table = Table(title=f"dlswm report: {len(runs)} run(s), preset {', '.join(summary['presets'])}")
    for col in results.COLUMNS:
        table.add_column(col, justify="left" if col == "game" else "right")
    for row in results.table_rows(summary):
        table.add_row(*row)
    console().print(table)
    for line in results.aggregate_lines(summary):
        typer.echo(line)
    for run in summary["incomplete"]:
        typer.echo(f"incomplete, not averaged: {run['run']} ({run['iterations']} iterations)")
    if markdown is not None:
        write_result(markdown, results.markdown(summary).encode(), "--markdown")
    if json_out is not None:
        write_result(json_out, json.dumps(summary, indent=2).encode(), "--json")
    if plot is not None:
        typer.echo(f"curves: {results.plot(runs, plot)}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Training run directory (or its checkpoint.pt).")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.", show_default="RUN/export")] = None,
    variants: Annotated[str, typer.Option(help="Comma-separated: fp32, int8 (x86), int8-arm (onnx), bf16 (openvino); each format writes those it offers.")] = "fp32,int8",
    formats: Annotated[str, typer.Option(help="Comma-separated: onnx, openvino, litert, executorch (the last three: pip install 'dlswm\\[export]').")] = "onnx",
    calibration_frames: Annotated[int, typer.Option(min=1, help="Real frames from the replay buffer for int8 calibration.")] = 512,
    min_overlap: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Policy overlap with torch (chance of the same sampled action) a variant needs.", show_default="0.97 int8, 0.999 fp32")] = None,
    allow_low_agreement: Annotated[bool, typer.Option("--allow-low-agreement", help="Write variants under the overlap threshold anyway.")] = False,
    equalize: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Before int8, rescale the encoder's activation channels toward equal ranges (SmoothQuant's alpha; 0: off).", show_default="0.5")] = None,
    two_tailed: Annotated[bool, typer.Option("--two-tailed-calibration", help="onnx int8: cut each activation's range at both tails, not at a percentile of its absolute values.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing output files.")] = False,
) -> None:
    """Write the ~3M-parameter agent (encoder + codebook + policy) for each runtime, with a parity report."""
    require_torch("export")

    from dlswm.export.formats import parse_formats
    from dlswm.export.pipeline import export_run
    from dlswm.export.variants import parse_variants
    from dlswm.runtime.report import export_table

    chosen_formats, chosen_variants = parse_formats(formats), parse_variants(variants, two_tailed)
    if two_tailed and not ("onnx" in [f.name for f in chosen_formats] and any(v.quantized for v in chosen_variants)):
        raise UserError("--two-tailed-calibration sets the onnx format's int8 calibration: "
                        "export onnx (--formats) and int8 or int8-arm (--variants)")
    log = console(stderr=True)
    with log.status("loading the run") as status:
        def progress(message: str) -> None:
            log.print(message)  # the finished stages stay on screen; the spinner shows the current one
            status.update(message)

        report = export_run(run, out_dir, chosen_variants, calibration_frames, force, min_overlap,
                            allow_low_agreement, progress=progress, formats=chosen_formats,
                            **({} if equalize is None else {"equalize_alpha": equalize}))
    console().print(export_table(report))
    for row in report["variants"]:
        typer.echo(f"{row.get('format', 'onnx')} {row['variant']}: " + " ".join(filter(None, [row["written"] and row["path"], row.get("reason")])))
    typer.echo(f"report: {report['report']}")
    if not all(row["written"] for row in report["variants"]):  # a script or CI must not miss it
        raise UserError("not every variant was written: see above", code=1)


MAX_THREADS = 256
ThreadsOption = Annotated[int, typer.Option(min=1, max=MAX_THREADS, help="The runtime's intra-op threads.")]
RuntimeOption = Annotated[str | None, typer.Option(
    help="onnxruntime, openvino, litert or executorch (the last three are extras).", show_default="by the file: "
    ".onnx onnxruntime, .xml openvino, .tflite litert, .pte executorch")]


def parse_thread_counts(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4], each in 1..MAX_THREADS."""
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or not all(1 <= t <= MAX_THREADS for t in counts):
        raise UserError(f"--threads expects comma-separated integers from 1 to {MAX_THREADS}, got '{text}'")
    return counts


def check_temperature(temperature: float) -> float:
    """0 (greedy) or a finite temperature from 0.01 to 100: logits over 1e-300 overflow to inf, and
    the probabilities of inf or nan are nan."""
    if temperature != 0 and not (math.isfinite(temperature) and 0.01 <= temperature <= 100):
        raise UserError(f"--temperature must be 0 (greedy) or from 0.01 to 100, got {temperature}")
    return temperature
DeviceOption = Annotated[str, typer.Option(help="cpu; with onnxruntime also cuda or any execution provider it has, with openvino gpu or npu.")]


@app.command()
def play(
    model: Annotated[Path | None, typer.Argument(help="An agent exported by `dlswm export`.", show_default="the shipped agent of --game")] = None,
    game: Annotated[str | None, typer.Option(help="Play the shipped agent of this game (`dlswm play --game Pong`).", show_default="CrazyClimber")] = None,
    device: DeviceOption = "cpu",
    episodes: Annotated[int, typer.Option(help="Full games to play.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the no-op starts and of action sampling.")] = 0,
    threads: ThreadsOption = 1,
    runtime: RuntimeOption = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature, 0 = greedy.", show_default="the model's eval temperature")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Cut each episode after this many steps (the protocol's cap is 27,000).")] = None,
    record: Annotated[Path | None, typer.Option(help="Write the played frames as an animated GIF.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
    vs_random: Annotated[bool, typer.Option("--vs-random", help="Then play a uniformly random agent on the same seeds; report both human-normalized.")] = False,
) -> None:
    """Play Atari with an exported agent (no torch) and report score, latency and memory."""
    from dlswm.atomic import check_outputs, write_result
    from dlswm.runtime.gif import GifWriter
    from dlswm.runtime.machine import int8_saturates
    from dlswm.runtime.play import check, default_agent, play as play_games
    from dlswm.runtime.session import open_agent

    check_outputs({"--record": record, "--json": json_path})
    if record is not None and record.suffix.lower() != ".gif":
        raise UserError(f"--record {record}: dlswm writes .gif (convert it with e.g. `ffmpeg -i x.gif x.mp4`)")
    if temperature is not None:
        check_temperature(temperature)
    if model is not None and game is not None:
        raise UserError("give a model or --game (its shipped agent), not both")
    agent = open_agent(model or default_agent(game), device, threads, runtime)
    if int8_saturates(agent.card.quantization, agent.runtime):
        typer.echo(f"warning: {agent.path}: full-range int8 weights on an x86 CPU without VNNI: onnxruntime sums "
                   "their products with saturation here, so the agent plays slightly off its graph; a file with "
                   "weights within +-64 (today's `int8` variant) does not (docs/int8.md)", err=True)
    if temperature is None:
        temperature = check_temperature(float(agent.card.config["policy"]["eval_temperature"]))
    check(agent, episodes, max_steps)  # before the first game: errors stay one line
    # One plain line per finished game, not a live display: rich's modules and its refresh thread
    # during the games would sit on play's peak memory (docs/performance.md); rich comes after.
    def game_done(who: str, n: int, result: dict[str, Any]) -> None:
        typer.echo(f"{who} game {n}/{episodes}: {result['score']:g} in {result['length']:,} steps", err=True)

    with GifWriter(record, (agent.card.env_config.frame_size,) * 2) if record else contextlib.nullcontext() as gif:
        report = play_games(agent, episodes, seed, temperature, max_steps, gif, progress=game_done, vs_random=vs_random)
    from dlswm.runtime.report import play_table

    console().print(play_table(report))
    if gif is not None:
        typer.echo(f"recorded {gif.frames} frames: {record}")
    if json_path is not None:
        write_result(json_path, json.dumps(report, indent=2).encode(), "--json")
        typer.echo(f"report: {json_path}")


@app.command()
def bench(
    files: Annotated[list[Path], typer.Argument(help="Agents exported by `dlswm export` (with --compare: bench JSON results).")],
    threads: Annotated[str, typer.Option(help="Comma-separated thread counts to measure.")] = "1",
    runtime: RuntimeOption = None,
    batch: Annotated[int, typer.Option(help="Frame stacks per call.")] = 1,
    warmup: Annotated[int, typer.Option(help="Untimed calls before measuring.")] = 50,
    duration: Annotated[float, typer.Option(help="Seconds of timed calls per variant.")] = 3.0,
    rounds: Annotated[int, typer.Option(help="Measure every file this many times, in turn (A B A B); each row is the median round.")] = 1,
    torch_run: Annotated[Path | None, typer.Option("--torch", help="Also measure the run's weights in torch eager fp32 (needs the train extra).")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Merge bench JSON results from several machines.")] = False,
    peak: Annotated[bool, typer.Option("--peak", help="Measure this machine's int8/fp32 matmul peak; print each variant's distance from its floor (needs onnx).")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the table as Markdown.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a latency chart (PNG, needs matplotlib).")] = None,
) -> None:
    """Latency and memory of agent variants on this machine, each in a fresh process."""
    from dlswm.atomic import check_outputs, write_result
    from dlswm.runtime import bench as benchmark
    from dlswm.runtime.report import bench_markdown, bench_table

    check_outputs({"--json": json_path, "--markdown": markdown, "--plot": plot})
    # What an extra provides is checked before minutes of measuring, not after.
    for wanted, module, extra in ((plot, "matplotlib", "--plot"), (peak, "onnx", "--peak")):
        if wanted and importlib.util.find_spec(module) is None:
            raise UserError(f"{extra} needs {module}: pip install {module}")
    if compare:
        result, title = benchmark.merge(files), "dlswm bench: merged results"
    else:
        thread_counts = parse_thread_counts(threads)
        if not (math.isfinite(duration) and 0 < duration <= 3600):
            raise UserError(f"--duration must be a number of seconds in (0, 3600], got {duration}")
        log = console(stderr=True)
        result = benchmark.bench(files, thread_counts, batch, warmup, duration, torch_run, peak,
                                 progress=lambda msg: log.log(f"measuring {msg}"), runtime=runtime, rounds=rounds)
        row = result["rows"][0]
        title = (f"dlswm bench: {result['game']}, {row['params']:,} params, {row['mmacs']:.1f}M MACs, "
                 f"batch {batch}, {result['machine']['cpu']}")
    console().print(bench_table(result["rows"], title))
    if json_path is not None:
        write_result(json_path, json.dumps(result, indent=2).encode(), "--json")
    if markdown is not None:
        write_result(markdown, bench_markdown(result["rows"]).encode(), "--markdown")
    if plot is not None:
        benchmark.plot(result["rows"], plot)


@app.command()
def games() -> None:
    """List the Atari games ale-py ships."""
    from dlswm.runtime.atari import game_names

    typer.echo("\n".join(game_names()))


def main() -> None:
    """Console entry point: every error the user can cause ends in one line on stderr, no traceback."""
    try:
        code = app(standalone_mode=False)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.code)
    except typer.TyperException as e:  # usage errors: bad option value, unknown command
        if e.format_message():  # a bare `dlswm` has already printed its help: nothing to add
            typer.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    if code == 130:  # typer, not standalone, returns Ctrl-C as this exit code instead of raising
        typer.echo("error: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)
