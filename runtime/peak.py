"""This machine's matrix-multiply peak in onnxruntime, int8 and fp32: the floor a model can reach.

A 1024^3 product (QLinearMatMul for int8, MatMul for fp32) on the given threads. The floor of an
agent is its MACs / this peak; `dlswm bench --peak` prints how far each variant is from it. Building
the graph needs the `onnx` package (in the train extra).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from dlswm.errors import UserError
from dlswm.runtime.latency import time_calls

N = 1024


def _graph(kind: str) -> bytes:
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise UserError("--peak builds a test graph with onnx: pip install onnx") from None
    rng = np.random.default_rng(0)
    if kind == "int8":
        b = numpy_helper.from_array(rng.integers(-127, 128, (N, N), dtype=np.int8), "b")
        scalars = [numpy_helper.from_array(np.array(v, dtype=t), name) for name, v, t in [
            ("a_s", 0.02, np.float32), ("a_z", 128, np.uint8), ("b_s", 0.01, np.float32), ("b_z", 0, np.int8),
            ("y_s", 0.5, np.float32), ("y_z", 128, np.uint8)]]
        node = helper.make_node("QLinearMatMul", ["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"], ["y"])
        elem = TensorProto.UINT8
    else:
        b = numpy_helper.from_array(rng.standard_normal((N, N)).astype(np.float32), "b")
        scalars, node, elem = [], helper.make_node("MatMul", ["a", "b"], ["y"]), TensorProto.FLOAT
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("a", elem, [N, N])],
                              [helper.make_tensor_value_info("y", elem, [N, N])], [b, *scalars])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def matmul_peak_gmacs(kind: str, threads: int, duration_s: float = 1.5) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(_graph(kind), options, providers=["CPUExecutionProvider"])
    a = (np.random.default_rng(1).integers(0, 256, (N, N), dtype=np.uint8) if kind == "int8"
         else np.random.default_rng(1).standard_normal((N, N)).astype(np.float32))
    samples = time_calls(lambda: session.run(None, {"a": a}), warmup=3, duration_s=duration_s, min_calls=5)
    return N ** 3 / (float(np.median(samples)) / 1e3) / 1e9
