"""What the training stages (SFT and GRPO) share: one run's bookkeeping around a TRL trainer.

- **Checkpoints**: the Trainer's own (weights, optimizer, scheduler, RNG, data position) every
  ``checkpoint_every`` steps, mirrored to ``<output>/checkpoints/`` with ``LATEST`` naming the newest fully
  uploaded one; a run started again restores it (downloading it when this machine lacks it) and resumes.
- **Time limit**: ``max_train_minutes`` counts training only (a stage's own measurements are not counted),
  with an optional linear learning-rate cooldown over its last share (``time_cooldown``).
- **Metrics**: the Trainer's logs go to the run's metrics sink (MLflow) as ``train.*``, with tokens/s.
- **Final model**: adapters merged, Hugging Face format with its processor, under ``<output>/model``.
- **Launch**: N worker processes on one node (accelerate, optionally DeepSpeed) run the same code; rank 0
  alone uploads, writes results and reports metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import distributed, storage

log = logging.getLogger(__name__)

MetricsSink = Callable[[dict[str, float], int], None]  # (metrics, step), e.g. StageRun.log_metrics
LATEST = "LATEST"  # names the newest fully uploaded checkpoint under <output>/checkpoints/
RESULT = "result.json"


def cooldown_factor(elapsed: float, budget: float, share: float) -> float:
    """1 until the last ``share`` of ``budget`` seconds, then falling linearly to 0 at ``budget``."""
    start = budget * (1 - share)
    return 1.0 if elapsed <= start else max(0.0, (budget - elapsed) / (budget - start))


def callbacks():
    """(Throughput, Mirror, TimeCooldown): Trainer callbacks every training run uses (built lazily:
    transformers is imported only when a run starts). Each takes the :class:`TrainingRun`."""
    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        """The Trainer's logs (loss, learning rate, ...) and tokens/s every ``log_every`` steps."""

        def __init__(self, run: TrainingRun):
            self.run = run
            self.mark: tuple[float, float] | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "learning_rate" in logs:  # the rate the optimizer used: the scheduler's times the cooldown
                logs["learning_rate"] *= self.run.lr_factor
            now, tokens = self.run.training_time(), float(logs.get("num_tokens", 0.0))
            if self.mark is not None and now > self.mark[0] and tokens >= self.mark[1]:
                logs["tokens_per_s"] = (tokens - self.mark[1]) / (now - self.mark[0])
            self.mark = (now, tokens)
            numbers = {
                f"train.{k}": float(v) for k, v in logs.items() if isinstance(v, int | float) and k != "epoch"
            }
            self.run.emit(numbers, state.global_step)

    class Mirror(TrainerCallback):
        """Upload each checkpoint, then name it in LATEST; prune old ones; obey the time limit."""

        def __init__(self, run: TrainingRun):
            self.run = run

        def on_save(self, args, state, control, **kwargs):
            self.run.mirror_checkpoint(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            limit = self.run.s.max_train_minutes
            if limit is None:
                return
            over = self.run.training_time() > limit * 60
            if distributed.any_rank(over, args.device):  # every rank stops at the same step
                log.info("max_train_minutes=%g reached at step %d; stopping", limit, state.global_step)
                control.should_training_stop = True

    class TimeCooldown(TrainerCallback):
        """The learning rate times (time left / cooldown time) over the last ``time_cooldown`` share of
        ``max_train_minutes``: set before each optimizer step, on top of the scheduler's value."""

        def __init__(self, run: TrainingRun):
            self.run = run

        def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            s = self.run.s
            if not s.time_cooldown or optimizer is None:  # the config requires max_train_minutes with it
                return
            factor = cooldown_factor(self.run.training_time(), s.max_train_minutes * 60, s.time_cooldown)
            self.run.lr_factor = factor
            for group, lr in zip(optimizer.param_groups, lr_scheduler.get_last_lr(), strict=True):
                group["lr"] = lr * factor

    return Throughput, Mirror, TimeCooldown


def checkpoint_loading(trainer_cls):
    """``trainer_cls`` restoring checkpoint weights through ``from_pretrained``.

    transformers 5 saves Qwen2.5-VL checkpoints under the original (hub) key names but the Trainer's resume
    loads them with a bare ``load_state_dict(strict=False)``, which matches none of them and silently keeps
    the current weights; loading through the model class applies the key conversion.
    """
    from accelerate.utils import is_peft_model

    class Restoring(trainer_cls):
        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = self.model if model is None else model
            if is_peft_model(model) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            dtype = next(model.parameters()).dtype
            saved = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
            model.load_state_dict(saved.state_dict(), strict=True)
            log.info("model weights restored from %s", resume_from_checkpoint)

    Restoring.__name__ = Restoring.__qualname__ = f"Restoring{trainer_cls.__name__}"
    return Restoring


def quiet_console(trainer, progress: bool) -> None:
    """Keep stdout clean: the Trainer prints every log dict; ours go to logging and the metrics sink."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(BarOnly())


def use_bf16(setting: str, stage: str) -> bool:
    """Whether to train in bf16 mixed precision: ``on``, ``off``, or ``auto`` (on GPUs that support it)."""
    import torch

    cuda = torch.cuda.is_available()
    if setting == "on" and not cuda:
        raise ValueError(f"{stage}.bf16=on needs a GPU; use 'auto' or 'off' on CPU")
    return setting == "on" or (setting == "auto" and cuda and torch.cuda.is_bf16_supported())


class TrainingRun:
    """One training run into ``output_uri`` (subclasses add the data, the trainer and the result).

    ``settings`` is the stage's config section (``SftConfig``, ``GrpoConfig``): the fields both share
    (``max_train_minutes``, ``time_cooldown``, ``lora``, ``deepspeed``, ...) are read from it.
    """

    stage = "train"

    def __init__(
        self,
        cfg: Any,
        settings: Any,
        output_uri: str,
        progress: bool = True,
        on_metrics: MetricsSink | None = None,
        work_dir: str | os.PathLike | None = None,
    ):
        self.cfg, self.s = cfg, settings
        self.uri, self.progress, self.on_metrics = output_uri, progress, on_metrics
        from ..policies import work_dir as default_work_dir

        root = Path(work_dir) if work_dir else default_work_dir() / self.stage
        self.local = root / hashlib.sha256(output_uri.encode()).hexdigest()[:16]
        self.started = time.perf_counter()
        self.paused = 0.0  # seconds spent measuring, not training
        self.lr_factor = 1.0  # the time cooldown's share of the scheduled learning rate
        self.main = distributed.rank() == 0  # rank 0 alone uploads, writes the outputs and reports metrics
        self.world = 1  # training processes, known once the Trainer's arguments are built
        self.ds_config: dict | None = None
        self.bf16 = False  # bf16 mixed precision, settled by setup_process
        self.image_tokens = 0  # image tokens of the largest screen, known once the model loads

    # ---- bookkeeping ------------------------------------------------------------------------------
    def emit(self, metrics: dict[str, float], step: int) -> None:
        """Send metrics to the sink (MLflow in the pipeline); a failing sink never stops training."""
        if self.on_metrics is None or not metrics or not self.main:
            return
        try:
            self.on_metrics(metrics, step)
        except Exception as err:  # tracking is best effort during training
            log.warning("could not record metrics at step %d: %s", step, err)

    def training_time(self) -> float:
        """Seconds since training started, less the time spent measuring (``paused``)."""
        return time.perf_counter() - self.started - self.paused

    def finished(self) -> dict | None:
        """The stored result of an earlier run that finished into the same URI, or None."""
        done = storage.join(self.uri, RESULT)
        if not storage.exists(done):
            return None
        log.info("%s already holds a finished %s run; nothing to do", self.uri, self.stage)
        return json.loads(storage.read_bytes(done))

    def write_result(self, result: dict) -> None:
        """Write the stage's result (which marks it done), then drop its stored checkpoints unless kept."""
        if not self.main:
            return
        storage.write_bytes(storage.join(self.uri, RESULT), json.dumps(result, indent=2).encode())
        if not self.s.keep_checkpoints_when_done:
            remote = storage.join(self.uri, "checkpoints")
            storage.delete(remote, recursive=True)
            log.info(
                "%s is done: its checkpoints in %s are deleted (keep_checkpoints_when_done)",
                self.stage,
                remote,
            )

    # ---- checkpoints ------------------------------------------------------------------------------
    def mirror_checkpoint(self, step: int) -> None:
        """Copy ``checkpoint-<step>`` to the store, mark it newest, drop stored ones the Trainer dropped.

        Rank 0 uploads once every rank has written its part (DeepSpeed shards its optimizer states)."""
        distributed.barrier()
        if not self.main:
            return
        name = f"checkpoint-{step}"
        remote = storage.join(self.uri, "checkpoints")
        storage.put_dir(self.local / "trainer" / name, storage.join(remote, name))
        storage.write_bytes(storage.join(remote, LATEST), name.encode())
        kept = {p.name for p in (self.local / "trainer").glob("checkpoint-*")}
        for old in self._stored_checkpoints():
            if old not in kept:
                storage.delete(storage.join(remote, old), recursive=True)
        log.info("checkpoint %s stored in %s", name, remote)

    def _stored_checkpoints(self) -> set[str]:
        prefix = storage.join(self.uri, "checkpoints") + "/"
        return {
            u[len(prefix) :].split("/", 1)[0]
            for u in storage.list_uris(storage.join(self.uri, "checkpoints"))
            if u[len(prefix) :].startswith("checkpoint-")
        }

    def restore_checkpoint(self) -> str | None:
        """The local folder of the newest stored checkpoint (downloaded when missing here), or None."""
        latest = storage.join(self.uri, "checkpoints", LATEST)
        if not storage.exists(latest):
            return None
        name = storage.read_bytes(latest).decode().strip()
        local = self.local / "trainer" / name
        if not (local / "trainer_state.json").is_file():
            if local.exists():
                shutil.rmtree(local)
            storage.get_dir(storage.join(self.uri, "checkpoints", name), local)
        log.info("resuming from %s", name)
        return str(local)

    # ---- model ------------------------------------------------------------------------------------
    def device(self) -> str:
        """Where this process loads the weights: its own GPU, or the CPU (ZeRO-3 shards them from there)."""
        import torch

        if not torch.cuda.is_available() or distributed.zero_stage(self.ds_config) == 3:
            return "cpu"
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"

    def weights_dtype(self) -> str:
        """The dtype the trained weights load in (``model.dtype``, or for ``auto`` the one they train in).

        bf16 under DeepSpeed: its engine casts the module to bf16 anyway and keeps the fp32 master weights in
        the optimizer's shards, so an fp32 load only doubles the host and GPU memory of loading (a 7B model:
        33 GB instead of 17 per process). fp32 otherwise: without DeepSpeed the weights are the optimizer's
        master copy, and bf16 weights would lose updates smaller than their precision (at lr 1e-6, most)."""
        chosen = self.cfg.model.dtype
        if chosen != "auto":
            return chosen
        return "bfloat16" if self.bf16 and self.ds_config else "float32"

    def reference_dtype(self) -> str:
        """The dtype of a frozen copy of the start model (GRPO's KL reference): bf16 when training in bf16,
        since it never trains, else the weights' own."""
        return "bfloat16" if self.bf16 else self.weights_dtype()

    def memory_workload(self) -> dict[str, Any]:
        """The stage's part of its memory estimate (:class:`memory.Workload` fields: lengths, generation)."""
        return {}

    def log_memory_plan(self, model):
        """Log the estimated GPU memory per GPU of this run (:mod:`g1core.stages.memory`); warn when the
        GPU is too small. Call it once the Trainer's arguments (and so the number of processes) are known."""
        import torch

        from ..models.loading import DTYPES
        from . import memory

        def size(dtype: str) -> int:
            return DTYPES[dtype].itemsize

        gpu = None
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / memory.GIB
        work = memory.Workload(
            world=self.world,
            zero_stage=distributed.zero_stage(self.ds_config),
            weight_bytes=2 if self.bf16 and self.ds_config else size(self.weights_dtype()),
            batch_size=self.s.batch_size,
            gradient_checkpointing=self.s.gradient_checkpointing,
            reference_bytes=size(self.reference_dtype()),
            **self.memory_workload(),
        )
        shape = memory.ModelShape.of(model)
        estimate = memory.plan(shape, work, gpu)
        model_bytes = 2 if self.bf16 else size(self.weights_dtype())  # save_final keeps bf16 training in bf16
        disk = memory.disk_plan(shape, work, self.s.keep_checkpoints, model_bytes)
        self.emit(
            {
                "tokens/image_per_prompt": float(self.image_tokens),
                "tokens/prompt_max": float(work.prompt_tokens),
                "tokens/answer_max": float(work.answer_tokens),
                "memory/estimate_gpu_peak_gib": estimate.peak,
                "storage/checkpoint_gib": disk.checkpoint,
                "storage/scratch_peak_gib": disk.scratch,
                "storage/s3_peak_gib": disk.store,
            },
            0,
        )
        if self.main:
            log.info(
                "%s: prompts of up to %d tokens (%d image tokens per screen), answers of up to %d tokens",
                self.stage, work.prompt_tokens, self.image_tokens, work.answer_tokens,
            )  # fmt: skip
            log.info("%s: %s", self.stage, estimate.summary())
            log.info("%s: %s", self.stage, disk.summary())
            if estimate.fits is False:
                log.warning(
                    "%s may run out of GPU memory (estimated peak %.1f GiB of %.1f): lower batch_size, turn "
                    "on gradient_checkpointing, use deepspeed=zero3 or GRPO's vllm_sleep_mode (docs/gpu.md)",
                    self.stage, estimate.peak, gpu,
                )  # fmt: skip
        return estimate

    def prepare_model(self, model):
        """The stage's options on a loaded model: a frozen vision tower (the merger still trains), LoRA."""
        if self.s.freeze_vision:
            for name, p in model.model.visual.named_parameters():
                p.requires_grad = name.startswith("merger.")
        if self.s.lora.r > 0:
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError as err:
                raise ModuleNotFoundError(
                    f"{self.stage}.lora.r > 0 needs the peft package (pip install peft)"
                ) from err
            lora = self.s.lora
            targets = rf"model\.language_model\..*\.({'|'.join(lora.target_modules)})"
            peft_cfg = LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets
            )
            model = get_peft_model(model, peft_cfg)
        return model

    def setup_process(self) -> None:
        """DeepSpeed config (never compiling ops on CPU) and torch threads, before anything loads."""
        import torch

        if self.s.deepspeed:
            field = f"{self.stage}.deepspeed"
            self.ds_config = distributed.load_deepspeed_config(
                self.s.deepspeed, torch.cuda.is_available(), field
            )
            distributed.disable_cpu_op_builds()
            if distributed.zero_stage(self.ds_config) == 3 and self.s.lora.r > 0:
                raise ValueError(f"{self.stage}.lora.r > 0 with a ZeRO-3 {field}: not supported, use zero2")
        self.bf16 = use_bf16(self.s.bf16, self.stage)
        cores = max(1, (os.cpu_count() or 1) // distributed.local_world_size())
        torch.set_num_threads(self.s.threads or cores)

    def common_args(self) -> dict[str, Any]:
        """TrainingArguments both TRL configs take, from the shared settings."""
        import torch

        s = self.s
        return {
            "output_dir": str(self.local / "trainer"),
            "per_device_train_batch_size": s.batch_size,
            "learning_rate": s.learning_rate,
            "lr_scheduler_type": s.lr_scheduler,
            "warmup_steps": s.warmup_ratio,
            "weight_decay": s.weight_decay,
            "max_grad_norm": s.max_grad_norm,
            "seed": s.seed,
            "data_seed": s.seed,
            "bf16": self.bf16,
            "use_cpu": not torch.cuda.is_available(),
            "deepspeed": self.ds_config,
            "activation_checkpointing": s.gradient_checkpointing,
            "ddp_find_unused_parameters": False,  # every trainable weight takes part in every forward
            "logging_steps": s.log_every,
            "save_strategy": "steps",
            "save_steps": s.checkpoint_every,
            "save_total_limit": s.keep_checkpoints,
            "report_to": "none",
            "disable_tqdm": not self.progress,
            "remove_unused_columns": False,
            "dataloader_num_workers": 0,
        }

    def save_final(self, trainer, processor) -> str:
        """The trained model (adapters merged) and its processor, in HF format, to ``<uri>/model``.

        Under ZeRO-3 every rank first takes part in gathering the sharded weights; rank 0 writes them."""
        import torch

        model_uri = storage.join(self.uri, "model")
        state_dict = None
        if distributed.zero_stage(self.ds_config) == 3:
            state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if not self.main:
            return model_uri
        model = trainer.model
        if self.s.lora.r > 0:
            model = model.merge_and_unload()
        if trainer.args.bf16 and state_dict is None:
            model = model.to(torch.bfloat16)  # trained in bf16 mixed precision: kept (and served) in bf16
        out = self.local / "final"
        if out.exists():
            shutil.rmtree(out)
        model.save_pretrained(out, state_dict=state_dict)
        processor.save_pretrained(out)
        storage.put_dir(out, model_uri)
        return model_uri

    def launch(self, worker: str, args: dict[str, Any], processes: int) -> dict:
        """Train in ``processes`` workers running ``worker`` (``module:function``) on ``args``; returns
        the result rank 0 stored. The newest checkpoint is downloaded here once for all of them."""
        self.restore_checkpoint()
        args = {**args, "output_uri": self.uri, "progress": self.progress, "work_dir": str(self.local.parent)}
        distributed.launch(worker, args, processes, self.local / "launch", self.s.deepspeed, self.emit)
        return json.loads(storage.read_bytes(storage.join(self.uri, RESULT)))
