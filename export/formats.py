"""The file formats `dlswm export` writes, as data, and for each a maker: the format's own converter
and quantizer, written by none of us again.

| format | converter, quantizer | runtime | model card |
|---|---|---|---|
| onnx | torch.onnx, onnxruntime.quantization (static QDQ) | onnxruntime | ONNX metadata |
| openvino | OpenVINO's ONNX reader, NNCF | OpenVINO | IR rt_info |
| litert | litert-torch, its PT2E quantizer | LiteRT (XNNPACK) | sidecar JSON |
| executorch | torch.export + XNNPACK partitioner, XNNPACKQuantizer (PT2E) | ExecuTorch | sidecar JSON |

A maker offers the same three things whatever the format: `layers` (the quantized layers it may keep
in float, by the names its own quantizer knows them by), `make(fp32_layers)` (the model in memory)
and `save(model, card, path)` (the file and its companions, `runtimes.model_files`). `pipeline.py`
gates every file the same way. The layers nearest each output (the code projection, the logits and
value heads) stay float in every format, as in the ONNX variants (variants.py says why).
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch

from dlswm.errors import UserError
from dlswm.export.equalize import fold_batchnorm
from dlswm.export.onnx_graph import attach_card, save_model
from dlswm.export.variants import Quantizer, Variant
from dlswm.runtime.model_card import METADATA_KEY, ModelCard
from dlswm.runtime.runtimes import RUNTIMES, sidecar_path


@dataclass(frozen=True)
class Format:
    name: str
    runtime: str  # RUNTIMES key: the runtime the gate measures its files on
    variants: tuple[str, ...]  # the variants it offers
    converters: tuple[str, ...]  # modules export needs, beyond the train extra
    extra: str  # `pip install 'dlswm[extra]'` for them
    description: str
    # Whether its int8 starts from the activation-equalized agent (equalize.py): measured with
    # onnxruntime's quantizer only; NNCF and the PT2E quantizers get the trained weights.
    equalize: bool = False

    @property
    def suffix(self) -> str:
        return RUNTIMES[self.runtime].suffixes[0]

    def require(self) -> None:
        missing = [m for m in self.converters if importlib.util.find_spec(m.split(".")[0]) is None]
        if missing:
            raise UserError(f"--formats {self.name} needs {missing[0]}: pip install 'dlswm[{self.extra}]'")


FORMATS = {f.name: f for f in [
    Format("onnx", "onnxruntime", ("fp32", "int8", "int8-arm"), ("onnx", "onnxruntime"), "train",
           "ONNX for onnxruntime (any board); static QDQ int8", equalize=True),
    Format("openvino", "openvino", ("fp32", "bf16", "int8"), ("openvino", "nncf"), "export",
           "OpenVINO IR (.xml + .bin) for Intel CPUs, GPUs, NPUs; NNCF int8"),
    Format("litert", "litert", ("fp32", "int8"), ("litert_torch", "ai_edge_litert"), "export",
           "LiteRT (TFLite) flatbuffer, XNNPACK on ARM boards and phones; PT2E int8"),
    Format("executorch", "executorch", ("fp32", "int8"), ("executorch",), "export",
           "ExecuTorch program (.pte) lowered to XNNPACK; PT2E int8"),
]}


def parse_formats(names: str) -> list[Format]:
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in FORMATS]
    if unknown or not chosen:
        raise UserError(f"unknown format '{(unknown or [names])[0]}'; valid formats: {', '.join(FORMATS)}")
    formats = [FORMATS[n] for n in dict.fromkeys(chosen)]
    for f in formats:  # before any work
        f.require()
    return formats


def _tool_version(dist: str) -> str:
    from importlib.metadata import version

    return f"{dist} {version(dist)}"


class OnnxMaker:
    """onnxruntime's static QDQ (variants.Quantizer); fp32 is the exported graph itself."""

    def __init__(self, fp32: onnx.ModelProto, variant: Variant, calibration: np.ndarray):
        self.fp32, self.variant, self.calibration = fp32, variant, calibration
        self._quantizer = Quantizer(fp32, variant, calibration) if variant.quantized else None
        self.layers = self._quantizer.layers if self._quantizer else []

    def make(self, fp32_layers: Sequence[str] = ()) -> onnx.ModelProto:
        if self._quantizer is None:
            return onnx.ModelProto.FromString(self.fp32.SerializeToString())
        return self._quantizer.make(fp32_layers)

    def settings(self, fp32_layers: Sequence[str]) -> dict[str, Any]:
        return self.variant.settings(len(self.calibration), fp32_layers)

    def save(self, model: onnx.ModelProto, card: ModelCard, path: Path) -> None:
        save_model(attach_card(model, card), path)

    def close(self) -> None:
        if self._quantizer is not None:
            self._quantizer.__exit__(None, None, None)


