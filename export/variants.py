"""The export variants, as data: what precision one file of a format computes in (formats.py).

Quantized variants are static QDQ, calibrated on real game frames (dynamic int8 turns Conv into
ConvInteger, which has no fast kernel). `int8` uses uint8 activations (the fast path on x86) and
weights within +-64, so that x86 CPUs without VNNI compute what the QDQ graph says; `int8-arm`
int8 activations (the usual advice for ARM): measure both on the target. The layer nearest each
output stays fp32: the encoder's last 1x1 projection, whose output picks the codes, and the policy's
logits and value heads (0.3% of the MACs). docs/int8.md has the measurements behind these choices.

When a quantized variant misses the parity gate, each layer is measured alone back in fp32
(`sensitivity`: the policy overlap it buys and the latency it costs), and sets of layers are tried
in fp32 until one passes (`float_layer_tries`): first those the measured gains predict to pass,
cheapest first, then the most sensitive 1, 2, ... layers, as NNCF's accuracy-controlled
quantization ranks them. Float layers chosen by what they buy and cost, not by a fixed order.
"""

from __future__ import annotations

import inspect
import itertools
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

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
    # Weights within +-64: x86 CPUs without VNNI sum pairs of uint8 x int8 products in int16 with
    # saturation (onnxruntime's quantization guide), so full-range weights compute something else there.
    reduce_range: bool = False
    # Ops given to the quantizer. The codebook-distance MatMul stays fp32: quantizing it gained no
    # speed and flipped more code indices (docs/int8.md).
    op_types: tuple[str, ...] = ("Conv", "Gemm")
    fp32_output_layers: bool = True  # the Conv/Gemm nearest each graph output stays fp32
    calibration: str = "Percentile"  # onnxruntime CalibrationMethod name
    percentile: float = 99.99  # of each activation's absolute values, with Percentile calibration
    # True: the range is [-t, t] at that percentile of the absolute values, clipped to what the frames
    # reached (onnxruntime's default). False: (100 - percentile) / 2 percent cut from each tail.
    percentile_symmetric: bool = True
    min_overlap: float = 0.97  # policy overlap with torch fp32 below which it is not written
    max_fp32_layers: int = 4  # most sensitivity-ranked layers kept fp32 when the plain try misses the gate

    @property
    def quantized(self) -> bool:
        return self.activation_type is not None

    def settings(self, calibration_frames: int, fp32_layers: Sequence[str] = ()) -> dict:
        """What the model card records: enough to redo the quantization."""
        if not self.quantized:
            return {}
        return {**asdict(self), "fp32_layers": list(fp32_layers), "format": "QDQ",
                "calibration": {"method": self.calibration, "frames": calibration_frames, "source": "replay buffer"},
                "codebook_matmul": "int8" if "MatMul" in self.op_types else "fp32", "pre_process": True}


VARIANTS = {v.name: v for v in [
    Variant("fp32", "float32, BatchNorm folded", min_overlap=0.999),
    # Not quantized: the fp32 file, computed in bfloat16 where the runtime offers it (OpenVINO).
    Variant("bf16", "float32 weights, bfloat16 compute (OpenVINO on CPUs with bf16)", min_overlap=0.99),
    Variant("int8", "static QDQ, uint8 activations / int8 per-channel weights within +-64 (x86, with or without VNNI)",
            "QUInt8", "QInt8", reduce_range=True),
    Variant("int8-arm", "static QDQ, int8 activations / int8 per-channel weights (ARM)", "QInt8", "QInt8"),
]}


