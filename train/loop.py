"""The SimPLe loop, top to bottom: collect real experience (and, with `ppo.real_epochs`, train the
policy on it), train the world model, train the policy in imagination, evaluate on real games, save.
Each finished iteration is a checkpoint to resume from.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from dlswm.config import Config, apply_overrides, validate
from dlswm.errors import UserError
from dlswm.run_dir import RunDir
from dlswm.train.checkpoint import RunState
from dlswm.train.trainer import Trainer


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
    return torch.device(name)


# What `--resume --set` may change: the schedule of the iterations still to run, nothing that shaped
# the finished ones (networks, data, losses), so an extended run is the same run, only longer.
EXTENDABLE = ("schedule.iterations", "schedule.wm_epochs", "schedule.ppo_updates", "schedule.eval_episodes")


def extend_config(cfg: Config, overrides: list[str], done: int) -> Config:
    """`cfg` with more iterations to run after the `done` finished ones; a change that would rewrite a
    finished iteration's schedule, or any other key, is a one-line UserError."""
    keys = [item.partition("=")[0].strip() for item in overrides]
    if other := [k for k in keys if k not in EXTENDABLE]:
        raise UserError(f"--resume --set {other[0]}: a resumed run keeps its config; only "
                        f"{', '.join(EXTENDABLE)} can change (to run on past its end)")
    new = apply_overrides(cfg, overrides)
    validate(new)
    s, old = new.schedule, cfg.schedule
    if s.iterations < done:
        raise UserError(f"--resume --set schedule.iterations={s.iterations}: the run has already finished {done}")
    for key in ("wm_epochs", "ppo_updates"):
        if getattr(s, key)[:done] != getattr(old, key)[:done]:
            raise UserError(f"--resume --set schedule.{key}: its first {done} entries are the finished iterations' "
                            f"({','.join(map(str, getattr(old, key)[:done]))}) and cannot change")
    return new


def prepare_run(out: Path, cfg: Config | None, resume: bool, extend: Sequence[str] = ()) -> tuple[Config, RunState | None, Any]:
    """New run: `cfg` into an empty `out`. Resume: the run's own config and last checkpoint, its
    schedule extended by `extend` (`EXTENDABLE` keys). Either way the run directory is locked for this
    process (the third value: keep it until the run ends)."""
    run = RunDir(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run directory")
    if resume:
        if not run.is_run():
            raise UserError(f"--resume: {out} is not a dlswm run (no {run.config.name})")
        lock = run.lock()
        try:
            data = run.read_config()
        except UserError as e:
            raise UserError(f"--resume: {e}") from None
        try:
            saved = Config.from_dict(data)
        except (ValueError, TypeError, AttributeError) as e:
            raise UserError(f"--resume: {run.config} is damaged ({type(e).__name__})") from None
        state = RunState.load(run.checkpoint) if run.checkpoint.exists() else None
        if state is None:  # interrupted before iteration 1 finished: start it again, unless that overwrites work
            finished = [p.name for p in run.chunks()] + [p.name for p in (run.best, run.metrics) if p.exists()]
            if finished:
                raise UserError(f"--resume: {out} has no {run.checkpoint.name} but holds finished work "
                                f"({', '.join(finished[:4])}{', ...' if len(finished) > 4 else ''}): restore "
                                f"{run.checkpoint.name} (e.g. from {run.best.name}, which is the best iteration's) or use a new --out")
        config = state.config if state else saved
        if extend:
            config = extend_config(config, list(extend), state.iteration if state else 0)
            run.write_config(config.to_dict())  # the loop runs, and checkpoints, the config returned here
        return config, state, lock
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: pass --resume to continue that run, or choose another --out")
    assert cfg is not None
    validate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    lock = run.lock()
    run.write_config(cfg.to_dict())
    return cfg, None, lock


@contextmanager
def phases(total_iterations: int, done_iterations: int) -> Iterator[Any]:
    """A progress display: the run (iterations, ETA) and the phase in progress. Where stdout is not
    a terminal (a log file, a sweep's run), a bar cannot redraw: each phase prints a line as it starts."""
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn()) as progress:
        run = progress.add_task("run", total=total_iterations, completed=done_iterations)
        phase = progress.add_task("", total=1)
        logged = not sys.stdout.isatty()

        def start(description: str, total: int) -> Any:
            progress.reset(phase, total=max(total, 1), description=description)
            if logged:
                print(f"{time.strftime('%H:%M:%S')} {description}: {total:,}", flush=True)
            return lambda n: progress.advance(phase, n)

        yield start, (lambda: progress.advance(run, 1))


