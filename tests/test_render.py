"""Screens are pixel-identical wherever the pinned versions are installed, and use no system font."""

import hashlib
import io

import numpy as np
import pytest

from g1core import gym
from g1core.gym import render

# sha256 (first 16 hex digits) of the first screen after reset(seed=0), with constraints.txt's versions.
GOLDEN = {
    ("2048", (840, 640)): "ca2c7b0bcf54f662",
    ("2048", (112, 112)): "f81a30e780e7ca68",
    ("shisen-sho", (840, 640)): "3c12609a3dc3c6e8",
    ("shisen-sho", (112, 112)): "4cd441d3c406d6cd",
    ("shisen-sho-cifar10", (840, 640)): "68043959d35c5174",
    ("shisen-sho-cifar10", (112, 112)): "41b3e1661009dda4",
    ("swap", (840, 640)): "2b37c584d3f12157",
    ("swap", (112, 112)): "9225a8c43a601c2a",
}


@pytest.mark.parametrize("game, size", list(GOLDEN))
def test_golden_screens(game, size):
    obs, _ = gym.make(game, screen_size=size).reset(seed=0)
    assert hashlib.sha256(obs.tobytes()).hexdigest()[:16] == GOLDEN[game, size]


def test_font_is_embedded_not_looked_up():
    f = render.font(20)
    assert isinstance(f.path, io.BytesIO)  # Pillow's built-in font bytes, not a file on this machine


def test_every_shape_and_colour_draws_distinctly():
    sprites = {
        (c, s): render.shape_sprite(28, rgb, s).tobytes() for c, rgb in render.COLOURS for s in render.SHAPES
    }
    assert len(set(sprites.values())) == len(sprites)
    with pytest.raises(ValueError, match="unknown shape"):
        render.shape_sprite(28, (0, 0, 0), "moon")


def test_paper_screen_layout():
    env = gym.make("2048")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (840, 640, 3)
    layout = render.Layout(840, 640, 4, 4)
    assert layout.cell == 160 and layout.origin == (200, 0)
    # the header above the board is not board colour; the board area is
    assert tuple(obs[10, 10]) == render.HEADER_BG and tuple(obs[202, 1]) == render.BOARD_BG
    assert not np.array_equal(obs[:200], np.broadcast_to(render.HEADER_BG, obs[:200].shape))  # the title
