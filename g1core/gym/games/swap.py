"""Swap (match-3): swap two neighbouring tiles to line up three or more of a kind.

An 8 x 8 board of coloured shapes (Red, Green, Blue, Yellow x circle, square, triangle), generated with
no ready-made line of three and at least one legal move. A move swaps two orthogonally adjacent tiles;
it is legal only if it makes a line of >= 3 identical tiles, otherwise it is undone (raw -1). Matched
tiles vanish, the tiles above fall, new random tiles fill from the top, and the cascade repeats; a wave
that removes n tiles scores n*(n-1). When no legal move is left the board is reshuffled. The shaped
reward GR is +1 for a legal swap, -1 otherwise. The game never ends by itself.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from gymnasium import spaces

from ..base import Action, GridGameEnv
from ..render import PAPER_SCREEN
from ..tiles import ShapeTiles

Pair = tuple[int, int, int, int]


def match_mask(board: np.ndarray) -> np.ndarray:
    """Cells that belong to a horizontal or vertical line of >= 3 equal non-empty tiles.

    Works on one board (n, n) or a stack of boards (k, n, n).
    """
    b = board
    mask = np.zeros(b.shape, dtype=bool)
    h = (b[..., :, :-2] == b[..., :, 1:-1]) & (b[..., :, 1:-1] == b[..., :, 2:]) & (b[..., :, :-2] != 0)
    mask[..., :, :-2] |= h
    mask[..., :, 1:-1] |= h
    mask[..., :, 2:] |= h
    v = (b[..., :-2, :] == b[..., 1:-1, :]) & (b[..., 1:-1, :] == b[..., 2:, :]) & (b[..., :-2, :] != 0)
    mask[..., :-2, :] |= v
    mask[..., 1:-1, :] |= v
    mask[..., 2:, :] |= v
    return mask


@lru_cache(maxsize=16)
def swaps(n: int) -> tuple[tuple[Pair, ...], np.ndarray]:
    """Every adjacent swap of an n x n board, and for each the permutation of flat cell indices it makes."""
    pairs: list[Pair] = [(r, c, r, c + 1) for r in range(n) for c in range(n - 1)]
    pairs += [(r, c, r + 1, c) for r in range(n - 1) for c in range(n)]
    perms = np.tile(np.arange(n * n), (len(pairs), 1))
    for i, (r1, c1, r2, c2) in enumerate(pairs):
        a, b = r1 * n + c1, r2 * n + c2
        perms[i, a], perms[i, b] = b, a
    perms.flags.writeable = False
    return tuple(pairs), perms


def swapped_boards(board: np.ndarray) -> np.ndarray:
    """(k, n, n): the board after each of the k adjacent swaps."""
    n = board.shape[0]
    _, perms = swaps(n)
    return board.reshape(-1)[perms].reshape(-1, n, n)


def legal_swap_mask(board: np.ndarray) -> np.ndarray:
    return match_mask(swapped_boards(board)).any(axis=(1, 2))


class SwapEnv(GridGameEnv):
    name = "swap"
    title = "Swap"
    cell_sep = " | "
    cell_pad = ""
    max_reshuffles = 1000
    protocol_score = "legal_percent"  # legal swaps per 100 steps

    def __init__(
        self,
        size: int = 8,
        colours: int = 4,
        shapes: int = 3,
        screen_size=PAPER_SCREEN,
        render_mode: str | None = "rgb_array",
    ):
        self.size, self.colours, self.shapes = int(size), int(colours), int(shapes)
        if self.size < 3:
            raise ValueError(f"swap: size must be at least 3, got {size}")
        self.tiles = ShapeTiles(self.colours, self.shapes)
        if len(self.tiles) < 3:
            raise ValueError(
                "swap: needs at least 3 tile kinds (colours x shapes) to deal a board without lines"
            )
        super().__init__(self.size, self.size, screen_size, render_mode)
        self.action_space = spaces.MultiDiscrete([self.size] * 4)

    @property
    def difficulty(self):
        return {"size": self.size, "colours": self.colours, "shapes": self.shapes}

    @property
    def prompt(self) -> str:
        n = self.size
        return (
            f"You are playing Swap, a match-3 game, on a {n}x{n} board of coloured shapes "
            f"({', '.join(self.tiles.names)}). Swap two "
            "neighbouring tiles (sharing an edge) so that three or more identical tiles line up in a row "
            "or column; they vanish, the tiles above fall and new ones drop in. A swap that lines nothing "
            "up is undone and costs a point.\n"
            "First write the board you see inside <perception></perception>: one line per row, top to "
            "bottom, each cell '<Colour> <shape>' (for example 'Red circle'), cells separated by ' | '. "
            "Then reason inside <think></think>, and give the two cells to swap inside <answer></answer> "
            "as (row1, col1) (row2, col2), 0-indexed from the top-left corner."
        )

    # ---- dealing --------------------------------------------------------------------------------
    def _new_board(self) -> None:
        self.board = self._deal()

    def _deal(self) -> np.ndarray:
        """A random board with no line of three and at least one legal swap."""
        for attempt in range(200):
            board = self._deal_without_lines()
            if legal_swap_mask(board).any():
                return board
            if attempt >= 20 and self._plant_move(board):  # many kinds on a small board: make a move
                return board
        raise RuntimeError(f"swap: could not deal a {self.size}x{self.size} board with a legal move")

    def _deal_without_lines(self) -> np.ndarray:
        rng, n, k = self.np_random, self.size, len(self.tiles)
        board = np.zeros((n, n), dtype=np.int16)
        for r in range(n):
            for c in range(n):
                banned = set()
                if c >= 2 and board[r, c - 1] == board[r, c - 2]:
                    banned.add(int(board[r, c - 1]))
                if r >= 2 and board[r - 1, c] == board[r - 2, c]:
                    banned.add(int(board[r - 1, c]))
                allowed = [code for code in range(1, k + 1) if code not in banned]
                board[r, c] = allowed[int(rng.integers(len(allowed)))]
        return board

    def _plant_move(self, board: np.ndarray) -> bool:
        """Make ``x x . / . . x`` somewhere (one swap from a line) without making a line; True if done."""
        rng, n = self.np_random, self.size
        for _ in range(100):
            r, c = int(rng.integers(n)), int(rng.integers(n - 2))
            r2 = r + 1 if r + 1 < n else r - 1
            code = 1 + int(rng.integers(len(self.tiles)))
            trial = board.copy()
            trial[r, c] = trial[r, c + 1] = trial[r2, c + 2] = code
            if trial[r, c + 2] != code and not match_mask(trial).any():
                board[...] = trial
                return True
        return False

    def _reshuffle(self) -> None:
        tiles = self.board.reshape(-1)
        for _ in range(self.max_reshuffles):
            board = self.np_random.permutation(tiles).reshape(self.size, self.size)
            if not match_mask(board).any() and legal_swap_mask(board).any():
                self.board = board
                return
        self.board = self._deal()

    # ---- moves ---------------------------------------------------------------------------------
    def _coerce_action(self, action: Action) -> Pair:
        return self._coerce_cell_pair(action)

    def _play(self, action: Pair) -> tuple[int, float, bool]:
        r1, c1, r2, c2 = action
        if abs(r1 - r2) + abs(c1 - c2) != 1:
            return -1, -1.0, False
        board = self.board.copy()
        board[r1, c1], board[r2, c2] = board[r2, c2], board[r1, c1]
        waves = self._cascade(board)
        if not waves:
            return -1, -1.0, False
        self.board = board
        if not legal_swap_mask(board).any():
            self._reshuffle()
        return sum(n * (n - 1) for n in waves), 1.0, True

    def _cascade(self, board: np.ndarray) -> list[int]:
        """Remove lines, let tiles fall and refill, until no line is left: the tiles removed per wave."""
        waves = []
        mask = match_mask(board)
        while mask.any():
            waves.append(int(mask.sum()))
            board[mask] = 0
            self._collapse_and_refill(board)
            mask = match_mask(board)
        return waves

    def _collapse_and_refill(self, board: np.ndarray) -> None:
        n = self.size
        for c in range(n):
            col = board[:, c]
            keep = col[col != 0]
            if len(keep) < n:
                board[: n - len(keep), c] = 0
                board[n - len(keep) :, c] = keep
        holes = np.flatnonzero(board == 0)
        board.flat[holes] = 1 + self.np_random.integers(0, len(self.tiles), size=len(holes))

    def _is_over(self) -> bool:
        return False

    # ---- text, pictures, answers ------------------------------------------------------------------
    def _cell_text(self, code: int) -> str:
        return self.tiles.name(code)

    def _cell_code(self, text: str) -> int:
        return self.tiles.code(self.tiles.parse(text))

    def _validate_board(self, board: np.ndarray) -> np.ndarray:
        if not board.all():
            raise ValueError("swap: the board is always full; empty cells cannot occur")
        if match_mask(board).any():
            raise ValueError("swap: the board has a line of three, which would already have vanished")
        if not legal_swap_mask(board).any():
            raise ValueError("swap: the board has no legal swap, so it would already have been reshuffled")
        return board

    def _sprite(self, code: int, cell: int) -> np.ndarray:
        return self.tiles.sprite(code, cell)

    def legal_actions(self) -> list[Pair]:
        pairs, _ = swaps(self.size)
        return [pairs[i] for i in np.flatnonzero(legal_swap_mask(self.board))]

    def parse_action(self, text: str) -> Pair | None:
        return self._parse_cell_pair(text)

    def format_action(self, action: Action) -> str:
        return self._write_cell_pair(action)

    def oracle(self) -> tuple[Pair, str]:
        """The swap whose first wave removes the most tiles (what a player sees without guessing refills)."""
        pairs, _ = swaps(self.size)
        gains = match_mask(swapped_boards(self.board)).sum(axis=(1, 2))
        best = int(np.argmax(gains))
        n = int(gains[best])
        r1, c1, r2, c2 = pairs[best]
        return pairs[best], (
            f"Swapping ({r1}, {c1}) with ({r2}, {c2}) lines up {n} identical tiles, the most any swap can, "
            f"worth at least {n * (n - 1)} points."
        )