def train(cfg: Config | None, out: Path, device_name: str = "auto", resume: bool = False,
          threads: int | None = None, extend: Sequence[str] = ()) -> Path:
    device = pick_device(device_name)  # before anything is written
    cfg, state, lock = prepare_run(out, cfg, resume, extend)
    with lock:  # released however the run ends
        return _run(cfg, state, out, device, threads)


def _run(cfg: Config, state: RunState | None, out: Path, device: torch.device, threads: int | None) -> Path:
    """The loop itself, top to bottom, on a prepared and locked run directory."""
    s, run = cfg.schedule, RunDir(out)
    done = state.iteration if state else 0
    if done >= s.iterations:
        print(f"{out}: the run is finished ({done}/{s.iterations} iterations); nothing to resume")
        return out
    trainer, writer = Trainer(cfg, device, threads, run), None
    saved = done  # the last iteration whose checkpoint is on disk
    try:
        if state:
            trainer.restore(state)
        run.truncate_metrics(done)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.tensorboard), purge_step=done + 1)
        print(f"dlswm train {trainer.game.name} ({trainer.game.num_actions} actions), preset {cfg.preset}, config "
              f"{cfg.digest()}, iterations {done + 1}..{s.iterations}, out {out}")
        print(trainer.speed.describe())
        print(json.dumps(cfg.to_dict()))
        wall_s = state.wall_s if state else 0.0  # training time of the finished iterations
        best = state.best if state else None  # the iteration with the highest eval score so far
        if best and best["iteration"] == done:  # a kill may have come between the two writes
            state.save(run.best)
        with phases(s.iterations, done) as (phase, finish_iteration):
            for it in range(done + 1, s.iterations + 1):
                started = time.perf_counter()
                metrics: dict[str, float] = {"iteration": it}
                # The phases in order, each timed: where a run's CPU-hours go (time/<phase>_s).
                for name, run_phase in (("collect", trainer.collect), ("policy_real", trainer.train_policy_real),
                                        ("world_model", trainer.train_world_model),
                                        ("policy", trainer.train_policy), ("evaluate", trainer.evaluate)):
                    phase_started = time.perf_counter()
                    metrics.update(run_phase(it, phase))
                    metrics[f"time/{name}_s"] = time.perf_counter() - phase_started
                trainer.pictures(it)
                elapsed = time.perf_counter() - started
                wall_s += elapsed
                metrics.update({"time/iteration_s": elapsed, "time/total_s": wall_s})
                best = _checkpoint(run, writer, trainer, metrics, wall_s, best)
                saved = it
                finish_iteration()
                print(f"iter {it}/{s.iterations}: eval score {metrics['eval/mean_score']:.1f}, real steps "
                      f"{trainer.real_steps}, latent acc {metrics.get('dynamics/latent_acc', float('nan')):.3f}")
    except KeyboardInterrupt:
        raise UserError(f"interrupted; iterations 1..{saved} are saved: "
                        f"`dlswm train --out {out} --resume` continues", code=130) from None
    finally:
        trainer.close()
        if writer is not None:
            writer.close()
    return out


def _checkpoint(run: RunDir, writer: Any, trainer: Trainer, metrics: dict[str, float], wall_s: float,
                best: dict[str, Any] | None) -> dict[str, Any]:
    """Log the iteration, then save its checkpoint (and best.pt, early stopping on the real eval
    score: `dlswm export RUN/best.pt`); returns the best iteration so far."""
    it, score = int(metrics["iteration"]), metrics["eval/mean_score"]
    run.append_metrics(metrics)
    for k, v in metrics.items():
        if k != "iteration":
            writer.add_scalar(k, v, it)
    writer.flush()
    is_best = best is None or score > best["mean_score"]
    if is_best:
        best = {"iteration": it, "mean_score": score}
    state = trainer.capture(it, wall_s, {"mean_score": score, "episodes": metrics["eval/episodes"]}, best)
    state.save(run.checkpoint, *([run.best] if is_best else []))
    return best
