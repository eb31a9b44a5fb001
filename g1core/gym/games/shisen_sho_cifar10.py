"""Shisen-Sho-Cifar10: the same game, on tiles that are photos; tiles match by class, not by picture.

A 6 x 6 board shows 9 classes, each as 4 *different* photos. The text view names the class of each
tile (' <class> '). Tiles come from CIFAR-10 (``tiles=<path to cifar-10-batches-py>``) or, offline, from
the default set in ``g1core.gym.photos`` (handwritten digits).
"""

from __future__ import annotations

from ..photos import load_tiles
from ..render import PAPER_SCREEN
from .shisen_sho import ShisenShoEnv


class ShisenShoCifar10Env(ShisenShoEnv):
    name = "shisen-sho-cifar10"
    title = "Shisen-Sho CIFAR-10"

    def __init__(
        self,
        size: int = 6,
        tiles: str = "digits",
        screen_size=PAPER_SCREEN,
        render_mode: str | None = "rgb_array",
    ):
        self.tile_source = str(tiles)
        self._init_board(int(size), load_tiles(self.tile_source), screen_size, render_mode)

    @property
    def difficulty(self):
        return {"size": self.size, "tiles": self.tile_source}

    @property
    def tile_description(self) -> str:
        return (
            f"small pictures; two tiles match when they show the same class ({', '.join(self.tiles.names)}), "
            "even if the pictures differ. Write each cell as ' <class> ' (for example "
            f"' {self.tiles.names[0]} ')"
        )
