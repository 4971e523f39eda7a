import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from dlswm.config import Config
from dlswm.export.onnx_graph import to_onnx
from dlswm.export.pipeline import REPORT_NAME
from dlswm.models.summary import summarize
from dlswm.runtime.model_card import FORMAT_VERSION
from dlswm.runtime.session import open_agent
from dlswm.train.buffer import ReplayBuffer
from dlswm.train.checkpoint import checkpoint_config, load_checkpoint, load_system


def dlswm(*args):
    return subprocess.run([sys.executable, "-c", "from dlswm.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def real_frames(run_dir, n):
    state = load_checkpoint(run_dir)
    buffer = ReplayBuffer.load(run_dir / "buffer", state["iteration"], 4)
    return buffer.observations(np.linspace(0, len(buffer) - 1, n).astype(int))


def test_export_writes_both_variants_and_the_report(tiny_export, tiny_run_dir):
    paths, report = tiny_export
    assert sorted(paths) == ["fp32", "int8"] and all(p.is_file() for p in paths.values())
    assert paths["int8"].stat().st_size < 0.35 * paths["fp32"].stat().st_size
    on_disk = json.loads((tiny_run_dir / "export" / REPORT_NAME).read_text())
    assert on_disk["variants"] == report["variants"]
    for row in report["variants"]:
        assert row["written"] and row["action_agreement"] >= row["threshold"]
        assert 0 <= row["code_agreement"] <= 1 and row["latency_batch1_1thread"]["p50_ms"] > 0
    assert not list((tiny_run_dir / "export").glob(".export-*"))  # no staging left behind


@pytest.mark.parametrize("batch", [1, 8])
def test_fp32_onnx_logits_equal_torch(tiny_export, tiny_run_dir, batch):
    paths, _ = tiny_export
    frames = real_frames(tiny_run_dir, batch)
    agent = load_system(load_checkpoint(tiny_run_dir)).inference_agent()
    with torch.no_grad():
        logits, value, codes = (t.numpy() for t in agent(torch.from_numpy(frames)))
    out_logits, out_value, out_codes = open_agent(paths["fp32"]).outputs(frames)
    np.testing.assert_allclose(out_logits, logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out_value, value, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out_codes, codes)


def test_int8_agreement_is_measured_on_real_frames(tiny_export, tiny_run_dir):
    paths, report = tiny_export
    frames = real_frames(tiny_run_dir, 64)
    fp32, int8 = open_agent(paths["fp32"]), open_agent(paths["int8"])
    agreement = (fp32.logits(frames).argmax(1) == int8.logits(frames).argmax(1)).mean()
    int8_row = next(r for r in report["variants"] if r["variant"] == "int8")
    assert agreement >= 0.9 and int8_row["action_agreement"] >= 0.97
    assert report["held_out_frames"] > 0 and report["calibration_frames"] > 0
    assert {n.op_type for n in onnx.load(paths["int8"]).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}


def test_metadata_round_trips(tiny_export, tiny_run_dir):
    paths, _ = tiny_export
    state = load_checkpoint(tiny_run_dir)
    cfg = checkpoint_config(state)
    for variant, path in paths.items():
        card = open_agent(path).card
        assert card.format_version == FORMAT_VERSION and card.variant == variant
        assert card.game == "Pong" and card.action_ids == list(state["game"]["action_ids"])
        assert card.env_config == cfg.env and Config.from_dict(card.config) == cfg
        assert card.provenance["config_digest"] == cfg.digest() and card.provenance["iteration"] == state["iteration"]
        assert card.params == summarize(load_system(state))["inference_params"]
        assert bool(card.quantization) is (variant != "fp32")


def test_graph_holds_the_inference_weights_only(tiny_export, tiny_run_dir):
    """Initializers add up to the inference count, give or take what export rewrites: BatchNorm
    folds into its conv (gamma and beta become a bias), the codebook's squared norms may be
    precomputed. The decoder alone would add as much again as the encoder."""
    paths, _ = tiny_export
    state = load_checkpoint(tiny_run_dir)
    system = load_system(state)
    summary = summarize(system)
    bn_channels = sum(m.num_features for m in system.inference_agent().modules()
                      if isinstance(m, torch.nn.BatchNorm2d))
    K = system.cfg.vqvae.codebook_size
    model = onnx.load(paths["fp32"])
    values = sum(int(np.prod(init.dims)) for init in model.graph.initializer if len(init.dims) > 0)
    assert abs(values - summary["inference_params"]) <= bn_channels + K
    assert values < summary["inference_params"] + summary["components"]["decoder"] / 2
    names = " ".join(init.name for init in model.graph.initializer)
    assert "decoder" not in names and "dynamics" not in names


def test_paper_size_graph_exports_at_three_million_parameters():
    from dlswm.config import resolve
    from dlswm.models import System

    system = System(resolve("paper", "Pong"), 6)
    model = to_onnx(system.inference_agent(), (4, 96, 96))
    values = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
    assert 2_800_000 <= values <= 3_600_000


def test_existing_output_needs_force(tiny_export, tiny_run_dir):
    result = dlswm("export", tiny_run_dir)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "--force" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.fixture
def broken_runs(tmp_path, tiny_run_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "checkpoint.pt").write_bytes((tiny_run_dir / "checkpoint.pt").read_bytes()[:5000])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "checkpoint.pt").write_text("not a checkpoint")
    return {"missing": tmp_path / "nope", "no checkpoint": empty, "truncated": truncated, "foreign": foreign}


@pytest.mark.parametrize("case", ["missing", "no checkpoint", "truncated", "foreign"])
def test_bad_runs_give_one_line_errors(broken_runs, case, tmp_path):
    out = tmp_path / "out"
    result = dlswm("export", broken_runs[case], "-o", out)
    assert result.returncode != 0 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_out_dir_is_a_one_line_error(tiny_run_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = dlswm("export", tiny_run_dir, "-o", blocker / "sub")
    assert result.returncode != 0 and result.stderr.startswith("error: cannot write to")
    assert result.stderr.count("\n") == 1
