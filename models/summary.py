"""Parameter counts and multiply-accumulates: what `dlswm info` reports and export records."""

from __future__ import annotations

import torch
from torch import nn

from dlswm.models.system import INFERENCE_COMPONENTS, System
from dlswm.models.vqvae import Codebook


def num_params(module: nn.Module) -> int:
    """Trainable parameters plus codebook entries: the entries are EMA buffers, not parameters,
    but they are weights the agent needs. BatchNorm running statistics are not counted."""
    codebooks = sum(m.embedding.numel() for m in module.modules() if isinstance(m, Codebook))
    return sum(p.numel() for p in module.parameters()) + codebooks


def inference_macs(system: System) -> int:
    """Multiply-accumulates of one inference (batch 1), counted on a real forward pass."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    agent = system.inference_agent().eval()
    hooks = [m.register_forward_hook(count) for m in agent.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        env = system.cfg.env
        with torch.no_grad():
            device = next(agent.parameters()).device
            _, _, codes = agent(torch.zeros(1, env.frame_stack, env.frame_size, env.frame_size, dtype=torch.uint8,
                                            device=device))
    finally:
        for h in hooks:
            h.remove()
    codebook = system.vqvae.codebook
    return total + codes.numel() * codebook.embedding.numel()  # the distance MatMul: cells x K x D


def summarize(system: System) -> dict:
    components = {name: num_params(m) for name, m in system.components().items()}
    return {
        "components": components,
        "training_params": sum(components.values()),
        "inference_components": list(INFERENCE_COMPONENTS),
        "inference_params": sum(components[c] for c in INFERENCE_COMPONENTS),
        "inference_macs": inference_macs(system),
    }
