"""The GPU paths' defects of issue 15, checked on CPU wherever their logic runs without a GPU: what vLLM is
given (one image placeholder per screen, our pixel budget, a context length, the image token forbidden), the
dtypes the policy and the KL reference load in, the order of the DeepSpeed session and the Trainer's
arguments, the environment a run leaves behind, and the memory plan of the paper's recipe."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_grpo import _cfg as grpo_cfg

from g1core import distributed
from g1core.config import load_config
from g1core.models import vllm_bridge
from g1core.models.budget import PixelBudget
from g1core.models.loading import build_messages, count_image_tokens, load_processor, render_prompt
from g1core.policies import resolve_model
from g1core.stages import grpo, memory, training

SCREEN = (112, 112)
BUDGET = PixelBudget(56 * 56, 112 * 112)  # not the tiny model's own (TINY_BUDGET): the folder must carry it


@pytest.fixture(scope="module")
def processor():
    return load_processor(resolve_model("tiny"), BUDGET)


def _trl_prompt_ids(processor, prompt: str, size=SCREEN) -> list[int]:
    """A prompt tokenised as TRL 1.16 does before handing it to vLLM (the processor expands the image)."""
    image = Image.fromarray(np.zeros((*size, 3), dtype=np.uint8))
    messages = build_messages(prompt)
    messages[0]["content"][0] = {"type": "image", "image": image}
    out = processor.apply_chat_template(
        conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"][0])


# ---- 1. image tokens once ----------------------------------------------------------------------------------
def test_collapsing_the_processors_prompt_gives_the_unexpanded_chat_text(processor):
    ids = _trl_prompt_ids(processor, "Which move? Answer with a number.")
    pad = processor.image_token_id
    n = count_image_tokens(processor, SCREEN)
    assert n > 1 and vllm_bridge.image_runs(ids, pad) == [n]
    collapsed = vllm_bridge.collapse_image_runs(ids, pad)
    text = render_prompt(processor, "Which move? Answer with a number.")  # the placeholder once
    assert collapsed == processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert vllm_bridge.collapse_image_runs([1, pad, pad, 2, pad, 3], pad) == [1, pad, 2, pad, 3]


class _Engine:
    """Stands in for TRL's VLLMGeneration (vLLM cannot run here): expands each prompt's placeholder the way
    vLLM 0.30 does, replacing the first image token with ``tokens`` of them and keeping the rest."""

    def __init__(self, pad: int, tokens: int):
        self.pad, self.tokens, self.seen = pad, tokens, []

    def generate(self, prompts, images, num_generations, profiler=None):
        self.seen = [list(p) for p in prompts]
        ran = []
        for ids in prompts:
            k = ids.index(self.pad)
            ran.append(ids[:k] + [self.pad] * self.tokens + ids[k + 1 :])
        return ran, [[7, 8]] * len(prompts), [[[0.0], [0.0]]] * len(prompts), None


def test_the_guard_sends_one_placeholder_and_stops_on_a_different_expansion(processor):
    ids = _trl_prompt_ids(processor, "Pick a pair.")
    pad, n = processor.image_token_id, count_image_tokens(processor, SCREEN)
    engine = _Engine(pad, n)
    vllm_bridge.guard_generation(engine, pad)
    prompts, completions, *_ = engine.generate(prompts=[ids, ids], images=[None, None], num_generations=2)
    assert [vllm_bridge.image_runs(p, pad) for p in engine.seen] == [[1], [1]]
    assert prompts == [ids, ids] and completions == [[7, 8], [7, 8]]

    unguarded = _Engine(pad, n)  # what TRL did: the expanded prompt expanded again, 2n - 1 image tokens
    assert vllm_bridge.image_runs(unguarded.generate([ids], None, 1)[0][0], pad) == [2 * n - 1]
    other_budget = _Engine(pad, n + 6)  # vLLM resizing with another pixel budget
    vllm_bridge.guard_generation(other_budget, pad)
    with pytest.raises(RuntimeError, match=rf"image-token runs \[{n + 6}\] where training uses \[{n}\]"):
        other_budget.generate(prompts=[ids], images=[None], num_generations=1)


# ---- 2. the pixel budget vLLM reads ------------------------------------------------------------------------
def test_the_folder_vllm_reads_carries_our_pixel_budget(processor, tmp_path):
    start = resolve_model("tiny")
    own = load_processor(start)  # the budget saved with the tiny model
    assert PixelBudget.of(own) != BUDGET
    folder = vllm_bridge.budgeted_model_folder(start, processor, tmp_path / "vllm-model")
    seen = load_processor(folder)  # what an engine reading the folder's processor config gets
    assert PixelBudget.of(seen) == BUDGET
    for screen in ((840, 640), SCREEN, (300, 200)):
        assert count_image_tokens(seen, screen) == count_image_tokens(processor, screen)
    assert count_image_tokens(own, (840, 640)) != count_image_tokens(processor, (840, 640))
    assert (folder / "model.safetensors").is_symlink() and (folder / "config.json").is_symlink()
    assert not (folder / "processor_config.json").is_symlink()


# ---- 2-4. what our trainer passes to TRL for vLLM ------------------------------------------------------
def _cfg(**grpo_fields):
    """test_grpo's small GRPO run (2 states x 2 answers of 24 tokens, BUDGET's pixels), one step long."""
    return grpo_cfg(**{"steps": 1, **grpo_fields})


def test_vllm_settings_reach_trls_config(processor, tmp_path):
    run = grpo.GrpoRun(_cfg(vllm_sleep_mode=True, vllm_gpu_memory_utilization=0.25), "x", work_dir=tmp_path)
    run.vllm, run.processor = True, processor  # as on a GPU with vllm installed
    args = run._training_args()
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_enable_sleep_mode
    assert args.vllm_max_model_length == 4096 + 24  # max_prompt_tokens + max_new_tokens, not 128k
    assert args.vllm_gpu_memory_utilization == 0.25
    assert args.generation_kwargs == {"logit_bias": {processor.image_token_id: -100.0}}
    plain = grpo.GrpoRun(_cfg(), "x", work_dir=tmp_path)._training_args()  # HF generate: TRL suppresses it
    assert not plain.use_vllm and plain.generation_kwargs is None and not plain.vllm_enable_sleep_mode


# ---- 5. dtypes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_dtype", "bf16", "deepspeed", "weights", "reference"),
    [
        ("auto", True, "zero2", "bfloat16", "bfloat16"),  # DeepSpeed keeps the fp32 masters itself
        ("auto", True, "zero3", "bfloat16", "bfloat16"),
        ("auto", True, None, "float32", "bfloat16"),  # autocast: fp32 masters are the weights
        ("auto", False, None, "float32", "float32"),
        ("auto", False, "zero2", "float32", "float32"),
        ("bfloat16", False, None, "bfloat16", "bfloat16"),  # the user's explicit choice stands
    ],
)
def test_load_dtypes_under_bf16_settings(model_dtype, bf16, deepspeed, weights, reference, tmp_path):
    cfg = _cfg(deepspeed=deepspeed)
    cfg.model.dtype = model_dtype
    run = grpo.GrpoRun(cfg, "x", work_dir=tmp_path)
    run.bf16 = bf16
    run.ds_config = distributed.load_deepspeed_config(deepspeed, cuda=True) if deepspeed else None
    assert (run.weights_dtype(), run.reference_dtype()) == (weights, reference)
    expected = {"dtype": reference} if reference != weights else None
    assert run._reference_init() == expected
    no_reference = grpo.GrpoRun(_cfg(beta=0.0), "x", work_dir=tmp_path)
    no_reference.bf16 = bf16
    assert no_reference._reference_init() is None  # beta 0: TRL builds no reference


def test_trl_builds_the_reference_in_bf16_beside_an_fp32_policy(tmp_path, monkeypatch):
    """A real TRL trainer, bf16 autocast on CPU (use_bf16 forced: the stage refuses bf16 without a GPU)."""
    monkeypatch.setattr(training, "use_bf16", lambda setting, stage: True)
    seen = {}
    make = grpo._trainer_class

    def spying():
        cls = make()

        class Spy(cls):
            def train(self, *args, **kwargs):
                seen["policy"] = next(self.model.parameters()).dtype
                seen["reference"] = next(self.ref_model.parameters()).dtype
                return super().train(*args, **kwargs)

        return Spy

    monkeypatch.setattr(grpo, "_trainer_class", spying)
    result = grpo.run(_cfg(), str(tmp_path / "out"), progress=False, work_dir=tmp_path / "w")
    assert result.steps == 1 and seen == {"policy": torch.float32, "reference": torch.bfloat16}


# ---- 6-7. session order, the environment after a run ----------------------------------------------------
def test_arguments_are_built_in_the_deepspeed_session_and_the_environment_is_restored(tmp_path, monkeypatch):
    before = {k: os.environ.get(k) for k in distributed.LAUNCH_ENV}
    at_arguments = {}
    build = grpo.GrpoRun._training_args

    def recording(self):
        at_arguments.update({k: os.environ.get(k) for k in distributed.LAUNCH_ENV})
        return build(self)

    monkeypatch.setattr(grpo.GrpoRun, "_training_args", recording)
    make = grpo._trainer_class

    def like_trls_vllm():
        cls = make()

        class SetsLaunchVariables(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)  # TRL's colocated vLLM sets these and never unsets them
                os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_PORT="29511")

        return SetsLaunchVariables

    monkeypatch.setattr(grpo, "_trainer_class", like_trls_vllm)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", distributed.DEEPSPEED_COLLECTIVE_DEPRECATIONS, FutureWarning)
        result = grpo.run(_cfg(deepspeed="zero2"), str(tmp_path / "o"), progress=False, work_dir=tmp_path)
    assert result.steps == 1
    assert at_arguments["WORLD_SIZE"] == "1" and at_arguments["MASTER_ADDR"] == "127.0.0.1"  # the session's
    assert {k: os.environ.get(k) for k in distributed.LAUNCH_ENV} == before
    assert not distributed.launched()  # a second run here launches and sets up its world again


def test_preserved_env_restores_on_error():
    key = "G1_TEST_PRESERVED"
    os.environ[key] = "kept"
    with pytest.raises(KeyError), distributed.preserved_env((key, key + "_NEW")):
        os.environ[key] = "changed"
        os.environ[key + "_NEW"] = "set"
        raise KeyError
    assert os.environ.pop(key) == "kept" and key + "_NEW" not in os.environ


# ---- 8. the memory plan -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen7b() -> memory.ModelShape:
    """Qwen2.5-VL-7B-Instruct's shape (its config.json's dimensions), built on the meta device: no weights."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
    }  # fmt: skip
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "out_hidden_size": 3584}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return memory.ModelShape.of(model)


