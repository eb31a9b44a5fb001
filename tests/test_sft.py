"""SFT stage: data mix and split, answer-only labels, training through TRL, checkpoints and exact resume."""

import json

import pytest
import torch
from conftest import distill_oracle_data
from safetensors.torch import load_file

from g1core import storage
from g1core.bench import register_cli
from g1core.config import ConfigError
from g1core.models.loading import IGNORE_INDEX, load_model
from g1core.stages import distill, sft

SCREEN = 112


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """A small oracle-teacher data set: 2048 and Swap states at 112x112 (distilled for real)."""
    return distill_oracle_data(tmp_path_factory.mktemp("sft-data") / "data", ["2048", "swap"], 24, SCREEN)


def _cfg(**sft_fields) -> sft.SftRunConfig:
    base = {"batch_size": 4, "heldout_per_game": 4, "eval_every": 0, "checkpoint_every": 3, "log_every": 2}
    return sft.SftRunConfig.model_validate({"sft": {**base, **sft_fields}})


def _rows(n: int, spec: str) -> list[dict]:
    return [{"spec": spec, "game": spec, "seed": i, "id": f"{spec}/{i}/0"} for i in range(n)]


def test_mix_follows_weights_and_is_reproducible():
    rows = _rows(10, "2048") + _rows(30, "swap")
    plain = sft.mix(rows, {}, 40, seed=1)
    assert sorted(r["id"] for r in plain) == sorted(r["id"] for r in rows)  # empty weights: one epoch
    weighted = sft.mix(rows, {"2048": 3.0, "swap": 1.0}, 100, seed=1)
    assert sum(r["game"] == "2048" for r in weighted) == 75
    counts = {r["id"]: 0 for r in rows[:10]}
    for r in weighted:
        if r["game"] == "2048":
            counts[r["id"]] += 1
    assert set(counts.values()) <= {7, 8}  # each sample taken once per pass, passes kept whole
    assert [r["id"] for r in sft.mix(rows, {"2048": 3.0, "swap": 1.0}, 100, seed=1)] == [
        r["id"] for r in weighted
    ]
    assert [r["id"] for r in sft.mix(rows, {}, 40, seed=2)] != [r["id"] for r in plain]
    with pytest.raises(ValueError, match="no weight for swap"):
        sft.mix(rows, {"2048": 1.0}, 10, seed=0)


def test_heldout_states_never_train():
    rows = [dict(r, id=f"{r['id']}/{k}") for r in _rows(20, "2048") for k in range(3)]  # 3 answers a state
    train, heldout = sft.split_heldout(rows, per_game=5, seed=0)
    held = {r["seed"] for r in heldout}
    assert len(heldout) == 5 and len(held) == 5
    assert not held & {r["seed"] for r in train} and len(train) == 45
    assert sft.split_heldout(rows, per_game=5, seed=0)[1] == heldout


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="game_weights"):
        sft.SftConfig(game_weights={"2048": -1.0})
    with pytest.raises(ValueError, match="learning_rate"):
        sft.SftConfig(learning_rate=0)
    with pytest.raises(ValueError, match="extra"):
        sft.SftConfig(lerning_rate=1e-3)
    assert ConfigError  # the pipeline config reports these by field name once the lead adds the section


def test_labels_cover_the_answer_only(dataset):
    from g1core.policies import resolve_model

    _, processor = load_model(resolve_model("tiny"))
    rows = distill.load_manifest(dataset)[:3]
    root = storage.local_path(dataset)
    batch = sft.Collator(processor, sft.ImageCache(root), rows)([{"row": i} for i in range(3)])
    for i, row in enumerate(rows):
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        assert processor.tokenizer.decode(labelled) == row["answer"] + "<|im_end|>"
        assert batch["input_ids"][i][-len(labelled) :].tolist() == labelled.tolist()


class _Crash(RuntimeError):
    pass


