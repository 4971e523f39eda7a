import pytest

from dlswm.config import Config, resolve


@pytest.fixture(params=["tiny", "paper"])
def cfg(request) -> Config:
    return resolve(request.param, "Pong")


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """A real `tiny` training run on Pong (2 iterations, ~15 s): checkpoint, buffer, metrics, media."""
    from dlswm.train.loop import train

    return train(resolve("tiny", "Pong"), tmp_path_factory.mktemp("runs") / "pong-tiny", device_name="cpu")
