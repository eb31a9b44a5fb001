"""The paper's evaluation protocol (spec section 7): runs x steps per game from fresh boards, fixed seeds.

Scores: 2048 = sum of raw merge rewards over the steps; Shisen-Sho(-Cifar10) = pairs removed (a run
stops at the episode's end); Swap = legal swaps per 100 steps. An unreadable reply is a random move in
2048 and an illegal move in the pair games. Each game says which (``protocol_score``,
``unreadable_move``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import answer
from .policies import Policy
from .pool import EnvPool, GameSpec
from .render import PAPER_SCREEN

log = logging.getLogger(__name__)

# How each game's protocol score is read from a run's moves.
SCORE_RULES = {
    "2048": "raw_sum",
    "shisen-sho": "legal_count",
    "shisen-sho-cifar10": "legal_count",
    "swap": "legal_percent",
}
UNREADABLE_RULES = {"2048": "random"}  # every other game: "illegal"


@dataclass
class ProtocolResult:
    game: str
    policy: str
    runs: int
    steps: int
    seed: int
    scores: list[float] = field(default_factory=list)
    replies: int = 0
    unreadable_rate: float = 0.0
    illegal_rate: float = 0.0
    format_rate: float = 0.0
    perception_exact_rate: float = 0.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.scores)) if self.scores else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": self.mean, "std": self.std}


def play(
    game: GameSpec | str,
    policy: Policy,
    runs: int = 10,
    steps: int = 100,
    seed: int = 0,
    screen_size: tuple[int, int] = PAPER_SCREEN,
    progress: bool = True,
) -> ProtocolResult:
    """Play ``runs`` fresh boards (seeds ``seed .. seed+runs-1``) for up to ``steps`` moves each.

    All runs advance together, so a model policy gets the whole batch of boards at each step.
    ``screen_size`` matters only to policies that look at the screen.
    """
    spec = GameSpec.parse(game)
    pool = EnvPool([spec], num_envs=runs, screen_size=screen_size)
    rule, unreadable = pool.envs[0].protocol_score, pool.envs[0].unreadable_move
    pool.reset(seed)
    raw = np.zeros(runs, dtype=np.int64)
    legal = np.zeros(runs, dtype=np.int64)
    done = np.zeros(runs, dtype=bool)
    counts = {"replies": 0, "unreadable": 0, "illegal": 0, "format": 0, "perception": 0}
    for _ in tqdm(range(steps), desc=f"{spec} {policy.name}", disable=not progress, leave=False):
        active = np.flatnonzero(~done).tolist()
        if not active:
            break
        envs = [pool.envs[i] for i in active]
        truths = [env.text_observation() for env in envs]
        replies = policy.replies(envs)
        for reply, truth, i, scored in zip(
            replies, truths, active, pool.step_replies(replies, active, unreadable), strict=True
        ):
            counts["replies"] += 1
            counts["unreadable"] += not scored.parsed
            counts["illegal"] += scored.parsed and not scored.legal
            counts["format"] += answer.is_well_formed(reply)
            counts["perception"] += answer.perception_exact(reply, truth)
            if scored.played is not None:
                raw[i] += scored.played.raw_reward
                legal[i] += scored.legal
                done[i] = scored.played.terminated
    if rule == "raw_sum":
        scores = raw.astype(float)
    elif rule == "legal_count":
        scores = legal.astype(float)
    else:
        scores = legal * 100.0 / steps
    n = max(1, counts["replies"])
    result = ProtocolResult(
        spec.game if not spec.difficulty else str(spec),
        policy.name,
        runs,
        steps,
        seed,
        scores.tolist(),
        counts["replies"],
        counts["unreadable"] / n,
        counts["illegal"] / n,
        counts["format"] / n,
        counts["perception"] / n,
    )
    log.info("%s %s: %.2f +- %.2f over %d runs", result.game, policy.name, result.mean, result.std, runs)
    return result
