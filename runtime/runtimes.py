"""The runtimes an exported agent runs on, as data: which files each opens, the extra that installs
it, where its files keep the model card, and how a file becomes a call `frames -> outputs`.

onnxruntime is the base install; the others are extras, imported only when a file of theirs is
opened. Every opener returns the same `Loaded`: the call (uint8 frame stacks (B, S, H, W) -> logits
(B, A) float32, value (B,) float32, codes (B, n, n) int64), the card's metadata map, and the graph's
input shape and logits width for `ModelCard.check`. Graphs written with a fixed batch of 1 (LiteRT,
ExecuTorch: what a board runs) are called once per frame stack for a larger batch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from dlswm.errors import UserError
from dlswm.runtime.contract import INPUT_NAME
from dlswm.runtime.model_card import METADATA_KEY

Outputs = Callable[[np.ndarray], list[np.ndarray]]


@dataclass
class Loaded:
    outputs: Outputs
    metadata: dict[str, str]  # {METADATA_KEY: card JSON}, as ONNX keeps it
    input_shape: list[Any]  # (batch, S, H, W); a str or None for a dynamic axis
    logits_width: Any
    device: str  # what ran it, for the report


@dataclass(frozen=True)
class Runtime:
    name: str
    suffixes: tuple[str, ...]  # the files it opens; the first is the one `export` writes for it
    module: str  # what must be importable
    extra: str | None  # `pip install 'dlswm[extra]'`; None: the base install
    card: str  # where its files keep the model card
    open: Callable[[Path, int, str], Loaded]
    dist: str  # the pip distribution, for its version

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.dist)
        except PackageNotFoundError:
            return "not installed"

    def available(self) -> bool:
        return importlib.util.find_spec(self.module.split(".")[0]) is not None

    def require(self, source: str) -> None:
        """One line naming the extra when this runtime is not installed."""
        if not self.available():
            raise UserError(f"{source} runs on {self.name}, which is not installed: pip install 'dlswm[{self.extra}]'")


def sidecar_path(path: Path) -> Path:
    """The model card of a format that keeps no metadata: `<file>.card.json` beside it."""
    return path.with_name(path.name + ".card.json")


def _sidecar(path: Path) -> dict[str, str]:
    card = sidecar_path(path)
    try:
        return {METADATA_KEY: card.read_text()}
    except FileNotFoundError:
        raise UserError(f"{path} has no model card: {card.name} must lie beside it (`dlswm export` writes both)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{card}: unreadable model card ({type(e).__name__})") from None


def _first_line(e: BaseException) -> str:
    """The first line of an exception that says something: OpenVINO's begin with source locations."""
    lines = [line.strip() for line in str(e).splitlines()
             if line.strip() and not line.startswith(("Exception from src/", "Check '"))]
    return (lines[0] if lines else type(e).__name__)[:160]


@contextlib.contextmanager
def output_to(path: str | Path = os.devnull, streams: tuple[int, ...] = (2,)) -> Iterator[None]:
    """The file descriptors `streams` (2: stderr, 1: stdout) appended to `path` for the block:
    Python's writes and native code's alike. Keeps the runtimes' and converters' own log lines
    (OpenVINO's TensorFlow reader logs through absl when handed a file not its own; ExecuTorch's
    loader and torchao print) out of dlswm's output: a bad file ends in one line, a good one in the
    report alone; `export` keeps the converters' chatter in a log beside its files."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in streams]
    try:
        with open(path, "a", buffering=1) as sink, contextlib.ExitStack() as python_level:
            for fd in streams:
                os.dup2(sink.fileno(), fd)
            # Python's writes too where sys.stdout / sys.stderr are not fds 1 / 2 (a test's runner)
            if 1 in streams:
                python_level.enter_context(contextlib.redirect_stdout(sink))
            if 2 in streams:
                python_level.enter_context(contextlib.redirect_stderr(sink))
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip(streams, saved):
            os.dup2(copy, fd)
            os.close(copy)


def _per_frame(call: Callable[[np.ndarray], list[np.ndarray]]) -> Outputs:
    """A batch-1 graph called on (B, ...) frames: one call per frame stack, outputs concatenated."""
    def outputs(frames: np.ndarray) -> list[np.ndarray]:
        rows = [call(frames[i:i + 1]) for i in range(len(frames))]
        return [np.concatenate(parts) for parts in zip(*rows)]
    return outputs


def _as_contract(logits: Any, value: Any, codes: Any) -> list[np.ndarray]:
    """The contract's dtypes: some runtimes narrow int64 codes to int32 on the way."""
    return [np.asarray(logits, np.float32), np.asarray(value, np.float32), np.asarray(codes).astype(np.int64)]