def _paper_work(grpo_cfg, **changes) -> memory.Workload:
    work = memory.Workload(
        world=8, zero_stage=2, weight_bytes=2, batch_size=grpo_cfg.batch_size, prompt_tokens=1000,
        answer_tokens=grpo_cfg.max_new_tokens, gradient_checkpointing=grpo_cfg.gradient_checkpointing,
        reference=True, reference_bytes=2, generated_sequences=grpo_cfg.states_per_step * 5 // 8,
        vllm_share=grpo_cfg.vllm_gpu_memory_utilization, vllm_sleeps=grpo_cfg.vllm_sleep_mode,
    )  # fmt: skip
    return memory.Workload(**{**work.__dict__, **changes})


def test_the_paper_recipe_fits_8_gpus_of_80_gb(qwen7b):
    assert 8.2e9 < qwen7b.params < 8.4e9 and qwen7b.kv_bytes_per_token == 56 * 1024
    paper = load_config("g1-paper").grpo
    fits = memory.plan(qwen7b, _paper_work(paper), gpu_gib=79.6)  # an H100 80GB as torch reports it
    assert fits.fits, fits.summary()
    old = _paper_work(paper, batch_size=8, vllm_sleeps=False)  # the preset before issue 15
    assert not memory.plan(qwen7b, old, gpu_gib=79.6).fits
    fp32 = memory.plan(qwen7b, _paper_work(paper, weight_bytes=4, reference_bytes=4), gpu_gib=79.6)
    assert fp32.parts["reference"] == pytest.approx(2 * fits.parts["reference"])