class OpenVinoMaker:
    """OpenVINO reads the fp32 ONNX graph; NNCF quantizes it (symmetric int8, fast bias correction)
    on the calibration frames. An op keeps the ONNX node's name (`/WithoutBiases` added where the
    bias becomes its own op), so the layers are the ONNX quantizer's, by the same names."""

    def __init__(self, fp32: onnx.ModelProto, variant: Variant, calibration: np.ndarray):
        import openvino as ov

        self.variant, self.calibration = variant, calibration
        with tempfile.TemporaryDirectory(prefix="dlswm-ov-") as tmp:
            onnx.save_model(fp32, f"{tmp}/fp32.onnx")
            self._model = ov.Core().read_model(f"{tmp}/fp32.onnx")
        nodes = {n.name: n.op_type for n in fp32.graph.node}
        from dlswm.export.variants import output_layers

        outputs = set(output_layers(fp32))
        self._ops = {op.get_friendly_name(): op.get_friendly_name().split("/")[0] for op in self._model.get_ordered_ops()
                     if op.get_type_name() in ("Convolution", "MatMul")}
        quantizable = [base for base in self._ops.values() if nodes.get(base) in variant.op_types and base not in outputs]
        self.layers = list(dict.fromkeys(quantizable)) if variant.quantized else []

    def make(self, fp32_layers: Sequence[str] = ()) -> Any:
        if not self.variant.quantized:
            return self._model.clone()
        import nncf

        keep = set(self.layers) - set(fp32_layers)
        ignored = [name for name, base in self._ops.items() if base not in keep]
        frames = [self.calibration[i:i + 1] for i in range(len(self.calibration))]
        return nncf.quantize(self._model.clone(), nncf.Dataset(frames), subset_size=len(frames),
                             preset=nncf.QuantizationPreset.PERFORMANCE,
                             ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))

    def settings(self, fp32_layers: Sequence[str]) -> dict[str, Any]:
        if self.variant.name == "bf16":
            return {"compute": "bf16 (OpenVINO INFERENCE_PRECISION_HINT; f32 where the CPU has no bf16)"}
        if not self.variant.quantized:
            return {}
        return {"tool": _tool_version("nncf"), "preset": "performance (symmetric int8)", "fast_bias_correction": True,
                "calibration": {"frames": len(self.calibration), "source": "replay buffer"},
                "fp32_layers": list(fp32_layers), "min_overlap": self.variant.min_overlap}

    def save(self, model: Any, card: ModelCard, path: Path) -> None:
        import openvino as ov

        model.set_rt_info(card.to_metadata()[METADATA_KEY], [METADATA_KEY])
        ov.save_model(model, str(path), compress_to_fp16=False)  # .xml and its .bin

    def close(self) -> None:
        pass