# Short device names -> onnxruntime execution providers; any other provider the installed
# onnxruntime offers is accepted by its lowercase name without "ExecutionProvider".
ORT_DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
               "coreml": "CoreMLExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


def ort_provider(device: str) -> str:
    import onnxruntime as ort

    available = ort.get_available_providers()
    short = {name.removesuffix("ExecutionProvider").lower(): name for name in available}
    provider = ORT_DEVICES.get(device.lower()) or short.get(device.lower())
    if provider not in available:
        raise UserError(f"device '{device}' is not available in this onnxruntime; available: {', '.join(sorted(short))}")
    return provider


def _open_onnxruntime(path: Path, threads: int, device: str) -> Loaded:
    import onnxruntime as ort

    provider = ort_provider(device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # no warnings on stderr: the report says what matters
    options.enable_cpu_mem_arena = False  # batch-1 play needs no arena: ~1 MB less, no latency cost seen
    options.enable_mem_pattern = False  # nor a planned activation block: ~1 MB less peak, p50 the same
    try:
        session = ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as e:  # noqa: BLE001 (onnxruntime raises several types for a bad file)
        raise UserError(f"{path} is not a loadable ONNX model ({_first_line(e)})") from None
    return Loaded(lambda frames: session.run(None, {INPUT_NAME: frames}), session.get_modelmeta().custom_metadata_map,
                  session.get_inputs()[0].shape, session.get_outputs()[0].shape[-1], session.get_providers()[0])


def _open_openvino(path: Path, threads: int, device: str) -> Loaded:
    import openvino as ov

    core = ov.Core()
    try:
        with output_to():
            model = core.read_model(str(path))
    except Exception as e:  # noqa: BLE001 (RuntimeError for most, others for odd files)
        raise UserError(f"{path} is not a loadable OpenVINO model ({_first_line(e)})") from None
    if model.has_rt_info([METADATA_KEY]):  # an IR written by `dlswm export`
        metadata = {METADATA_KEY: model.get_rt_info([METADATA_KEY]).astype(str)}
    else:  # an ONNX file read by OpenVINO keeps its metadata in the ONNX file
        metadata = _onnx_metadata(path) if path.suffix == ".onnx" else {}
    card = json.loads(metadata.get(METADATA_KEY, "{}") or "{}") if metadata else {}
    # OpenVINO runs f32 graphs in bf16 on CPUs that have it unless told: an fp32 file stays fp32,
    # a bf16 variant asks for it.
    precision = "bf16" if card.get("variant") == "bf16" else "f32"
    target = device.upper()
    if target not in core.available_devices:
        raise UserError(f"device '{device}' is not available in this OpenVINO; available: "
                        f"{', '.join(d.lower() for d in core.available_devices)}")
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if target == "CPU":
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = core.compile_model(model, target, config)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: OpenVINO cannot compile it ({_first_line(e)})") from None
    request = compiled.create_infer_request()

    def outputs(frames: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: frames})
        return _as_contract(*(result[o] for o in compiled.outputs))

    shape = [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()]
    width = model.outputs[0].get_partial_shape()[-1]
    return Loaded(outputs, metadata, shape, width.get_length() if width.is_static else None, f"OpenVINO {target} ({precision})")


def _onnx_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's metadata, read with onnxruntime (the base install; the openvino extra has no
    `onnx` package): a second, CPU session, opened only where OpenVINO runs an .onnx file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return dict(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    .get_modelmeta().custom_metadata_map)
    except Exception:  # noqa: BLE001 (OpenVINO read it; the card check below says what is missing)
        return {}


