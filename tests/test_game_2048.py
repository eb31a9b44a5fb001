"""2048 rules on hand-made boards."""

import numpy as np
import pytest
from conftest import make_small

from g1core.gym.games.game_2048 import DOWN, LEFT, RIGHT, STILL, UP, slide_line


def board_text(rows):
    return "\n".join("|".join(f" {v} " if v else " - " for v in row) for row in rows)


def env_with(rows, seed=0):
    env = make_small("2048", size=len(rows))
    env.reset(seed=seed)
    env.set_board(board_text(rows))
    return env


def values(env):
    return [[(1 << int(e)) if e else 0 for e in row] for row in env.board]


@pytest.mark.parametrize(
    "line, after, reward",
    [
        ((2, 2, 2, 2), (4, 4, 0, 0), 8),  # each tile merges at most once per move
        ((2, 2, 4, 0), (4, 4, 0, 0), 4),  # a new 4 does not merge again with the old 4
        ((4, 4, 8, 0), (8, 8, 0, 0), 8),
        ((2, 0, 0, 2), (4, 0, 0, 0), 4),
        ((2, 4, 2, 4), (2, 4, 2, 4), 0),
        ((8, 8, 8, 0), (16, 8, 0, 0), 16),  # the pair nearest the wall merges first
        ((0, 0, 0, 0), (0, 0, 0, 0), 0),
    ],
)
def test_slide_line(line, after, reward):
    exps = tuple(v.bit_length() - 1 if v else 0 for v in line)
    new, got, merged = slide_line(exps)
    assert tuple((1 << e) if e else 0 for e in new) == after
    assert got == reward and merged == (reward > 0)


def test_directions_and_reward():
    rows = [[2, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [2, 0, 0, 0]]
    # (action, where the merged 4 lands, where the lone 2 lands); one new tile spawns elsewhere
    cases = ((LEFT, (0, 0), (3, 0)), (RIGHT, (0, 3), (3, 3)), (UP, (0, 0), (0, 1)), (DOWN, (3, 0), (3, 1)))
    for action, four, two in cases:
        env = env_with(rows)
        out = env.apply(action)
        assert out.raw_reward == 4 and out.reward == 1.0 and out.legal
        v = values(env)
        assert v[four[0]][four[1]] == 4 and v[two[0]][two[1]] == 2
        assert (env.board > 0).sum() == 3


def test_move_without_merge_is_legal_but_shaped_minus_one():
    env = env_with([[0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    out = env.apply(LEFT)
    assert (out.raw_reward, out.reward, out.legal) == (0, -1.0, True)
    assert (env.board > 0).sum() == 2  # a tile spawned


def test_noop_move_scores_zero_spawns_nothing_and_keeps_rng():
    env = env_with([[2, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    rng = env.np_random.bit_generator.state
    before = env.text_observation()
    out = env.apply(LEFT)
    assert (out.raw_reward, out.reward, out.legal) == (0, -1.0, False)
    assert env.text_observation() == before and env.np_random.bit_generator.state == rng


def test_still_costs_one():
    env = env_with([[2, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    out = env.apply(STILL)
    assert (out.raw_reward, out.reward, out.legal) == (-1, -1.0, False)
    assert env.score == -1


def test_spawn_distribution():
    env = make_small("2048")
    twos = fours = 0
    for seed in range(2000):
        env.reset(seed=seed)
        assert (env.board > 0).sum() == 2
        twos += int((env.board == 1).sum())
        fours += int((env.board == 2).sum())
    assert 0.87 < twos / (twos + fours) < 0.93


def test_game_over_when_no_move_changes_the_board():
    full = [[2, 4, 2, 4], [4, 2, 4, 2], [2, 4, 2, 4], [4, 2, 4, 8]]
    env = env_with(full)
    assert env.terminated and env.legal_actions() == []
    nearly = [[2, 4, 2, 4], [4, 2, 4, 2], [2, 4, 2, 4], [4, 2, 8, 8]]
    env = env_with(nearly)
    assert not env.terminated and env.legal_actions() == [RIGHT, LEFT]


def test_scores_are_python_ints_beyond_uint8():
    big = 1 << 16
    env = env_with([[big, big, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    out = env.apply(LEFT)
    assert out.raw_reward == 2 * big and type(out.raw_reward) is int
    assert values(env)[0][0] == 2 * big
    assert " 131072 " in env.text_observation()


def test_text_format():
    env = env_with([[2, 0, 4, 0], [0, 0, 0, 0], [0, 0, 0, 1024], [0, 0, 0, 0]])
    assert env.text_observation().split("\n")[0] == " 2 | - | 4 | - "
    assert env.text_observation().split("\n")[2] == " - | - | - | 1024 "


def test_largest_storable_tile_still_merges():
    top = 1 << 126
    env = env_with([[top, top], [0, 0]])
    assert env.apply(LEFT).raw_reward == 1 << 127
    with pytest.raises(ValueError, match="too large"):
        env_with([[1 << 127, 0], [0, 0]])
    with pytest.raises(ValueError, match="empty board"):
        env_with([[0, 0], [0, 0]])


@pytest.mark.parametrize("bad", ["3", "x", "1", "0"])
def test_set_board_rejects_non_tiles(bad):
    env = make_small("2048")
    with pytest.raises(ValueError, match="2048"):
        env.set_board(board_text([[0, 0, 0, 0]] * 3 + [[0, 0, 0, 0]]).replace(" - ", f" {bad} ", 1))


def test_size_knob():
    env = make_small("2048", size=5)
    env.reset(seed=0)
    assert env.board.shape == (5, 5) and len(env.text_observation().split("\n")) == 5
    with pytest.raises(ValueError):
        make_small("2048", size=1)


def test_oracle_beats_random():
    from g1core.gym.policies import OraclePolicy, RandomPolicy
    from g1core.gym.protocol import play

    oracle = play("2048", OraclePolicy(), runs=3, steps=100, progress=False)
    random = play("2048", RandomPolicy(), runs=3, steps=100, progress=False)
    assert oracle.mean > random.mean
    assert oracle.format_rate == 1.0 and oracle.perception_exact_rate == 1.0


def test_random_moves_are_the_four_directions():
    env = make_small("2048")
    moves = env.random_actions(np.random.default_rng(0), 400)
    assert set(moves) == {UP, RIGHT, DOWN, LEFT}
