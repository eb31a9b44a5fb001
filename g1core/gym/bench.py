"""Speed benchmark of the gym, on the workload of spec section 8.

- ``env_steps_per_s``: 8 copies, random policy, every step producing the screen (paper size) and the
  text view, resetting a copy when its episode ends.
- ``score_group_ms``: scoring 5 replies for each of 8 states (exact restore before each), all 8 groups.
- ``sample_states_s``: sampling 128 RL states with the paper's warm-up, their screens included.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from . import answer, make
from .pool import EnvPool, GameSpec
from .render import PAPER_SCREEN

log = logging.getLogger(__name__)


def env_steps_per_s(spec: GameSpec, copies: int = 8, seconds: float = 2.0, screen_size=PAPER_SCREEN) -> float:
    envs = [make(spec.game, screen_size=screen_size, **spec.knobs) for _ in range(copies)]
    rng = np.random.default_rng(0)
    for i, env in enumerate(envs):
        env.reset(seed=i)
    steps, seed = 0, copies
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for env in envs:
            obs, _, terminated, _, _ = env.step(env.random_action(rng))
            env.text_observation()
            if terminated:
                env.reset(seed=seed)
                seed += 1
        steps += copies
    rate = steps / (time.perf_counter() - start)
    assert obs.shape == (*screen_size, 3)
    return rate


def score_group_ms(spec: GameSpec, states: int = 8, group: int = 5, repeats: int = 30) -> float:
    pool = EnvPool([spec])
    sampled = pool.sample_states(states, seed=1, image=False)
    rng = np.random.default_rng(1)
    groups = []
    for s in sampled:
        env = pool.scratch(spec)
        env.set_state(s.state)
        groups.append(
            [
                answer.compose(s.text, "random", env.format_action(env.random_action(rng)))
                for _ in range(group)
            ]
        )
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for s, replies in zip(sampled, groups, strict=True):
            pool.score_group(s, replies)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def sample_states_s(spec: GameSpec, k: int = 128, screen_size=PAPER_SCREEN) -> float:
    pool = EnvPool([spec], screen_size=screen_size)
    pool.sample_states(2, seed=12345)  # first frame: background and tile pictures get drawn once
    start = time.perf_counter()
    states = pool.sample_states(k, seed=0)
    elapsed = time.perf_counter() - start
    assert all(s.image is not None for s in states)
    return elapsed


def run(game: str, seconds: float = 2.0) -> dict:
    spec = GameSpec.parse(game)
    result = {
        "game": str(spec),
        "env_steps_per_s": round(env_steps_per_s(spec, seconds=seconds), 1),
        "score_group_ms": round(score_group_ms(spec), 3),
        "sample_states_s": round(sample_states_s(spec), 4),
    }
    log.info("bench %s", result)
    return result
