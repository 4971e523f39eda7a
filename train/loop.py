"""The SimPLe loop, top to bottom: collect real experience, train the world model, train the policy
in imagination, evaluate on real games, save. Each finished iteration is a checkpoint to resume from.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from dlswm.config import Config, validate
from dlswm.errors import UserError
from dlswm.models import System, in_mode
from dlswm.runtime.atari import resolve_game
from dlswm.train.buffer import ReplayBuffer
from dlswm.atomic import atomic_write_bytes
from dlswm.train.checkpoint import BEST_NAME, CHECKPOINT_NAME, RunState
from dlswm.train.imagine import PolicyTrainer, imagine, start_context
from dlswm.train.curves import parse_metrics_line
from dlswm.train.media import reconstruction_png, rollout_gif
from dlswm.train.real_env import Collector, evaluate, random_policy, torch_policy
from dlswm.train.speed import Speed
from dlswm.train.world_model import WorldModelTrainer


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
    return torch.device(name)


def prepare_run(out: Path, cfg: Config | None, resume: bool) -> tuple[Config, RunState | None, Any]:
    """New run: `cfg` into an empty `out`. Resume: the run's own config and last checkpoint. Either
    way the run directory is locked for this process (the third value: keep it until the run ends)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run directory")
    if resume:
        if not (out / "config.json").is_file():
            raise UserError(f"--resume: {out} is not a dlswm run (no config.json)")
        lock = lock_run(out)
        try:
            saved = Config.from_dict(json.loads((out / "config.json").read_text()))
        except (ValueError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
            raise UserError(f"--resume: {out / 'config.json'} is damaged ({type(e).__name__})") from None
        if (out / CHECKPOINT_NAME).exists():
            state = RunState.load(out / CHECKPOINT_NAME)
            return state.config, state, lock
        finished = sorted(p.name for p in (out / "buffer").glob("chunk_*.npz")) + \
            [name for name in (BEST_NAME, "metrics.jsonl") if (out / name).exists()]
        if finished:  # restarting would overwrite finished work
            raise UserError(f"--resume: {out} has no {CHECKPOINT_NAME} but holds finished work "
                            f"({', '.join(finished[:4])}{', ...' if len(finished) > 4 else ''}): restore "
                            f"{CHECKPOINT_NAME} (e.g. from {BEST_NAME}, which is the best iteration's) or use a new --out")
        return saved, None, lock  # interrupted before iteration 1 finished: start it again
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: pass --resume to continue that run, or choose another --out")
    assert cfg is not None
    validate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_run(out)
    atomic_write_bytes(out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())
    return cfg, None, lock


def lock_run(out: Path) -> Any:
    """An exclusive lock on `out/.lock` held while this process lives (the OS drops it on any exit,
    kill -9 included), so a second `train` on a live run directory is refused instead of both writing."""
    f = open(out / ".lock", "a+")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, run unguarded
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{out} is in use by a running dlswm train ({holder}); wait for it or stop it") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f


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
          threads: int | None = None) -> Path:
    device = pick_device(device_name)  # before anything is written
    cfg, state, lock = prepare_run(out, cfg, resume)
    with lock:  # released however the run ends
        return _run(cfg, state, out, device, threads)


