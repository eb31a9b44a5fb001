"""2048: slide the tiles of a square board; equal tiles merge once per move.

The board holds exponents (0 empty, 1 for a 2-tile, 2 for a 4-tile, ...). Actions: 0 Up, 1 Right,
2 Down, 3 Left, 4 Still. Raw reward: the sum of the merged tiles' new values; Still is -1; a move that
changes nothing is 0 and spawns nothing. After a move that changes the board a 2 (p 0.9) or a 4 (p 0.1)
appears in a random empty cell. The shaped reward GR is +1 when the move merged anything, else -1.
A move is *legal* when it changes the board (Still never does).
"""

from __future__ import annotations

import operator
from functools import lru_cache

import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from .. import answer
from ..base import Action, GridGameEnv
from ..render import BOARD_BG, PAPER_SCREEN, font

UP, RIGHT, DOWN, LEFT, STILL = range(5)
ACTION_NAMES = ("up", "right", "down", "left", "still")
SPAWN_TWO_P = 0.9


@lru_cache(maxsize=1 << 17)
def slide_line(line: tuple[int, ...]) -> tuple[tuple[int, ...], int, bool]:
    """Slide one line of exponents towards index 0: (new line, merge reward, merged anything)."""
    tiles = [v for v in line if v]
    out: list[int] = []
    reward = 0
    i = 0
    while i < len(tiles):
        if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
            out.append(tiles[i] + 1)
            reward += 1 << (tiles[i] + 1)
            i += 2
        else:
            out.append(tiles[i])
            i += 1
    merged = len(out) < len(tiles)
    out.extend([0] * (len(line) - len(out)))
    return tuple(out), reward, merged


def oriented(board: np.ndarray, action: int) -> np.ndarray:
    """A view of ``board`` whose rows are the lines of ``action``, each read towards the wall hit."""
    if action == UP:
        return board.T
    if action == DOWN:
        return board.T[:, ::-1]
    if action == LEFT:
        return board
    return board[:, ::-1]


def slide(board: np.ndarray, action: int) -> tuple[np.ndarray, int, bool]:
    """The board after sliding (before the spawn), the merge reward, and whether anything merged."""
    new = board.copy()
    view = oriented(new, action)
    results = [slide_line(tuple(line)) for line in view.tolist()]
    view[...] = [line for line, _, _ in results]
    return new, sum(r for _, r, _ in results), any(m for _, _, m in results)


def can_move(board: np.ndarray) -> bool:
    if not board.all():
        return True
    return bool((board[:, 1:] == board[:, :-1]).any() or (board[1:, :] == board[:-1, :]).any())


# The classic palette, by exponent; larger tiles reuse the last colour.
_TILE_COLOURS = (
    (205, 193, 180),
    (238, 228, 218),
    (237, 224, 200),
    (242, 177, 121),
    (245, 149, 99),
    (246, 124, 95),
    (246, 94, 59),
    (237, 207, 114),
    (237, 204, 97),
    (237, 200, 80),
    (237, 197, 63),
    (237, 194, 46),
    (60, 58, 50),
)


