import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from g1core import gym  # noqa: E402

pytest_plugins = ["services"]
SMALL = (112, 112)  # most tests do not need the paper's 840x640 screens


@pytest.fixture(params=gym.GAMES)
def game(request) -> str:
    return request.param


def make_small(name: str, **knobs):
    return gym.make(name, screen_size=knobs.pop("screen_size", SMALL), **knobs)
