"""The model layer on the real tiny Qwen2.5-VL: build, load (Auto classes, offline), inputs, policy, CLI."""

import argparse
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_small
from transformers import AutoModelForImageTextToText, AutoProcessor

from g1core.gym import policies
from g1core.models.budget import TINY_BUDGET, PixelBudget
from g1core.models.loading import (
    IGNORE_INDEX,
    apply_budget,
    build_inputs,
    count_image_tokens,
    load_model,
    load_processor,
    preflight,
    render_prompt,
)
from g1core.models.policy import HFPolicy
from g1core.models.processor import ensure_processor_support
from g1core.models.tiny import BUILD_INFO, build_tiny_model, cell_names, register_cli

IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_model(tiny_dir, dtype="float32", device="cpu")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_build_is_deterministic(tiny_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    files = _files(tiny_dir)
    assert {"model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja", BUILD_INFO} <= set(
        files
    )
    assert _files(again) == files
    assert _files(other)["model.safetensors"] != files["model.safetensors"]
    assert (
        _files(other)["tokenizer.json"] == files["tokenizer.json"]
    )  # the tokenizer does not depend on the seed
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny_model(again)


def test_loads_with_auto_classes_offline(tiny_dir):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    ensure_processor_support()
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert 500_000 <= sum(p.numel() for p in model.parameters()) <= 1_000_000
    vision, config, tokenizer = model.config.vision_config, model.config, processor.tokenizer
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    for key, token in [
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ]:
        assert getattr(config, key) == tokenizer.convert_tokens_to_ids(token), key
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert len(tokenizer) <= config.text_config.vocab_size
    # the trained tokenizer knows the games: a 2048 board row is short, and text round-trips exactly
    row = " 2 | - | 4 | 1024 \n"
    assert len(tokenizer(row)["input_ids"]) <= 14
    assert tokenizer.decode(tokenizer(row)["input_ids"]) == row


def test_chat_template_renders_the_image_slot(loaded):
    _, processor = loaded
    text = render_prompt(processor, "Play 2048.")
    assert text.count(IMAGE_SLOT) == 1
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith(f"<|im_start|>user\n{IMAGE_SLOT}Play 2048.<|im_end|>\n<|im_start|>assistant\n")


def test_every_board_cell_is_one_token_after_loading(loaded):
    """The trained pre-tokenizer survives AutoProcessor (Qwen2Tokenizer would restore digit splitting):
    each 2048 tile, the empty mark and each tile name is one token, so all cells read alike."""
    _, processor = loaded
    tokens = processor.tokenizer.tokenize
    for value in [2**k for k in range(1, 18)]:
        assert len(tokens(f" {value}")) == 1, value

    def pieces(row: str) -> list[str]:
        return [processor.tokenizer.convert_tokens_to_string([t]) for t in tokens(row)]

    assert pieces(" 1024 | - | 2 | 65536 ") == [" 1024", " |", " -", " |", " 2", " |", " 65536", " "]
    for name in cell_names():  # every multi-word cell name of every game, spaced or at a row's start
        assert len(tokens(f" {name}")) == 1 and len(tokens(name)) == 1, name
    assert pieces(" Steel blue triangle | - | Red circle ") == [
        " Steel blue triangle", " |", " -", " |", " Red circle", " ",
    ]  # fmt: skip
    assert "Dark green diamond" in cell_names() and "Green circle" in cell_names()


def test_112_screen_is_16_image_tokens(loaded):
    _, processor = loaded
    assert PixelBudget.of(processor) == TINY_BUDGET
    assert count_image_tokens(processor, (112, 112)) == 16
    env = make_small("2048")
    env.reset(seed=0)
    batch = build_inputs(processor, [env.render()], [env.prompt])
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 16
    assert count_image_tokens(processor, (840, 640)) == 54  # the paper's screen, shrunk into the budget


def test_budget_is_applied_everywhere(tiny_dir):
    small = PixelBudget(min_pixels=28 * 28, max_pixels=112 * 112)
    processor = load_processor(tiny_dir, small)
    assert PixelBudget.of(processor) == small
    env = make_small("swap", screen_size=(224, 224))
    env.reset(seed=0)
    batch = build_inputs(processor, [env.render()], [env.prompt])
    assert (
        count_image_tokens(processor, (224, 224))
        == 16
        == int((batch["input_ids"] == processor.image_token_id).sum())
    )
    apply_budget(processor, TINY_BUDGET)
    assert count_image_tokens(processor, (224, 224)) == 64
    with pytest.raises(ValueError, match="min_pixels"):
        PixelBudget(min_pixels=100, max_pixels=10)


def test_preflight_counts_image_tokens_and_refuses_to_cut_them(loaded):
    _, processor = loaded
    env = make_small("2048")
    needed = preflight(processor, (112, 112), env.prompt, max_prompt_tokens=4096)
    env.reset(seed=0)
    batch = build_inputs(processor, [env.render()], [env.prompt])
    assert needed == batch["input_ids"].shape[1]  # the preflight count is the real input length
    assert preflight(processor, (112, 112), env.prompt, max_prompt_tokens=needed) == needed
    with pytest.raises(ValueError, match="16 image tokens.*max_prompt_tokens=30"):
        preflight(processor, (112, 112), env.prompt, max_prompt_tokens=30)


def test_training_batch_has_answer_labels_and_a_loss(loaded):
    model, processor = loaded
    envs = [make_small("2048"), make_small("shisen-sho", screen_size=(168, 168))]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    answers = [policies.OraclePolicy().replies([env])[0] for env in envs]
    batch = build_inputs(processor, [e.render() for e in envs], [e.prompt for e in envs], answers)
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, answer in enumerate(answers):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        assert kept[-1] == end
        assert processor.tokenizer.decode(kept[:-1]) == answer
        assert torch.equal(batch["input_ids"][row, -len(kept) :], kept)  # labels line up with the inputs
    assert batch["attention_mask"][0, 0] == 0  # rows of different length: left padding
    model.zero_grad()
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # the vision tower trains too


def test_hf_policy_replies_for_2048_and_a_pair_game(loaded):
    model, processor = loaded
    kwargs = {"model": model, "processor": processor, "max_new_tokens": 12, "batch_size": 2, "seed": 3}
    games = [("2048", (112, 112))] * 3 + [("shisen-sho", (168, 168))]
    envs = [make_small(game, screen_size=size) for game, size in games]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    policy = HFPolicy(**kwargs)
    state = torch.random.get_rng_state()
    replies = policy.replies(envs)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    assert len(replies) == 4 and all(isinstance(r, str) for r in replies)
    assert policy.tokens_per_s > 0 and 0 < policy.generated_tokens <= 4 * 12
    assert HFPolicy(**kwargs).replies(envs) == replies  # same seed, same replies
    assert policy.replies(envs) == replies  # seeded by the states shown, not by how many calls came before
    envs[0].step(envs[0].legal_actions()[0])
    assert policy.replies(envs) != replies  # other states, other samples
    assert isinstance(policy, policies.Policy) and policy.name == "hf"


def test_try_replies_gives_none_for_a_failing_env(loaded):
    model, processor = loaded
    policy = HFPolicy(model=model, processor=processor, max_new_tokens=4, max_prompt_tokens=250)
    good = make_small("2048")
    no_screen = make_small("2048", render_mode=None)
    too_long = make_small(
        "swap", screen_size=(224, 224)
    )  # 64 image tokens + its prompt: 280 > 250 (2048: 228)
    for env in (good, no_screen, too_long):
        env.reset(seed=0)
    result = policy.try_replies([good, no_screen, too_long])
    assert isinstance(result[0], str) and result[1:] == [None, None]
    with pytest.raises(ValueError, match="max_prompt_tokens=250"):
        policy.replies([too_long])


def test_policy_and_loader_reject_bad_arguments(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="model_path, or both"):
        HFPolicy()
    with pytest.raises(ValueError, match="backend"):
        HFPolicy(model_path=tiny_dir, backend="tgi")
    with pytest.raises(ValueError, match="top_p"):
        HFPolicy(model_path=tiny_dir, top_p=0.0, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny_dir, dtype="int8", device="cpu")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ModuleNotFoundError, match="vllm"):
            HFPolicy(model_path=tiny_dir, backend="vllm")


