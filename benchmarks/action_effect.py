"""Does the world model answer the agent's actions? Model-side action values from one checkpoint.

Loads a run's last checkpoint as `--resume` would and draws `--states` real start windows from its
buffer, as PPO's imagination does. From each, every action is taken once, then the policy acts for
the rest of `--horizon` steps; the head's expected reward sign is summed (discounted by the run's
gamma) over `--repeats` sampled rollouts: Q(s, a) as the model sees it. Printed:
- per action: the mean Q over states, and how often the policy (at temperature 1) takes it;
- the spread of Q across actions per state (std over actions, mean over states) against the
  sampling noise of one Q (its standard error over the repeats): a model that ignores the actions
  has a spread at the noise;
- how much the first imagined step's code distribution moves with the action (total variation
  from the mean over actions, mean over cells): where the action shows in the next frame.
A proxy of what PPO can learn from, not a score.

    python benchmarks/action_effect.py RUN --states 128 --repeats 4 --horizon 10 --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dlswm.models import in_mode
from dlswm.models.dynamics import sample_categorical, split_outcome
from dlswm.run_dir import RunDir
from dlswm.train.imagine import start_context, warm_start
from dlswm.train.trainer import Trainer


@torch.no_grad()
def action_values(trainer: Trainer, states: int, repeats: int, horizon: int) -> dict[str, torch.Tensor]:
    """Q (states, actions, repeats), the first step's code TV per action (states, actions) and the
    policy's probabilities at the start states (states, actions)."""
    system, cfg = trainer.system, trainer.cfg
    codebook, dynamics, policy = system.vqvae.codebook, system.dynamics, system.policy
    A, gamma = trainer.game.num_actions, cfg.ppo.gamma
    context = start_context(trainer.buffer, cfg, states, trainer.rng, trainer.device)
    with in_mode(system, False):
        z0, state, reset0 = warm_start(system, context)  # (N, D, n, n), the state after the context, (N,)
        N = len(z0)
        probs = policy(z0)[0].softmax(-1)  # (N, A)
        # Every (state, action, repeat) as one batch: index b = (s * A + a) * R + r.
        expand = lambda x: x.repeat_interleave(A * repeats, 0)  # noqa: E731
        z, st, reset = expand(z0), [(expand(h), expand(c)) for h, c in state], expand(reset0)
        action = torch.arange(A).repeat_interleave(repeats).repeat(N)  # (N * A * R,)
        q = torch.zeros(len(action))
        for t in range(horizon):
            if t > 0:
                action = torch.distributions.Categorical(logits=policy(z)[0]).sample()
            code_logits, outcome, st = dynamics.step(z, action, st, reset=reset)
            reset = None
            if t == 0:
                first = code_logits.float().softmax(1)  # (B, K, n, n)
                first = first.view(N, A, repeats, *first.shape[1:])[:, :, 0]  # (N, A, K, n, n): deterministic in a
                tv = 0.5 * (first - first.mean(1, keepdim=True)).abs().sum(2).mean((-2, -1))  # (N, A)
            reward_probs = split_outcome(outcome)[0].float().softmax(1)  # (B, 3)
            q += gamma ** t * (reward_probs[:, 2] - reward_probs[:, 0])
            z = codebook.embed(sample_categorical(code_logits))
    return {"q": q.view(N, A, repeats), "tv": tv, "probs": probs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--states", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    trainer, state = Trainer.from_checkpoint(RunDir(args.run), [], args.threads)
    trainer.close()
    out = action_values(trainer, args.states, args.repeats, args.horizon)
    q, tv, probs = out["q"], out["tv"], out["probs"]
    q_mean = q.mean(2)  # (N, A)
    spread = q_mean.std(1).mean().item()
    noise = (q.std(2) / args.repeats ** 0.5).mean().item()
    greedy_model = q_mean.argmax(1)
    print(f"{args.run} iteration {state.iteration}: {args.states} start states x {args.repeats} repeats, "
          f"horizon {args.horizon}")
    print("action | mean Q | policy prob | first-step code TV | model's best action (share of states)")
    for a, name in enumerate(trainer.game.action_meanings):
        print(f"{name} | {q_mean[:, a].mean():.4f} | {probs[:, a].mean():.3f} | {tv[:, a].mean():.4f} | "
              f"{(greedy_model == a).float().mean():.3f}")
    print(f"spread of Q across actions (std, mean over states): {spread:.4f}; noise of one Q (s.e.): {noise:.4f}; "
          f"ratio {spread / max(noise, 1e-9):.2f}")
    corr = torch.corrcoef(torch.stack([(q_mean - q_mean.mean(1, keepdim=True)).flatten(),
                                       (probs - probs.mean(1, keepdim=True)).flatten()]))[0, 1].item()
    print(f"correlation of Q and the policy's probability, within states: {corr:.3f}")


if __name__ == "__main__":
    main()
