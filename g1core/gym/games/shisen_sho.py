"""Shisen-Sho: remove pairs of matching tiles joined by a path with at most two turns.

A G x G board (G even) starts full: G*G/4 tile kinds drawn at random from the tile set, each placed
4 times, shuffled. A move names two cells; it is legal when both hold tiles of the same kind and a path
of empty cells with at most two turns joins them -- the path may run through a one-cell empty margin
around the board. Legal: both tiles go, raw reward +1; otherwise -1 and nothing changes. The episode
ends when the board is empty or no legal pair remains.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import numpy as np
from gymnasium import spaces

from ..base import Action, GridGameEnv
from ..render import COLOURS, PAPER_SCREEN, SHAPES
from ..tiles import ShapeTiles, TileSet

Pair = tuple[int, int, int, int]


def padded(board: np.ndarray) -> list[list[int]]:
    """The board with a one-cell empty margin, as nested lists (fast to index in Python)."""
    return np.pad(board, 1).tolist()


def _span(grid: list[list[int]], r: int, c: int, vertical: bool) -> tuple[int, int]:
    """The run of cells reachable from (r, c) in a straight line through empty cells, (r, c) included:
    (first, last) row when ``vertical`` else (first, last) column."""
    if vertical:
        lo = r
        while lo > 0 and grid[lo - 1][c] == 0:
            lo -= 1
        hi = r
        while hi < len(grid) - 1 and grid[hi + 1][c] == 0:
            hi += 1
    else:
        row = grid[r]
        lo = c
        while lo > 0 and row[lo - 1] == 0:
            lo -= 1
        hi = c
        while hi < len(row) - 1 and row[hi + 1] == 0:
            hi += 1
    return lo, hi


def connectable(grid: list[list[int]], r1: int, c1: int, r2: int, c2: int) -> bool:
    """Is there a path with at most two turns between two tiles, in padded coordinates?

    Every such path is vertical-horizontal-vertical or horizontal-vertical-horizontal, some legs
    possibly empty. For the first kind the middle leg runs along a row both tiles reach straight up or
    down; that row must be empty strictly between the two columns. The second kind likewise by columns.
    """
    u1, d1 = _span(grid, r1, c1, True)
    u2, d2 = _span(grid, r2, c2, True)
    lo_c, hi_c = min(c1, c2), max(c1, c2)
    for r in range(max(u1, u2), min(d1, d2) + 1):
        row = grid[r]
        if all(row[c] == 0 for c in range(lo_c + 1, hi_c)):
            return True
    l1, h1 = _span(grid, r1, c1, False)
    l2, h2 = _span(grid, r2, c2, False)
    lo_r, hi_r = min(r1, r2), max(r1, r2)
    for c in range(max(l1, l2), min(h1, h2) + 1):
        if all(grid[r][c] == 0 for r in range(lo_r + 1, hi_r)):
            return True
    return False


def legal_pairs(board: np.ndarray, kind_of, first_only: bool = False) -> list[Pair]:
    """All legal moves (each pair once, cells in reading order)."""
    grid = padded(board)
    by_kind: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r, row in enumerate(board.tolist()):
        for c, code in enumerate(row):
            if code:
                by_kind[kind_of(code)].append((r, c))
    found: list[Pair] = []
    for cells in by_kind.values():
        for (r1, c1), (r2, c2) in combinations(cells, 2):
            if connectable(grid, r1 + 1, c1 + 1, r2 + 1, c2 + 1):
                found.append((r1, c1, r2, c2))
                if first_only:
                    return found
    return sorted(found)


class ShisenShoEnv(GridGameEnv):
    name = "shisen-sho"
    title = "Shisen-Sho"
    cell_sep = "|"
    cell_pad = " "
    oracle_budget = 400  # boards the oracle's solvability search may visit per move

    def __init__(
        self,
        size: int = 6,
        colours: int = len(COLOURS),
        shapes: int = len(SHAPES),
        screen_size=PAPER_SCREEN,
        render_mode: str | None = "rgb_array",
    ):
        self.colours, self.shapes = int(colours), int(shapes)
        self._init_board(int(size), ShapeTiles(self.colours, self.shapes), screen_size, render_mode)

    def _init_board(self, size: int, tiles: TileSet, screen_size, render_mode) -> None:
        if size < 2 or size % 2:
            raise ValueError(
                f"{self.name}: size must be even and >= 2 (every kind appears 4 times), got {size}"
            )
        self.size = size
        self.tiles = tiles
        self.n_kinds = size * size // 4
        if self.n_kinds > len(tiles):
            raise ValueError(
                f"{self.name}: a {size}x{size} board needs {self.n_kinds} tile kinds but the tile set has "
                f"{len(tiles)}; use more colours/shapes or a smaller board"
            )
        super().__init__(size, size, screen_size, render_mode)
        self.action_space = spaces.MultiDiscrete([size] * 4)

    @property
    def difficulty(self):
        return {"size": self.size, "colours": self.colours, "shapes": self.shapes}

    @property
    def tile_description(self) -> str:
        colours = ", ".join(COLOURS[c][0] for c in range(self.colours))
        shapes = ", ".join(SHAPES[: self.shapes])
        return (
            f"coloured shapes (colours: {colours}; shapes: {shapes}); two tiles match when both colour and "
            "shape are the same. Write each cell as ' <Colour> <shape> ' (for example ' Red circle ')"
        )

    @property
    def prompt(self) -> str:
        n = self.size
        return (
            f"You are playing Shisen-Sho on a {n}x{n} board of {self.tile_description}. Remove two "
            "matching tiles by joining them with a path of at most three straight segments (two turns) "
            "that crosses only empty cells; the path may leave the board through the empty border "
            "around it. A legal pair scores +1, anything else -1.\n"
            "First write the board you see inside <perception></perception>: one line per row, top to "
            "bottom, cells separated by '|', and ' - ' for an empty cell. Then reason inside "
            "<think></think>, and give the two cells inside <answer></answer> as (row1, col1) (row2, col2), "
            "0-indexed from the top-left corner."
        )

    def _new_board(self) -> None:
        rng = self.np_random
        for _ in range(100):  # a full board with no legal pair is rare; deal again
            kinds = rng.choice(len(self.tiles), size=self.n_kinds, replace=False)
            codes = [
                self.tiles.code(int(k), int(v))
                for k in kinds
                for v in rng.choice(self.tiles.variants, size=4, replace=self.tiles.variants < 4)
            ]
            self.board = rng.permutation(np.array(codes, dtype=np.int16)).reshape(self.size, self.size)
            if not self._is_over():
                return

    def _coerce_action(self, action: Action) -> Pair:
        return self._coerce_cell_pair(action)

    def _play(self, action: Pair) -> tuple[int, float, bool]:
        r1, c1, r2, c2 = action
        a, b = int(self.board[r1, c1]), int(self.board[r2, c2])
        if (r1, c1) == (r2, c2) or not a or not b or self.tiles.kind(a) != self.tiles.kind(b):
            return -1, -1.0, False
        if not connectable(padded(self.board), r1 + 1, c1 + 1, r2 + 1, c2 + 1):
            return -1, -1.0, False
        self.board = self.board.copy()
        self.board[r1, c1] = self.board[r2, c2] = 0
        return 1, 1.0, True

    def _is_over(self) -> bool:
        return not self.board.any() or not legal_pairs(self.board, self.tiles.kind, first_only=True)

    def _is_won(self) -> bool:
        return not self.board.any()

    def _cell_text(self, code: int) -> str:
        return self.tiles.name(code)

    def _cell_code(self, text: str) -> int:
        return self.tiles.code(self.tiles.parse(text))

    def _validate_board(self, board: np.ndarray) -> np.ndarray:
        kinds, counts = np.unique(
            (board[board > 0].astype(np.int64) - 1) // self.tiles.variants, return_counts=True
        )
        bad = [self.tiles.names[int(k)] for k, n in zip(kinds, counts, strict=True) if n not in (2, 4)]
        if bad:
            raise ValueError(
                f"{self.name}: tiles are removed in pairs from 4 copies, but the count of "
                f"{', '.join(bad)} is not 2 or 4"
            )
        if len(kinds) > self.n_kinds:
            raise ValueError(
                f"{self.name}: {len(kinds)} tile kinds on the board, at most {self.n_kinds} possible"
            )
        board = board.copy()
        seen: dict[int, int] = defaultdict(int)  # k-th tile of a kind shows picture k
        for idx in np.flatnonzero(board):
            kind = self.tiles.kind(int(board.flat[idx]))
            board.flat[idx] = self.tiles.code(kind, seen[kind] % self.tiles.variants)
            seen[kind] += 1
        return board

    def _sprite(self, code: int, cell: int) -> np.ndarray:
        return self.tiles.sprite(code, cell)

    def legal_actions(self) -> list[Pair]:
        return legal_pairs(self.board, self.tiles.kind)

    def parse_action(self, text: str) -> Pair | None:
        return self._parse_cell_pair(text)

    def format_action(self, action: Action) -> str:
        return self._write_cell_pair(action)

    # ---- oracle: a pair after which the board can still be cleared, found by a bounded search --
    def oracle(self) -> tuple[Pair, str]:
        pairs = self.legal_actions()
        if not pairs:
            return (0, 0, 0, 1), "No pair can be joined any more, so any move is illegal."
        safe = _safe_pair(self.board, self.tiles.kind, pairs)
        if safe is not None:
            return safe, self._reason(safe, "and taking them cannot block any other pair")
        budget = [self.oracle_budget]
        seen: dict[bytes, bool] = {}
        for pair in pairs:
            if _clearable(_without(self.board, pair), self.tiles.kind, seen, budget):
                return pair, self._reason(pair, "and the rest of the board can still be cleared")
            if budget[0] <= 0:
                break
        # search ran out: keep as many pairs open as possible
        best = max(pairs, key=lambda p: len(legal_pairs(_without(self.board, p), self.tiles.kind)))
        return best, self._reason(best, "and this leaves the most pairs open")

    def _reason(self, pair: Pair, tail: str) -> str:
        r1, c1, r2, c2 = pair
        name = self.tiles.name(int(self.board[r1, c1]))
        return f"The {name} tiles at ({r1}, {c1}) and ({r2}, {c2}) are joined by a free path, {tail}."


def _without(board: np.ndarray, pair: Pair) -> np.ndarray:
    b = board.copy()
    r1, c1, r2, c2 = pair
    b[r1, c1] = b[r2, c2] = 0
    return b


def _safe_pair(board: np.ndarray, kind_of, pairs: list[Pair]) -> Pair | None:
    """A legal pair whose removal can never make the board unclearable, if there is one.

    Removing tiles only opens paths. So taking the last two tiles of a kind is always safe, and so is
    taking one of two disjoint legal pairs that cover all four tiles of a kind (the other stays legal).
    """
    counts: dict[int, int] = defaultdict(int)
    for code in board[board > 0].tolist():
        counts[kind_of(code)] += 1
    by_kind: dict[int, list[Pair]] = defaultdict(list)
    for p in pairs:
        kind = kind_of(int(board[p[0], p[1]]))
        if counts[kind] == 2:
            return p
        by_kind[kind].append(p)
    for kind_pairs in by_kind.values():
        for p, q in combinations(kind_pairs, 2):
            if len({p[:2], p[2:], q[:2], q[2:]}) == 4:
                return p
    return None


def _clearable(board: np.ndarray, kind_of, seen: dict[bytes, bool], budget: list[int]) -> bool:
    """Depth-first search for a sequence of legal pairs that empties the board, within ``budget`` boards.

    Safe pairs are taken without branching; only the risky choices are searched.
    """
    key = board.tobytes()
    if key in seen:
        return seen[key]
    if budget[0] <= 0:
        return False
    budget[0] -= 1
    pairs = legal_pairs(board, kind_of)
    while pairs:
        safe = _safe_pair(board, kind_of, pairs)
        if safe is None:
            break
        board = _without(board, safe)
        pairs = legal_pairs(board, kind_of)
    if not board.any():
        result = True
    else:
        result = any(_clearable(_without(board, p), kind_of, seen, budget) for p in pairs)
    if budget[0] > 0 or result:
        seen[key] = result
    return result