def test_cli_builds_the_tiny_model(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="g1")
    register_cli(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli-tiny"
    args = parser.parse_args(["model", "tiny", "--out", str(out), "--seed", "2"])
    assert args.fn(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "model.safetensors").is_file() and '"seed": 2' in (out / BUILD_INFO).read_text()
    with pytest.raises(FileExistsError):
        args.fn(args)


def test_hub_style_folder_loads_without_torchvision(tiny_dir, tmp_path):
    """A folder laid out like the hub's Qwen2.5-VL (legacy preprocessor_config.json naming
    Qwen2_5_VLProcessor, chat_template.json) loads through load_processor, torchvision or not."""
    hub = tmp_path / "hub-style"
    shutil.copytree(tiny_dir, hub)
    (hub / "chat_template.json").write_text(
        json.dumps({"chat_template": (hub / "chat_template.jinja").read_text()})
    )
    image = json.loads((hub / "processor_config.json").read_text())["image_processor"]
    del image["size"]
    legacy = {**image, "min_pixels": 3136, "max_pixels": 12845056, "processor_class": "Qwen2_5_VLProcessor"}
    (hub / "preprocessor_config.json").write_text(json.dumps(legacy))
    for name in ("processor_config.json", "chat_template.jinja"):
        (hub / name).unlink()
    processor = load_processor(hub)
    assert PixelBudget.of(processor) == PixelBudget(3136, 12845056)
    assert count_image_tokens(processor, (840, 640)) == 30 * 23  # 840x644 after Qwen's resize
    assert render_prompt(processor, "x").count(IMAGE_SLOT) == 1
