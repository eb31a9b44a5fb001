"""The settings both learning benchmarks share: the games they run, the screen that puts each cell on whole
patches, the SFT budget, and the pipeline config of a benchmark's data."""

from __future__ import annotations

from dataclasses import dataclass

from ..gym.pool import GameSpec


@dataclass(frozen=True)
class BenchGame:
    """Per-game benchmark defaults: the time budget and the data set size."""

    minutes: float
    states: int


BENCH_GAMES = {
    "2048": BenchGame(minutes=10.0, states=8000),
    "shisen-sho": BenchGame(minutes=20.0, states=8000),
    "shisen-sho-cifar10": BenchGame(minutes=20.0, states=8000),
    "swap": BenchGame(minutes=20.0, states=8000),
}
# Qwen2.5-VL merges 2x2 patches of 14 px into one visual token: a 28 px cell is exactly one token
CELL_PX = 28


def bench_screen(spec: GameSpec) -> tuple[int, int]:
    """The screen (height, width) on which each cell of ``spec``'s board is one merged visual token."""
    from .. import gym

    env = gym.make(spec.game, render_mode=None, **spec.knobs).unwrapped
    return CELL_PX * env.rows, CELL_PX * env.cols


MAX_SAMPLES_PER_S = 200  # well above the tiny model's SFT speed on a CPU (~45 samples/s on 2 cores)
# Calibrated on the tiny model (2048, 10 min): a constant 1e-3 reads 0.875 of held-out boards exactly at
# the end; a linear decay from 2e-3 over the same budget found the board later and ended at 0.72.
BENCH_SFT = {
    "learning_rate": 1e-3,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "time_cooldown": 0.3,
    "batch_size": 16,
    "heldout_per_game": 64,
    "eval_every": 100,
    "checkpoint_every": 10_000,
    "log_every": 25,
}


def bench_config(
    specs: list[GameSpec],
    screen: tuple[int, int],
    states: int,
    seed: int,
    skill: float,
    warmup: int | None = None,
):
    """The pipeline config of a benchmark: ``states`` oracle-teacher states of each game at ``screen``,
    reached by ``warmup`` random moves from a fresh board (None: the pool's default per game)."""
    from ..config import load_config

    overrides = [
        f"distill.gym.games={[str(s) for s in specs]!r}",
        f"distill.gym.screen_size=[{screen[0]},{screen[1]}]",
        f"distill.states_per_game={states}",
        "distill.teacher.kind=oracle",
        f"distill.teacher.skill={skill}",
        f"distill.seed={seed}",
        "distill.batch_size=256",
    ]
    if warmup is not None:
        overrides.append(f"distill.gym.warmup={ {s.game: int(warmup) for s in specs}!r}")
    return load_config(None, overrides)
