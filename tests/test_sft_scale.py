"""SFT scale-out and training options on CPU: DeepSpeed ZeRO-2/3 without compiled ops, checkpoints and exact
resume under DeepSpeed, two worker processes through the launch command, LoRA, a frozen vision tower."""

import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import distill_oracle_data
from safetensors.torch import load_file
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from g1core import distributed, storage
from g1core.config import CONFIG_DIR
from g1core.models.loading import load_model
from g1core.policies import resolve_model
from g1core.stages import sft

# Global batch 8 and 16 samples: 2 optimizer steps, in one process (batch 8) or in two (batch 4 each).
BASE = {
    "samples": 16,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "heldout_per_game": 2,
    "eval_every": 0,
    "eval_max_new_tokens": 8,
    "checkpoint_every": 1,
    "log_every": 1,
}
LM_TARGETS = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$")


@pytest.fixture(autouse=True)
def _quiet_deepspeed():
    with warnings.catch_warnings():  # DeepSpeed calls torch's deprecated collective names on every step
        warnings.filterwarnings("ignore", distributed.DEEPSPEED_COLLECTIVE_DEPRECATIONS, FutureWarning)
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """A small oracle-teacher 2048 data set at 112x112 (distilled for real)."""
    return distill_oracle_data(tmp_path_factory.mktemp("scale-data") / "data", ["2048"], 20, 112)


@pytest.fixture
def no_op_builds(tmp_path, monkeypatch) -> Path:
    """Where torch would compile a DeepSpeed op (the launched workers inherit it); must stay empty."""
    ext = tmp_path / "torch-extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(ext))
    return ext


def _assert_nothing_built(ext: Path) -> None:
    from deepspeed.ops.op_builder.builder import OpBuilder

    assert not ext.exists() or not any(ext.iterdir()), f"DeepSpeed compiled ops into {ext}"
    assert OpBuilder._loaded_ops == {}


def _cfg(**fields) -> sft.SftRunConfig:
    return sft.SftRunConfig.model_validate({"sft": {**BASE, **fields}})


def _weights(result: sft.SftResult) -> dict[str, torch.Tensor]:
    return load_file(storage.local_path(result.model_uri) / "model.safetensors")


