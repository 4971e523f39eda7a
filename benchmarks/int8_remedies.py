"""What onnxruntime's quantizer settings do to one checkpoint's plain int8 policy overlap.

When the export's int8 misses the parity gate and no small set of float layers passes, the next
question is whether another setting of the quantizer would: this quantizes the checkpoint's
inference path once per setting (no float layers beyond the recipe's output layers) and measures
the policy overlap and greedy agreement with torch on the export's own held-out frames. Overlaps
only; latency is `dlswm bench`'s job.

    python benchmarks/int8_remedies.py RUN/best.pt [--calibration-frames 512]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from dlswm.errors import UserError
from dlswm.export.onnx_graph import to_onnx
from dlswm.export.pipeline import parity_frames, run_dir_of
from dlswm.export.variants import VARIANTS, Quantizer
from dlswm.runtime.contract import policy_overlap
from dlswm.train.checkpoint import RunState

# Settings of the static int8 recipe (`export.variants.Variant` fields) tried one at a time.
STATIC = {
    "the recipe (Percentile 99.99)": {},
    "Percentile 99.9": {"percentile": 99.9},
    "Percentile 99.999": {"percentile": 99.999},
    "MinMax": {"calibration": "MinMax"},
    "Entropy": {"calibration": "Entropy"},
    "int8 activations (int8-arm)": {"activation_type": "QInt8"},
    "per-tensor weights": {"per_channel": False},
}
# Weights int8, activations quantized at run time from each call's own range.
DYNAMIC = {"dynamic MatMul+Gemm (convs fp32)": ["MatMul", "Gemm"], "dynamic Conv+MatMul+Gemm": ["Conv", "MatMul", "Gemm"]}


def overlap_row(name: str, model: onnx.ModelProto, held_out: np.ndarray, reference: np.ndarray,
                temperature: float) -> str:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    logits = ort.InferenceSession(model.SerializeToString(), options).run(None, {"frames": held_out})[0]
    overlap = policy_overlap(logits, reference, temperature).mean()
    return f"| {name} | {overlap:.3f} | {(logits.argmax(1) == reference.argmax(1)).mean():.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run directory or its checkpoint")
    parser.add_argument("--calibration-frames", type=int, default=512)
    args = parser.parse_args()
    try:
        state = RunState.load(args.run)
        cfg = state.config
        calibration, held_out = parity_frames(run_dir_of(args.run), state, cfg.env.frame_stack, args.calibration_frames, cfg.seed)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    torch.set_num_threads(1)
    agent = state.system().inference_agent().eval()
    with torch.no_grad():
        reference = agent(torch.from_numpy(held_out))[0].numpy()  # (N, A) logits
    fp32 = to_onnx(agent, held_out.shape[1:])
    temperature = cfg.policy.eval_temperature
    print(f"{args.run}: {len(calibration)} calibration, {len(held_out)} held-out frames, overlap at T={temperature}")
    print("| plain int8 try | policy overlap | greedy agreement |\n|---|---:|---:|")
    for name, change in STATIC.items():
        with Quantizer(fp32, dataclasses.replace(VARIANTS["int8"], **change), calibration) as quantizer, \
                contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
            model = quantizer.make()
        print(overlap_row(name, model, held_out, reference, temperature), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        onnx.save_model(fp32, str(src))
        quant_pre_process(str(src), str(pre))
        for name, ops in DYNAMIC.items():
            out = Path(tmp) / "dynamic.onnx"
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_dynamic(str(pre), str(out), op_types_to_quantize=ops, weight_type=QuantType.QInt8,
                                 per_channel=True)
            print(overlap_row(name, onnx.load_model(str(out)), held_out, reference, temperature), flush=True)


if __name__ == "__main__":
    main()
