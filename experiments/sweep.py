"""`dlswm sweep`: one ordinary `dlswm train` run per (game, seed) under `DIR/GAME/seed_S`, on this
machine (a process pool), on Ray, or on SLURM through submitit. No scheduler of our own: each engine
places, retries and requeues the runs; every run is a subprocess that resumes from its own last
checkpoint, so a retried, requeued or re-run sweep never redoes a finished iteration.

`DIR/sweep.json` (the manifest) records the grid, each run's config digest and its state. Running the
same sweep again skips finished runs and resumes the others; a changed preset or `--set` for an
existing sweep directory is refused before anything starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from dlswm.atomic import atomic_write_bytes
from dlswm.config import Config, resolve
from dlswm.errors import UserError
from dlswm.runtime.atari import resolve_game
from dlswm.runtime.reference_scores import SUITES
from dlswm.run_dir import RunDir

MANIFEST = "sweep.json"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One (game, seed) of the grid: what any backend needs to run it, picklable."""

    game: str
    seed: int
    run_dir: str
    log: str
    preset: str
    overrides: tuple[str, ...]
    threads: int
    device: str = "auto"

    @property
    def key(self) -> str:
        return f"{self.game}/seed_{self.seed}"

    def command(self) -> list[str]:
        """`dlswm train` for this run: --resume once its directory holds a config, else a new run."""
        train = [sys.executable, "-m", "dlswm", "train"]
        if RunDir(self.run_dir).is_run():
            return [*train, "--out", self.run_dir, "--resume", *self._machine()]
        sets = [a for o in self.overrides for a in ("--set", o)]
        return [*train, self.game, "--preset", self.preset, "--seed", str(self.seed), "--out", self.run_dir,
                *self._machine(), *sets]

    def _machine(self) -> list[str]:
        return ["--threads", str(self.threads), "--device", self.device]


def _die_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
    """Linux: the run gets SIGKILL when the process that started it dies (kill -9 of the sweep, a
    killed Ray worker), so no orphan keeps its run directory locked. A run survives SIGKILL whole."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(spec: RunSpec, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The run as a child process, its output appended to its log."""
    Path(spec.log).parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log, "ab") as log:
        return subprocess.Popen(spec.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})},
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def run_to_end(spec: RunSpec) -> int:
    """Run (or resume) one run to its end; its exit code. What a Ray task or a SLURM job executes."""
    return start(spec).wait()


def parse_games(text: str) -> list[str]:
    """'Pong,Breakout', or a suite name (`atari100k`, `article`), to canonical game names."""
    names = SUITES.get(text.strip(), None) or [g for g in text.split(",") if g.strip()]
    if not names:
        raise UserError(f"--games: no game in '{text}'")
    games = [resolve_game(g.strip()).name for g in names]
    if len(set(games)) != len(games):
        raise UserError(f"--games names a game twice: {text}")
    return games


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s < 2**32 for s in seeds):
        raise UserError(f"--seeds expects distinct comma-separated integers from 0, got '{text}'")
    return seeds