@lru_cache(maxsize=512)
def tile_sprite(exponent: int, cell: int) -> np.ndarray:
    img = Image.new("RGB", (cell, cell), BOARD_BG)
    draw = ImageDraw.Draw(img)
    gap = max(1, cell // 20)
    colour = _TILE_COLOURS[min(exponent, len(_TILE_COLOURS) - 1)]
    draw.rounded_rectangle([gap, gap, cell - 1 - gap, cell - 1 - gap], radius=max(1, cell // 12), fill=colour)
    if exponent:
        text = str(1 << exponent)
        size = int(cell * (0.5 if len(text) <= 2 else 0.4 if len(text) == 3 else 1.3 / len(text)))
        fg = (119, 110, 101) if exponent <= 2 else (249, 246, 242)
        draw.text((cell / 2, cell / 2), text, fill=fg, font=font(size), anchor="mm")
    return np.asarray(img, dtype=np.uint8)


class Game2048Env(GridGameEnv):
    name = "2048"
    title = "2048"
    protocol_score = "raw_sum"  # the sum of merge rewards over the run
    unreadable_move = "random"

    def __init__(self, size: int = 4, screen_size=PAPER_SCREEN, render_mode: str | None = "rgb_array"):
        if int(size) < 2:
            raise ValueError(f"2048: size must be at least 2, got {size}")
        self.size = int(size)
        super().__init__(self.size, self.size, screen_size, render_mode)
        self.board = np.zeros((self.size, self.size), dtype=np.int8)
        self.action_space = spaces.Discrete(5)

    @property
    def difficulty(self):
        return {"size": self.size}

    @property
    def prompt(self) -> str:
        n = self.size
        return (
            f"You are playing 2048 on a {n}x{n} board. Sliding the tiles moves all of them as far as they "
            "go in that direction; two equal tiles that meet merge into one tile of twice the value "
            "(each tile merges at most once per move), and the merge scores the new value. After every "
            "move that changes the board a new 2 or 4 appears in an empty cell.\n"
            "Actions: 0 = up, 1 = right, 2 = down, 3 = left, 4 = stay still (costs a point).\n"
            "First write the board you see inside <perception></perception>: one line per row, top to "
            "bottom, cells separated by '|', each cell ' <value> ' or ' - ' when empty, for example\n"
            " 2 | - | 4 | - \n"
            "Then reason about the best move inside <think></think>, and give only the action number "
            "inside <answer></answer>."
        )

    def _new_board(self) -> None:
        self.board = np.zeros((self.size, self.size), dtype=np.int8)
        self._spawn()
        self._spawn()

    def _spawn(self) -> None:
        empty = np.flatnonzero(self.board == 0)
        if len(empty) == 0:
            return
        cell = empty[int(self.np_random.integers(len(empty)))]
        self.board.flat[cell] = 1 if self.np_random.random() < SPAWN_TWO_P else 2

    def random_actions(self, rng: np.random.Generator, n: int) -> list[int]:
        """Random *moves* are the four directions (Still is a pass), as in the paper's random baseline
        and RL warm-up; this is what reproduces its random score of ~700."""
        return rng.integers(4, size=n).tolist()

    def _coerce_action(self, action: Action) -> int:
        try:
            a = operator.index(action)
        except TypeError:
            raise ValueError(f"2048: an action is an int in 0..4, got {action!r}") from None
        if not 0 <= a <= 4:
            raise ValueError(f"2048: an action is an int in 0..4, got {action!r}")
        return a

    def _play(self, action: int) -> tuple[int, float, bool]:
        if action == STILL:
            return -1, -1.0, False
        new, reward, merged = slide(self.board, action)
        if np.array_equal(new, self.board):
            return 0, -1.0, False
        self.board = new
        self._spawn()
        return reward, (1.0 if merged else -1.0), True

    def _is_over(self) -> bool:
        return not can_move(self.board)

    def _cell_text(self, code: int) -> str:
        return str(1 << int(code))

    def _cell_code(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"2048: cell {text!r} is neither a number nor '-'") from None
        if value < 2 or value & (value - 1):
            raise ValueError(f"2048: cell value {value} is not a power of two >= 2")
        exponent = value.bit_length() - 1
        if exponent > 126:  # the board stores exponents as int8; a merge adds one
            raise ValueError(f"2048: cell value {value} is too large")
        return exponent

    def _validate_board(self, board: np.ndarray) -> np.ndarray:
        if not board.any():
            raise ValueError("2048: an empty board cannot occur (every move that changes it adds a tile)")
        return board

    def _sprite(self, code: int, cell: int) -> np.ndarray:
        return tile_sprite(code, cell)

    def legal_actions(self) -> list[int]:
        return [a for a in (UP, RIGHT, DOWN, LEFT) if not np.array_equal(slide(self.board, a)[0], self.board)]

    def parse_action(self, text: str) -> int | None:
        return answer.parse_choice(text, 5, ACTION_NAMES)

    def format_action(self, action: Action) -> str:
        return str(int(action))

    # ---- oracle: expectimax over the next move, the spawn, and the move after --------------
    def oracle(self) -> tuple[int, str]:
        moves = self.legal_actions()
        if not moves:
            return STILL, "No move changes the board, so the game is over; staying still."
        best, best_value = moves[0], -np.inf
        for a in moves:
            new, reward, _ = slide(self.board, a)
            value = reward + _chance_value(new.tobytes(), self.size)
            if value > best_value:
                best, best_value = a, value
        _, reward, merged = slide(self.board, best)
        why = f"merges tiles for {reward} points" if merged else "merges nothing now but keeps the board open"
        return best, f"Moving {ACTION_NAMES[best]} {why}, and it scores best after looking one spawn ahead."


def _heuristic(board: np.ndarray) -> float:
    """Empty cells, a big tile in a corner, and monotone rows and columns are good."""
    empty = int((board == 0).sum())
    mono = 0.0
    for lines in (board, board.T):
        d = np.diff(lines.astype(np.int32), axis=1)
        mono -= min(np.maximum(d, 0).sum(), np.maximum(-d, 0).sum())
    corner = board.max() if board.max() in (board[0, 0], board[0, -1], board[-1, 0], board[-1, -1]) else 0
    return 12.0 * empty + 4.0 * mono + 6.0 * corner


@lru_cache(maxsize=1 << 14)
def _chance_value(raw: bytes, size: int) -> float:
    """Expected value over the spawn of the best next move (merge reward + heuristic)."""
    board = np.frombuffer(raw, dtype=np.int8).reshape(size, size)
    empty = np.flatnonzero(board == 0)
    if len(empty) == 0:
        return _heuristic(board)
    # Sample up to 6 cells for speed; with both tile values that is <= 12 chance nodes.
    cells = empty if len(empty) <= 6 else empty[np.linspace(0, len(empty) - 1, 6).astype(int)]
    total = 0.0
    for cell in cells:
        for exponent, p in ((1, SPAWN_TWO_P), (2, 1 - SPAWN_TWO_P)):
            b = board.copy()
            b.flat[cell] = exponent
            best = -1000.0
            for a in (UP, RIGHT, DOWN, LEFT):
                new, reward, _ = slide(b, a)
                if not np.array_equal(new, b):
                    best = max(best, reward + _heuristic(new))
            total += p * best
    return total / len(cells)