class TorchEdgeMaker:
    """LiteRT and ExecuTorch both start from torch.export of the inference path at batch 1 (the
    graph a board runs) and quantize in PT2E: each Conv2d/Linear gets the format's int8 config by
    module name, observers calibrate on the frames one at a time, `convert_pt2e` folds them in."""

    def __init__(self, agent: torch.nn.Module, variant: Variant, calibration: np.ndarray, backend: str):
        # prepare_pt2e would fold each BatchNorm itself, into new weight nodes that no module name
        # reaches: those convs would stay float. Folded here, each conv keeps its name.
        self.agent, self.variant, self.backend = fold_batchnorm(agent), variant, backend
        self.calibration = torch.from_numpy(calibration)
        self.example = (self.calibration[:1],)
        outputs = {"encoder.proj.1", "policy.actor", "policy.critic"}  # nearest the outputs: float
        self.layers = [name for name, m in agent.named_modules()
                       if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and name not in outputs] if variant.quantized else []
        assert not variant.quantized or outputs <= {n for n, _ in agent.named_modules()}, "the inference path's names moved"

    def _quantizer(self) -> tuple[Any, Any]:
        if self.backend == "litert":
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

            return PT2EQuantizer(), get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)

        return XNNPACKQuantizer(), get_symmetric_quantization_config(is_per_channel=True)

    def make(self, fp32_layers: Sequence[str] = ()) -> torch.nn.Module:
        if not self.variant.quantized:
            return self.agent
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer, config = self._quantizer()
        for name in self.layers:
            if name not in fp32_layers:
                quantizer.set_module_name(name, config)  # neither quantizer takes None: name what is quantized
        graph = torch.export.export(self.agent, self.example).module()
        _module_names_for_quantizers(graph, dynamo_keys=self.backend == "litert")
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for i in range(len(self.calibration)):
                prepared(self.calibration[i:i + 1])
        # litert-torch lowers the quantize ops itself: the weights stay float beside them for it.
        return convert_pt2e(prepared, fold_quantize=self.backend != "litert")

    def settings(self, fp32_layers: Sequence[str]) -> dict[str, Any]:
        if not self.variant.quantized:
            return {}
        tool = "litert-torch" if self.backend == "litert" else "executorch"
        return {"tool": f"{_tool_version(tool)}, PT2E", "scheme": "int8 symmetric, per-channel weights, static",
                "calibration": {"frames": len(self.calibration), "source": "replay buffer"},
                "fp32_layers": list(fp32_layers), "min_overlap": self.variant.min_overlap}

    def save(self, model: torch.nn.Module, card: ModelCard, path: Path) -> None:
        from dlswm.atomic import atomic_write_bytes

        if self.backend == "litert":
            atomic_write_bytes(path, _litert_bytes(model, self.example, self.variant.quantized))
        else:
            atomic_write_bytes(path, _executorch_bytes(model, self.example))
        atomic_write_bytes(sidecar_path(path), json.dumps(json.loads(card.to_metadata()[METADATA_KEY]), indent=1).encode())

    def close(self) -> None:
        pass


def _module_names_for_quantizers(graph: torch.fx.GraphModule, dynamo_keys: bool) -> None:
    """What the PT2E quantizers' `set_module_name` filters need to find our layers, from each node's
    own `nn_module_stack`: a conv's weight and bias (get_attr nodes, which torch.export leaves
    without one) take their conv's, or the filter rejects the conv's whole partition and it stays
    float; with `dynamo_keys`, litert-torch 0.10's filter reads dynamo-style keys
    (`L__self___encoder_down_0_0`, where torch.export now writes `L__self__encoder.down.0.0`)."""
    for node in graph.graph.nodes:
        if node.op == "get_attr" and not node.meta.get("nn_module_stack") and len(node.users) == 1:
            node.meta["nn_module_stack"] = dict(next(iter(node.users)).meta.get("nn_module_stack") or {})
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack and dynamo_keys:
            node.meta["nn_module_stack"] = {"L__self___" + path.replace(".", "_"): (path, kind) for path, kind in stack.values()}


def _litert_bytes(model: torch.nn.Module, example: tuple[torch.Tensor, ...], quantized: bool) -> bytes:
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    # The converter only asks the quantizer whether it was static or dynamic.
    static = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    with tempfile.TemporaryDirectory(prefix="dlswm-litert-") as tmp:
        edge = litert_torch.convert(model, example, quant_config=QuantConfig(pt2e_quantizer=static) if quantized else None)
        edge.export(f"{tmp}/model.tflite")
        return Path(f"{tmp}/model.tflite").read_bytes()


def _executorch_bytes(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model, example)
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def maker(fmt: Format, variant: Variant, fp32: onnx.ModelProto | None, agent: torch.nn.Module,
          calibration: np.ndarray) -> Any:
    if fmt.name == "onnx":
        return OnnxMaker(fp32, variant, calibration)
    if fmt.name == "openvino":
        return OpenVinoMaker(fp32, variant, calibration)
    return TorchEdgeMaker(agent, variant, calibration, fmt.name)
