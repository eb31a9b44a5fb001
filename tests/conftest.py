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


def distill_oracle_data(folder, games: list[str], states_per_game: int, screen: int = 112) -> str:
    """A small data set distilled for real from the perfect oracle teacher, for the SFT tests."""
    from g1core.config import load_config
    from g1core.stages import distill

    cfg = load_config(
        None,
        [
            f"distill.gym.games=[{', '.join(games)}]",
            f"distill.gym.screen_size=[{screen},{screen}]",
            f"distill.states_per_game={states_per_game}",
            "distill.teacher.skill=1.0",
        ],
    )
    distill.run(cfg, str(folder), progress=False)
    return str(folder)
