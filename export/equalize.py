"""Activation equalization of the encoder before int8: the same function, easier to quantize.

onnxruntime's static int8 gives each activation tensor one scale (per tensor), and each weight one
scale per output channel. Where one channel of an activation spans 10x the range of another, the
small one keeps a few of the 256 levels. In the encoder's downsampling chain each activation
feeds exactly one conv through a LeakyReLU, which is positively homogeneous (f(x / s) = f(x) / s
for s > 0), so output channel i of conv j can be divided by s_i and input channel i of conv j+1
multiplied by it: the same function in exact arithmetic. SmoothQuant (Xiao et al., 2023) picks
s_i = a_i^alpha / w_i^(1 - alpha), a_i the activation's range on calibration frames and w_i the
next conv's weight range on that channel: alpha 1 equalizes the activations, 0 the weights
(cross-layer equalization, Nagel et al., 2019, for ReLU networks). The residual blocks' stream is
left alone (a skip connection carries each of its channels to several convs).

onnxruntime's own `SmoothQuant` option needs Intel Neural Compressor and rescales MatMul inputs;
NNCF's works on OpenVINO graphs. This is the same rescaling on the torch module, before the
converter; which formats' quantizers start from it is `Format.equalize` (formats.py).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# `dlswm export`'s default: the middle of SmoothQuant's range, chosen on two agents (docs/int8.md).
DEFAULT_ALPHA = 0.5


def fold_batchnorm(agent: nn.Module) -> nn.Module:
    """A copy with each BatchNorm2d folded into the Conv2d before it (as the ONNX export does), in
    eval mode."""
    folded = copy.deepcopy(agent).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
    return folded


def _down_convs(folded: nn.Module) -> list[nn.Conv2d]:
    """The encoder's downsampling convs, each followed by a LeakyReLU and then the next one."""
    convs = []
    for stage in folded.encoder.down:  # (Conv2d, Identity (folded BatchNorm), LeakyReLU)
        conv, act = stage[0], stage[-1]
        assert isinstance(conv, nn.Conv2d) and isinstance(act, nn.LeakyReLU), "the encoder's stages changed"
        assert act.negative_slope >= 0, "the rescaling needs a positively homogeneous activation"
        convs.append(conv)
    return convs


@torch.no_grad()
def equalize(agent: nn.Module, frames: np.ndarray, alpha: float) -> nn.Module:
    """A BatchNorm-folded copy of the inference agent whose encoder activations are rescaled as the
    module docstring says, with activation ranges measured on `frames` (N, S, H, W) uint8."""
    assert 0.0 <= alpha <= 1.0, alpha
    folded = fold_batchnorm(agent)
    stages, convs = list(folded.encoder.down), _down_convs(folded)
    ranges: dict[int, torch.Tensor] = {}  # stage -> (C,) max |activation| per channel
    hooks = [stage.register_forward_hook(lambda _m, _i, out, j=j: ranges.__setitem__(
        j, torch.maximum(ranges.get(j, torch.zeros(out.shape[1])), out.abs().amax(dim=(0, 2, 3)))))
        for j, stage in enumerate(stages[:-1])]
    try:
        for batch in np.array_split(frames, max(1, len(frames) // 64)):
            folded(torch.from_numpy(batch))
    finally:
        for hook in hooks:
            hook.remove()
    for j, (conv, nxt) in enumerate(zip(convs, convs[1:])):
        a = ranges[j].clamp_min(1e-8)  # (C,) a channel never active keeps s = its weights' term alone
        w = nxt.weight.abs().amax(dim=(0, 2, 3)).clamp_min(1e-8)  # (C,) over the next conv's input channel
        s = a.pow(alpha) / w.pow(1.0 - alpha)  # (C,)
        conv.weight.div_(s[:, None, None, None])
        conv.bias.div_(s)
        nxt.weight.mul_(s[None, :, None, None])
    return folded