def test_trains_logs_and_resumes_to_the_same_weights(dataset, tmp_path, s3_prefix):
    cfg = _cfg(learning_rate=1e-3, samples=36, game_weights={"2048": 2.0, "swap": 1.0}, eval_every=3)
    seen: list[tuple[int, dict]] = []
    whole = sft.run(
        cfg, dataset, str(tmp_path / "whole"), progress=False,
        on_metrics=lambda m, step: seen.append((step, m)), work_dir=tmp_path / "w1",
    )  # fmt: skip
    assert whole.steps == 9 and whole.samples_seen == 36 and whole.resumed_from_step == 0
    assert [e["step"] for e in whole.history] == [0, 3, 6, 9]
    losses = [m["train.loss"] for _, m in seen if "train.loss" in m]
    assert losses[-1] < losses[0]
    assert any("train.tokens_per_s" in m and "train.learning_rate" in m for _, m in seen)
    assert {"heldout.perception_exact", "heldout.format_rate", "heldout.swap.perception_exact"} <= {
        k for _, m in seen for k in m
    }
    metrics = sft.metrics(whole)
    assert metrics["steps"] == 9 and 0 <= metrics["heldout.format_rate"] <= 1

    # the final model is Hugging Face format with its processor, and loads through the model layer
    model, processor = load_model(storage.local_path(whole.model_uri))
    assert processor.image_processor.size["longest_edge"] == cfg.model.pixels.max_pixels
    assert model.config.model_type == "qwen2_5_vl"

    # the same run, killed after step 4 (checkpoint at 3) with its output in S3, then started afresh
    out = f"{s3_prefix}/sft"

    def crash_at_4(metrics, step):
        if step >= 4:
            raise _Crash(step)

    crashing = sft.SftRun(cfg, dataset, out, progress=False, work_dir=tmp_path / "w2")
    crashing.emit = lambda m, step: crash_at_4(m, step)  # an exception from inside the training loop
    with pytest.raises(_Crash):
        crashing.run()
    assert storage.read_bytes(f"{out}/checkpoints/LATEST").decode() == "checkpoint-3"
    assert not storage.exists(f"{out}/{sft.RESULT}")
    resumed = sft.run(cfg, dataset, out, progress=False, work_dir=tmp_path / "w3")  # a fresh machine
    assert resumed.resumed_from_step == 3 and resumed.steps == 9
    assert [e["step"] for e in resumed.history] == [0, 3, 6, 9]
    assert resumed.final == whole.final
    local = storage.get_dir(resumed.model_uri, tmp_path / "resumed-model")
    a = load_file(storage.local_path(whole.model_uri) / "model.safetensors")
    b = load_file(local / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run is not trained again
    again = sft.run(cfg, dataset, out, progress=False, work_dir=tmp_path / "w4")
    assert again.to_dict() == json.loads(storage.read_bytes(f"{out}/{sft.RESULT}"))


def test_time_budget_excludes_evaluations_and_cools_the_learning_rate_down(dataset, tmp_path):
    assert sft.cooldown_factor(30, 100, 0.5) == 1.0 and sft.cooldown_factor(75, 100, 0.5) == 0.5
    assert sft.cooldown_factor(120, 100, 0.5) == 0.0
    budget = 0.1  # minutes
    cfg = _cfg(
        learning_rate=1e-3,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        samples=4000,
        log_every=1,
        max_train_minutes=budget,
        time_cooldown=0.5,
    )
    seen: list[tuple[int, float]] = []
    result = sft.run(
        cfg, dataset, str(tmp_path / "out"), progress=False, work_dir=tmp_path / "w",
        on_metrics=lambda m, step: seen.extend((step, m[k]) for k in m if k == "train.learning_rate"),
    )  # fmt: skip
    assert 0 < result.steps < 1000 and result.eval_seconds > 0  # stopped by time; evaluated before and after
    assert budget * 60 <= result.train_seconds < budget * 60 + 5
    lrs = [lr for _, lr in sorted(seen)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < 0.3e-3
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:], strict=False))  # falls, never rises
    with pytest.raises(ValueError, match="time_cooldown needs max_train_minutes"):
        sft.SftConfig(time_cooldown=0.2)


