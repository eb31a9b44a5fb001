"""Tile sets for the tile games: what a tile is called in the text view and how it is drawn.

A tile set has ``kinds`` (tiles of one kind match) and up to ``variants`` pictures per kind. A board cell
holds ``code = 1 + kind * variants + variant`` (0 = empty), so the board alone says both what a tile is
and which picture shows it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .render import BOARD_BG, COLOUR_NAMES, COLOURS, SHAPES, shape_sprite


class TileSet:
    """Base class: ``names[k]`` is kind k's text; ``variants`` pictures per kind."""

    names: tuple[str, ...] = ()
    variants: int = 1

    def __len__(self) -> int:
        return len(self.names)

    def code(self, kind: int, variant: int = 0) -> int:
        return 1 + kind * self.variants + variant

    def kind(self, code: int) -> int:
        return (code - 1) // self.variants

    def variant(self, code: int) -> int:
        return (code - 1) % self.variants

    def name(self, code: int) -> str:
        return self.names[self.kind(code)]

    def parse(self, text: str) -> int:
        """Kind index of a tile written as in the text view; ValueError when not in this set."""
        key = " ".join(text.split()).lower()
        for k, name in enumerate(self.names):
            if name.lower() == key:
                return k
        raise ValueError(f"unknown tile {text!r}; this board's tiles are: {', '.join(self.names)}")

    def sprite(self, code: int, cell: int) -> np.ndarray:
        raise NotImplementedError


@lru_cache(maxsize=1)
def _empty_cell(cell: int) -> np.ndarray:
    return np.broadcast_to(np.array(BOARD_BG, dtype=np.uint8), (cell, cell, 3))


def empty_sprite(cell: int) -> np.ndarray:
    return _empty_cell(cell)


@lru_cache(maxsize=2048)
def _shape_tile(colour: int, shape: int, cell: int) -> np.ndarray:
    return shape_sprite(cell, COLOURS[colour][1], SHAPES[shape])


class ShapeTiles(TileSet):
    """Coloured shapes: the first ``n_colours`` colours of the palette times the first ``n_shapes`` shapes."""

    def __init__(self, n_colours: int, n_shapes: int):
        if not 1 <= n_colours <= len(COLOURS):
            raise ValueError(f"colours must be in 1..{len(COLOURS)}, got {n_colours}")
        if not 1 <= n_shapes <= len(SHAPES):
            raise ValueError(f"shapes must be in 1..{len(SHAPES)}, got {n_shapes}")
        self.n_colours, self.n_shapes = n_colours, n_shapes
        self.names = tuple(
            f"{COLOUR_NAMES[c]} {SHAPES[s]}" for c in range(n_colours) for s in range(n_shapes)
        )

    def sprite(self, code: int, cell: int) -> np.ndarray:
        if code == 0:
            return empty_sprite(cell)
        colour, shape = divmod(self.kind(code), self.n_shapes)
        return _shape_tile(colour, shape, cell)
