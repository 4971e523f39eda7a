"""Torch inference path -> one self-describing ONNX file (fp32)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from dlswm.atomic import atomic_write_bytes
from dlswm.models import InferenceAgent
from dlswm.runtime.contract import INPUT_NAME, OUTPUT_NAMES
from dlswm.runtime.model_card import ModelCard



def to_onnx(agent: InferenceAgent, frame_shape: tuple[int, int, int]) -> onnx.ModelProto:
    """uint8 frames (batch, S, H, W) -> logits, value, codes, with a dynamic batch axis.

    BatchNorm folds into the convs on export. The example batch is 2: torch.export specializes a
    batch of 1 to a constant.
    """
    agent = agent.eval()
    example = torch.zeros(2, *frame_shape, dtype=torch.uint8)
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" notices concern no op of ours
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(agent, (example,), dynamo=True, external_data=False, verbose=False,
                                        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
    finally:
        onnx_logger.setLevel(level)
    model = program.model_proto
    for node in model.graph.node:  # exporter provenance: stack traces with this machine's paths
        del node.metadata_props[:]
    return model


def attach_card(model: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, card.to_metadata())
    model.producer_name = "dlswm"
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """One file (weights inside), never half-written."""
    atomic_write_bytes(path, model.SerializeToString())
