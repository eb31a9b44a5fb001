"""What every VLM-Gym game shares: the gymnasium surface, exact state capture, the board text grid.

A game subclass keeps its whole state symbolic (a small integer board plus a few Python ints and the
env's ``np_random``) and says how to make a board, play a move, read and write the text view and draw
one tile. Everything else -- ``step``/``reset``, rendering only when a frame is asked for, picklable
``get_state``/``set_state`` with the RNG included -- lives here, once.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import answer
from .render import PAPER_SCREEN, Layout, Screen, validate_screen

Action = Any  # int for 2048, a (r1, c1, r2, c2) tuple for the pair games


class Outcome(NamedTuple):
    """What one move did."""

    raw_reward: int  # the game's own score for the move (2048 merge sum, Swap n*(n-1), pairs +-1)
    reward: float  # shaped game reward GR used in training (+1 / -1)
    legal: bool  # the move was allowed and changed the game
    terminated: bool  # the episode is over after this move
    lost: bool = False  # this move ended the episode short of its goal (no move left, the game not won)


@dataclass(frozen=True, eq=False)
class GameState:
    """A complete, picklable snapshot of one env: which game, its fields, and its RNG."""

    game: str
    difficulty: tuple[tuple[str, Any], ...]
    fields: tuple[Any, ...]
    rng: dict

    @property
    def board(self) -> np.ndarray:
        return self.fields[0]

    def _key(self) -> tuple:
        fields = tuple(
            v.tobytes() + str(v.shape).encode() if isinstance(v, np.ndarray) else v for v in self.fields
        )
        return self.game, self.difficulty, fields, repr(self.rng)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GameState) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


class GridGameEnv(gym.Env):
    """Base class of the board games. Subclasses set ``name``, ``title`` and the hooks below."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 2}
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    prompt_version: ClassVar[int] = 1  # bump when a game's prompt wording changes (data sets record it)
    # Attributes that make up the state besides the RNG; the board comes first.
    state_fields: ClassVar[tuple[str, ...]] = ("board", "score", "moves", "terminated")

    def __init__(self, rows: int, cols: int, screen_size=PAPER_SCREEN, render_mode: str | None = "rgb_array"):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.rows, self.cols = int(rows), int(cols)
        self.screen_size = validate_screen(screen_size, self.rows, self.cols)
        self.render_mode = render_mode
        h, w = self.screen_size
        self.observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.board = np.zeros((self.rows, self.cols), dtype=np.int16)
        self.score = 0  # Python int: sum of raw rewards this episode
        self.moves = 0  # moves played this episode, legal or not
        self.terminated = False
        self._screen = Screen(Layout(h, w, self.rows, self.cols), self.title, self._sprite)

    # ---- hooks for each game -------------------------------------------------------------
    @property
    def difficulty(self) -> dict[str, Any]:
        """The knobs this env was made with (enough to make an identical env)."""
        raise NotImplementedError

    @property
    def prompt(self) -> str:
        """The game prompt shown beside the screen: rules, board text format, answer format."""
        raise NotImplementedError

    def _new_board(self) -> None:
        """Fill ``self.board`` for a new episode using ``self.np_random``."""
        raise NotImplementedError

    def _play(self, action: Action) -> tuple[int, float, bool]:
        """Apply a validated action to the board: (raw reward, shaped reward, legal)."""
        raise NotImplementedError

    def _is_over(self) -> bool:
        """True when no further move can change the game."""
        raise NotImplementedError

    def _is_won(self) -> bool:
        """True when the game is over because its goal is reached (a cleared board); games without a goal
        (2048) are never won, so their end is always a loss."""
        return False

    def _coerce_action(self, action: Action) -> Action:
        """Turn ``action`` into the game's canonical form, or raise ValueError."""
        raise NotImplementedError

    def _cell_text(self, code: int) -> str:
        """Text of one cell's content for the text observation (not called for empty cells)."""
        raise NotImplementedError

    def _cell_code(self, text: str) -> int:
        """Inverse of ``_cell_text`` for ``set_board``; raises ValueError on unknown text."""
        raise NotImplementedError

    def _validate_board(self, board: np.ndarray) -> np.ndarray:
        """Raise ValueError when ``board`` can never occur in this game; return it finished (used by
        ``set_board``, whose cells come from ``_cell_code``)."""
        return board

    def _sprite(self, code: int, cell: int) -> np.ndarray:
        """Pixels of one cell holding ``code`` (0 = empty)."""
        raise NotImplementedError

    def legal_actions(self) -> list[Action]:
        """Every action that is legal in the current state."""
        raise NotImplementedError

    def parse_action(self, text: str) -> Action | None:
        """The action a model's reply asks for, or None when it cannot be read."""
        raise NotImplementedError

    def format_action(self, action: Action) -> str:
        """How an answer writes ``action`` (inverse of ``parse_action``)."""
        raise NotImplementedError

    def oracle(self) -> tuple[Action, str]:
        """A strong move read from the true state, with a one-line honest reason."""
        raise NotImplementedError

    # evaluation protocol (spec section 7): how a run's score is read from its moves, and what an
    # unreadable reply does -- "illegal" (nothing moves) or "random" (a random move is played instead)
    protocol_score: ClassVar[str] = "legal_count"  # or "raw_sum", "legal_percent"
    unreadable_move: ClassVar[str] = "illegal"

    # text grid format: rows joined by "\n", cells by ``cell_sep``; cells padded by ``cell_pad``
    cell_sep: ClassVar[str] = "|"
    cell_pad: ClassVar[str] = " "
    empty_text: ClassVar[str] = "-"

    # ---- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        info = self.restart(seed)
        return self._observe(), info

    def restart(self, seed: int | None = None) -> dict[str, Any]:
        """``reset`` without drawing the first frame: new episode, info dict only."""
        super().reset(seed=seed)
        self._new_board()
        self.score = 0
        self.moves = 0
        self.terminated = self._is_over()
        return self._info()

    def apply(self, action: Action) -> Outcome:
        """Play one move without drawing anything: the fast path used for scoring answers."""
        action = self._coerce_action(action)
        raw, reward, legal = self._play(action)
        self.score += raw
        self.moves += 1
        if legal:
            self.terminated = self._is_over()
        lost = legal and self.terminated and not self._is_won()  # this move ended the game short of its goal
        return Outcome(raw, reward, legal, self.terminated, lost)

    def step(self, action: Action):
        outcome = self.apply(action)
        info = self._info()
        info.update(raw_reward=outcome.raw_reward, legal=outcome.legal)
        return self._observe(), float(outcome.reward), outcome.terminated, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self._observe()

    def random_action(self, rng: np.random.Generator) -> Action:
        """An action drawn uniformly from the action space with ``rng`` (the env's own RNG is untouched)."""
        return self.random_actions(rng, 1)[0]

    def random_actions(self, rng: np.random.Generator, n: int) -> list[Action]:
        """``n`` uniform actions drawn in one call (much faster than ``n`` calls)."""
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return (int(space.start) + rng.integers(space.n, size=n)).tolist()
        return [tuple(a) for a in rng.integers(space.nvec, size=(n, len(space.nvec))).tolist()]

    def _observe(self) -> np.ndarray:
        return self._screen.draw(self.board)

    def _info(self) -> dict[str, Any]:
        return {"score": self.score, "moves": self.moves}

    # ---- state -------------------------------------------------------------------------
    def get_state(self) -> GameState:
        fields = tuple(
            v.copy() if isinstance(v, np.ndarray) else v
            for v in (getattr(self, f) for f in self.state_fields)
        )
        return GameState(self.name, self._difficulty_key(), fields, self.np_random.bit_generator.state)

    def set_state(self, state: GameState) -> None:
        if state.game != self.name or state.difficulty != self._difficulty_key():
            raise ValueError(
                f"state of {state.game} {dict(state.difficulty)} cannot be loaded into {self.name} "
                f"{self.difficulty}"
            )
        for name, value in zip(self.state_fields, state.fields, strict=True):
            setattr(self, name, value.copy() if isinstance(value, np.ndarray) else value)
        self.np_random.bit_generator.state = state.rng

    def _difficulty_key(self) -> tuple[tuple[str, Any], ...]:
        key = self.__dict__.get("_key")
        if key is None:  # knobs never change after construction
            key = self._key = tuple(sorted(self.difficulty.items()))
        return key

    # ---- text view ----------------------------------------------------------------------
    def text_observation(self) -> str:
        pad, empty = self.cell_pad, self.empty_text
        return "\n".join(
            self.cell_sep.join(pad + (self._cell_text(v) if v else empty) + pad for v in row)
            for row in self.board.tolist()
        )

    def set_board(self, text: str) -> None:
        """Load a board written in the text-observation format. The RNG is left as it is."""
        lines = text.strip("\n").split("\n")
        if len(lines) != self.rows:
            raise ValueError(f"{self.name}: board text has {len(lines)} rows, expected {self.rows}")
        board = np.zeros((self.rows, self.cols), dtype=np.int16)
        for r, line in enumerate(lines):
            cells = line.split(self.cell_sep.strip() or self.cell_sep)
            if len(cells) != self.cols:
                raise ValueError(f"{self.name}: row {r} has {len(cells)} cells, expected {self.cols}")
            for c, cell in enumerate(cells):
                cell = cell.strip()
                board[r, c] = 0 if cell == self.empty_text else self._cell_code(cell)
        self.board = self._validate_board(board).astype(self.board.dtype)
        self.terminated = self._is_over()

    # ---- helpers shared by the pair games ----------------------------------------------------
    def _coerce_cell_pair(self, action: Action) -> tuple[int, int, int, int]:
        try:
            try:
                r1, c1, r2, c2 = map(operator.index, action)
            except TypeError:  # e.g. a 2x2 array of cells
                r1, c1, r2, c2 = map(operator.index, np.asarray(action).reshape(-1))
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: an action is (r1, c1, r2, c2), got {action!r}") from None
        if not (0 <= r1 < self.rows and 0 <= r2 < self.rows and 0 <= c1 < self.cols and 0 <= c2 < self.cols):
            raise ValueError(f"{self.name}: cell outside the {self.rows}x{self.cols} board in {action!r}")
        return r1, c1, r2, c2

    def _parse_cell_pair(self, text: str) -> tuple[int, int, int, int] | None:
        return answer.parse_cell_pair(text, self.rows, self.cols)

    @staticmethod
    def _write_cell_pair(action: Action) -> str:
        r1, c1, r2, c2 = (int(v) for v in action)
        return f"({r1}, {c1}) ({r2}, {c2})"
