"""Opening a dlswm agent: a validated ONNX file -> an onnxruntime session and its model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dlswm.errors import UserError
from dlswm.runtime.contract import INPUT_NAME
from dlswm.runtime.model_card import ModelCard

# Short device names -> onnxruntime execution providers; any other provider the installed
# onnxruntime offers is accepted by its lowercase name without "ExecutionProvider".
DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
           "coreml": "CoreMLExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


def provider_for(device: str) -> str:
    available = ort.get_available_providers()
    short = {name.removesuffix("ExecutionProvider").lower(): name for name in available}
    provider = DEVICES.get(device.lower()) or short.get(device.lower())
    if provider not in available:
        names = ", ".join(sorted(short))
        raise UserError(f"device '{device}' is not available in this onnxruntime; available: {names}")
    return provider


@dataclass
class Agent:
    """A loaded agent: greedy or sampled actions from uint8 frame stacks."""

    session: ort.InferenceSession
    card: ModelCard
    path: Path
    threads: int

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """frames uint8 (B, S, H, W) -> logits (B, A)."""
        return self.session.run(["logits"], {INPUT_NAME: frames})[0]

    def outputs(self, frames: np.ndarray) -> list[np.ndarray]:
        """logits (B, A), value (B,), codes (B, n, n): `contract.OUTPUT_NAMES`, in that order."""
        return self.session.run(None, {INPUT_NAME: frames})


def open_agent(path: str | Path, device: str = "cpu", threads: int = 1) -> Agent:
    """One-line UserErrors for every way a path can fail to be a usable dlswm agent."""
    path = Path(path)
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass a .onnx file exported by `dlswm export`")
    provider = provider_for(device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # no warnings on stderr: the report says what matters
    options.enable_cpu_mem_arena = False  # batch-1 play needs no arena: ~1 MB less, no latency cost seen
    try:
        session = ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as e:  # noqa: BLE001 (onnxruntime raises several types for a bad file)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a loadable ONNX model ({first[:160]})") from None
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    card.check(str(path), session.get_inputs()[0].shape, session.get_outputs()[0].shape[-1])
    return Agent(session, card, path, threads)
