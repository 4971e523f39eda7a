"""World-model training: the VQ-VAE and the dynamics model on sequences from the replay buffer."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch

from dlswm.config import Config
from dlswm.models import System, in_mode
from dlswm.models.dynamics import dynamics_loss
from dlswm.models.vqvae import vqvae_loss
from dlswm.train.buffer import ReplayBuffer
from dlswm.train.speed import Speed

Progress = Callable[[int], None]  # advance the phase's progress bar by n batches


class WorldModelTrainer:
    """One Adam over three groups: VQ-VAE (lr 1e-4), dynamics (5e-4), reward head (1e-3)."""

    def __init__(self, system: System, cfg: Config, speed: Speed):
        self.system, self.cfg, self.speed, self.device = system, cfg, speed, speed.device
        reward = list(system.dynamics.reward_head.parameters())
        reward_ids = {id(p) for p in reward}
        dynamics = [p for p in system.dynamics.parameters() if id(p) not in reward_ids]
        self.optimizer = speed.adam([
            {"params": list(system.vqvae.parameters()), "lr": cfg.vqvae.lr},
            {"params": dynamics, "lr": cfg.dynamics.lr},
            {"params": reward, "lr": cfg.dynamics.reward_lr},
        ])

    def _frames(self, buffer: ReplayBuffer, rng: np.random.Generator, n: int) -> torch.Tensor:
        return buffer.observation_tensor(buffer.sample(rng, n, self.cfg.schedule.recent_fraction), self.device)

    def _vqvae_loss(self, buffer: ReplayBuffer, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        frames = self._frames(buffer, rng, self.cfg.vqvae.batch_size)  # (B, S, H, W)
        with self.speed.autocast():
            out = self.system.vqvae(frames)
        # The likelihood of 36,864 pixels is summed: compute it in fp32.
        out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        return vqvae_loss(out, frames, self.cfg.vqvae)

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _dynamics_loss(self, seq: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The dynamics loss on real windows (`ReplayBuffer.sequence_tensors`), from their pixels."""
        encoder, codebook, d = self.system.vqvae.encoder, self.system.vqvae.codebook, self.cfg.dynamics
        obs = seq["obs"]  # (B, T, S, H, W)
        B, T = obs.shape[:2]
        # The encoder in eval mode: its BatchNorm then uses the running statistics, so the codes the
        # dynamics model learns from are the codes imagination and the exported agent see (in train
        # mode, batch statistics flipped 7.8% of the code cells of a cpu run's batches).
        with in_mode(encoder, False), torch.set_grad_enabled(torch.is_grad_enabled() and not d.stop_embedding_grad):
            z_e = encoder(obs.flatten(0, 1)).float()  # (B * T, D, 6, 6)
        codes, z = codebook.quantize(z_e.detach())  # (B * T, 6, 6): no EMA update from these batches
        z_q = z_e + (z - z_e).detach()  # straight-through into the encoder
        return dynamics_loss(
            self.system.dynamics, codebook.embed, z_q.view(B, T, *z_q.shape[1:]), codes.view(B, T, *codes.shape[1:]),
            seq["actions"], seq["rewards"], seq["first"], self.cfg, life_lost=seq["life_lost"])

    @torch.no_grad()
    def score(self, chunk: dict[str, np.ndarray], rng: np.random.Generator, batches: int = 32) -> dict[str, float]:
        """The world model on real data it has not trained on (the newest collection, i.e. the
        policy's own trajectories), before it trains on them: next-code accuracy along the windows
        (teacher-forced, then on its own samples, as in imagination) and reward precision/recall."""
        d = self.cfg.dynamics
        fresh = ReplayBuffer(self.cfg.env.frame_stack)
        fresh.add_chunk(chunk)
        starts = fresh.sequence_starts(d.seq_len)
        if len(starts) == 0:
            return {}
        metrics: dict[str, list[float]] = defaultdict(list)
        with in_mode(self.system, False):
            for _ in range(batches):
                with self.speed.autocast():
                    _, m = self._dynamics_loss(fresh.sequence_tensors(rng.choice(starts, d.batch_size), d.seq_len,
                                                                   self.device))
                for k, v in m.items():
                    metrics[k].append(v)
        return {k.replace("dynamics/", "new_data/"): v for k, v in _summary(metrics, "dynamics").items()}

    def warmup_batches(self, buffer: ReplayBuffer) -> int:
        return warmup_batches(self.cfg, len(buffer))

    def warmup(self, buffer: ReplayBuffer, rng: np.random.Generator, progress: Progress,
               n_batches: int | None = None) -> dict[str, float]:
        """VQ-VAE alone on the first data, at `warmup_lr_scale` x its learning rate (`warmup_epochs`
        passes, or exactly `n_batches` batches)."""
        self.system.train()
        group = self.optimizer.param_groups[0]
        group["lr"] = self.cfg.vqvae.lr * self.cfg.vqvae.warmup_lr_scale
        metrics: dict[str, list[float]] = defaultdict(list)
        try:
            for _ in range(self.warmup_batches(buffer) if n_batches is None else n_batches):
                loss, m = self._vqvae_loss(buffer, rng)
                self._step(loss)
                for k, v in m.items():
                    metrics[k].append(v)
                progress(1)
        finally:
            group["lr"] = self.cfg.vqvae.lr
        return {f"warmup/{k.split('/')[-1]}": float(np.mean(v[-10:])) for k, v in metrics.items()}

    def batches(self, buffer: ReplayBuffer, epochs: int) -> int:
        return dynamics_batches(self.cfg, len(buffer), epochs)

    def train(self, buffer: ReplayBuffer, epochs: int, rng: np.random.Generator, progress: Progress,
              n_batches: int | None = None) -> dict[str, float]:
        """Dynamics on every batch, the VQ-VAE on every `vqvae_every`-th, one joint optimizer step;
        `epochs` passes over the buffer, or exactly `n_batches` batches (`dlswm profile`)."""
        d, system = self.cfg.dynamics, self.system
        starts = buffer.sequence_starts(d.seq_len)
        assert len(starts) > 0, "no episode in the buffer is as long as one training sequence"
        system.train()
        metrics: dict[str, list[float]] = defaultdict(list)
        n_batches = self.batches(buffer, epochs) if n_batches is None else n_batches
        t0 = time.perf_counter()
        for i in range(n_batches):
            idx = buffer.sample_starts(starts, d.batch_size, rng, self.cfg.schedule.recent_fraction)
            seq = buffer.sequence_tensors(idx, d.seq_len, self.device)
            with self.speed.autocast():
                loss, m = self._dynamics_loss(seq)
            if i % d.vqvae_every == 0:
                vq_loss, vq_metrics = self._vqvae_loss(buffer, rng)
                loss = loss + vq_loss
                m.update(vq_metrics)
            self._step(loss)
            for k, v in m.items():
                metrics[k].append(v)
            progress(1)
        seconds = time.perf_counter() - t0
        # The last batches describe the model as it leaves this phase.
        summary = _summary({k: v[-max(1, len(v) // 10):] for k, v in metrics.items()}, "dynamics")
        summary["throughput/wm_samples_per_s"] = n_batches * d.batch_size * d.seq_len / max(seconds, 1e-9)
        summary["wm/batches"] = n_batches
        return summary


def warmup_batches(cfg: Config, frames: int) -> int:
    """VQ-VAE warm-up batches: `warmup_epochs` passes over `frames` observations."""
    return math.ceil(cfg.vqvae.warmup_epochs * frames / cfg.vqvae.batch_size)


def dynamics_batches(cfg: Config, frames: int, epochs: int) -> int:
    """Dynamics batches for `epochs` passes over `frames` observations, counted in sample-steps."""
    d = cfg.dynamics
    return math.ceil(epochs * frames / (d.batch_size * d.seq_len))


def _summary(metrics: dict[str, list[float]], prefix: str) -> dict[str, float]:
    """Means of per-batch metrics; hit counts of rewards (and life losses) become precision and
    recall over all batches, the reward head's summed non-zero mass its `reward_lift`."""
    counted = {"reward": ("reward_hits", "reward_predicted_nonzero", "reward_true_nonzero"),
               "life": ("life_hits", "life_predicted", "life_true")}
    ratios, true = {}, {}
    for event, keys in counted.items():
        if f"{prefix}/{keys[0]}" not in metrics and event != "reward":
            continue
        hits, predicted, true[event] = (float(np.sum(metrics.pop(f"{prefix}/{k}", [0]))) for k in keys)
        ratios[f"{prefix}/{event}_precision"] = hits / max(predicted, 1)
        ratios[f"{prefix}/{event}_recall"] = hits / max(true[event], 1)
    # reward_lift: the mean non-zero reward mass on rewarded steps over that on unrewarded ones (1: the
    # head cannot tell them apart); only where both kinds of step were seen.
    rewarded, unrewarded, steps = (float(np.sum(metrics.pop(f"{prefix}/{k}", [0])))
                                   for k in ("reward_mass_rewarded", "reward_mass_unrewarded", "reward_steps"))
    if 0 < true["reward"] < steps and unrewarded > 0:
        ratios[f"{prefix}/reward_lift"] = (rewarded / true["reward"]) / (unrewarded / (steps - true["reward"]))
    return {**{k: float(np.mean(v)) for k, v in metrics.items()}, **ratios}
