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
