import os
from pathlib import Path

# One torch thread per test process (subprocesses inherit it): on 2 shared cores, torch's OpenMP
# threads spin against anything else running and a batch-1 forward pass slows down 50-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from dlswm.config import Config, resolve  # noqa: E402


@pytest.fixture(params=["tiny", "paper"])
def cfg(request) -> Config:
    return resolve(request.param, "Pong")


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """A real `tiny` training run on Pong (2 iterations, ~15 s): checkpoint, buffer, metrics, media."""
    from dlswm.train.loop import train

    return train(resolve("tiny", "Pong"), tmp_path_factory.mktemp("runs") / "pong-tiny", device_name="cpu")


@pytest.fixture(scope="session")
def tiny_export(tiny_run_dir):
    """fp32 and int8 exports of the tiny run: {variant: path}, plus the report."""
    from dlswm.export.pipeline import export_run
    from dlswm.export.variants import parse_variants

    report = export_run(tiny_run_dir, None, parse_variants("fp32,int8"), 256, force=False, min_overlap=None,
                        allow_low_agreement=False, progress=lambda msg: None)
    return {row["variant"]: Path(row["path"]) for row in report["variants"]}, report