@dataclasses.dataclass
class Sweep:
    """The grid and its manifest. `plan` checks everything before any run starts."""

    out: Path
    games: list[str]
    seeds: list[int]
    preset: str
    overrides: list[str]
    configs: dict[str, Config] = dataclasses.field(default_factory=dict)  # run key -> resolved config
    runs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # run key -> manifest entry

    @classmethod
    def plan(cls, out: Path, games: list[str], seeds: list[int], preset: str, overrides: list[str]) -> Sweep:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a sweep directory")
        sweep = cls(out, games, seeds, preset, list(overrides))
        for game in games:
            for seed in seeds:
                cfg = resolve(preset, game, overrides, seed)
                cfg.env.game = game
                key = f"{game}/seed_{seed}"
                sweep.configs[key] = cfg
                sweep.runs[key] = {"game": game, "seed": seed, "digest": cfg.digest(), "state": "pending"}
        manifest = out / MANIFEST
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text())
                old_runs, old_preset, old_sets = old["runs"], old["preset"], old["overrides"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{manifest} is damaged; move it away to start this sweep directory afresh") from None
            if (old_preset, old_sets) != (preset, list(overrides)):
                raise UserError(f"{out} is a sweep of --preset {old_preset} {_sets(old_sets)}; this asks for "
                                f"--preset {preset} {_sets(overrides)}: use another --out")
            for key, entry in sweep.runs.items():
                if key in old_runs and old_runs[key].get("state") == "done":
                    entry["state"] = "done"
        for key, cfg in sweep.configs.items():  # a run directory someone else started, or a changed dlswm
            saved = RunDir(sweep.run_dir(key)).config
            if saved.is_file():
                try:
                    theirs = Config.from_dict(json.loads(saved.read_text()))
                except (ValueError, TypeError, AttributeError, UserError):
                    raise UserError(f"{saved} is damaged: the sweep cannot resume that run") from None
                if theirs.digest() != cfg.digest():
                    raise UserError(f"{sweep.run_dir(key)} was trained with another config "
                                    f"({_first_difference(theirs, cfg)}): use another --out")
        return sweep

    def run_dir(self, key: str) -> Path:
        return self.out / key

    def finished(self, key: str) -> bool:
        """Done by the manifest and every iteration in its metrics (a run dir replaced by hand is not)."""
        return self.runs[key]["state"] == "done" and \
            progress_of(self.run_dir(key))[0] >= self.configs[key].schedule.iterations

    def specs(self, threads: int, device: str) -> list[RunSpec]:
        """The runs still to do (new or to resume), in grid order."""
        logs = (self.out / "logs").resolve()
        return [RunSpec(e["game"], e["seed"], str(self.run_dir(k).resolve()), str(logs / f"{e['game']}-seed_{e['seed']}.log"),
                        self.preset, tuple(self.overrides), threads, device)
                for k, e in self.runs.items() if not self.finished(k)]

    def save(self, backend: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "preset": self.preset, "overrides": self.overrides, "games": self.games,
                "seeds": self.seeds, "backend": backend, "runs": self.runs}
        atomic_write_bytes(self.out / MANIFEST, json.dumps(data, indent=2).encode())


def _sets(overrides: list[str]) -> str:
    return " ".join(f"--set {o}" for o in overrides) or "(no --set)"


def _first_difference(a: Config, b: Config) -> str:
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    key = next((k for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)), "?")
    return f"{key}: {fa.get(key)} there, {fb.get(key)} here"


def progress_of(run_dir: Path) -> tuple[int, float | None]:
    """(finished iterations, last eval score) from a run's metrics.jsonl; (0, None) before the first."""
    lines = RunDir(run_dir).metrics_lines()
    return (lines[-1]["iteration"], lines[-1].get("eval/mean_score")) if lines else (0, None)


def last_line(path: str) -> str:
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").replace("\r", "\n").splitlines()]
    except OSError:
        return "(no log)"
    return next((line for line in reversed(lines) if line), "(empty log)")


# ---- backends: each starts a run and reports its exit code when it ends ---------------------------
class LocalBackend:
    """A process pool on this machine: at most `parallel` runs, each pinned to one GPU slot (K runs
    a GPU) where there are GPUs, and the CPU threads divided between the runs."""

    name = "local"
    submits_all = False

    def __init__(self, parallel: int, gpus: int, runs_per_gpu: int):
        self.parallel = parallel
        self.free_gpu_slots = [g for g in range(gpus) for _ in range(runs_per_gpu)]
        self.gpu_of: dict[int, int] = {}

    def submit(self, spec: RunSpec) -> Any:
        env = {}
        if self.free_gpu_slots:
            gpu = self.free_gpu_slots.pop(0)
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        proc = start(spec, env)
        if "CUDA_VISIBLE_DEVICES" in env:
            self.gpu_of[proc.pid] = gpu
        return proc

    def poll(self, handle: subprocess.Popen) -> int | None:
        code = handle.poll()
        if code is not None and handle.pid in self.gpu_of:
            self.free_gpu_slots.append(self.gpu_of.pop(handle.pid))
        return code

    def close(self) -> None:
        pass


class RayBackend:
    """Each run a Ray task (`run_to_end`) with `threads` CPUs and 1/K of a GPU where the cluster has
    GPUs; a task whose worker dies is retried, and the retry resumes the run's last checkpoint."""

    name = "ray"
    submits_all = True  # Ray queues tasks until their resources are free

    def __init__(self, address: str | None, threads: int, runs_per_gpu: int, parallel: int):
        import ray

        self.ray = ray
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # a local Ray with as many CPUs as `parallel` runs take: no oversubscription
            ray.init(num_cpus=parallel * threads, include_dashboard=False, log_to_driver=False)
        gpu = 1.0 / runs_per_gpu if ray.cluster_resources().get("GPU", 0) > 0 else 0
        self.task = ray.remote(run_to_end).options(num_cpus=threads, num_gpus=gpu, max_retries=3)

    def submit(self, spec: RunSpec) -> Any:
        return self.task.remote(spec)

    def poll(self, handle: Any) -> int | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            return int(self.ray.get(handle))
        except Exception:  # the task failed past its retries: the run's log says why
            return -1

    def close(self) -> None:
        self.ray.shutdown()


