"""Many envs at once: N copies of any mix of games, RL state sampling, and parallel-action scoring.

- ``sample_states(k, seed)``: the paper's RL states -- reset, then random moves (2048: 100,
  Shisen-Sho: 250, Swap: 0). Each state is reproducible from (game, difficulty, state seed) alone.
- ``score_group(state, replies)``: every reply is executed from the *same* exact state (board and RNG
  restored), and scored as named reward components with weights.
- ``reset`` / ``step_replies``: play the copies forward with reply texts, as evaluation does.

Scoring never draws a frame: states stay symbolic, and images are drawn only when asked for.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import make, rewards
from .base import GameState, GridGameEnv, Outcome
from .render import PAPER_SCREEN

log = logging.getLogger(__name__)

# Random moves played after reset when sampling RL states (G1 recipe, spec section 5).
WARMUP_MOVES: Mapping[str, int] = {"2048": 100, "shisen-sho": 250, "shisen-sho-cifar10": 250, "swap": 0}
# How many of them a state gets: "fixed" = always that many (the paper); "uniform" = drawn from 0..that
# many by the state's seed, so states cover a whole game even where that many random moves always end
# it (2048 on a small board: every fixed-count state is one random move from the end).
WARMUP_DRAWS = ("fixed", "uniform")


@dataclass(frozen=True)
class GameSpec:
    """A game and its difficulty knobs, hashable. ``GameSpec.parse("shisen-sho:size=8,colours=4")``."""

    game: str
    difficulty: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, spec: GameSpec | str | Mapping[str, Any]) -> GameSpec:
        if isinstance(spec, GameSpec):
            return spec
        if isinstance(spec, Mapping):
            knobs = dict(spec)
            game = knobs.pop("game", None)
            if game is None:
                raise ValueError(f"a game spec mapping needs a 'game' key, got {dict(spec)}")
            return cls(str(game), tuple(sorted(knobs.items())))
        game, _, rest = str(spec).partition(":")
        knobs: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"bad game spec {spec!r}: expected key=value after ':', got {item!r}")
            knobs[key.strip()] = _literal(value.strip())
        return cls(game.strip(), tuple(sorted(knobs.items())))

    @property
    def knobs(self) -> dict[str, Any]:
        return dict(self.difficulty)

    def __str__(self) -> str:
        return self.game + (":" + ",".join(f"{k}={v}" for k, v in self.difficulty) if self.difficulty else "")


def _literal(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def state_seed(seed: int, index: int, stream: str = "") -> int:
    """The seed of the index-th state of a sample drawn with ``seed`` (stable across versions).

    ``stream`` (e.g. a game spec) gives each game its own sequence, so adding a game to a mix does not
    change the states drawn for the others.
    """
    entropy = [int(seed), int(index)] + ([zlib.crc32(stream.encode())] if stream else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


@dataclass
class SampledState:
    """One RL state: where it came from, its exact snapshot, its ground-truth text, and its screen."""

    spec: GameSpec
    seed: int
    state: GameState
    text: str
    prompt: str
    image: np.ndarray | None = None


@dataclass(frozen=True)
class Scored:
    """One reply scored from a state."""

    reward: float  # weighted total
    parts: dict[str, float]  # each reward component, unweighted
    outcome: Outcome | None  # None when the move could not be read
    action: Any = None  # the move read from the reply (None when unreadable)
    played: Outcome | None = None  # what the env did (a stand-in random move for an unreadable reply)

    @property
    def parsed(self) -> bool:
        return self.outcome is not None

    @property
    def legal(self) -> bool:
        return self.outcome is not None and self.outcome.legal


@dataclass
class GroupScore:
    """The replies to one state, scored; with the counts a training step logs."""

    scores: list[Scored] = field(default_factory=list)

    @property
    def rewards(self) -> list[float]:
        return [s.reward for s in self.scores]

    @property
    def unparseable(self) -> int:
        return sum(not s.parsed for s in self.scores)

    @property
    def illegal(self) -> int:
        return sum(s.parsed and not s.legal for s in self.scores)


class EnvPool:
    """N env copies over a mix of game specs (assigned round-robin), plus one scratch env per spec."""

    def __init__(
        self,
        games: Sequence[GameSpec | str | Mapping[str, Any]] | GameSpec | str,
        num_envs: int | None = None,
        screen_size: tuple[int, int] = PAPER_SCREEN,
        weights: Mapping[str, float] = rewards.PAPER_WEIGHTS,
        warmup: Mapping[str, int] | None = None,
        warmup_draw: str = "fixed",
    ):
        if warmup_draw not in WARMUP_DRAWS:
            raise ValueError(f"warmup_draw must be one of {', '.join(WARMUP_DRAWS)}, got {warmup_draw!r}")
        if isinstance(games, str | GameSpec | Mapping):
            games = [games]
        self.specs = [GameSpec.parse(g) for g in games]
        if not self.specs:
            raise ValueError("an EnvPool needs at least one game")
        self.screen_size = tuple(screen_size)
        self.weights = rewards.check_weights(weights)
        self.warmup = {**WARMUP_MOVES, **(warmup or {})}
        self.warmup_draw = warmup_draw
        self._scratch: dict[GameSpec, GridGameEnv] = {}
        n = len(self.specs) if num_envs is None else int(num_envs)
        self.specs_of_envs = [self.specs[i % len(self.specs)] for i in range(n)]
        self.envs = [self._make(spec) for spec in self.specs_of_envs]
        self._rng = np.random.default_rng()

    def _make(self, spec: GameSpec) -> GridGameEnv:
        return make(spec.game, screen_size=self.screen_size, **spec.knobs)

    def scratch(self, spec: GameSpec | str) -> GridGameEnv:
        """The pool's private env for ``spec``, used to sample and score without touching the copies."""
        spec = GameSpec.parse(spec)
        if spec not in self._scratch:
            self._scratch[spec] = self._make(spec)
        return self._scratch[spec]

    def __len__(self) -> int:
        return len(self.envs)

    # ---- RL states ------------------------------------------------------------------------
    def sample_state(self, spec: GameSpec | str, seed: int, image: bool = True) -> SampledState:
        """The state reached from ``reset(seed)`` by the warm-up's random moves (drawn from ``seed`` too;
        with ``warmup_draw="uniform"`` so is their number, from 0 to the game's warm-up).

        A warm-up move that would end the episode is taken back and the warm-up stops there, so every
        sampled state still has a move to learn from.
        """
        spec = GameSpec.parse(spec)
        env = self.scratch(spec)
        env.restart(seed)
        moves = np.random.default_rng([int(seed), 0x5EED])
        # An illegal move changes neither the board nor the RNG, so the snapshot taken after the last
        # legal move is the state before any move that ends the episode.
        last_legal = env.get_state()
        count = self.warmup.get(spec.game, 0)
        if self.warmup_draw == "uniform":
            count = int(moves.integers(0, count + 1))
        for action in env.random_actions(moves, count):
            outcome = env.apply(action)
            if outcome.terminated:
                env.set_state(last_legal)
                break
            if outcome.legal:
                last_legal = env.get_state()
        state = env.get_state()
        return SampledState(
            spec, int(seed), state, env.text_observation(), env.prompt, env.render() if image else None
        )

    def sample_states(self, k: int, seed: int, image: bool = True) -> list[SampledState]:
        """``k`` states cycling through the pool's specs; state i uses ``state_seed(seed, i)``."""
        return [
            self.sample_state(self.specs[i % len(self.specs)], state_seed(seed, i), image)
            for i in range(int(k))
        ]

    def image(self, state: SampledState | GameState) -> np.ndarray:
        """Draw the screen of a state (cached per env: unchanged cells are not redrawn)."""
        snapshot = state.state if isinstance(state, SampledState) else state
        env = self.scratch(GameSpec(snapshot.game, snapshot.difficulty))
        env.set_state(snapshot)
        return env.render()

    # ---- parallel-action scoring ---------------------------------------------------------------
    def score_group(self, state: SampledState | GameState, replies: Iterable[str]) -> GroupScore:
        """Score every reply by executing its move from the same exact state."""
        snapshot = state.state if isinstance(state, SampledState) else state
        env = self.scratch(GameSpec(snapshot.game, snapshot.difficulty))
        env.set_state(snapshot)
        truth = state.text if isinstance(state, SampledState) else env.text_observation()
        group = GroupScore()
        for reply in replies:
            env.set_state(snapshot)
            action = env.parse_action(reply)
            outcome = None if action is None else env.apply(action)
            parts = rewards.components(reply, truth, outcome)
            group.scores.append(Scored(rewards.total(parts, self.weights), parts, outcome, action, outcome))
        return group

    # ---- playing the copies ---------------------------------------------------------------------
    def reset(self, seed: int, image: bool = False) -> list[np.ndarray | None]:
        """Reset copy i with ``seed + i``; the screens are drawn only when ``image`` is set."""
        self._rng = np.random.default_rng([int(seed), 0xE1A1])
        frames = []
        for i, env in enumerate(self.envs):
            env.restart(int(seed) + i)
            frames.append(env.render() if image else None)
        return frames

    def step_replies(
        self, replies: Sequence[str], indices: Sequence[int] | None = None, unreadable: str = "illegal"
    ) -> list[Scored]:
        """Play each reply's move in its copy (all copies, or those in ``indices``).

        An unreadable reply is an illegal move that changes nothing (``unreadable="illegal"``), or it is
        replaced by a random move (``"random"``, the evaluation rule for 2048); either way its own
        reward components treat it as unreadable, and ``Scored.played`` says what the env did.
        """
        if unreadable not in ("illegal", "random"):
            raise ValueError(f"unreadable must be 'illegal' or 'random', got {unreadable!r}")
        indices = range(len(self.envs)) if indices is None else indices
        if len(replies) != len(indices):
            raise ValueError(f"{len(replies)} replies for {len(indices)} envs")
        results = []
        for reply, i in zip(replies, indices, strict=True):
            env = self.envs[i]
            truth = env.text_observation()
            action = env.parse_action(reply)
            outcome = None if action is None else env.apply(action)
            played = outcome
            if action is None and unreadable == "random":
                played = env.apply(env.random_action(self._rng))
            parts = rewards.components(reply, truth, outcome)
            results.append(Scored(rewards.total(parts, self.weights), parts, outcome, action, played))
        return results
