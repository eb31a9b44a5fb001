"""GRPO stage: the reproducible state stream, scoring from exact states, presets, a real TRL run, resume."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from g1core import storage
from g1core.config import GRPO_PRESETS, ConfigError, GrpoConfig, load_config
from g1core.gym.policies import OraclePolicy
from g1core.gym.pool import EnvPool, state_seed
from g1core.models.loading import load_model
from g1core.stages import grpo

SCREEN = (112, 112)


def _stream(games=("2048", "swap"), rows=40, seed=3, weights=None) -> grpo.StateStream:
    return grpo.StateStream(EnvPool(list(games), 0, SCREEN), rows, seed, weights)


def test_state_stream_is_a_reproducible_function_of_the_row():
    a, b = _stream(), _stream()
    for i in (0, 7, 39):
        assert a.state(i).text == b.state(i).text and a.spec(i) == b.spec(i)
        spec = a.spec(i)
        again = EnvPool([str(spec)], 0, SCREEN).sample_state(spec, state_seed(3, i, str(spec)))
        assert again.text == a.state(i).text  # row -> spec and seed -> the pool's state, nothing else
    assert len({a.state(i).text for i in range(40)}) == 40  # every row its own state
    assert a.state(5).text != _stream(seed=4).state(5).text
    row = a[6]
    assert (
        row["row"] == 6
        and row["image"].size == SCREEN
        and row["prompt"][0]["content"][0] == {"type": "image"}
    )
    with pytest.raises(IndexError):
        a.state(40)


def test_state_stream_follows_game_weights():
    stream = _stream(rows=2000, weights={"2048": 3.0, "swap": 1.0})
    share = np.mean([stream.spec(i).game == "2048" for i in range(2000)])
    assert 0.72 < share < 0.78
    assert {s.game for s in map(_stream(rows=10, weights={"2048": 0, "swap": 1}).spec, range(10))} == {"swap"}
    with pytest.raises(ValueError, match="no weight for swap"):
        _stream(weights={"2048": 1.0})


def test_scorer_scores_each_answer_from_its_own_state():
    stream = _stream(rows=8)
    scorer = grpo.Scorer(stream, ["game", "format", "perception"])
    envs = []
    for i in range(4):
        st = stream.state(i)
        env = stream.pool.scratch(st.spec)
        env.set_state(st.state)
        envs.append(OraclePolicy(skill=1.0, seed=0).replies([env])[0])
    rows = [0, 0, 1, 1, 2, 3]
    replies = [envs[0], "no tags at all", envs[1], envs[1], envs[2], "<answer>garbage</answer>"]
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    game, fmt, perception = scorer.reward_functions()
    assert [f.__name__ for f in (game, fmt, perception)] == ["game", "format", "perception"]
    g = game(prompts=None, completions=completions, row=rows)
    assert fmt(prompts=None, completions=completions, row=rows) == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert perception(prompts=None, completions=completions, row=rows) == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    pool = stream.pool
    expected = [
        pool.score_group(stream.state(r), [x]).scores[0].parts["game"]
        for r, x in zip(rows, replies, strict=True)
    ]
    assert g == expected and g[1] == -1.0  # an unreadable move counts as illegal
    m = grpo.Scorer.metrics(scorer.tallies())
    assert m["perception_exact"] == pytest.approx(4 / 6)
    assert m["unparseable_rate"] == pytest.approx(2 / 6)
    assert m["reasoning_accuracy"] == pytest.approx(np.mean([x > 0 for x in (g[0], g[2], g[3], g[4])]))
    assert set(k for k in m if k.startswith("game_reward/")) == {
        f"game_reward/{s.game}" for s in map(stream.spec, range(4))
    }
    # a two-process run: each rank scores half the batch; their tallies added up give the whole batch's
    whole = scorer.tallies()
    halves = []
    for part in (slice(0, 4), slice(4, 6)):
        scorer.score(rows[part], completions[part])
        halves.append(scorer.tallies())
    assert set(halves[0]) == set(halves[1]) == set(whole)  # every game keyed on every rank
    added = {k: tuple(map(sum, zip(halves[0][k], halves[1][k], strict=True))) for k in whole}
    assert grpo.Scorer.metrics(added) == pytest.approx(m, nan_ok=True)
    assert grpo.Scorer.metrics(halves[1]) != pytest.approx(m, nan_ok=True)


def test_presets_and_overrides():
    assert GrpoConfig().recipe() == GRPO_PRESETS["paper"]
    assert GRPO_PRESETS["paper"]["beta"] == 0.01 and GRPO_PRESETS["paper"]["epsilon"] == 0.2
    dapo = GrpoConfig(preset="dapo", beta=0.02).recipe()
    assert dapo["loss_type"] == "dapo" and dapo["epsilon_high"] == 0.28 and dapo["beta"] == 0.02
    assert GrpoConfig(preset="dr-grpo").recipe()["scale_rewards"] == "none"
    with pytest.raises(ConfigError, match="multiple of batch_size"):
        load_config(None, ["grpo.states_per_step=3", "grpo.num_generations=5", "grpo.batch_size=4"])
    with pytest.raises(ConfigError, match="unknown reward component"):
        load_config(None, ["grpo.reward_weights={game: 1, speed: 2}"])
    with pytest.raises(ConfigError, match="num_generations"):
        load_config(None, ["grpo.num_generations=1"])


def test_recipe_and_entropy_bonus_reach_the_trainer(tmp_path):
    args = grpo.GrpoRun(_cfg(beta=0.1, entropy_coef=0.05), "x", work_dir=tmp_path)._training_args()
    assert (args.beta, args.entropy_coef, args.epsilon) == (0.1, 0.05, 0.2)
    assert args.gradient_accumulation_steps == 2  # 2 states x 2 answers in passes of 2: one optimizer step
    assert grpo.GrpoRun(_cfg(), "x", work_dir=tmp_path)._training_args().entropy_coef == 0.0  # paper: none
    with pytest.raises(ConfigError, match="entropy_coef"):
        load_config(None, ["grpo.entropy_coef=-1"])


def _cfg(tmp_path=None, **grpo_fields):
    base = {
        "gym": {"games": ["2048"], "screen_size": list(SCREEN)},
        "steps": 3,
        "states_per_step": 2,
        "num_generations": 2,
        "batch_size": 2,
        "max_new_tokens": 24,
        "learning_rate": 1e-3,
        "checkpoint_every": 2,
        "threads": 1,
    }
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    return grpo.GrpoRunConfig.model_validate({"model": {"pixels": pixels}, "grpo": {**base, **grpo_fields}})


class _Crash(Exception):
    pass


def test_grpo_trains_logs_every_metric_and_resumes_exactly(tmp_path, s3_prefix):
    cfg = _cfg()
    whole = grpo.run(cfg, str(tmp_path / "whole"), progress=False, work_dir=tmp_path / "w1")
    assert whole.steps == 3 and whole.states_seen == 6 and whole.answers_seen == 12
    assert [e["step"] for e in whole.history] == [1, 2, 3]
    for key in grpo.HISTORY_KEYS:
        if key not in ("reasoning_accuracy",):  # NaN-free only when some perception is exact
            assert key in whole.history[0], key
    assert "game_reward/2048" in whole.history[0]
    split = whole.history[0]
    parts = sum(split[f"time/{k}"] for k in ("sampling", "generation", "scoring", "update"))
    assert parts == pytest.approx(split["time/step"], rel=1e-6)
    model, processor = load_model(storage.local_path(whole.model_uri))
    assert model.config.model_type == "qwen2_5_vl" and processor.tokenizer is not None
    trained = load_file(storage.local_path(whole.model_uri) / "model.safetensors")
    base = load_file(storage.local_path(grpo.GrpoRun(cfg, "x").start_model_path()) / "model.safetensors")
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # the update moved the weights

    # killed after step 2 (checkpoint at 2, in S3), then started afresh on another machine
    out = f"{s3_prefix}/grpo"
    crashing = grpo.GrpoRun(cfg, out, progress=False, work_dir=tmp_path / "w2")

    def crash_after_2(metrics, step):
        if step >= 3:
            raise _Crash(step)

    crashing.emit = crash_after_2
    with pytest.raises(_Crash):
        crashing.run()
    assert storage.read_bytes(f"{out}/checkpoints/LATEST").decode() == "checkpoint-2"
    resumed = grpo.run(cfg, out, progress=False, work_dir=tmp_path / "w3")
    assert resumed.resumed_from_step == 2 and resumed.steps == 3
    assert resumed.history[-1]["rewards/game/mean"] == whole.history[-1]["rewards/game/mean"]
    local = storage.get_dir(resumed.model_uri, tmp_path / "resumed-model")
    again = load_file(local / "model.safetensors")
    assert all(torch.equal(trained[k], again[k]) for k in trained)  # same states, same samples, same update
    done = grpo.run(cfg, out, progress=False, work_dir=tmp_path / "w4")
    assert done.to_dict() == json.loads(storage.read_bytes(f"{out}/result.json"))


def test_bench_grpo_trains_both_branches_and_scores_every_player(tmp_path):
    from g1core.bench.grpo import bench_grpo
    from g1core.gym.rewards import parse_weights
    from g1core.stages.learning import edge_mean as _edge_mean  # the bench's first/last-tenth mean

    assert _edge_mean([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], first=True) == 1.5
    assert _edge_mean([1.0, 2.0, 3.0], first=False) == 3.0
    weights = parse_weights(["survival=2", "format=0.5"])
    assert weights == {"game": 1.0, "format": 0.5, "perception": 0.0, "survival": 2.0, "legal": 0.0}
    for bad in (["survival"], ["survival=much"], ["speed=1"]):
        with pytest.raises(ValueError, match="NAME=WEIGHT|unknown reward"):
            parse_weights(bad)
    small = {"states_per_step": 2, "num_generations": 2, "batch_size": 4, "steps": 2}
    small["reward_weights"] = weights
    small["gym"] = {"warmup": {"2048": 5}, "warmup_draw": "uniform"}  # merged into the bench's gym section
    quick_sft = {"heldout_per_game": 2, "eval_max_new_tokens": 8}
    out = bench_grpo(
        "2048", minutes=5, sft_minutes=0.05, states=40, protocol_runs=2, protocol_steps=2,
        work_dir=tmp_path, grpo_overrides=small, sft_overrides=quick_sft,
    )  # fmt: skip
    assert out["steps_sft_start"] == out["steps_base_start"] == 2
    assert len(out["game_reward_series_sft_start"]) == 2
    assert out["game_reward_first"] == out["game_reward_series_sft_start"][0]
    assert out["game_reward_last"] == out["game_reward_series_sft_start"][-1]
    players = {"random", "teacher", "base", "sft", "g0", "g1", "reward_greedy"}
    assert set(out["score"]) == set(out["score_se"]) == players
    assert out["grpo"]["reward_weights"] == weights
    assert out["grpo"]["gym"] == {"games": ["2048"], "screen_size": [112, 112], **small["gym"]}
    split = out["time_split_sft_start"]
    assert 0 <= split["sampling_and_scoring_share"] <= 1 and split["time/step"] > 0
    assert out["wall_s"] > 0 and out["teacher_skill"] == 0.5
    assert -1 <= out["game_reward_random"] <= out["game_reward_teacher"] <= 1  # the oracle half merges
    assert out["game_reward_teacher"] <= out["game_reward_reward_greedy"] <= 1


def test_bench_grpo_flags_set_the_reward_and_the_warmup_of_the_grpo_states():
    from g1core.bench.grpo import grpo_overrides
    from g1core.cli import build_parser

    args = build_parser().parse_args(["bench", "grpo", "--game", "2048:size=2", "--reward", "legal=1"])
    assert grpo_overrides(args) == {
        "gym": {"warmup_draw": "fixed"},
        "reward_weights": {"game": 1.0, "format": 1.0, "perception": 0.0, "survival": 0.0, "legal": 1.0},
    }
    flags = ["bench", "grpo", "--game", "2048:size=2", "--warmup", "12", "--warmup-draw", "uniform"]
    assert grpo_overrides(build_parser().parse_args(flags)) == {
        "gym": {"warmup_draw": "uniform", "warmup": {"2048": 12}}
    }
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "grpo", "--warmup-draw", "sometimes"])
    flags = ["bench", "grpo", "--reward", "legal=1", "--set", "beta=0.1", "--set", "num_generations=16"]
    flags += ["--set", "gym.warmup.2048=12", "--set", "reward_weights.legal=2"]  # --set applies last
    assert grpo_overrides(build_parser().parse_args(flags)) == {
        "gym": {"warmup_draw": "fixed", "warmup": {"2048": 12}},
        "reward_weights": {"game": 1.0, "format": 1.0, "perception": 0.0, "survival": 0.0, "legal": 2},
        "beta": 0.1,
        "num_generations": 16,
    }


def test_bench_grpo_refuses_a_bad_setting_before_it_distils(tmp_path):
    from pydantic import ValidationError

    from g1core.bench.grpo import bench_grpo

    with pytest.raises(ValidationError, match="betta"):
        bench_grpo(work_dir=tmp_path, grpo_overrides={"betta": 0.1})
    assert not any(tmp_path.iterdir())  # nothing distilled
