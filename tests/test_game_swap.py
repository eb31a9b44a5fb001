"""Swap rules: legality, cascades, scoring per wave, refills, reshuffles, and how boards are dealt."""

import numpy as np
import pytest
from conftest import make_small

from g1core.gym.games.swap import legal_swap_mask, match_mask


def env_with(codes, **knobs):
    """An env showing ``codes`` (1-based indices into the env's tile names)."""
    env = make_small("swap", size=len(codes), **knobs)
    env.reset(seed=0)
    env.set_board("\n".join(" | ".join(env.tiles.names[c - 1] for c in row) for row in codes))
    return env


# 5x5, all different except where a test plants equal tiles; 96 kinds so refills never line up by chance
WIDE = {"colours": 16, "shapes": 6}
FILLER = [[20 + 5 * r + c for c in range(5)] for r in range(5)]


def test_dealt_boards_have_no_line_and_a_legal_move():
    env = make_small("swap")
    for seed in range(50):
        env.reset(seed=seed)
        assert env.board.all() and not match_mask(env.board).any()
        assert legal_swap_mask(env.board).any()
        assert env.board.shape == (8, 8) and set(np.unique(env.board)) <= set(range(1, 13))


def cascade_board():
    board = [row[:] for row in FILLER]
    board[3] = [1, 11, 50, 35, 36]
    board[4] = [10, 1, 1, 50, 50]
    return board


def test_non_adjacent_or_lineless_swap_is_undone():
    env = env_with(cascade_board(), **WIDE)
    before = env.text_observation()
    rng = env.np_random.bit_generator.state
    for action in ((3, 0, 4, 1), (0, 0, 0, 2), (0, 0, 0, 0), (0, 0, 0, 1), (4, 3, 4, 4)):
        out = env.apply(action)
        assert (out.raw_reward, out.reward, out.legal) == (-1, -1.0, False)
        assert env.text_observation() == before and env.np_random.bit_generator.state == rng


def test_cascade_scores_each_wave():
    """Swapping (3,0) and (4,0) lines up three 1s in the bottom row; they vanish, the columns fall, and
    the 50 from (3,2) lands beside the two 50s: a second wave of three. 3*2 + 3*2 = 12."""
    env = env_with(cascade_board(), **WIDE)
    assert sorted(map(tuple, env.legal_actions())) == [(3, 0, 4, 0), (3, 2, 4, 2)]
    state = env.get_state()
    board = env.board.copy()
    board[3, 0], board[4, 0] = board[4, 0], board[3, 0]
    assert env._cascade(board) == [3, 3]
    # columns 0-1 fell once (wave 1), columns 3-4 once (wave 2), column 2 twice; refills on top
    assert board[4, :].tolist() == [10, 11, 32, 35, 36]
    assert board[3, :].tolist() == [30, 31, 27, 33, 34]
    env.set_state(state)
    out = env.apply((3, 0, 4, 0))
    assert (out.raw_reward, out.reward, out.legal) == (12, 1.0, True)
    assert env.board.all() and not match_mask(env.board).any()


def test_wave_of_n_tiles_scores_n_times_n_minus_one():
    board = [row[:] for row in FILLER]
    board[0] = [7, 7, 9, 7, 7]  # (1,2)=7 swapped up makes a line of five
    board[1][2] = 7
    env = env_with(board, **WIDE)
    out = env.apply((0, 2, 1, 2))
    assert out.legal and out.raw_reward == 5 * 4


def test_move_that_leaves_no_legal_swap_reshuffles():
    env = env_with(cascade_board(), **WIDE)  # 96 kinds on 5x5: after the move no swap is legal
    env.apply((3, 0, 4, 0))
    assert legal_swap_mask(env.board).any() and not match_mask(env.board).any()


def test_reshuffle_when_no_legal_move_left():
    env = make_small("swap")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for action in env.random_actions(rng, 3000):
        out = env.apply(action)
        if out.legal:
            assert legal_swap_mask(env.board).any() and not match_mask(env.board).any() and env.board.all()
    env._reshuffle()
    assert legal_swap_mask(env.board).any() and not match_mask(env.board).any()


def test_board_without_moves_is_rejected_by_set_board():
    stuck = [[1, 2, 1, 2], [3, 4, 3, 4], [1, 2, 1, 2], [3, 4, 3, 4]]
    with pytest.raises(ValueError, match="no legal swap"):
        env_with(stuck, colours=2, shapes=2)
    with pytest.raises(ValueError, match="line of three"):
        env_with([[1, 1, 1, 2], [3, 4, 3, 4], [1, 2, 1, 2], [3, 4, 3, 4]], colours=2, shapes=2)


def test_text_format():
    env = env_with([[1, 2, 3, 4], [4, 1, 2, 3], [1, 2, 3, 4], [4, 1, 2, 1]], colours=2, shapes=2)
    assert env.text_observation().split("\n")[0] == "Red circle | Red square | Green circle | Green square"


def test_oracle_always_swaps_legally():
    from g1core.gym.policies import OraclePolicy
    from g1core.gym.protocol import play

    result = play("swap", OraclePolicy(), runs=2, steps=50, progress=False)
    assert result.scores == [100.0, 100.0]


def test_knobs():
    env = make_small("swap", size=6, colours=3, shapes=2)
    env.reset(seed=1)
    assert env.board.shape == (6, 6) and env.board.max() <= 6
    with pytest.raises(ValueError):
        make_small("swap", colours=1, shapes=2)
