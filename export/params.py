"""How many weights an exported graph holds, and why that differs a little from the torch count.

The torch count (`dlswm info`, `summarize()["inference_params"]`) and the fp32 graph's initializers
differ only by what export rewrites:
  - BatchNorm folds into the conv before it: gamma and beta (2c) become one conv bias (c).
  - The codebook is stored twice: C (K, D) for the Gather of the embeddings, and C^T (D, K) with
    its squared norms ||C||^2 (K,) precomputed for the distance MatMul.
  - The exporter's optimizer may drop a bias that is all zeros, as an Add of nothing: an untrained
    network's folded BatchNorm biases, LayerNorm biases, policy heads. Whether it does depends on
    the tensor's size (the tiny preset's (8, 6, 6) LayerNorm bias went, the paper's (64, 6, 6) stayed).
So a graph holds `expected_graph_params` minus at most `zero_bias_values`: exactly the expected
count once trained. The decoder or the dynamics would add 100k (tiny) to millions (paper) more.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from dlswm.models import InferenceAgent
from dlswm.models.summary import num_params


def graph_params(model: onnx.ModelProto) -> int:
    """Float weight values in the graph (shape constants and scalars are not weights)."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 0)


def folded_batchnorm_channels(agent: InferenceAgent) -> int:
    return sum(m.num_features for m in agent.modules() if isinstance(m, nn.BatchNorm2d))


def zero_bias_values(agent: InferenceAgent) -> int:
    """Bias values the exporter may leave out because their whole tensor is zero."""
    total = 0
    for m in agent.modules():
        if isinstance(m, nn.BatchNorm2d):  # the conv bias it folds into: beta - mean * gamma / std
            bias = m.bias - m.running_mean * m.weight / (m.running_var + m.eps).sqrt()
        else:
            bias = getattr(m, "bias", None)
        if isinstance(bias, torch.Tensor) and not bias.any():
            total += bias.numel()
    return total


def expected_graph_params(agent: InferenceAgent) -> int:
    """What the fp32 graph of a trained `agent` holds (see the module docstring)."""
    K, D = agent.codebook.embedding.shape
    return num_params(agent) - folded_batchnorm_channels(agent) + K * D + K
