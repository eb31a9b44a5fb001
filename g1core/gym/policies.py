"""Policies that play without a model: random, an oracle per game with a ``skill`` knob, and the greedy
maximiser of a one-step training reward.

A policy takes a batch of envs and returns one reply text per env, as a model would. The oracle reads
the true state, so its perception is exact; it writes a full three-tag reply with a short honest
reason. ``skill`` in [0, 1] is the chance of playing the oracle's move; otherwise it plays a random
action (and says it is guessing), which simulates weaker teachers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from . import answer, rewards
from .base import GridGameEnv


class Policy:
    name = "policy"

    def replies(self, envs: Sequence[GridGameEnv]) -> list[str]:
        raise NotImplementedError


def state_digest(env: GridGameEnv) -> int:
    """A stable 64-bit fingerprint of an env's exact state (same on every machine and process)."""
    return int.from_bytes(
        hashlib.blake2b(repr(env.get_state()._key()).encode(), digest_size=8).digest(), "little"
    )


def batch_seed(envs: Sequence[GridGameEnv], seed: int) -> int:
    """A seed for one batched model call, drawn from ``seed`` and the exact states shown.

    Model sampling cannot be seeded per item inside a batch, so the batch's content seeds it: the same
    states in the same batch give the same answers in every run, resumed ones included.
    """
    entropy = [int(seed), *(state_digest(env) for env in envs)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


def state_rngs(envs: Sequence[GridGameEnv], seed: int, salt: int) -> list[np.random.Generator]:
    """One generator per env, drawn from (seed, the env's exact state, its repeat count in this batch).

    A policy's random choices then depend only on what it is shown: the same state gets the same
    answers whatever the batching, and a resumed run repeats an uninterrupted one exactly. The k-th
    copy of a state in one batch (K answers per state) gets its own stream.
    """
    seen: dict[int, int] = {}
    rngs = []
    for env in envs:
        key = state_digest(env)
        k = seen.get(key, 0)
        seen[key] = k + 1
        rngs.append(np.random.default_rng([int(seed), salt, key, k]))
    return rngs


class RandomPolicy(Policy):
    """Uniform over each env's action space; answers with the move only."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def replies(self, envs: Sequence[GridGameEnv]) -> list[str]:
        rngs = state_rngs(envs, self.seed, 0x4A4D)
        return [
            f"<answer>{env.format_action(env.random_action(rng))}</answer>"
            for env, rng in zip(envs, rngs, strict=True)
        ]


class OraclePolicy(Policy):
    """The game's own oracle move with probability ``skill``, else a random move."""

    def __init__(self, skill: float = 1.0, seed: int = 0):
        if not 0.0 <= float(skill) <= 1.0:
            raise ValueError(f"skill must be in [0, 1], got {skill}")
        self.skill = float(skill)
        self.seed = int(seed)
        self.name = "oracle" if self.skill == 1.0 else f"oracle@{self.skill:g}"

    def reply(self, env: GridGameEnv, rng: np.random.Generator) -> str:
        if self.skill >= 1.0 or rng.random() < self.skill:
            action, why = env.oracle()
        else:
            action = env.random_action(rng)
            why = "I cannot find a good move here, so I am guessing."
        return answer.compose(env.text_observation(), why, env.format_action(action))

    def replies(self, envs: Sequence[GridGameEnv]) -> list[str]:
        return [
            self.reply(env, rng) for env, rng in zip(envs, state_rngs(envs, self.seed, 0x0AC1), strict=True)
        ]


class RewardGreedyPolicy(Policy):
    """The legal move with the highest one-step training reward, each tried from the exact state (the
    spawn that follows included), ties broken at random.

    This is the best any policy trained on that reward alone can reach, so its protocol score says what
    the reward itself asks for: on 2048, maximising the paper's +1 merge / -1 reward plays worse than the
    oracle at skill 0.5, and adding ``survival`` plays better (README, GRPO benchmark).
    """

    def __init__(self, weights: Mapping[str, float] = rewards.PAPER_WEIGHTS, seed: int = 0):
        self.weights = rewards.check_weights(weights)
        self.seed = int(seed)
        self.name = "reward-greedy"

    def reply(self, env: GridGameEnv, rng: np.random.Generator) -> str:
        truth, start = env.text_observation(), env.get_state()
        moves = env.legal_actions()
        if not moves:
            return answer.compose(truth, "No move is left.", env.format_action(env.random_action(rng)))
        replies, values = [], []
        for move in moves:
            reply = answer.compose(truth, "This move scores the most reward now.", env.format_action(move))
            outcome = env.apply(move)
            env.set_state(start)
            replies.append(reply)
            values.append(rewards.total(rewards.components(reply, truth, outcome), self.weights))
        best = [i for i, v in enumerate(values) if v == max(values)]
        return replies[best[int(rng.integers(len(best)))]]

    def replies(self, envs: Sequence[GridGameEnv]) -> list[str]:
        return [
            self.reply(env, rng) for env, rng in zip(envs, state_rngs(envs, self.seed, 0x6EED), strict=True)
        ]


POLICIES: dict[str, Callable[..., Policy]] = {
    "random": RandomPolicy,
    "oracle": OraclePolicy,
    "reward-greedy": RewardGreedyPolicy,
}


def make_policy(name: str, **kwargs) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    return POLICIES[name](**kwargs)
