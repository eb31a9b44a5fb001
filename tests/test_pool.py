"""The pool: reproducible RL states, parallel-action scoring from one exact state, reward components."""

import pickle

import numpy as np
import pytest

from g1core.gym import answer, rewards
from g1core.gym.pool import EnvPool, GameSpec, state_seed

SMALL = (112, 112)


def test_game_spec_parsing():
    assert GameSpec.parse("shisen-sho:size=8,colours=4") == GameSpec(
        "shisen-sho", (("colours", 4), ("size", 8))
    )
    assert GameSpec.parse({"game": "swap", "size": 6}) == GameSpec("swap", (("size", 6),))
    assert str(GameSpec.parse("2048:size=5")) == "2048:size=5"
    with pytest.raises(ValueError, match="key=value"):
        GameSpec.parse("2048:size")
    with pytest.raises(ValueError, match="'game'"):
        GameSpec.parse({"size": 4})


def test_sample_states_are_reproducible_from_game_difficulty_and_seed():
    pool = EnvPool(["2048", "shisen-sho:size=4", "swap"], screen_size=SMALL)
    first = pool.sample_states(9, seed=3)
    again = EnvPool(["2048", "shisen-sho:size=4", "swap"], screen_size=SMALL).sample_states(9, seed=3)
    assert [s.text for s in first] == [s.text for s in again]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    assert [s.spec.game for s in first] == ["2048", "shisen-sho", "swap"] * 3
    # one state alone, from its own (spec, seed)
    lone = EnvPool(["swap"], screen_size=SMALL).sample_state(first[4].spec, first[4].seed)
    assert lone.text == first[4].text and lone.seed == state_seed(3, 4)
    assert pool.sample_states(3, seed=4)[0].text != first[0].text


def test_warmup_moves_are_played():
    pool = EnvPool(["2048"], screen_size=SMALL)
    s = pool.sample_states(4, seed=0)
    # 100 random moves fill a 4x4 board with far more than the two starting tiles
    assert all((st.state.board > 0).sum() > 4 for st in s)
    assert all(st.state.fields[2] > 50 for st in s)  # moves played
    cold = EnvPool(["2048"], screen_size=SMALL, warmup={"2048": 0}).sample_states(4, seed=0)
    assert all((st.state.board > 0).sum() == 2 for st in cold)


def test_uniform_warmup_spans_the_game_where_a_fixed_one_only_reaches_its_end():
    # 100 random moves always end a 2x2 game, so every fixed-warm-up state is the one before the end
    fixed = EnvPool(["2048:size=2"], screen_size=SMALL).sample_states(200, seed=0)
    uniform = EnvPool(["2048:size=2"], screen_size=SMALL, warmup={"2048": 12}, warmup_draw="uniform")
    spread = uniform.sample_states(200, seed=0)
    fixed_moves = [st.state.fields[2] for st in fixed]
    spread_moves = [st.state.fields[2] for st in spread]
    assert min(spread_moves) == 0 and len(set(spread_moves)) >= 10  # fresh boards too, and all between
    assert np.mean(spread_moves) < np.mean(fixed_moves)
    assert [s.text for s in spread] == [s.text for s in uniform.sample_states(200, seed=0)]  # reproducible
    # "fixed" (the paper's) is the default
    assert [s.text for s in fixed] == [
        s.text for s in EnvPool(["2048:size=2"], screen_size=SMALL, warmup_draw="fixed").sample_states(200, 0)
    ]
    with pytest.raises(ValueError, match="warmup_draw"):
        EnvPool(["2048"], warmup_draw="random")


def test_score_group_restores_the_exact_state_for_every_reply():
    pool = EnvPool(["2048"], screen_size=SMALL)
    state = pool.sample_states(1, seed=5)[0]
    reply = answer.compose(state.text, "t", "0")
    group = pool.score_group(state, [reply] * 5)
    outcomes = [s.outcome for s in group.scores]
    assert len(set(outcomes)) == 1  # same move from the same state (spawn RNG included): same result
    env = pool.scratch("2048")
    env.set_state(state.state)
    out = env.apply(0)
    assert outcomes[0] == out


