"""Replay buffer of real experience: every frame is stored once, stacks are rebuilt on demand.

Entry i holds the newest frame of observation i, the action taken there, the reward received, and
three flags: `first` (observation i starts an episode), `done` (no successor is stored: the
episode or the collection stream ended) and `life_lost` (the step from i lost a life, the last
one included; chunks written before it existed load with none). Observation i is the frame stack frames[i-3..i], with the
frames before its episode's start zeroed: exactly what ale_py's AtariVectorEnv shows at a reset.
100k frames at 96x96 is ~0.9 GB instead of ~3.7 GB for stored stacks.

Collection streams may continue an episode from the previous iteration (the env is kept, as in the
released code, so the data reaches deep into episodes). Such a stream opens with S-1 *context*
entries holding the frames before its first observation (the env's own stack): they complete that
observation's stack and are never sampled. A context entry is marked `done` and followed by an
entry that is not `first`, which no other entry is: a `done` entry is otherwise followed by a new
stream or episode.

Each iteration's collection is written as one immutable chunk file (temp file + rename), so a
resumed run reloads exactly the experience of its finished iterations. In memory the frames stay
in their chunks (no stack ever spans two), so adding a chunk never copies the frames before it:
the paper schedule's 102,400 steps hold ~0.95 GB at peak, not twice that.

Training reads batches as tensors (`observation_tensor`, `sequence_tensors`). With `keep_on(device)`
(config `buffer_on_device`; auto: on CUDA) the frames are mirrored in one tensor on that device, one
copy per new chunk, and every batch is gathered there: only its indices cross from the host.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlswm.atomic import atomic_path
from dlswm.run_dir import chunk_path

FIELDS = ("frames", "actions", "rewards", "first", "done", "life_lost")
ENV_ACTIONS = "env_actions"  # (steps, num_envs): every action sent to the env, to replay it on resume
STEP_FIELDS = FIELDS[1:]  # small per-entry arrays, kept concatenated


class ReplayBuffer:
    def __init__(self, frame_stack: int):
        self.frame_stack = frame_stack
        self.chunks: list[np.ndarray] = []  # frames (n_c, H, W) of each chunk
        self._chunk_ends = np.zeros(0, np.int64)  # entry index one past each chunk
        self.actions = np.zeros(0, np.int64)
        self.rewards = np.zeros(0, np.float32)
        self.first = np.zeros(0, bool)
        self.done = np.zeros(0, bool)
        self.life_lost = np.zeros(0, bool)
        self._episode_start = np.zeros(0, np.int64)
        self.sample_idx = np.zeros(0, np.int64)  # entries that are observations (not context)
        self._mirror_device: torch.device | None = None  # with `keep_on`
        self._mirror: torch.Tensor | None = None  # frames (N, H, W) on that device
        self._mirrored_chunks = 0

    def __len__(self) -> int:
        return len(self.actions)

    def add_chunk(self, chunk: dict[str, np.ndarray]) -> None:
        """Append one collection's streams; a chunk without `life_lost` (written before it existed) has none."""
        assert set(FIELDS) - {"life_lost"} <= set(chunk) <= set(FIELDS), sorted(chunk)
        chunk = {"life_lost": np.zeros(len(chunk["actions"]), bool), **chunk}
        assert chunk["first"][0] and chunk["done"][-1], "a chunk holds whole streams"
        self.chunks.append(chunk["frames"])
        self._chunk_ends = np.append(self._chunk_ends, len(self) + len(chunk["frames"]))
        for name in STEP_FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), chunk[name]]))
        # Index of the first entry of each entry's episode: a running maximum of the start positions.
        starts = np.where(self.first, np.arange(len(self)), 0)
        self._episode_start = np.maximum.accumulate(starts)
        context = self.done & ~np.append(self.first[1:], True)
        self.sample_idx = np.flatnonzero(~context)

    def sample(self, rng: np.random.Generator, n: int, recent_fraction: float = 0.0) -> np.ndarray:
        """n entry indices of observations (context entries excluded), as `sample_starts` draws them."""
        return self.sample_starts(self.sample_idx, n, rng, recent_fraction)

    def _stack_rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame rows (n, S) of each stacked observation, and which of them lie inside its episode."""
        frame_idx = idx[:, None] + np.arange(-self.frame_stack + 1, 1)  # (n, S)
        return np.maximum(frame_idx, 0), frame_idx >= self._episode_start[idx][:, None]

    def observations(self, idx: np.ndarray) -> np.ndarray:
        """Stacked observations (len(idx), S, H, W) uint8 for entry indices idx."""
        rows, inside = self._stack_rows(idx)
        return self._frames(rows) * inside[:, :, None, None].astype(np.uint8)

    def keep_on(self, device: torch.device) -> None:
        """Mirror the frames on `device` from now on: batches are then gathered there."""
        self._mirror_device, self._mirror, self._mirrored_chunks = torch.device(device), None, 0

    def observation_tensor(self, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        """`observations(idx)` as a uint8 tensor on `device`."""
        if self._mirror_device != torch.device(device):
            return torch.from_numpy(self.observations(idx)).to(device)
        if self._mirrored_chunks < len(self.chunks):  # one copy per new chunk
            new = [torch.from_numpy(c).to(device) for c in self.chunks[self._mirrored_chunks:]]
            self._mirror = torch.cat(new if self._mirror is None else [self._mirror, *new])
            self._mirrored_chunks = len(self.chunks)
        rows, inside = (torch.from_numpy(a).to(device) for a in self._stack_rows(idx))
        return self._mirror[rows] * inside[:, :, None, None]  # (n, S, H, W) uint8

    def sequence_tensors(self, starts: np.ndarray, length: int, device: torch.device) -> dict[str, torch.Tensor]:
        """`sequences(starts, length)` as tensors on `device`."""
        idx = starts[:, None] + np.arange(length)  # (B, T)
        obs = self.observation_tensor(idx.reshape(-1), device)
        out = {"obs": obs.view(*idx.shape, *obs.shape[1:])}
        for name in ("actions", "rewards", "first", "life_lost"):
            out[name] = torch.from_numpy(getattr(self, name)[idx]).to(device)
        return out

    def _frames(self, rows: np.ndarray) -> np.ndarray:
        """frames[rows] across chunks, any shape of rows."""
        out = np.empty((*rows.shape, *self.chunks[0].shape[1:]), np.uint8)
        which = np.searchsorted(self._chunk_ends, rows, side="right")
        for c in np.unique(which):
            mask = which == c
            out[mask] = self.chunks[c][rows[mask] - (self._chunk_ends[c - 1] if c else 0)]
        return out

    def sequence_starts(self, length: int) -> np.ndarray:
        """Entries from which `length` consecutive observations of one episode follow."""
        if len(self) < length:
            return np.zeros(0, np.int64)
        # A window may end on a `done` entry but not contain one before its last position.
        blocked = np.convolve(self.done[:-1].astype(np.int64), np.ones(length - 1, np.int64), "valid") > 0
        return np.flatnonzero(~blocked)

    @property
    def newest_chunk_start(self) -> int:
        """Entry index where the newest collection's chunk begins (0 while there is one chunk)."""
        return int(self._chunk_ends[-2]) if len(self.chunks) > 1 else 0

    def sample_starts(self, starts: np.ndarray, n: int, rng: np.random.Generator,
                      recent_fraction: float = 0.0) -> np.ndarray:
        """n of `starts` (window starts, or observation entries): round(n * recent_fraction) of them
        from the newest chunk, the rest uniform over all; all uniform while the buffer holds one chunk."""
        # The newest chunk's starts, looked up only when asked for (at 0 a batch costs what it did).
        recent = starts[starts >= self.newest_chunk_start] if recent_fraction and len(self.chunks) > 1 else starts[:0]
        n_recent = round(n * recent_fraction) if len(recent) else 0
        uniform = starts[rng.integers(0, len(starts), n - n_recent)]
        if n_recent == 0:  # the same draws as before the option existed
            return uniform
        return np.concatenate([recent[rng.integers(0, len(recent), n_recent)], uniform])

    def sequences(self, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """Windows of `length` steps: obs (B, T, S, H, W), actions/rewards/first/life_lost (B, T)."""
        idx = starts[:, None] + np.arange(length)  # (B, T)
        obs = self.observations(idx.reshape(-1)).reshape(*idx.shape, self.frame_stack, *self.chunks[0].shape[1:])
        return {"obs": obs, "actions": self.actions[idx], "rewards": self.rewards[idx], "first": self.first[idx],
                "life_lost": self.life_lost[idx]}

    # -- files: one chunk per collection, written once --------------------------------------------

    chunk_path = staticmethod(chunk_path)  # dlswm/run_dir.py names the files

    @staticmethod
    def save_chunk(chunk: dict[str, np.ndarray], path: Path, env_actions: np.ndarray | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **chunk, **({} if env_actions is None else {ENV_ACTIONS: env_actions}))

    @classmethod
    def load(cls, directory: Path, iterations: int, frame_stack: int) -> ReplayBuffer:
        """The chunks of iterations 1..iterations; the npz files hold plain arrays only."""
        buffer = cls(frame_stack)
        for it in range(1, iterations + 1):
            with np.load(cls.chunk_path(directory, it), allow_pickle=False) as data:
                buffer.add_chunk({name: data[name] for name in FIELDS if name in data.files})
        return buffer

    @classmethod
    def env_actions(cls, directory: Path, iteration: int) -> np.ndarray | None:
        """The actions iteration `iteration` sent to its env, or None for a chunk that predates them."""
        with np.load(cls.chunk_path(directory, iteration), allow_pickle=False) as data:
            return data[ENV_ACTIONS] if ENV_ACTIONS in data.files else None


class StreamRecorder:
    """Turns the steps of a vector env (autoreset on the next step) into one buffer chunk.

    AtariVectorEnv, after a terminal step, ignores the next action and returns the new episode's
    first observation; that reset step is not an interaction and records no transition.
    """

    def __init__(self, num_envs: int, resetting: np.ndarray | None = None):
        self.streams: list[dict[str, list]] = [{name: [] for name in FIELDS} for _ in range(num_envs)]
        # An env whose episode ended on the last step resets on the next one (which records its
        # first observation): a stream continued from there starts empty.
        self.resetting = np.zeros(num_envs, bool) if resetting is None else resetting.copy()

    def _append(self, e: int, frame: np.ndarray, first: bool) -> None:
        s = self.streams[e]
        s["frames"].append(frame.copy())  # a view would keep the env's whole (N, S, H, W) batch alive
        s["actions"].append(0)
        s["rewards"].append(0.0)
        s["first"].append(first)
        s["done"].append(False)
        s["life_lost"].append(False)

    def start(self, obs: np.ndarray) -> None:
        """Streams of freshly reset envs: obs (N, S, H, W) are episodes' first observations."""
        for e in range(len(self.streams)):
            self._append(e, obs[e, -1], first=True)

    def resume(self, obs: np.ndarray) -> None:
        """Streams that continue running episodes: S-1 context entries (the frames before obs[e, -1]
        in the env's stack, zeros before the episode's start included), then obs[e, -1] itself."""
        for e in range(len(self.streams)):
            if self.resetting[e]:
                continue
            for k, frame in enumerate(obs[e, :-1]):
                self._append(e, frame, first=k == 0)
                self.streams[e]["done"][-1] = True  # a context entry: no transition, never sampled
            self._append(e, obs[e, -1], first=len(obs[e]) == 1)

    def step(self, actions: np.ndarray, obs: np.ndarray, rewards: np.ndarray, ended: np.ndarray,
             life_lost: np.ndarray | None = None) -> int:
        """Record one env step; returns how many real interactions it was (reset steps are not)."""
        interactions = 0
        for e, s in enumerate(self.streams):
            if self.resetting[e]:
                self._append(e, obs[e, -1], first=True)
                self.resetting[e] = False
                continue
            s["actions"][-1] = int(actions[e])
            s["rewards"][-1] = float(rewards[e])
            s["life_lost"][-1] = bool(life_lost is not None and life_lost[e])
            self._append(e, obs[e, -1], first=False)
            if ended[e]:
                s["done"][-1] = True  # the final observation has no successor
                self.resetting[e] = True
            interactions += 1
        return interactions

    def chunk(self) -> dict[str, np.ndarray]:
        for s in self.streams:
            s["done"][-1] = True  # the stream stops here
        return {
            "frames": np.stack([f for s in self.streams for f in s["frames"]]),
            "actions": np.array([a for s in self.streams for a in s["actions"]], np.int64),
            "rewards": np.array([r for s in self.streams for r in s["rewards"]], np.float32),
            "first": np.array([x for s in self.streams for x in s["first"]], bool),
            "done": np.array([x for s in self.streams for x in s["done"]], bool),
            "life_lost": np.array([x for s in self.streams for x in s["life_lost"]], bool),
        }
