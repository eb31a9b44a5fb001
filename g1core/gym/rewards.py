"""Reward components, small pure functions registered by name, and their weighted total.

Each component reads the model's reply, the ground-truth text observation of the state it answered,
and the outcome of executing its move (None when the move could not be read). The training reward is
``sum(weight[name] * component(...))``; the paper's main runs use game 1, format 1, perception 0 (and
our additions, survival and legal, 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from . import answer
from .base import Outcome

RewardFn = Callable[[str, str, Outcome | None], float]
REWARDS: dict[str, RewardFn] = {}
PAPER_WEIGHTS: Mapping[str, float] = {
    "game": 1.0, "format": 1.0, "perception": 0.0, "survival": 0.0, "legal": 0.0,
}  # fmt: skip


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def add(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return add


@register("game")
def game_reward(reply: str, truth: str, outcome: Outcome | None) -> float:
    """GR: the game's shaped reward for the move; an unreadable move counts as an illegal one (-1)."""
    return -1.0 if outcome is None else float(outcome.reward)


@register("survival")
def survival_reward(reply: str, truth: str, outcome: Outcome | None) -> float:
    """-1 when the move ends the game short of its goal (2048 with no move left, Shisen-Sho with tiles but
    no pair left), else 0. Not in the paper: its one-step GR never sees the end of a game, and a policy
    that maximises GR alone plays 2048 worse than the oracle at skill 0.5 does (README, GRPO benchmark)."""
    return -1.0 if outcome is not None and outcome.lost else 0.0


@register("legal")
def legal_reward(reply: str, truth: str, outcome: Outcome | None) -> float:
    """-1 when the move cannot be read or changes nothing, else 0. Not in the paper: its 2048 GR scores a
    move that changes nothing like one that merges nothing, and with ``survival`` such a move becomes a
    safe pass that the protocol pays for with a step (README, GRPO benchmark)."""
    return 0.0 if outcome is not None and outcome.legal else -1.0


@register("format")
def format_reward(reply: str, truth: str, outcome: Outcome | None) -> float:
    """FR: 1 when the reply is exactly the three tag blocks, once each and in order."""
    return 1.0 if answer.is_well_formed(reply) else 0.0


@register("perception")
def perception_reward(reply: str, truth: str, outcome: Outcome | None) -> float:
    """PR: 1 when the ground-truth board text appears verbatim in the perception block."""
    return 1.0 if answer.perception_matches(reply, truth) else 0.0


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    unknown = set(weights) - set(REWARDS)
    if unknown:
        raise ValueError(f"unknown reward component(s) {sorted(unknown)}; known: {sorted(REWARDS)}")
    return {name: float(w) for name, w in weights.items()}


def parse_weights(items: Sequence[str], base: Mapping[str, float] = PAPER_WEIGHTS) -> dict[str, float]:
    """``NAME=WEIGHT`` items (command-line style) over ``base`` (the paper's weights)."""
    weights = dict(base)
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"a reward weight is NAME=WEIGHT, got {item!r}") from None
    return check_weights(weights)


def components(reply: str, truth: str, outcome: Outcome | None, names=None) -> dict[str, float]:
    """Every registered component (or those in ``names``), each logged on its own."""
    return {name: REWARDS[name](reply, truth, outcome) for name in (names or REWARDS)}


def total(parts: Mapping[str, float], weights: Mapping[str, float]) -> float:
    return sum(w * parts[name] for name, w in weights.items())