def test_score_group_components_and_weights():
    pool = EnvPool(["shisen-sho"], screen_size=SMALL, weights={"game": 1.0, "format": 1.0, "perception": 0.5})
    state = pool.sample_states(1, seed=2)[0]
    env = pool.scratch("shisen-sho")
    env.set_state(state.state)
    legal = env.format_action(env.legal_actions()[0])
    replies = [
        answer.compose(state.text, "t", legal),  # legal, well formed, exact perception
        answer.compose("wrong board", "t", legal),  # legal, no perception
        f"<answer>{legal}</answer>",  # legal, not well formed
        answer.compose(state.text, "t", "(0, 0) (0, 0)"),  # illegal
        answer.compose(state.text, "t", "no idea"),  # unreadable
    ]
    group = pool.score_group(state, replies)
    parts = [s.parts for s in group.scores]
    assert {p.pop("survival") for p in parts} == {0.0}  # a full board: no move can end the game
    assert [p.pop("legal") for p in parts] == [0.0, 0.0, 0.0, -1.0, -1.0]  # the illegal and the unreadable
    assert parts[0] == {"game": 1.0, "format": 1.0, "perception": 1.0}
    assert parts[1] == {"game": 1.0, "format": 1.0, "perception": 0.0}
    assert parts[2] == {"game": 1.0, "format": 0.0, "perception": 0.0}
    assert parts[3] == {"game": -1.0, "format": 1.0, "perception": 1.0}
    assert parts[4] == {"game": -1.0, "format": 1.0, "perception": 1.0}
    assert group.rewards == [2.5, 2.0, 1.0, 0.5, 0.5]
    assert (group.unparseable, group.illegal) == (1, 1)


def test_survival_reward_is_minus_one_only_for_the_move_that_loses_the_game():
    pool = EnvPool(["2048:size=2"], screen_size=SMALL, weights={"game": 1.0, "survival": 2.0})
    env = pool.scratch("2048:size=2")
    env.set_board(" 2 | 4 \n 8 | 8 ")  # left merges the 8s; the spawn decides whether a move is left
    lost = set()
    for seed in range(40):
        env.reset(seed=seed)
        env.set_board(" 2 | 4 \n 8 | 8 ")
        scored = pool.score_group(env.get_state(), ["<answer>3</answer>", "<answer>1</answer>"]).scores
        for s in scored:
            assert s.parts["survival"] == (-1.0 if s.outcome.terminated else 0.0)
            assert s.reward == s.parts["game"] + 2.0 * s.parts["survival"]
            lost.add(s.outcome.lost)
    assert lost == {True, False}  # a spawn 2 next to the 16 ends it (2 4 / 16 2), a 4 does not
    env.set_board(" 2 | 4 \n 8 | 8 ")  # the pool scores on this same scratch env: set the board again
    up = pool.score_group(env.get_state(), ["<answer>0</answer>"]).scores[0]  # up changes nothing here
    assert (up.parts["game"], up.parts["legal"], up.parts["survival"]) == (-1.0, -1.0, 0.0)
    assert rewards.survival_reward("no move", "", None) == 0.0


def test_unknown_reward_weight_is_an_error():
    with pytest.raises(ValueError, match="unknown reward"):
        EnvPool(["2048"], weights={"game": 1.0, "style": 1.0})


def test_custom_reward_component_registered_by_name():
    @rewards.register("short")
    def short(reply, truth, outcome):
        return 1.0 if len(reply) < 40 else 0.0

    try:
        pool = EnvPool(["2048"], screen_size=SMALL, weights={"game": 1.0, "short": 2.0})
        state = pool.sample_states(1, seed=0)[0]
        scored = pool.score_group(state, ["<answer>0</answer>"]).scores[0]
        assert scored.parts["short"] == 1.0 and scored.reward == scored.parts["game"] + 2.0
    finally:
        del rewards.REWARDS["short"]


def test_sampled_state_pickles_and_scores_from_a_game_state():
    pool = EnvPool(["swap"], screen_size=SMALL)
    state = pool.sample_states(1, seed=8)[0]
    snapshot = pickle.loads(pickle.dumps(state.state))
    env = pool.scratch("swap")
    env.set_state(snapshot)
    move = env.format_action(env.legal_actions()[0])
    by_state = pool.score_group(state, [f"<answer>{move}</answer>"]).rewards
    by_snapshot = (
        EnvPool(["swap"], screen_size=SMALL).score_group(snapshot, [f"<answer>{move}</answer>"]).rewards
    )
    assert by_state == by_snapshot == [1.0]
    assert np.array_equal(pool.image(snapshot), state.image)


def test_mixed_pool_copies_and_step_replies():
    pool = EnvPool(["2048", "swap"], num_envs=4, screen_size=SMALL)
    assert [s.game for s in pool.specs_of_envs] == ["2048", "swap", "2048", "swap"]
    frames = pool.reset(seed=10, image=True)
    assert all(f.shape == (112, 112, 3) for f in frames)
    texts = [e.text_observation() for e in pool.envs]
    results = pool.step_replies(["<answer>nonsense</answer>"] * 4)
    assert all(not r.parsed and r.played is None for r in results)
    assert [e.text_observation() for e in pool.envs] == texts  # unreadable = illegal: nothing moved
    results = pool.step_replies(["garbage", "garbage"], indices=[0, 2], unreadable="random")
    assert all(not r.parsed and r.played is not None and r.parts["game"] == -1.0 for r in results)
    with pytest.raises(ValueError, match="replies"):
        pool.step_replies(["x"])