class TrainJob:
    """A SLURM job (array element) running one run. On preemption or timeout submitit requeues it
    with the same RunSpec (`__submitit_checkpoint__`), and the requeued job resumes the run from its
    last checkpoint."""

    def __call__(self, spec: RunSpec) -> int:
        code = run_to_end(spec)
        if code != 0:
            raise RuntimeError(f"dlswm train exited {code}: {last_line(spec.log)}")
        return code

    def __submitit_checkpoint__(self, spec: RunSpec) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, spec)


class SlurmBackend:
    """One SLURM job array over the grid through submitit, concurrency capped by
    `slurm_array_parallelism`; without SLURM, submitit's local executor runs the same jobs here."""

    name = "slurm"

    def __init__(self, folder: Path, threads: int, parallel: int, gpus_per_run: int, timeout_min: int):
        import submitit

        self.executor = submitit.AutoExecutor(folder=folder / "%j")
        self.cluster = self.executor.cluster  # "slurm", or "local" where there is no SLURM
        self.submits_all = self.cluster == "slurm"  # a job array caps itself; the local executor does not
        self.executor.update_parameters(name="dlswm-sweep", timeout_min=timeout_min, cpus_per_task=threads,
                                        gpus_per_node=gpus_per_run, slurm_array_parallelism=parallel)

    def submit(self, spec: RunSpec) -> Any:
        return self.executor.submit(TrainJob(), spec)

    def submit_array(self, specs: list[RunSpec]) -> list[Any]:
        return self.executor.map_array(TrainJob(), specs)

    def poll(self, handle: Any) -> int | None:
        if not handle.done():
            return None
        try:
            return int(handle.result())
        except Exception:
            return -1

    def close(self) -> None:
        pass


# ---- the driver ----------------------------------------------------------------------------------
def run_sweep(sweep: Sweep, todo: list[RunSpec], backend: Any, parallel: int,
              show: Callable[[Sweep], None] = lambda s: None, poll_s: float = 1.0) -> dict[str, str]:
    """Run `todo` (`Sweep.specs`) on `backend`, at most `parallel` at once where the backend does not
    cap itself; the manifest is saved at every state change. Returns run key -> state."""
    for spec in todo:
        sweep.runs[spec.key]["state"] = "queued"
    sweep.save(backend.name)
    running: dict[str, tuple[RunSpec, Any]] = {}
    if backend.submits_all:
        handles = backend.submit_array(todo) if hasattr(backend, "submit_array") else [backend.submit(s) for s in todo]
        running = {s.key: (s, h) for s, h in zip(todo, handles)}
        todo = []
    try:
        while todo or running:
            while todo and len(running) < parallel:
                spec = todo.pop(0)
                running[spec.key] = (spec, backend.submit(spec))
            changed = False
            for key, (spec, handle) in list(running.items()):
                entry = sweep.runs[key]
                code = backend.poll(handle)
                if code is None:
                    if entry["state"] != "running" and RunDir(sweep.run_dir(key)).is_run():
                        entry["state"], changed = "running", True
                    continue
                del running[key]
                entry.update(state="done" if code == 0 else "failed", returncode=code)
                if code != 0:
                    entry["error"] = last_line(spec.log)
                changed = True
            if changed:
                sweep.save(backend.name)
            show(sweep)
            if todo or running:
                time.sleep(poll_s)
    finally:
        backend.close()
    sweep.save(backend.name)
    show(sweep)
    return {k: e["state"] for k, e in sweep.runs.items()}


def status_rows(sweep: Sweep) -> list[tuple[str, int, str, str, str]]:
    """(game, seed, state, iteration i/N, last eval) per run, for the progress display."""
    rows = []
    for key, entry in sweep.runs.items():
        done, score = progress_of(sweep.run_dir(key))
        rows.append((entry["game"], entry["seed"], entry["state"], f"{done}/{sweep.configs[key].schedule.iterations}",
                     "-" if score is None else f"{score:,.1f}"))
    return rows
