"""Configs: presets load, overrides apply, and a bad config fails before any work, naming the field."""

import pytest

from g1core.config import ConfigError, config_from_json, config_to_json, load_config


def test_presets_load():
    tiny = load_config("local-tiny")
    paper = load_config("g1-paper")
    assert tiny.model.name_or_path == "tiny" and tiny.distill.gym.screen_size == (112, 112)
    assert paper.model.name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert paper.distill.states_per_game == 1000 and paper.evaluate.runs == 10 and paper.evaluate.steps == 100
    assert paper.distill.teacher.kind == "openai" and paper.distill.teacher.api_key_env == "ANTHROPIC_API_KEY"


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg.distill.keep_if == ["well_formed", "legal"]
    assert [p.label for p in cfg.evaluate.policies] == ["random", "oracle"]


def test_overrides_are_read_as_yaml():
    cfg = load_config(
        "local-tiny",
        [
            "distill.states_per_game=7",
            "distill.gym.games=[2048, swap]",
            "evaluate.policies.1.skill=0.25",
            "model.dtype=bfloat16",
        ],
    )
    assert cfg.distill.states_per_game == 7
    assert cfg.distill.gym.games == ["2048", "swap"]  # a bare 2048 is a game name, not a number
    assert cfg.evaluate.policies[1].label == "oracle@0.25"
    assert cfg.model.dtype == "bfloat16"


@pytest.mark.parametrize(
    "override, field",
    [
        ("distill.states_per_game=0", "distill.states_per_game"),
        ("distill.gym.games=[chess]", "distill.gym.games"),
        ("distill.teacher.kind=openai", "distill.teacher"),
        ("distill.bogus=1", "distill.bogus"),
        ("model.pixels.min_pixels=999999999", "model.pixels"),
        ("evaluate.policies.0.skill=3", "evaluate.policies.0.skill"),
        ("distill.keep_if=[pretty]", "distill.keep_if.0"),
        ("evaluate.policies.9.skill=1", "evaluate.policies.9"),
        ("distill.states_per_game.x=1", "distill.states_per_game"),
        ("grpo.gym.warmup_draw=sometimes", "grpo.gym.warmup_draw"),
    ],
)
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config("local-tiny", [override])
    assert field in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["distill.states_per_game"])


def test_json_round_trip():
    cfg = load_config("g1-paper")
    assert config_from_json(config_to_json(cfg)) == cfg


def test_training_sections_reject_negative_or_all_zero_game_weights():
    for section in ("sft", "grpo"):
        with pytest.raises(ConfigError, match="must be >= 0"):
            load_config(None, [f"{section}.game_weights={{'2048': -1}}"])
        with pytest.raises(ConfigError, match="at least one weight"):
            load_config(None, [f"{section}.game_weights={{'2048': 0}}"])
    assert load_config(None, ["sft.game_weights={'2048': 0, 'swap': 1}"]).sft.game_weights["swap"] == 1


def test_local_learn_is_the_grpo_benchs_recipe():
    """configs/local-learn.yaml says it runs `g1 bench grpo --reward survival=2 --reward legal=1 --set
    beta=0.3` through the pipeline, with three changes it names: the rest must stay the bench's."""
    from g1core.bench.grpo import BENCH_GRPO, BENCH_GRPO_GAME, TEACHER_SKILL
    from g1core.bench.settings import BENCH_GAMES, BENCH_SFT, bench_screen
    from g1core.gym.pool import GameSpec

    cfg = load_config("local-learn")
    spec = GameSpec.parse(BENCH_GRPO_GAME)
    screen = bench_screen(spec)
    assert cfg.distill.gym.games == cfg.grpo.gym.games == cfg.evaluate.games == [BENCH_GRPO_GAME]
    assert cfg.distill.gym.screen_size == cfg.grpo.gym.screen_size == cfg.evaluate.screen_size == screen
    assert cfg.distill.teacher.skill == TEACHER_SKILL and cfg.distill.teacher.kind == "oracle"
    assert cfg.model.name_or_path == "tiny"
    assert cfg.model.pixels.min_pixels == load_config(None).model.pixels.min_pixels  # the bench's screen size
    # what the preset changes, each said in its comments: SFT shorter, GRPO's rate doubled and its time longer
    assert cfg.sft.max_train_minutes < BENCH_GAMES[spec.game].minutes
    assert (cfg.grpo.learning_rate, cfg.grpo.max_train_minutes) == (2 * BENCH_GRPO["learning_rate"], 15)
    for key, value in BENCH_SFT.items():
        if key not in ("eval_every", "log_every"):  # how often it measures, not how it trains
            assert getattr(cfg.sft, key) == value, key
    for key, value in BENCH_GRPO.items():
        if key != "learning_rate":
            assert getattr(cfg.grpo, key) == value, key
    assert cfg.grpo.reward_weights == {"game": 1, "format": 1, "perception": 0, "survival": 2, "legal": 1}
    assert cfg.grpo.recipe()["beta"] == 0.3
    assert [p.label for p in cfg.evaluate.policies] == [
        "random", "oracle@0.5", "base-tiny", "sft-tiny", "g0-tiny", "g1-tiny"
    ]  # fmt: skip
