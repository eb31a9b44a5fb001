"""Shisen-Sho rules on hand-made boards: paths with at most two turns, the outer margin, blocking."""

import numpy as np
import pytest
from conftest import make_small

from g1core.gym.games.shisen_sho import connectable, padded

R, G, B, Y = "Red circle", "Green square", "Blue triangle", "Yellow star"


def env_with(rows, **knobs):
    env = make_small("shisen-sho", size=len(rows), **knobs)
    env.reset(seed=0)
    env.set_board("\n".join("|".join(f" {c} " if c else " - " for c in row) for row in rows))
    return env


def legal(env, *cells):
    state = env.get_state()
    out = env.apply(cells)
    env.set_state(state)
    return out.legal


def test_adjacent_and_straight_paths():
    env = env_with([[R, R, G, G], [B, 0, 0, B], [Y, Y, 0, 0], [0, 0, 0, 0]])
    assert legal(env, 0, 0, 0, 1)  # neighbours
    assert legal(env, 1, 0, 1, 3)  # straight across empty cells


def test_one_turn():
    env = env_with([[R, 0, 0, G], [B, B, 0, G], [Y, Y, R, 0], [0, 0, 0, 0]])
    assert legal(env, 0, 0, 2, 2)  # right along row 0, then down column 2


# Reds at (0, 0) and (2, 3): the only free path is down, along row 1, down (two turns).
Z_BOARD = [[R, Y, Y, G], [0, 0, 0, 0], [G, B, B, R], [Y, B, B, Y]]


def test_two_turns_inside_the_board():
    env = env_with(Z_BOARD)
    assert legal(env, 0, 0, 2, 3)
    assert legal(env, 0, 3, 2, 0)  # the greens: the mirror image


def test_three_turns_are_illegal():
    blocked = [row[:] for row in Z_BOARD]
    blocked[1][1] = blocked[1][2] = G  # row 1 is now closed; going round the margin needs three turns
    blocked[0][3], blocked[2][0] = G, G
    env = env_with(blocked)
    assert not legal(env, 0, 0, 2, 3)


def test_two_turns_through_the_outer_margin():
    env = env_with([[R, G, G, R], [B, B, Y, Y], [Y, Y, B, B], [G, G, 0, 0]])
    assert legal(env, 0, 0, 0, 3)  # up into the margin, across, down
    assert legal(env, 1, 0, 1, 1)
    assert not legal(env, 1, 0, 2, 3)  # boxed in: more than two turns


def test_left_margin():
    env = env_with([[R, G, G, 0], [Y, Y, B, B], [G, Y, Y, G], [R, 0, 0, 0]])
    assert legal(env, 0, 0, 3, 0)  # out to the left, down, back in


def test_blocked_straight_line():
    env = env_with([[G, G, Y, Y], [B, R, B, R], [G, G, Y, Y], [0, 0, 0, 0]])
    assert not legal(env, 1, 1, 1, 3)  # a blue between them, tiles above and below


def test_mismatched_or_same_or_empty_cells_are_illegal():
    env = env_with([[R, G, 0, 0], [R, G, 0, 0], [B, B, Y, Y], [0, 0, 0, 0]])
    assert not legal(env, 0, 0, 0, 1)  # different kinds
    assert not legal(env, 0, 0, 0, 0)  # same cell
    assert not legal(env, 0, 2, 0, 3)  # empty cells
    out = env.apply((0, 0, 0, 1))
    assert (out.raw_reward, out.reward, out.legal) == (-1, -1.0, False)


