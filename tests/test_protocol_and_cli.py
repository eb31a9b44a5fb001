"""The evaluation protocol, the policies, and the g1 gym commands end to end."""

import json

import pytest
from PIL import Image

from g1core.cli import main
from g1core.gym import GAMES, make
from g1core.gym.policies import OraclePolicy, RandomPolicy, RewardGreedyPolicy, make_policy
from g1core.gym.protocol import play


def test_protocol_is_deterministic_and_scored_per_game():
    a = play("swap", OraclePolicy(skill=0.5, seed=1), runs=3, steps=20, seed=4, progress=False)
    b = play("swap", OraclePolicy(skill=0.5, seed=1), runs=3, steps=20, seed=4, progress=False)
    assert a.scores == b.scores and a.replies == 60
    assert all(0 <= s <= 100 for s in a.scores)  # swap: legal swaps per 100 steps


def test_skill_knob_makes_a_weaker_player():
    strong = play("shisen-sho", OraclePolicy(skill=1.0), runs=4, steps=60, progress=False)
    weak = play("shisen-sho", OraclePolicy(skill=0.3), runs=4, steps=60, progress=False)
    assert strong.mean > weak.mean and weak.illegal_rate > 0.3
    assert weak.format_rate == 1.0 and weak.perception_exact_rate == 1.0


def test_random_policy_is_near_the_paper_on_2048():
    result = play("2048", RandomPolicy(), runs=10, steps=100, progress=False)
    assert 450 < result.mean < 950  # paper: 701 (the spread of one run is ~150)
    assert result.format_rate == 0.0


def test_pair_game_runs_stop_at_episode_end():
    result = play("shisen-sho:size=4", OraclePolicy(), runs=2, steps=100, progress=False)
    assert result.scores == [8.0, 8.0] and result.replies == 2 * 8  # 16 tiles: 8 pairs, then it ends


def test_reward_greedy_plays_the_best_one_step_reward_and_leaves_the_env_as_it_was():
    env = make("2048", size=2, screen_size=(112, 112))
    env.reset(seed=3)
    env.set_board(" 2 | 2 \n 4 | - ")
    before = env.get_state()
    reply = RewardGreedyPolicy().replies([env])[0]
    assert env.get_state() == before and env.text_observation() in reply
    assert env.apply(env.parse_action(reply)).reward == 1.0  # a move that merges the 2s
    # +1 merge / -1 alone dies young on a 2x2 board; a penalty for the losing move keeps it alive
    paper = play("2048:size=2", RewardGreedyPolicy(), runs=20, steps=100, progress=False)
    weights = {"game": 1, "survival": 2}
    alive = play("2048:size=2", RewardGreedyPolicy(weights), runs=20, steps=100, progress=False)
    assert alive.mean > paper.mean + 15 and alive.illegal_rate == paper.illegal_rate == 0.0


def test_make_policy():
    assert make_policy("oracle", skill=0.5).name == "oracle@0.5"
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("genius")
    with pytest.raises(ValueError, match="skill"):
        OraclePolicy(skill=2)


def test_oracle_reply_is_well_formed_and_exact(capsys):
    for game in GAMES:
        env = make(game, screen_size=(112, 112))
        env.reset(seed=0)
        reply = OraclePolicy().replies([env])[0]
        assert env.text_observation() in reply
        assert env.apply(env.parse_action(reply)).legal


def test_cli_play_json(capsys):
    assert main(["gym", "play", "--game", "2048", "swap", "--runs", "2", "--steps", "5", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().split("\n")]
    assert [r["game"] for r in lines] == ["2048", "swap"] and all(len(r["scores"]) == 2 for r in lines)


def test_cli_play_reward_greedy(capsys):
    args = ["gym", "play", "--game", "2048:size=2", "--policy", "reward-greedy", "--reward", "survival=2"]
    assert main([*args, "--runs", "2", "--steps", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == "reward-greedy" and out["illegal_rate"] == 0.0 and out["format_rate"] == 1.0


def test_cli_play_table(capsys):
    assert (
        main(["gym", "play", "--game", "shisen-sho", "--policy", "oracle", "--runs", "1", "--steps", "3"])
        == 0
    )
    out = capsys.readouterr().out
    assert "shisen-sho" in out and "oracle" in out and "3.0" in out


def test_cli_show_png_and_gif(tmp_path, capsys):
    png = tmp_path / "board.png"
    assert main(["gym", "show", "--game", "swap", "--seed", "3", "-o", str(png)]) == 0
    assert Image.open(png).size == (640, 840)
    assert "|" in capsys.readouterr().out
    gif = tmp_path / "ep.gif"
    assert (
        main(
            ["gym", "show", "--game", "2048", "--episode", "--steps", "5", "--screen", "112", "-o", str(gif)]
        )
        == 0
    )
    img = Image.open(gif)
    assert img.n_frames == 6 and img.size == (112, 112)


def test_cli_takes_difficulty_knobs(tmp_path, capsys):
    png = tmp_path / "big.png"
    assert main(["gym", "show", "--game", "shisen-sho:size=16,colours=16", "-o", str(png)]) == 0
    assert len(capsys.readouterr().out.strip().split("\n")) == 16
    assert main(["gym", "play", "--game", "2048:size=16", "--runs", "1", "--steps", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["game"] == "2048:size=16"


def test_cli_bench_json(capsys):
    assert main(["gym", "bench", "--game", "2048", "--seconds", "0.2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"game", "env_steps_per_s", "score_group_ms", "sample_states_s"}
    assert result["env_steps_per_s"] > 0


def test_cli_bad_input_is_a_clear_error(caplog):
    assert main(["gym", "play", "--game", "chess", "--runs", "1", "--steps", "1"]) == 2
    assert "unknown game" in caplog.text
    assert main(["gym", "play", "--game", "2048", "--policy", "oracle", "--reward", "survival=1"]) == 2
    assert "reward-greedy only" in caplog.text
    assert main(["gym", "play", "--game", "2048", "--policy", "reward-greedy", "--reward", "survival"]) == 2
    assert "NAME=WEIGHT" in caplog.text


def test_every_command_and_option_says_what_it_does():
    """`g1 ... --help` explains every subcommand and every option (issue 19): none is left bare."""
    import argparse

    from g1core.cli import build_parser

    bare = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        bare.append(" ".join([*path, name]))
                    walk(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                bare.append(" ".join([*path, *action.option_strings]) or action.dest)

    walk(build_parser(), ["g1"])
    assert bare == []
