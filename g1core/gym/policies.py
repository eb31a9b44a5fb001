"""Policies that play without a model: random, and an oracle per game with a ``skill`` knob.

A policy takes a batch of envs and returns one reply text per env, as a model would. The oracle reads
the true state, so its perception is exact; it writes a full three-tag reply with a short honest
reason. ``skill`` in [0, 1] is the chance of playing the oracle's move; otherwise it plays a random
action (and says it is guessing), which simulates weaker teachers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import answer
from .base import GridGameEnv


class Policy:
    name = "policy"

    def replies(self, envs: Sequence[GridGameEnv]) -> list[str]:
        raise NotImplementedError


class RandomPolicy(Policy):
    """Uniform over each env's action space; answers with the move only."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng([int(seed), 0x4A4D])

    def replies(self, envs: Sequence[GridGameEnv]) -> list[str]:
        return [f"<answer>{env.format_action(env.random_action(self.rng))}</answer>" for env in envs]


class OraclePolicy(Policy):
    """The game's own oracle move with probability ``skill``, else a random move."""

    def __init__(self, skill: float = 1.0, seed: int = 0):
        if not 0.0 <= float(skill) <= 1.0:
            raise ValueError(f"skill must be in [0, 1], got {skill}")
        self.skill = float(skill)
        self.rng = np.random.default_rng([int(seed), 0x0AC1])
        self.name = "oracle" if self.skill == 1.0 else f"oracle@{self.skill:g}"

    def reply(self, env: GridGameEnv) -> str:
        if self.skill >= 1.0 or self.rng.random() < self.skill:
            action, why = env.oracle()
        else:
            action = env.random_action(self.rng)
            why = "I cannot find a good move here, so I am guessing."
        return answer.compose(env.text_observation(), why, env.format_action(action))

    def replies(self, envs: Sequence[GridGameEnv]) -> list[str]:
        return [self.reply(env) for env in envs]


POLICIES: dict[str, Callable[..., Policy]] = {"random": RandomPolicy, "oracle": OraclePolicy}


def make_policy(name: str, **kwargs) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    return POLICIES[name](**kwargs)