def test_unknown_games_and_missing_data_are_named(dataset, tmp_path):
    with pytest.raises(ValueError, match="no samples of sft.games"):
        sft.run(_cfg(games=["shisen-sho"]), dataset, str(tmp_path / "o"), progress=False, work_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no manifest.jsonl"):
        sft.run(_cfg(), str(tmp_path / "nothing"), str(tmp_path / "o"), progress=False, work_dir=tmp_path)


def test_bench_cli_parses():
    import argparse

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "sft", "--json", "--game", "swap", "--minutes", "0.5"])
    assert args.game == "swap" and args.json and args.minutes == 0.5 and callable(args.fn)
    assert args.mix == [] and args.warmup is None
    args = parser.parse_args(["bench", "sft", "--game", "swap:size=4", "--mix", "2048", "--warmup", "0"])
    assert args.mix == ["2048"] and args.warmup == 0


def test_bench_sft_mix_reports_the_main_game_and_each_game(tmp_path):
    """A mix trains both games on the main game's screen; warm-up 0 distils fresh boards."""
    from g1core.bench.sft import bench_sft

    quick = {"heldout_per_game": 2, "eval_max_new_tokens": 8, "eval_every": 0}
    out = bench_sft(
        "swap:size=4", minutes=0.05, states=12, protocol_runs=0, work_dir=tmp_path,
        sft_overrides=quick, mix=["2048"], warmup=0,
    )  # fmt: skip
    assert out["game"] == "swap:size=4" and out["mix"] == ["2048"] and out["screen"] == [112, 112]
    assert set(out["by_game"]) == {"swap", "2048"}
    assert out["perception_exact_after"] == out["by_game"]["swap"]["perception_exact"]
    assert set(out["curve"][-1]["by_game"]) == {"swap", "2048"}
    rows = distill.load_manifest(str(tmp_path / "data"))
    boards = [r["text_observation"] for r in rows if r["game"] == "2048"]
    assert len(boards) == 12 and all(b.count("-") == 14 for b in boards)  # two tiles: fresh boards
    with pytest.raises(ValueError, match="each game once"):
        bench_sft("2048", mix=["2048:size=5"], protocol_runs=0)


def test_answer_window_loss_matches_trl_and_its_gradients(dataset, tmp_path):
    """On CPU the LM head runs on the answer columns only; loss and gradients equal TRL's fused head."""
    from datasets import Dataset
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    from g1core.policies import resolve_model

    model, processor = load_model(resolve_model("tiny"))
    rows = distill.load_manifest(dataset)[:6]  # 2048 and Swap answers: different lengths in one batch
    collate = sft.Collator(processor, sft.ImageCache(storage.local_path(dataset)), rows)
    args = TrlSFTConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", remove_unused_columns=False,
        max_length=None, dataset_kwargs={"skip_prepare_dataset": True},
    )  # fmt: skip
    trainer = sft._trainer_class()(
        model=model,
        args=args,
        data_collator=collate,
        train_dataset=Dataset.from_dict({"row": list(range(len(rows)))}),
        processing_class=processor,
    )
    batch = collate([{"row": i} for i in range(len(rows))])
    tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert batch["labels"][:, 0].eq(IGNORE_INDEX).all() and tokens > 100

    def loss_and_grads(compute):
        model.zero_grad()
        loss = compute(trainer, model, dict(batch), num_items_in_batch=torch.tensor(tokens))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ours, ours_grads = loss_and_grads(type(trainer).compute_loss)
    theirs, their_grads = loss_and_grads(SFTTrainer.compute_loss)
    assert ours == pytest.approx(theirs, rel=1e-5) and ours > 1.0  # random weights: far from zero
    assert ours_grads.keys() == their_grads.keys()
    for name, grad in ours_grads.items():
        assert torch.allclose(grad, their_grads[name], atol=1e-6, rtol=1e-4), name
    metrics = trainer._metrics["train"]
    assert 0.0 <= metrics["mean_token_accuracy"][0] <= 1.0 and metrics["entropy"][0] > 0