def parse_variants(names: str, two_tailed: bool = False) -> list[Variant]:
    """'fp32,int8' -> the variants; `two_tailed` calibrates the quantized ones' Percentile ranges at
    both tails (`percentile_symmetric` off)."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in VARIANTS]
    if unknown or not chosen:
        raise UserError(f"unknown variant '{(unknown or [names])[0]}'; valid variants: {', '.join(VARIANTS)}")
    variants = [VARIANTS[n] for n in dict.fromkeys(chosen)]
    return [replace(v, percentile_symmetric=False) if two_tailed and v.quantized else v for v in variants]


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


class Quantizer:
    """Static QDQ quantization of one fp32 graph for one variant, calibrated once on `calibration`
    frames (N, S, H, W): every `make` reuses the pre-processed graph and the activation ranges.
    Use as a context manager (it owns a temporary folder)."""

    def __init__(self, fp32: onnx.ModelProto, variant: Variant, calibration: np.ndarray):
        self.variant, self.calibration = variant, calibration
        self._tmp = tempfile.TemporaryDirectory(prefix="dlswm-quant-")
        tmp = Path(self._tmp.name)
        src, self._pre, self._cache = tmp / "fp32.onnx", tmp / "pre.onnx", tmp / "calibration.json"
        onnx.save_model(fp32, str(src))
        # Shape inference + graph optimisation, as onnxruntime advises (without it the quantizer warns).
        quant_pre_process(str(src), str(self._pre))
        model = onnx.load_model(str(self._pre))
        self.always_fp32 = output_layers(model) if variant.fp32_output_layers else []
        # The layers a `make` may keep in fp32, in graph order: the quantized Conv/Gemm nodes.
        self.layers = [n.name for n in model.graph.node if n.op_type in variant.op_types and n.name not in self.always_fp32]

    def __enter__(self) -> Quantizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def make(self, fp32_layers: Sequence[str] = ()) -> onnx.ModelProto:
        """The quantized graph with `fp32_layers` (names from `layers`) and the output layers in fp32."""
        v = self.variant
        unknown = set(fp32_layers) - set(self.layers)
        assert not unknown, f"not quantizable layers: {sorted(unknown)}"
        dst = Path(self._tmp.name) / "int8.onnx"
        quantize_static(str(self._pre), str(dst), FramesReader(self.calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(v.op_types), per_channel=v.per_channel, reduce_range=v.reduce_range,
                        activation_type=QuantType[v.activation_type], weight_type=QuantType[v.weight_type],
                        nodes_to_exclude=list(dict.fromkeys([*self.always_fp32, *fp32_layers])),
                        calibrate_method=CalibrationMethod[v.calibration],
                        extra_options={"CalibPercentile": v.percentile,
                                       "CalibTensorRangeSymmetric": v.percentile_symmetric}, **self._cached_calibration())
        return onnx.load_model(str(dst))

    def _cached_calibration(self) -> dict:
        """A newer onnxruntime keeps the activation ranges of the first call in a file for the next
        ones (the same graph, ops and method); an older one calibrates every time, to the same ranges."""
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            return {"calibration_cache_path": str(self._cache)}
        return {}


def sensitivity(layers: Sequence[str], measure: Callable[[str], dict], progress: Callable[[int, str], None]
                ) -> list[dict]:
    """Each layer's measures with it alone in fp32 (`measure(layer)`: its `policy_overlap`, and what
    that costs, its `p50_ms`), most sensitive (highest overlap) first: the same ranking for every
    format's quantizer."""
    rows = []
    for i, layer in enumerate(layers, 1):
        progress(i, layer)
        rows.append({"layer": layer, **measure(layer)})
    return sorted(rows, key=lambda row: -row["policy_overlap"])


def float_layer_tries(plain: dict, ranked: Sequence[dict], threshold: float, most: int) -> list[list[str]]:
    """The sets of layers to try in fp32, in order, after the plain quantized try (`plain`: its
    `policy_overlap` and `p50_ms`) missed `threshold`; `ranked` is `sensitivity`'s rows.

    First, up to `most` sets of at most `most` layers predicted to pass, cheapest first: a set's
    overlap is predicted as the plain try's plus each layer's gain alone, its cost as the sum of
    each layer's latency alone over the plain try's. Then, since gains need not add up, the most
    sensitive 1, 2, ... `most` layers. Each set once, its layers in ranking order.
    """
    gain = {r["layer"]: r["policy_overlap"] - plain["policy_overlap"] for r in ranked}
    cost = {r["layer"]: max(r["p50_ms"] - plain["p50_ms"], 0.0) for r in ranked}  # noise can read below 0
    useful = [r["layer"] for r in ranked if gain[r["layer"]] > 0]  # ranking order
    predicted = [list(s) for k in range(1, most + 1) for s in itertools.combinations(useful, k)
                 if plain["policy_overlap"] + sum(gain[layer] for layer in s) >= threshold]
    predicted.sort(key=lambda s: (sum(cost[layer] for layer in s), len(s)))  # stable: ranking breaks ties
    prefixes = [[r["layer"] for r in ranked[:k]] for k in range(1, min(most, len(ranked)) + 1)]
    tries: list[list[str]] = []
    for layers in predicted[:most] + prefixes:
        if layers not in tries:
            tries.append(layers)
    return tries