def _base_weights() -> dict[str, torch.Tensor]:
    return load_file(Path(resolve_model("tiny")) / "model.safetensors")


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> sft.SftResult:
    """The plain one-process run (no DeepSpeed) that the other set-ups must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    return sft.run(_cfg(), dataset, str(out / "out"), progress=False, work_dir=out / "work")


# ---- configs ------------------------------------------------------------------------------------------
def test_deepspeed_presets_match_their_accelerate_configs():
    for preset, stage in (("zero2", 2), ("zero3", 3)):
        gpu = distributed.load_deepspeed_config(preset, cuda=True)
        assert distributed.zero_stage(gpu) == stage and "_comment" not in gpu
        assert gpu["optimizer"]["params"]["torch_adam"] is True  # nothing to compile on GPUs either
        assert gpu["train_micro_batch_size_per_gpu"] == "auto" and gpu["bf16"]["enabled"] == "auto"
        accel = yaml.safe_load(distributed.accelerate_config(preset).read_text())
        assert accel["distributed_type"] == "DEEPSPEED" and accel["num_machines"] == 1
        assert (CONFIG_DIR.parent / accel["deepspeed_config"]["deepspeed_config_file"]).resolve() == (
            distributed.deepspeed_config_path(preset).resolve()
        )
    multi = yaml.safe_load(distributed.accelerate_config(None).read_text())
    assert multi["distributed_type"] == "MULTI_GPU" and multi["main_process_ip"] == "127.0.0.1"


def test_custom_deepspeed_json_gets_torch_adam_on_cpu_only(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}, "zero_optimization": {}})
    )
    assert (
        distributed.load_deepspeed_config(str(path), cuda=False)["optimizer"]["params"]["torch_adam"] is True
    )
    assert "torch_adam" not in distributed.load_deepspeed_config(str(path), cuda=True)["optimizer"]["params"]
    with pytest.raises(FileNotFoundError, match=r"sft.deepspeed='nope.json'"):
        distributed.load_deepspeed_config("nope.json", cuda=False)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        distributed.load_deepspeed_config(str(tmp_path / "bad.json"), cuda=False)


def test_config_validates_scale_out_fields():
    assert sft.SftConfig(num_processes="auto", deepspeed="zero3").deepspeed == "zero3"
    assert distributed.resolve_num_processes("auto") == max(1, torch.cuda.device_count())
    with pytest.raises(ValueError, match="num_processes"):
        sft.SftConfig(num_processes=0)
    with pytest.raises(ValueError, match=r"deepspeed\n.*must be one of zero2, zero3"):
        sft.SftConfig(deepspeed="zero4")


def test_metrics_log_forwards_whole_lines_in_order(tmp_path):
    log = distributed.MetricsLog(tmp_path / "m.jsonl")
    got: list[tuple[int, dict]] = []
    assert log.forward(lambda m, s: got.append((s, m))) == 0  # nothing written yet
    log({"a": 1.0}, 1)
    log({"b": 2.0}, 2)
    with log.path.open("a") as f:
        f.write('{"step": 3, "metr')  # a line still being written
    assert log.forward(lambda m, s: got.append((s, m))) == 2
    with log.path.open("a") as f:
        f.write('ics": {"c": 3.0}}\n')
    assert log.forward(lambda m, s: got.append((s, m))) == 1
    assert got == [(1, {"a": 1.0}), (2, {"b": 2.0}), (3, {"c": 3.0})]


# ---- DeepSpeed in one process --------------------------------------------------------------------------
class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_trains_checkpoints_and_resumes_exactly_without_compiling(
    dataset, reference, tmp_path, s3_prefix, no_op_builds, zero
):
    cfg = _cfg(deepspeed=zero, keep_checkpoints_when_done=True)  # its stored checkpoints are looked at
    whole = sft.run(cfg, dataset, str(tmp_path / "whole"), progress=False, work_dir=tmp_path / "w1")
    assert whole.steps == 2 and whole.samples_seen == 16
    assert _close(_weights(whole), _weights(reference))  # DeepSpeed trains (and saves) the same model
    ckpt = storage.local_path(str(tmp_path / "whole")) / "checkpoints" / "checkpoint-2"
    assert (ckpt / "latest").is_file() and list(ckpt.glob("global_step2/*optim_states.pt"))  # its own format

    # killed at step 2 (its checkpoint-1 in S3), then started again on a fresh machine
    out = f"{s3_prefix}/{zero}"
    crashing = sft.SftRun(cfg, dataset, out, progress=False, work_dir=tmp_path / "w2")

    def crash_at_2(metrics, step):
        if step >= 2:
            raise _Crash(step)

    crashing.emit = crash_at_2
    with pytest.raises(_Crash):
        crashing.run()
    assert storage.read_bytes(f"{out}/checkpoints/LATEST").decode() == "checkpoint-1"
    resumed = sft.run(cfg, dataset, out, progress=False, work_dir=tmp_path / "w3")
    assert resumed.resumed_from_step == 1 and resumed.steps == 2
    local = storage.get_dir(resumed.model_uri, tmp_path / "resumed-model")
    a, b = _weights(whole), load_file(local / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    model, _ = load_model(local)  # plain Hugging Face weights (ZeRO-3: gathered whole), with the processor
    assert model.config.model_type == "qwen2_5_vl" and a.keys() == _base_weights().keys()
    _assert_nothing_built(no_op_builds)
    # the switches a DeepSpeed Trainer turns on are off again: later runs and loads here are plain
    assert "ACCELERATE_USE_DEEPSPEED" not in os.environ and not is_deepspeed_zero3_enabled()
    assert not torch.distributed.is_initialized()


def test_custom_config_with_deepspeed_adam_trains_on_cpu_without_compiling(dataset, tmp_path, no_op_builds):
    config = distributed.load_deepspeed_config("zero2", cuda=True)
    del config["optimizer"]["params"]["torch_adam"]  # DeepSpeed's own Adam: a C++ op to compile on CPU
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    result = sft.run(
        _cfg(deepspeed=str(path)), dataset, str(tmp_path / "o"), progress=False, work_dir=tmp_path
    )
    assert result.steps == 2
    _assert_nothing_built(no_op_builds)


def test_gradient_accumulation_matches_one_big_batch(dataset, reference, tmp_path):
    cfg = _cfg(batch_size=4, grad_accum=2)
    result = sft.run(cfg, dataset, str(tmp_path / "o"), progress=False, work_dir=tmp_path)
    assert result.steps == 2 and _close(_weights(result), _weights(reference))  # the loss is the step's mean


# ---- two worker processes --------------------------------------------------------------------------------
@pytest.mark.parametrize("deepspeed", [None, "zero3"])
def test_two_processes_through_the_launch_command(dataset, reference, tmp_path, no_op_builds, deepspeed):
    cfg = _cfg(
        num_processes=2, batch_size=4, deepspeed=deepspeed, eval_every=1, keep_checkpoints_when_done=True
    )
    seen: list[tuple[int, dict]] = []
    result = sft.run(
        cfg, dataset, str(tmp_path / "o"), progress=False, work_dir=tmp_path / "w",
        on_metrics=lambda m, step: seen.append((step, m)),
    )  # fmt: skip
    assert result.steps == 2 and result.samples_seen == 16  # each process took half of each batch of 8
    assert _close(_weights(result), _weights(reference))  # the same model as one process with batch 8
    # rank 0's metrics reached this process's sink, in order, once each
    loss_steps = [step for step, m in seen if "train.loss" in m]
    eval_steps = [step for step, m in seen if "heldout.perception_exact" in m]
    assert loss_steps == [1, 2] and eval_steps == [0, 1, 2]
    assert json.loads(storage.read_bytes(f"{tmp_path / 'o'}/{sft.RESULT}"))["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir()) == [
        "LATEST", "checkpoint-1", "checkpoint-2",
    ]  # fmt: skip
    load_model(storage.local_path(result.model_uri))
    _assert_nothing_built(no_op_builds)


def test_a_failing_worker_fails_the_run(dataset, tmp_path):
    cfg = _cfg(num_processes=2, batch_size=4, games=["swap"])  # the workers find no such samples
    with pytest.raises(RuntimeError, match="2 worker processes .* failed") as failed:
        sft.run(cfg, dataset, str(tmp_path / "o"), progress=False, work_dir=tmp_path / "w")
    # the workers' own exception, not only "see the log": CI output and pod events cut long worker logs
    message = str(failed.value)
    assert "rank0, rank1 raised:" in message
    assert "ValueError: dataset_uri" in message and "no samples of sft.games=['swap']" in message


# ---- training options --------------------------------------------------------------------------------------
@pytest.mark.parametrize("deepspeed", [None, "zero2"])
def test_lora_trains_adapters_only_and_saves_merged_weights(dataset, tmp_path, deepspeed):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    cfg = _cfg(learning_rate=1e-2, lora=lora, deepspeed=deepspeed, checkpoint_every=10)
    result = sft.run(cfg, dataset, str(tmp_path / "o"), progress=False, work_dir=tmp_path)
    base, trained = _base_weights(), _weights(result)
    assert trained.keys() == base.keys()  # merged: plain Qwen2.5-VL weights, no adapter keys
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    assert changed == {k for k in base if LM_TARGETS.match(k)}  # the adapted layers, and nothing else
    model, _ = load_model(storage.local_path(result.model_uri))
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_lora_with_zero3_is_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="ZeRO-3"):
        sft.run(_cfg(lora={"r": 4}, deepspeed="zero3"), dataset, str(tmp_path / "o"), work_dir=tmp_path)


def test_frozen_vision_tower_with_gradient_checkpointing(dataset, tmp_path):
    cfg = _cfg(learning_rate=1e-2, freeze_vision=True, gradient_checkpointing=True, checkpoint_every=10)
    run = sft.SftRun(cfg, dataset, str(tmp_path / "o"), progress=False, work_dir=tmp_path)
    assert run._training_args().activation_checkpointing is True
    result = run.run()
    assert result.steps == 2 and result.train_loss == result.train_loss  # trained, loss not NaN
    base, trained = _base_weights(), _weights(result)
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    tower = {k for k in base if k.startswith("visual.") and not k.startswith("visual.merger.")}
    assert tower and not changed & tower  # patch embedding and vision blocks untouched
    assert {k for k in changed if k.startswith("visual.merger.")}  # the merger trains
    assert {k for k in changed if k.startswith("model.layers.")}  # and so does the language model


def test_bf16_on_cpu_is_a_clear_error(dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="sft.bf16=on needs a GPU"):
        sft.run(_cfg(bf16="on"), dataset, str(tmp_path / "o"), progress=False, work_dir=tmp_path)