def test_the_estimate_shards_with_zero_stages(qwen7b):
    base = memory.Workload(world=8, weight_bytes=2, batch_size=1, prompt_tokens=100, answer_tokens=100)
    parts = {
        s: memory.plan(qwen7b, memory.Workload(**{**base.__dict__, "zero_stage": s})).parts for s in (1, 2, 3)
    }
    assert parts[1]["optimizer"] == parts[2]["optimizer"] == parts[3]["optimizer"]
    assert parts[1]["gradients"] == 8 * parts[2]["gradients"]
    assert parts[2]["weights"] == 8 * parts[3]["weights"]
    assert parts[1]["optimizer"] == pytest.approx(qwen7b.trainable * 12 / 8 / memory.GIB)  # fp32 master + 2


# ---- the GPU check, in its CPU mode ----------------------------------------------------------------------
def test_gpu_check_runs_its_plain_setup_in_cpu_mode(tmp_path):
    import json

    from g1core import gpu_check

    before = os.environ.get("G1_WORK_DIR")
    report = gpu_check.run_check(tmp_path / "out", tmp_path / "work", ["plain"])
    assert os.environ.get("G1_WORK_DIR") == before  # its tiny model's folder is not left to later runs
    assert report["ok"] and report["mode"].startswith("cpu") and not report["bf16"]
    assert json.loads((tmp_path / "out" / "gpu-check.json").read_text()) == report
    results = report["results"]
    assert set(results) == {"sft/plain", "grpo/plain", "grpo/vllm"}
    for name in ("sft/plain", "grpo/plain"):  # stopped after step 1, resumed from its checkpoint, saved
        assert results[name]["resumed_from_step"] == 1 and results[name]["final_model_dtype"] == "float32"
    assert results["grpo/plain"]["step_s"] > 0 and results["grpo/vllm"]["skipped"] == "no GPU"
    assert "every path ran" in gpu_check.summary(report, tmp_path / "out" / "gpu-check.json")


