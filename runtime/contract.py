"""The contract of an exported dlswm agent, in one torch-free place: what export writes and what
`play`, `bench` and the parity gate read. The graph's names and shapes (derived from the config, not
assumed), and the reference action sampler every side samples with. The model card (`model_card.py`)
carries the rest and checks a file against this before any work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlswm.config import Config

INPUT_NAME = "frames"
OUTPUT_NAMES = ("logits", "value", "codes")


def io_spec(cfg: Config) -> tuple[dict[str, str], dict[str, str]]:
    """The graph's input and outputs as the model card states them."""
    e, n = cfg.env, cfg.latent_size
    inputs = {INPUT_NAME: f"uint8 (batch, {e.frame_stack}, {e.frame_size}, {e.frame_size})"}
    outputs = {"logits": "float32 (batch, actions)", "value": "float32 (batch,)", "codes": f"int64 (batch, {n}, {n})"}
    return inputs, outputs


def output_shapes(cfg: Config, num_actions: int) -> dict[str, tuple[Any, ...]]:
    """Each output's shape after the batch axis."""
    return {"logits": (num_actions,), "value": (), "codes": (cfg.latent_size,) * 2}


def action_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The policy the agent samples from: softmax(logits / temperature) over the last axis;
    temperature 0 is greedy (one-hot on the argmax), its limit."""
    if temperature == 0:
        return np.eye(logits.shape[-1])[logits.argmax(-1)]
    z = logits / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def policy_overlap(logits: np.ndarray, reference: np.ndarray, temperature: float) -> np.ndarray:
    """Per row, sum over actions of min(p, p_reference) at `temperature`: 1 - total variation, the
    chance that both policies sample the same action under the best coupling. (N, A) -> (N,)."""
    return np.minimum(action_probs(logits, temperature), action_probs(reference, temperature)).sum(-1)


def choose(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """One action index from one row of logits, as the agent plays."""
    if temperature == 0:
        return int(logits.argmax())
    return int(rng.choice(len(logits), p=action_probs(logits, temperature)))
