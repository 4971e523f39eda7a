"""`dlswm export`: a training run -> the agent in each format (formats.py), fp32 / bf16 / int8, and a
measured parity report.

Decoder and dynamics are dropped: only encoder + codebook lookup + policy are written. Every variant
is measured against the torch fp32 policy on held-out real frames (never seen by calibration), and
a variant whose sampled actions differ from torch's too often is not written unless the user insists.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import dlswm
from dlswm.atomic import atomic_write_bytes
from dlswm.config import Config
from dlswm.errors import UserError
from dlswm.export.equalize import DEFAULT_ALPHA, equalize, fold_batchnorm
from dlswm.export.onnx_graph import to_onnx
from dlswm.export.params import expected_graph_params, graph_params
from dlswm.export.formats import FORMATS, Format, maker
from dlswm.export.variants import Variant, float_layer_tries, sensitivity
from dlswm.models.summary import summarize
from dlswm.run_dir import RunDir
from dlswm.runtime.latency import percentiles, time_calls
from dlswm.runtime.model_card import ModelCard
from dlswm.runtime.contract import io_spec, output_shapes, policy_overlap
from dlswm.runtime.runtimes import file_mb, model_files, output_to
from dlswm.runtime.session import Agent, open_agent
from dlswm.train.buffer import ReplayBuffer
from dlswm.train.checkpoint import RunState

REPORT_NAME = "export-report.json"
CONVERTER_LOG = "converters.log"
HELD_OUT = 1024  # real frames for the parity measures (at most), disjoint from calibration; +-1.5% at 256


def run_dir_of(run: Path) -> Path:
    """The run directory of a run directory or of a checkpoint in it."""
    if not run.exists():
        raise UserError(f"{run} does not exist")
    return run if run.is_dir() else run.parent


def _check_same_game(run_dir: Path, state: RunState) -> None:
    """The checkpoint and the run directory it sits in (whose buffer calibrates the export) must be
    one run: a checkpoint copied into another game's run would be calibrated on the wrong frames."""
    try:
        game = RunDir(run_dir).read_config()["env"]["game"]
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return  # a checkpoint on its own: its buffer's check below still applies
    if game != state.game.name:
        raise UserError(f"{run_dir}: the checkpoint is a {state.game.name} agent but the run directory "
                        f"(config.json, buffer) is {game}'s")