def _open_litert(path: Path, threads: int, device: str) -> Loaded:
    from ai_edge_litert.interpreter import Interpreter

    if device.lower() != "cpu":
        raise UserError(f"device '{device}': dlswm runs LiteRT files on the cpu (XNNPACK)")
    metadata = _sidecar(path)
    try:
        with output_to():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()  # where the delegate is made (and logs)
            runner = interpreter.get_signature_runner()
        inputs = interpreter.get_input_details()
    except Exception as e:  # noqa: BLE001 (ValueError for a bad flatbuffer, RuntimeError for bad ops)
        raise UserError(f"{path} is not a loadable LiteRT model ({_first_line(e)})") from None
    signature = interpreter.get_signature_list()
    name = next(iter(signature.values()))["inputs"][0]
    order = sorted(next(iter(signature.values()))["outputs"])  # output_0, output_1, output_2: the contract's order

    def call(frames: np.ndarray) -> list[np.ndarray]:
        result = runner(**{name: frames})
        return _as_contract(*(result[k] for k in order))

    width = next((o["shape"][-1] for o in interpreter.get_output_details() if o["name"].endswith("output_0_output")), None)
    return Loaded(_per_frame(call), metadata, [int(d) for d in inputs[0]["shape"]],
                  int(width) if width is not None else None, "LiteRT CPU (XNNPACK)")


def _open_executorch(path: Path, threads: int, device: str) -> Loaded:
    import torch  # ExecuTorch's Python runtime takes and returns torch tensors

    with output_to():  # torchao, imported with it, logs the CUDA kernels it lacks
        from executorch.runtime import Runtime as ExecuTorchRuntime

    if device.lower() != "cpu":
        raise UserError(f"device '{device}': dlswm runs ExecuTorch files on the cpu (XNNPACK)")
    metadata = _sidecar(path)
    torch.set_num_threads(threads)  # the portable ops' threads; XNNPACK's pool follows the cores
    try:
        with output_to():
            method = ExecuTorchRuntime.get().load_program(str(path)).load_method("forward")
        meta = method.metadata
        shape = list(meta.input_tensor_meta(0).sizes())
        width = meta.output_tensor_meta(0).sizes()[-1]
    except Exception as e:  # noqa: BLE001 (RuntimeError for a bad program)
        raise UserError(f"{path} is not a loadable ExecuTorch program ({_first_line(e)})") from None

    def call(frames: np.ndarray) -> list[np.ndarray]:
        return _as_contract(*(t.numpy() for t in method.execute([torch.from_numpy(frames)])))

    return Loaded(_per_frame(call), metadata, shape, width, "ExecuTorch CPU (XNNPACK)")


RUNTIMES = {r.name: r for r in [
    Runtime("onnxruntime", (".onnx",), "onnxruntime", None, "ONNX metadata (metadata_props)", _open_onnxruntime,
            "onnxruntime"),
    Runtime("openvino", (".xml", ".onnx"), "openvino", "openvino", "IR rt_info (an ONNX file: its metadata)",
            _open_openvino, "openvino"),
    Runtime("litert", (".tflite",), "ai_edge_litert", "litert", "sidecar <file>.card.json", _open_litert,
            "ai-edge-litert"),
    Runtime("executorch", (".pte",), "executorch.runtime", "executorch", "sidecar <file>.card.json",
            _open_executorch, "executorch"),
]}


def runtime_for(path: Path, name: str | None = None) -> Runtime:
    """The runtime named, or the first whose files end like `path`; installed, or one line."""
    if name is not None:
        if name not in RUNTIMES:
            raise UserError(f"unknown runtime '{name}'; valid runtimes: {', '.join(RUNTIMES)}")
        runtime = RUNTIMES[name]
        if path.suffix not in runtime.suffixes:
            raise UserError(f"{path}: {runtime.name} opens {', '.join(runtime.suffixes)} files")
    else:
        runtime = next((r for r in RUNTIMES.values() if path.suffix in r.suffixes), None)
        if runtime is None:
            known = sorted({s for r in RUNTIMES.values() for s in r.suffixes})
            raise UserError(f"{path}: not an agent file dlswm runs (it opens {', '.join(known)})")
    runtime.require(str(path))
    return runtime


def model_files(path: Path) -> list[Path]:
    """The file and the companions it needs: an OpenVINO IR's weights, a sidecar model card."""
    companions = [path.with_suffix(".bin")] if path.suffix == ".xml" else []
    companions += [sidecar_path(path)] if path.suffix in (".tflite", ".pte") else []
    return [path, *companions]


def file_mb(path: Path) -> float:
    """What the agent takes on disk, companions included."""
    return sum(p.stat().st_size for p in model_files(path) if p.exists()) / 1e6
