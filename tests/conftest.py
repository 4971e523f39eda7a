import pytest

from dlswm.config import Config, resolve


@pytest.fixture(params=["tiny", "paper"])
def cfg(request) -> Config:
    return resolve(request.param, "Pong")