def _writable_dir(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {out_dir} ({e.strerror or type(e).__name__})") from None
    return out_dir


def parity_frames(run_dir: Path, state: RunState, frame_stack: int, calibration: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint calibration and held-out frame stacks from the run's replay buffer."""
    try:
        buffer = ReplayBuffer.load(run_dir / "buffer", state.iteration, frame_stack)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{run_dir / 'buffer'}: the run's replay buffer is missing or damaged ({e})") from None
    idx = np.random.default_rng(seed).permutation(buffer.sample_idx)
    held_out = min(HELD_OUT, len(idx) // 4)  # a small run gives up some of both
    if held_out < 16:
        raise UserError(f"the run's buffer holds only {len(idx)} frames: too few to calibrate and check an export")
    calibration = min(calibration, len(idx) - held_out)
    return buffer.observations(np.sort(idx[:calibration])), buffer.observations(np.sort(idx[-held_out:]))


def _card(state: RunState, summary: dict[str, Any], variant: Variant, fmt: Format,
          quantization: dict[str, Any]) -> ModelCard:
    cfg, game = state.config, state.game
    inputs, outputs = io_spec(cfg)
    return ModelCard(
        inputs=inputs, outputs=outputs,
        game=game.name, action_ids=list(game.action_ids), action_meanings=list(game.action_meanings),
        env=cfg.to_dict()["env"], variant=variant.name, quantization=quantization,
        params=summary["inference_params"], macs=summary["inference_macs"],
        provenance={"config_digest": cfg.digest(), "iteration": state.iteration, "real_steps": state.real_steps,
                    "train_wall_s": state.wall_s,
                    "seed": cfg.seed, "eval": state.eval, "preset": cfg.preset, "format": fmt.name,
                    "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "dlswm_version": dlswm.__version__},
        config=cfg.to_dict(),
    )


def _agreement(agent: Agent, reference: list[np.ndarray], held_out: np.ndarray, temperature: float) -> dict[str, Any]:
    """Agreement with torch fp32 on held-out frames.

    `policy_overlap`, the gate, is for the agent as it plays, sampling at the eval temperature: sum
    over actions of min(p_torch, p_variant), i.e. 1 - total variation, the chance that both pick the
    same action under the best coupling. As the temperature goes to 0 it becomes greedy agreement,
    which at a finite temperature also counts flips between near-tied actions in full."""
    outputs = agent.outputs(held_out)
    shapes = output_shapes(Config.from_dict(agent.card.config), agent.card.num_actions)
    if [o.shape[1:] for o in outputs] != list(shapes.values()):  # the graph breaks the runtime's contract
        raise RuntimeError(f"{agent.path}: outputs {[o.shape for o in outputs]}, the contract says (batch, ...) {shapes}")
    logits, _, codes = outputs
    overlap = policy_overlap(logits, reference[0], temperature)
    return {"action_agreement": float((logits.argmax(1) == reference[0].argmax(1)).mean()),
            "policy_overlap": float(overlap.mean()), "policy_temperature": temperature,
            "code_agreement": float((codes == reference[2]).mean()),
            "max_logit_diff": float(np.abs(logits - reference[0]).max())}


def _parity(path: Path, reference: list[np.ndarray], held_out: np.ndarray, temperature: float) -> dict[str, Any]:
    """`_agreement`, the file's size and its batch-1 latency on one thread."""
    agent = open_agent(path, threads=1)  # one session for both measures
    latency = percentiles(time_calls(lambda: agent.outputs(held_out[:1]), warmup=20, duration_s=1.0))
    return {**_agreement(agent, reference, held_out, temperature), "size_mb": file_mb(path),
            "latency_batch1_1thread": latency}


def _gated(variant: Variant, make: Any, threshold: float, card: Callable[[dict[str, Any]], ModelCard],
           staged: Path, reference: list[np.ndarray], held_out: np.ndarray, temperature: float,
           progress: Any, quiet: Callable[[], Any]) -> dict[str, Any]:
    """Make `variant` with its format's maker (formats.py) and measure it. A quantized one that
    misses the gate is made again with sets of layers in fp32 until a try passes (variants.py's
    `float_layer_tries` says which, in what order); the row then holds every try and the ranking.
    The last try is left at `staged`; the converters print inside `quiet()`."""
    def built(fp32_layers: list[str]) -> Any:
        with quiet():
            return make.make(fp32_layers)

    def staged_as(model: Any, fp32_layers: list[str]) -> Path:
        with quiet():
            make.save(model, card(make.settings(fp32_layers)), staged)
        return staged

    def measured(model: Any, fp32_layers: list[str]) -> dict[str, Any]:
        row = {**_parity(staged_as(model, fp32_layers), reference, held_out, temperature), "fp32_layers": fp32_layers}
        if variant.quantized:
            tries.append({"fp32_layers": fp32_layers, "policy_overlap": row["policy_overlap"],
                          "p50_ms": row["latency_batch1_1thread"]["p50_ms"]})
        return row

    tries: list[dict[str, Any]] = []
    if not variant.quantized:
        progress(f"{staged.name}: converting and measuring")
        return measured(built([]), [])
    progress(f"{staged.name}: calibrating and quantizing, then measuring")
    row = measured(built([]), [])
    ranked: list[dict] = []
    if row["policy_overlap"] < threshold:
        def alone(layer: str) -> dict[str, float]:  # the layer alone in fp32: its effect, and its cost
            parity = _parity(staged_as(built([layer]), []), reference, held_out, temperature)
            return {"policy_overlap": parity["policy_overlap"], "p50_ms": parity["latency_batch1_1thread"]["p50_ms"]}

        ranked = sensitivity(make.layers, alone, lambda i, layer: progress(
            f"{staged.name}: sensitivity of layer {i}/{len(make.layers)} ({layer})"))
        for keep in float_layer_tries(tries[0], ranked, threshold, variant.max_fp32_layers):
            progress(f"{staged.name}: quantizing with {len(keep)} layer(s) in fp32 ({', '.join(keep)}), then measuring")
            row = measured(built(keep), keep)
            if row["policy_overlap"] >= threshold:
                break
    return {**row, "tries": tries, "sensitivity": ranked}


def export_run(run: Path, out_dir: Path | None, variants: list[Variant], calibration_frames: int,
               force: bool, min_overlap: float | None, allow_low_agreement: bool,
               progress: Any = print, formats: list[Format] | None = None, equalize_alpha: float = DEFAULT_ALPHA
               ) -> dict[str, Any]:
    formats = formats or [FORMATS["onnx"]]
    jobs = [(f, v) for f in formats for v in variants if v.name in f.variants]
    if not jobs:
        raise UserError(f"none of the variants {', '.join(v.name for v in variants)} is offered by "
                        + "; ".join(f"{f.name} ({', '.join(f.variants)})" for f in formats))
    run_dir = run_dir_of(run)
    state = RunState.load(run)
    cfg = state.config
    _check_same_game(run_dir, state)
    calibration, held_out = parity_frames(run_dir, state, cfg.env.frame_stack, calibration_frames, cfg.seed)
    out_dir = _writable_dir(out_dir or run_dir / "export")  # created only once the inputs are known good
    stem = state.game.name.lower()
    targets = {(f.name, v.name): out_dir / f"{stem}.{v.name}{f.suffix}" for f, v in jobs}
    existing = [str(p) for t in targets.values() for p in model_files(t) if p.exists()]
    existing += [str(out_dir / REPORT_NAME)] if (out_dir / REPORT_NAME).exists() else []
    if existing and not force:
        raise UserError(f"{existing[0]} exists; pass --force to replace it")

    system = state.system()
    summary = summarize(system)
    agent = system.inference_agent().eval()
    with torch.no_grad():
        reference = [t.numpy() for t in agent(torch.from_numpy(held_out))]  # the gate's reference: as trained
    # BatchNorm folded in torch (as the ONNX export would), so every file names its layers alike; the
    # quantized variants start from the same function with the encoder's activations equalized
    # (equalize.py), the fp32 and bf16 files from the trained weights.
    folded = equalized = fold_batchnorm(agent)
    if not any(v.quantized and f.equalize for f, v in jobs):
        equalize_alpha = 0.0  # no file here starts from it: the report says so
    if equalize_alpha > 0:
        progress(f"equalizing the encoder's activations (alpha {equalize_alpha}) on the calibration frames")
        equalized = equalize(folded, calibration, equalize_alpha)
    log = out_dir / CONVERTER_LOG  # the converters' and quantizers' own output, this export's alone
    log.unlink(missing_ok=True)
    quiet = functools.partial(output_to, log, (1, 2))
    # The onnx and openvino formats' source, and the graph's parameter count.
    progress(f"exporting the inference path to ONNX (the converters' own output: {log})")
    with quiet():
        fp32 = to_onnx(folded, held_out.shape[1:])
        fp32_equalized = to_onnx(equalized, held_out.shape[1:]) if equalize_alpha > 0 else fp32

    rows, staging = [], Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))  # same disk: rename is atomic
    try:
        for fmt, variant in jobs:
            threshold = variant.min_overlap if min_overlap is None else min_overlap
            target = targets[(fmt.name, variant.name)]
            with quiet():
                alpha = equalize_alpha if variant.quantized and fmt.equalize else 0.0
                make = maker(fmt, variant, *((fp32_equalized, equalized) if alpha else (fp32, folded)), calibration)
            try:
                row = _gated(variant, make, threshold, lambda q, alpha=alpha: _card(
                    state, summary, variant, fmt, {**q, "equalize_alpha": alpha} if variant.quantized else q),
                             staging / target.name, reference, held_out, cfg.policy.eval_temperature, progress, quiet)
            finally:
                make.close()
            below = row["policy_overlap"] < threshold
            row = {"format": fmt.name, "runtime": fmt.runtime, "variant": variant.name, "path": str(target),
                   "description": variant.description, **row, "size_mb": file_mb(staging / target.name),
                   "threshold": threshold, "below_threshold": below, "written": not below or allow_low_agreement}
            if below:
                row["reason"] = f"policy overlap {row['policy_overlap']:.3f} < {threshold}" + (
                    f" with up to {len(row['fp32_layers'])} layers in fp32" if variant.quantized else "") + ": " + (
                    "written anyway (--allow-low-agreement)" if row["written"]
                    else "not written (--allow-low-agreement writes it anyway)")
            rows.append(row)
        for row in rows:
            target = Path(row["path"])
            for staged, final in zip(model_files(staging / target.name), model_files(target)):
                if row["written"]:  # companions first: the main file never appears without them
                    if staged != staging / target.name:
                        os.replace(staged, final)
                else:  # with --force, an older export of this variant would otherwise pass for the new one
                    final.unlink(missing_ok=True)
            if row["written"]:
                os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = {"run": str(run_dir), "game": state.game.name, "iteration": state.iteration,
              "config_digest": cfg.digest(), "inference_params": summary["inference_params"],
              "training_params": summary["training_params"], "inference_macs": summary["inference_macs"],
              # fp32 graph initializers vs the torch count; export/params.py says why they differ
              "graph_params": graph_params(fp32), "expected_graph_params": expected_graph_params(agent),
              "calibration_frames": len(calibration), "held_out_frames": len(held_out),
              "equalize_alpha": equalize_alpha, "variants": rows,
              "report": str(out_dir / REPORT_NAME), "converter_log": str(log)}
    atomic_write_bytes(out_dir / REPORT_NAME, json.dumps(report, indent=2).encode())
    return report
