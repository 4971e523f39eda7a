"""The export formats, as data: each variant is one ONNX file made from the fp32 graph.

Static QDQ quantization calibrated on real game frames: dynamic int8 turns Conv into
ConvInteger, which has no fast kernel and ran slower than fp32 (reference). Activation type: the
reference's Intel VNNI machine ran uint8 activations / int8 weights 2.6x faster than int8/int8; on
this project's AMD EPYC (AVX512-VNNI, onnxruntime 1.32, paper size, batch 1, 1 thread) both ran
0.73 ms against 2.6-3.1 ms for fp32. uint8/int8 was as fast or faster on both x86 machines, so `int8` uses it; ARM
prefers int8/int8 (`int8-arm`, for Raspberry Pi and Jetson CPUs). Measure on the target.

What stays fp32: the weighted layer nearest each output, i.e. the encoder's last 1x1 projection,
whose output the codebook's argmin reads, and the policy's logits and value heads (0.3M and 5k MACs
of 114M, no measurable latency, +0.02 MB). Policy overlap with torch on 1,024 held-out frames of two
checkpoints of a CrazyClimber `cpu` run (eval temperature 1.0), iteration 2 / 3: all int8, min-max
0.968 / -; projection fp32 0.970 / -; + percentile 99.999 0.974 / 0.962; + heads fp32 0.976 / 0.966;
the same at percentile 99.99 0.975 / 0.971 (and 0.953 vs 0.949 on an older run's final agent at
temperature 0.5). The whole policy in fp32 reached 0.979 on iteration 2 but doubled the file (3.5 ->
7.3 MB) for its 2304x512 Gemm.

When the gate still fails, the export quantizes again with the encoder's first Conv layers in fp32
as well, one more at a time (`fp32_leading_retries`), and writes the first that passes: they run at
the full 96x96 / 48x48 resolution where rounding moves the most pixels, and they hold few weights.
The retry keeps the gate honest (each try is measured on the same held-out frames) but costs
latency, so the report and the model card say how many leading layers stayed fp32.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from dlswm.errors import UserError


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    activation_type: str | None = None  # None: not quantized
    weight_type: str | None = None
    per_channel: bool = True
    # Ops given to the quantizer. The codebook-distance MatMul stays fp32: quantizing it gained no
    # speed (paper size, 1 thread: 0.727 vs 0.732 ms p50) and flipped more code indices (held-out
    # code agreement 0.57 vs 0.68 on a paper-size network with data-initialised codebook).
    op_types: tuple[str, ...] = ("Conv", "Gemm")
    fp32_output_layers: bool = True  # the Conv/Gemm nearest each graph output stays fp32
    calibration: str = "Percentile"  # onnxruntime CalibrationMethod name
    percentile: float = 99.99  # of each activation's absolute values, with Percentile calibration
    min_overlap: float = 0.97  # policy overlap with torch fp32 below which it is not written
    fp32_leading_retries: tuple[int, ...] = (1, 2, 3)  # leading Conv layers kept fp32 on each retry

    @property
    def quantized(self) -> bool:
        return self.activation_type is not None

    def attempts(self) -> tuple[int, ...]:
        """Leading encoder layers kept fp32 on each try, in order; one try for float variants."""
        return (0, *self.fp32_leading_retries) if self.quantized else (0,)

    def settings(self, calibration_frames: int, fp32_leading_layers: int = 0) -> dict:
        """What the model card records: enough to redo the quantization."""
        if not self.quantized:
            return {}
        return {**asdict(self), "fp32_leading_layers": fp32_leading_layers, "format": "QDQ", "calibration": {"method": self.calibration, "frames": calibration_frames,
                                                                   "source": "replay buffer"},
                "codebook_matmul": "int8" if "MatMul" in self.op_types else "fp32", "pre_process": True}


VARIANTS = {v.name: v for v in [
    Variant("fp32", "float32, BatchNorm folded", min_overlap=0.999),
    Variant("int8", "static QDQ, uint8 activations / int8 per-channel weights (x86 VNNI)", "QUInt8", "QInt8"),
    Variant("int8-arm", "static QDQ, int8 activations / int8 per-channel weights (ARM)", "QInt8", "QInt8"),
]}


def parse_variants(names: str) -> list[Variant]:
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in VARIANTS]
    if unknown or not chosen:
        raise UserError(f"unknown variant '{(unknown or [names])[0]}'; valid variants: {', '.join(VARIANTS)}")
    return [VARIANTS[n] for n in dict.fromkeys(chosen)]


class FramesReader(CalibrationDataReader):
    """Calibration data: uint8 frame stacks in batches of one size, at most `batch`.

    onnxruntime's histogram calibrators stack every batch's activations into one array, so the
    batches must be equal: the size is the largest divisor of the frame count up to `batch`.
    """

    def __init__(self, frames: np.ndarray, batch: int = 16):
        size = equal_batch_size(len(frames), batch)
        self._batches: Iterator[np.ndarray] = (frames[i:i + size] for i in range(0, len(frames), size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"frames": batch}


def equal_batch_size(n: int, most: int) -> int:
    """The largest b <= most that divides n (1 for a prime n above `most`)."""
    return next(b for b in range(min(most, max(n, 1)), 0, -1) if n % b == 0)


def output_layers(model: onnx.ModelProto) -> list[str]:
    """The Conv/Gemm nodes that reach a graph output through no other Conv/Gemm, in graph order:
    the code projection (via the codebook's MatMul and argmin) and the logits and value heads."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found, seen, stack = set(), set(), [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("Conv", "Gemm"):
            found.add(node.name)
        else:
            stack.extend(node.input)
    return [n.name for n in model.graph.node if n.name in found]


def leading_layers(model: onnx.ModelProto, count: int) -> list[str]:
    """The first `count` Conv nodes in graph order: the encoder's input end."""
    return [n.name for n in model.graph.node if n.op_type == "Conv"][:count]


def quantize(fp32: onnx.ModelProto, variant: Variant, calibration: np.ndarray,
             fp32_leading_layers: int = 0) -> onnx.ModelProto:
    """Static QDQ quantization of `fp32`, calibrated on `calibration` frames (N, S, H, W), with the
    output layers (if the variant says so) and the first `fp32_leading_layers` Conv layers in fp32."""
    reader = FramesReader(calibration)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(fp32, str(src))
        # Shape inference + graph optimisation, as onnxruntime advises: at paper size it changed
        # neither latency nor agreement, but without it the quantizer warns on stderr.
        quant_pre_process(str(src), str(pre))
        graph = onnx.load_model(str(pre))
        keep = list(dict.fromkeys((output_layers(graph) if variant.fp32_output_layers else [])
                                  + leading_layers(graph, fp32_leading_layers)))
        quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(variant.op_types), per_channel=variant.per_channel,
                        activation_type=QuantType[variant.activation_type], nodes_to_exclude=keep,
                        weight_type=QuantType[variant.weight_type],
                        calibrate_method=CalibrationMethod[variant.calibration],
                        extra_options={"CalibPercentile": variant.percentile})
        return onnx.load_model(str(dst))
