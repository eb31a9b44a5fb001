"""Screens for the games: a cached background plus one cached sprite per tile, blitted with numpy.

Drawing with Pillow happens once per (tile, cell size); every later frame only copies arrays, and a
frame is redrawn only in the cells whose content changed since the last one. Text is drawn with the
font embedded in Pillow (``ImageFont.load_default``), never a system font lookup, so a pinned Pillow
gives the same pixels on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Paper screen: 640 wide, 840 high (height, width order everywhere in this package).
PAPER_SCREEN = (840, 640)

COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Red", (220, 30, 30)),
    ("Green", (40, 180, 40)),
    ("Blue", (30, 70, 230)),
    ("Yellow", (245, 210, 0)),
    ("Magenta", (230, 0, 200)),
    ("Cyan", (0, 200, 220)),
    ("Maroon", (120, 0, 0)),
    ("Dark green", (0, 95, 0)),
    ("Navy", (0, 0, 120)),
    ("Olive", (128, 128, 0)),
    ("Purple", (115, 30, 150)),
    ("Teal", (0, 128, 128)),
    ("Orange", (255, 130, 0)),
    ("Brown", (135, 80, 30)),
    ("Steel blue", (70, 130, 180)),
    ("Pink", (255, 140, 185)),
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOUR_NAMES = tuple(name for name, _ in COLOURS)

BOARD_BG = (60, 62, 72)
TILE_FACE = (246, 244, 236)
HEADER_BG = (250, 248, 239)
HEADER_FG = (60, 62, 72)

_SUPERSAMPLE = 4  # shapes are drawn 4x larger and box-filtered down: smooth edges, still deterministic


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's embedded scalable font at ``size`` pixels."""
    return ImageFont.load_default(size=max(1, int(size)))


@dataclass(frozen=True)
class Layout:
    """Where the board sits on a screen of ``height`` x ``width`` pixels.

    The board is the largest square that fits, at the bottom; the strip above it (a portrait screen
    like the paper's 840x640) is a header with the game's title. Cells are whole pixels, so a screen of
    ``28 * cols`` pixels wide and high puts every cell exactly on a 28-pixel patch grid.
    """

    height: int
    width: int
    rows: int
    cols: int

    @property
    def board_px(self) -> int:
        return min(self.height, self.width)

    @property
    def cell(self) -> int:
        return self.board_px // max(self.rows, self.cols)

    @property
    def origin(self) -> tuple[int, int]:
        """Top-left pixel (y, x) of cell (0, 0)."""
        top = self.height - self.board_px + (self.board_px - self.cell * self.rows) // 2
        left = (self.width - self.board_px) // 2 + (self.board_px - self.cell * self.cols) // 2
        return top, left

    def cell_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of cell (r, c)."""
        top, left = self.origin
        y0, x0 = top + r * self.cell, left + c * self.cell
        return y0, y0 + self.cell, x0, x0 + self.cell


def validate_screen(screen_size: tuple[int, int], rows: int, cols: int) -> tuple[int, int]:
    h, w = (int(v) for v in screen_size)
    if min(h, w) < max(rows, cols) * 8:
        raise ValueError(
            f"screen_size {h}x{w} is too small for a {rows}x{cols} board: need at least 8 pixels per cell"
        )
    return h, w


@lru_cache(maxsize=64)
def background(layout: Layout, title: str) -> np.ndarray:
    """The screen without tiles: header with the title, board area, empty cells."""
    img = Image.new("RGB", (layout.width, layout.height), HEADER_BG)
    draw = ImageDraw.Draw(img)
    header = layout.height - layout.board_px
    if header >= 24 and title:
        f = font(min(header // 3, layout.width // max(6, len(title))))
        draw.text((layout.width // 2, header // 2), title, fill=HEADER_FG, font=f, anchor="mm")
    top = layout.height - layout.board_px
    left = (layout.width - layout.board_px) // 2
    draw.rectangle([left, top, left + layout.board_px - 1, layout.height - 1], fill=BOARD_BG)
    arr = np.asarray(img, dtype=np.uint8).copy()
    arr.flags.writeable = False
    return arr


def shape_sprite(cell: int, colour: tuple[int, int, int], shape: str) -> np.ndarray:
    """A tile face with a coloured shape on it, ``cell`` x ``cell`` x 3."""
    s = cell * _SUPERSAMPLE
    img = Image.new("RGB", (s, s), BOARD_BG)
    draw = ImageDraw.Draw(img)
    gap = max(_SUPERSAMPLE, s // 16)
    draw.rounded_rectangle([gap, gap, s - 1 - gap, s - 1 - gap], radius=s // 10, fill=TILE_FACE)
    m = s * 0.22  # margin from cell edge to the shape's bounding box
    x0, y0, x1, y1 = m, m, s - m, s - m
    cx, cy, r = s / 2, s / 2, (s - 2 * m) / 2
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif shape == "square":
        draw.rectangle([x0 + r * 0.1, y0 + r * 0.1, x1 - r * 0.1, y1 - r * 0.1], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1 - r * 0.15), (x0, y1 - r * 0.15)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "cross":
        t = r * 0.36
        draw.rectangle([cx - t, y0, cx + t, y1], fill=colour)
        draw.rectangle([x0, cy - t, x1, cy + t], fill=colour)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy + rad * 1.0 * np.sin(ang) + r * 0.08))
        draw.polygon(pts, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return np.asarray(img.resize((cell, cell), Image.Resampling.BOX), dtype=np.uint8)


class Screen:
    """Incremental renderer for one env: keeps the last frame and the board it shows.

    ``sprite(code, cell)`` returns the pixels of one cell holding tile ``code`` (0 = empty). Sprites are
    cached by the caller's function (usually an ``lru_cache``), so a new frame costs one copy of the
    screen plus a blit per changed cell.
    """

    def __init__(self, layout: Layout, title: str, sprite: Callable[[int, int], np.ndarray]):
        self.layout = layout
        self.title = title
        self.sprite = sprite
        self._frame: np.ndarray | None = None
        self._shown: np.ndarray | None = None

    def draw(self, board: np.ndarray) -> np.ndarray:
        """A fresh uint8 H x W x 3 array showing ``board``."""
        if self._frame is None or self._shown is None or self._shown.shape != board.shape:
            self._frame = background(self.layout, self.title).copy()
            self._shown = np.full(board.shape, -1, dtype=np.int64)
        changed = np.argwhere(board != self._shown)
        cell = self.layout.cell
        frame = self._frame
        for r, c in changed.tolist():
            y0, y1, x0, x1 = self.layout.cell_box(r, c)
            frame[y0:y1, x0:x1] = self.sprite(int(board[r, c]), cell)
        if len(changed):
            self._shown = board.astype(np.int64, copy=True)
        return frame.copy()

    def invalidate(self) -> None:
        self._frame = None
        self._shown = None
