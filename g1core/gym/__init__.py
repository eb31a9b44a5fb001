"""VLM-Gym: the G1 paper's visual games behind one gymnasium interface.

    >>> from g1core import gym
    >>> env = gym.make("shisen-sho", size=8)
    >>> obs, info = env.reset(seed=0)
    >>> env.unwrapped.text_observation()

``GAMES`` lists the names; each game's knobs are its constructor's keyword arguments (defaults are the
paper's), plus ``screen_size=(height, width)`` for the observation (paper: 840 x 640).
"""

from __future__ import annotations

from importlib import import_module

import gymnasium

from .base import GameState, GridGameEnv, Outcome

_ENTRY_POINTS = {
    "2048": "g1core.gym.games.game_2048:Game2048Env",
    "shisen-sho": "g1core.gym.games.shisen_sho:ShisenShoEnv",
    "shisen-sho-cifar10": "g1core.gym.games.shisen_sho_cifar10:ShisenShoCifar10Env",
    "swap": "g1core.gym.games.swap:SwapEnv",
}
GAMES: tuple[str, ...] = tuple(_ENTRY_POINTS)


def game_class(name: str) -> type[GridGameEnv]:
    if name not in _ENTRY_POINTS:
        raise ValueError(f"unknown game {name!r}; the games are: {', '.join(GAMES)}")
    module, cls = _ENTRY_POINTS[name].split(":")
    return getattr(import_module(module), cls)


def make(name: str, **difficulty) -> GridGameEnv:
    """A new env of game ``name`` with the given difficulty knobs (and ``screen_size``, ``render_mode``)."""
    cls = game_class(name)
    try:
        return cls(**difficulty)
    except TypeError as err:
        raise ValueError(f"{name}: bad difficulty {difficulty}: {err}") from None


def gymnasium_id(name: str) -> str:
    """The id under which ``gymnasium.make`` knows a game, e.g. ``g1/shisen-sho-v0``."""
    return f"g1/{name}-v0"


for _name, _entry in _ENTRY_POINTS.items():
    if gymnasium_id(_name) not in gymnasium.registry:
        gymnasium.register(id=gymnasium_id(_name), entry_point=_entry)

__all__ = ["GAMES", "GameState", "GridGameEnv", "Outcome", "game_class", "gymnasium_id", "make"]