def test_legal_move_removes_both_and_scores_one():
    env = env_with([[R, R, 0, 0], [B, B, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    out = env.apply((0, 1, 0, 0))  # either order
    assert (out.raw_reward, out.reward, out.legal, out.terminated) == (1, 1.0, True, False)
    assert env.board[0, 0] == 0 and env.board[0, 1] == 0
    out = env.apply((1, 0, 1, 1))
    assert out.terminated and not env.board.any() and not out.lost  # a cleared board is won


def test_a_move_that_leaves_tiles_but_no_pair_loses_the_game():
    env = env_with([[B, B, 0, 0], [0, R, G, 0], [0, G, R, 0], [0, 0, 0, 0]])
    out = env.apply((0, 0, 0, 1))
    assert out.legal and out.terminated and out.lost


def test_episode_ends_when_no_legal_pair_remains():
    crossed = [[0, 0, 0, 0], [0, R, G, 0], [0, G, R, 0], [0, 0, 0, 0]]
    env = env_with(crossed)  # each pair needs three turns to meet
    assert env.terminated and env.legal_actions() == []
    env = env_with([[0, 0, 0, 0], [0, R, R, 0], [0, G, G, 0], [0, 0, 0, 0]])
    assert not env.terminated


def test_set_board_rejects_unreachable_counts():
    with pytest.raises(ValueError, match="not 2 or 4"):
        env_with([[R, R, R, 0], [0] * 4, [0] * 4, [0] * 4])


def test_connectable_matches_breadth_first_search():
    """The fast two-turn test agrees with a plain BFS over (cell, direction, turns) on random boards."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 7))
        board = (rng.random((n, n)) < 0.55).astype(int)
        grid = padded(board)
        tiles = [(r, c) for r in range(n) for c in range(n) if board[r, c]]
        for _ in range(6):
            if len(tiles) < 2:
                break
            i, j = rng.choice(len(tiles), 2, replace=False)
            (r1, c1), (r2, c2) = tiles[i], tiles[j]
            expect = bfs(grid, (r1 + 1, c1 + 1), (r2 + 1, c2 + 1))
            assert connectable(grid, r1 + 1, c1 + 1, r2 + 1, c2 + 1) == expect, (board, tiles[i], tiles[j])


def bfs(grid, a, b):
    h, w = len(grid), len(grid[0])
    dirs = ((1, 0), (-1, 0), (0, 1), (0, -1))
    frontier = [(a, d, 0) for d in range(4)]
    seen = set(frontier)
    while frontier:
        nxt = []
        for (r, c), d, turns in frontier:
            for nd, (dr, dc) in enumerate(dirs):
                t = turns + (nd != d)
                if t > 2:
                    continue
                rr, cc = r + dr, c + dc
                if not (0 <= rr < h and 0 <= cc < w):
                    continue
                if (rr, cc) == b:
                    return True
                if grid[rr][cc]:
                    continue
                key = ((rr, cc), nd, t)
                if key not in seen:
                    seen.add(key)
                    nxt.append(key)
        frontier = nxt
    return False


def test_every_kind_four_times_and_knobs():
    env = make_small("shisen-sho", size=8, colours=4, shapes=4)
    env.reset(seed=3)
    kinds, counts = np.unique(env.board, return_counts=True)
    assert len(kinds) == 16 and set(counts) == {4}
    names = {cell.strip() for row in env.text_observation().split("\n") for cell in row.split("|")}
    assert {n.split()[-1] for n in names} <= {"circle", "square", "triangle", "diamond"}
    with pytest.raises(ValueError, match="tile kinds"):
        make_small("shisen-sho", size=8, colours=2, shapes=2)
    with pytest.raises(ValueError, match="even"):
        make_small("shisen-sho", size=5)


def test_text_format_and_multiword_colours():
    env = env_with(
        [["Dark green cross", "Dark green cross", 0, 0], ["Steel blue star"] * 2 + [0, 0], [0] * 4, [0] * 4]
    )
    assert env.text_observation().split("\n")[0] == " Dark green cross | Dark green cross | - | - "
    with pytest.raises(ValueError, match="unknown tile"):
        env_with([["Grey cross"] * 2 + [0, 0], [0] * 4, [0] * 4, [0] * 4])


def test_oracle_clears_the_paper_board():
    from g1core.gym.policies import OraclePolicy
    from g1core.gym.protocol import play

    result = play("shisen-sho", OraclePolicy(), runs=3, steps=100, progress=False)
    assert result.scores == [18.0, 18.0, 18.0] and result.illegal_rate == 0.0


def test_safe_pairs_are_taken_without_search():
    from g1core.gym.games.shisen_sho import _safe_pair, legal_pairs

    env = env_with([[R, R, G, 0], [B, 0, G, B], [Y, Y, Y, Y], [G, G, 0, 0]])
    pairs = legal_pairs(env.board, env.tiles.kind)
    safe = _safe_pair(env.board, env.tiles.kind, pairs)
    assert safe == (0, 0, 0, 1)  # the last two reds
    # four yellows in a row: two disjoint legal pairs, so taking one is safe
    env = env_with([[G, B, G, B], [B, G, B, G], [Y, Y, Y, Y], [0, 0, 0, 0]])
    pairs = legal_pairs(env.board, env.tiles.kind)
    assert _safe_pair(env.board, env.tiles.kind, pairs)[0] == 2


def test_oracle_clears_bigger_boards_and_names_the_tiles():
    for seed in range(3):
        env = make_small("shisen-sho", size=8)
        env.reset(seed=seed)
        removed = 0
        while not env.terminated:
            action, why = env.oracle()
            assert env.tiles.name(int(env.board[action[0], action[1]])) in why
            removed += env.apply(action).legal
        assert removed == 32 and not env.board.any()


def test_prompt_lists_the_tile_names():
    prompt = make_small("shisen-sho", size=4, colours=3, shapes=2).prompt
    assert "Red, Green, Blue;" in prompt and "circle, square)" in prompt and "Yellow" not in prompt