def _gib(quantity: str) -> float:
    """A Kubernetes quantity in Gi or Ti, in GiB."""
    return float(quantity[:-2]) * {"Gi": 1, "Ti": 1024}[quantity[-2:]]


def test_the_paper_disk_plan_fits_the_pods_and_the_store(qwen7b):
    """The scratch volumes compiled into the pipeline and the SeaweedFS volume of manifests/s3 hold what the
    paper preset writes at 7B: a pod's work folder at its peak, and one pipeline run's S3 peak (G0 and G1 can
    train at the same time, beside SFT's saved model) with room for the models of earlier runs."""
    import yaml

    from pipelines.g1_pipeline import STAGE_RESOURCES

    paper = load_config("g1-paper")
    work = memory.Workload(world=8, zero_stage=2, weight_bytes=2)  # bf16 weights under DeepSpeed ZeRO-2
    sft_plan = memory.disk_plan(qwen7b, work, paper.sft.keep_checkpoints, model_bytes=2)
    grpo_plan = memory.disk_plan(qwen7b, work, paper.grpo.keep_checkpoints, model_bytes=2)
    assert 100 < sft_plan.checkpoint < 115  # 15.4 GiB of bf16 weights + 12 bytes of fp32 state per weight
    assert sft_plan.scratch <= _gib(STAGE_RESOURCES["sft"]["scratch"])
    assert grpo_plan.scratch <= _gib(STAGE_RESOURCES["grpo"]["scratch"])
    assert 4 * sft_plan.model <= _gib(STAGE_RESOURCES["evaluate"]["scratch"])  # base, SFT, G0, G1
    run_peak = sft_plan.model + 2 * grpo_plan.store
    store = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "manifests" / "s3" / "statefulset.yaml").read_text()
    )
    size = _gib(store["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"])
    assert run_peak + 5 * 3 * sft_plan.model <= size  # one run at its peak + the models of 5 finished runs