def _run(cfg: Config, state: RunState | None, out: Path, device: torch.device, threads: int | None) -> Path:
    """The loop itself, top to bottom, on a prepared and locked run directory."""
    # ---- setup ---------------------------------------------------------------------------------
    s = cfg.schedule
    done = state.iteration if state else 0
    if done >= s.iterations:
        print(f"{out}: the run is finished ({done}/{s.iterations} iterations); nothing to resume")
        return out
    game = resolve_game(cfg.env.game, cfg.env.full_action_space)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    system = System(cfg, game.num_actions).to(device)
    speed = Speed.choose(cfg, device, threads)
    speed.prepare(system)
    wm, pt = WorldModelTrainer(system, cfg, speed), PolicyTrainer(system, cfg, speed)
    buffer = speed.prepare_buffer(ReplayBuffer(cfg.env.frame_stack))
    real_steps = 0
    optimizers = {"world_model": wm.optimizer, "policy": pt.optimizer}
    if state:
        state.restore(system, optimizers, rng, device)
        try:
            buffer = speed.prepare_buffer(ReplayBuffer.load(out / "buffer", done, cfg.env.frame_stack))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            # Only the type: numpy's own text for a foreign file suggests allow_pickle, never advisable.
            raise UserError(f"{out / 'buffer'}: a chunk of a finished iteration is missing or damaged "
                            f"({type(e).__name__}); the run cannot resume without it") from None
        real_steps = state.real_steps
    collector = Collector(cfg.env, s.collect_envs, s.persistent_envs)
    if state and s.persistent_envs:
        recorded = [ReplayBuffer.env_actions(out / "buffer", i) for i in range(1, done + 1)]
        if all(a is not None for a in recorded):  # else (an older run): fresh episodes from here
            collector.replay(_env_seed(cfg.seed, 1, "collect"), recorded)
    _truncate_metrics(out / "metrics.jsonl", done)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"), purge_step=done + 1)
    (out / "media").mkdir(exist_ok=True)
    print(f"dlswm train {game.name} ({game.num_actions} actions), preset {cfg.preset}, config {cfg.digest()}, "
          f"iterations {done + 1}..{s.iterations}, out {out}")
    print(speed.describe())
    print(json.dumps(cfg.to_dict()))

    saved = done  # the last iteration whose checkpoint is on disk
    wall_s = state.wall_s if state else 0.0  # training time of the finished iterations
    best = state.best if state else None  # the iteration with the highest eval score so far
    if best and best["iteration"] == done:  # a kill may have come between the two writes
        state.save(out / BEST_NAME)
    try:
        with phases(s.iterations, done) as (phase, finish_iteration):
            for it in range(done + 1, s.iterations + 1):
                metrics: dict[str, float] = {"iteration": it}
                started = time.perf_counter()
                tag = f"iter {it}/{s.iterations}"

                # ---- 1. collect real experience (random policy first, then the agent) ----------
                steps = s.initial_steps if it == 1 else s.steps_per_iteration
                policy = (random_policy(game.num_actions, rng) if it == 1 else
                          torch_policy(system, device, cfg.policy.collect_temperature, seed=cfg.seed + it))
                chunk, env_actions, stats = collector.collect(policy, steps, _env_seed(cfg.seed, it, "collect"),
                                                              phase(f"{tag} collect", steps))
                ReplayBuffer.save_chunk(chunk, ReplayBuffer.chunk_path(out / "buffer", it), env_actions)
                if it > 1:  # how well the model knows the policy's own new trajectories, before it learns them
                    metrics.update(wm.score(chunk, rng))
                buffer.add_chunk(chunk)
                real_steps += int(stats["collect/steps"])
                metrics.update(stats, real_steps=real_steps, buffer_frames=len(buffer))

                # ---- 2. world model: VQ-VAE (warm-up on the first data) and dynamics ------------
                if it == 1 and cfg.vqvae.warmup_epochs > 0:
                    metrics.update(wm.warmup(buffer, rng, phase(f"{tag} vq-vae warm-up", wm.warmup_batches(buffer))))
                epochs = s.wm_epochs[it - 1]
                metrics.update(wm.train(buffer, epochs, rng, phase(f"{tag} world model", wm.batches(buffer, epochs))))

                # ---- 3. policy: PPO in imagination -------------------------------------------------
                updates = s.ppo_updates[it - 1]
                metrics.update(pt.train(buffer, updates, rng, phase(f"{tag} policy (imagined)", updates)))

                # ---- 4. evaluate on real games -------------------------------------------------
                evaluated, eval_seed = phase(f"{tag} evaluate", 1), _env_seed(cfg.seed, it, "evaluate")
                scores, action_counts = evaluate(
                    cfg.env, torch_policy(system, device, cfg.policy.eval_temperature, seed=eval_seed),
                    s.eval_episodes, seed=eval_seed, num_actions=game.num_actions)
                evaluated(1)
                freq = action_counts / max(action_counts.sum(), 1)
                metrics.update({"eval/mean_score": float(np.mean(scores)), "eval/std_score": float(np.std(scores)),
                                "eval/episodes": len(scores), "eval/steps": int(action_counts.sum()),
                                "eval/action_entropy": float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum()),
                                **{f"eval/action_{name}": float(f) for name, f in zip(game.action_meanings, freq)}})

                # ---- 5. record and checkpoint --------------------------------------------------
                _pictures(system, buffer, rng, out / "media", it)
                elapsed = time.perf_counter() - started
                wall_s += elapsed
                metrics.update({"time/iteration_s": elapsed, "time/total_s": wall_s})
                _log(out / "metrics.jsonl", writer, metrics)
                is_best = best is None or metrics["eval/mean_score"] > best["mean_score"]
                if is_best:
                    best = {"iteration": it, "mean_score": metrics["eval/mean_score"]}
                checkpoint = RunState.capture(
                    cfg, game, it, real_steps, wall_s, system, optimizers, rng, device,
                    evaluation={"mean_score": metrics["eval/mean_score"], "episodes": len(scores)}, best=best)
                # best.pt: early stopping on the real eval score (`dlswm export RUN/best.pt`)
                checkpoint.save(out / CHECKPOINT_NAME, *([out / BEST_NAME] if is_best else []))
                saved = it
                finish_iteration()
                print(f"{tag}: eval score {metrics['eval/mean_score']:.1f}, real steps {real_steps}, "
                      f"latent acc {metrics.get('dynamics/latent_acc', float('nan')):.3f}")
    except KeyboardInterrupt:
        raise UserError(f"interrupted; iterations 1..{saved} are saved: "
                        f"`dlswm train --out {out} --resume` continues", code=130) from None
    finally:
        collector.close()
        writer.close()
    return out


def _env_seed(seed: int, iteration: int, purpose: str) -> int:
    """Distinct no-op starts for every run seed, iteration and purpose (ale_py seeds env e with
    seed + e, so the blocks are spaced far apart)."""
    return seed * 1_000_000 + iteration * 1_000 + {"collect": 0, "evaluate": 500}[purpose]


def _truncate_metrics(path: Path, iterations: int) -> None:
    """Drop the lines of an iteration that never reached its checkpoint."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines()
             if (m := parse_metrics_line(line)) is not None and m["iteration"] <= iterations]
    atomic_write_bytes(path, "".join(f"{line}\n" for line in lines).encode())


def _log(path: Path, writer: Any, metrics: dict[str, float]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(metrics) + "\n")
    for k, v in metrics.items():
        if k != "iteration":
            writer.add_scalar(k, v, metrics["iteration"])
    writer.flush()


def _pictures(system: System, buffer: ReplayBuffer, rng: np.random.Generator, media: Path, it: int) -> None:
    obs = buffer.observations(buffer.sample(rng, 8))
    reconstruction_png(system, obs, media / f"recon_{it:03d}.png")
    context = start_context(buffer, system.cfg, 1, rng, next(system.parameters()).device)
    with in_mode(system, False):
        rollout = imagine(system, context, system.cfg.ppo.rollout_steps, decode=True)
    rollout_gif(rollout["frames"], media / f"imagined_{it:03d}.gif")
