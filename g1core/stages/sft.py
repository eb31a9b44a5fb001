"""Perception-enhanced cold start: supervised fine-tuning on the distilled data set (G1 spec section 6).

The model sees each sample's screen and game prompt and learns the teacher's answer, whose
``<perception>`` block is the exact board text. Training runs on TRL's ``SFTTrainer`` with our own
collator (:func:`g1core.models.loading.build_inputs`: left-padded batches, labels on the assistant's answer
and its end-of-turn token only), so the same code serves the tiny CPU model and a 7B model on GPUs.

- **Data**: the manifest of a distilled data set; a few states per game are held out (never trained on)
  to measure perception exact-match and format rate by greedy generation every ``eval_every`` steps.
  Games are mixed by per-game sampling weights into one fixed, seeded training order.
- **Checkpoints**: the Trainer's own (weights, optimizer, scheduler, RNG, data position) every
  ``checkpoint_every`` steps, mirrored to ``<output>/checkpoints/``; a killed run started again resumes
  from the newest complete one and ends with the same weights as an uninterrupted run.
- **Output**, under one URI: ``model/`` (Hugging Face format with its processor: loadable by
  :func:`g1core.models.loading.load_model` and by vLLM), ``result.json`` (summary and eval history),
  ``checkpoints/``.
- **Options**: ``freeze_vision`` (patch embedding and vision blocks frozen, the merger trains), ``lora``
  (peft adapters on the language model's linear layers, merged into plain weights at the end),
  ``gradient_checkpointing``, ``bf16`` (mixed precision over fp32 master weights; GPU only, the final
  model is then saved in bf16).

**Running on N GPUs of one node.** Set ``sft.num_processes`` (``auto`` = every visible GPU) and, for
models whose training state does not fit one GPU, ``sft.deepspeed`` (``zero2``: optimizer states and
gradients sharded; ``zero3``: weights too; or the path of a DeepSpeed JSON)::

    g1 sft --config g1-paper --run-id r1 --set sft.num_processes=auto --set sft.deepspeed=zero2

The stage's process then downloads the data set, model and newest checkpoint once and runs
``accelerate launch --config_file configs/accelerate/<zero2|zero3|multi-gpu>.yaml --num_processes N
-m g1core.distributed <spec>`` (see :mod:`g1core.distributed`): N workers run this same code on their
share of each batch (``batch_size`` is per process: the global batch is ``batch_size * grad_accum * N``);
rank 0 alone uploads checkpoints, writes ``result.json`` and the model, and reports metrics through a
JSON-lines file that the stage's process forwards to MLflow. The DeepSpeed JSONs live in
``configs/deepspeed/`` (copied into the images, found through ``G1_CONFIG_DIR``); their ``auto`` values
come from this section. On CPU the same code runs (gloo instead of NCCL) and never compiles a DeepSpeed
op: torch's AdamW replaces DeepSpeed's, and the shared-memory collective op is not built.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from .. import distributed, storage
from ..config import ModelConfig, Section, SftConfig, TrackingConfig
from ..gym import answer
from . import training
from .training import LATEST, RESULT, MetricsSink, cooldown_factor  # noqa: F401 (the stage's public names)

log = logging.getLogger(__name__)


class SftRunConfig(Section):
    """What the stage reads: the base model and the sft section (a PipelineConfig has both)."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="The model to fine-tune.")
    sft: SftConfig = Field(default_factory=SftConfig, description="SFT settings.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow settings.")


@dataclass
class SftResult:
    """What a finished SFT run produced (also stored as ``result.json`` beside the model)."""

    uri: str
    model_uri: str
    steps: int = 0
    samples_seen: int = 0
    train_samples: int = 0
    heldout_states: int = 0
    train_seconds: float = 0.0  # time in training, held-out evaluations excluded
    eval_seconds: float = 0.0  # time in the held-out evaluations during and after training
    samples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    train_loss: float = float("nan")
    resumed_from_step: int = 0
    final: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- data ---------------------------------------------------------------------------------------------
def _local_dataset(dataset_uri: str) -> Path:
    """A local folder holding the data set (downloaded once into the work dir when it lives in S3)."""
    if not storage.is_s3(dataset_uri):
        path = storage.local_path(dataset_uri)
        if not (path / "manifest.jsonl").is_file():
            raise FileNotFoundError(f"dataset_uri {dataset_uri!r}: no manifest.jsonl there")
        return path
    from ..policies import work_dir

    local = work_dir() / "datasets" / hashlib.sha256(dataset_uri.encode()).hexdigest()[:16]
    if not (local / "manifest.jsonl").is_file():
        log.info("downloading data set %s to %s", dataset_uri, local)
        storage.get_dir(dataset_uri, local)
    return local


def _rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()


def split_heldout(rows: Sequence[dict], per_game: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, heldout): ``per_game`` states of each game spec held out whole (every answer to them),
    chosen by a seeded hash so the split is the same on every run; one held-out row per state."""
    states: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        states[row["spec"]][f"{row['spec']}/{row['seed']}"].append(row)
    train, heldout = [], []
    for spec in sorted(states):
        keys = sorted(states[spec], key=lambda k: _rank(k, seed))
        for i, key in enumerate(keys):
            if i < per_game and i < len(keys) - 1:  # always leave something to train on
                heldout.append(states[spec][key][0])
            else:
                train += states[spec][key]
    return train, heldout


def _weight(weights: dict[str, float], row_spec: str, game: str) -> float | None:
    return weights.get(row_spec, weights.get(game))


def mix(rows: Sequence[dict], weights: dict[str, float], total: int, seed: int) -> list[dict]:
    """``total`` training samples drawn game by game in proportion to ``weights`` (by spec or game name;
    empty = each spec in proportion to its size). Within a spec, samples are taken through seeded
    shuffles of its rows (each row once per pass), so the mix is the same on every run."""
    by_spec: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_spec[row["spec"]].append(row)
    specs = sorted(by_spec)
    if weights:
        w = [_weight(weights, s, by_spec[s][0]["game"]) for s in specs]
        missing = [s for s, x in zip(specs, w, strict=True) if x is None]
        if missing:
            raise ValueError(
                f"sft.game_weights has no weight for {', '.join(missing)} (keys: {sorted(weights)})"
            )
        share = np.asarray(w, dtype=float)
    else:
        share = np.asarray([len(by_spec[s]) for s in specs], dtype=float)
    if share.sum() <= 0:
        raise ValueError("sft.game_weights: the games in the data set all have weight 0")
    counts = np.floor(share / share.sum() * total).astype(int)
    for i in np.argsort(-(share / share.sum() * total - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1  # largest remainders get the samples lost to rounding
    out: list[dict] = []
    for k, (spec, n) in enumerate(zip(specs, counts, strict=True)):
        rng = np.random.default_rng([seed, k])
        pool = by_spec[spec]
        while n > 0:
            order = rng.permutation(len(pool))[:n]
            out += [pool[i] for i in order]
            n -= len(order)
    order = np.random.default_rng([seed, 0xC0FFEE]).permutation(len(out))
    return [out[i] for i in order]


class ImageCache:
    """Screens by path, decoded once (a data set's PNGs are small and are seen many times)."""

    def __init__(self, root: Path):
        self.root = root
        self._images: dict[str, np.ndarray] = {}

    def __call__(self, rel: str) -> np.ndarray:
        image = self._images.get(rel)
        if image is None:
            from PIL import Image

            path = self.root / rel
            if not path.is_file():
                raise FileNotFoundError(f"data set image {str(path)!r} is missing")
            with Image.open(path) as im:
                image = self._images[rel] = np.asarray(im.convert("RGB"))
        return image


class Collator:
    """Row numbers -> a training batch through the model layer's ``build_inputs`` (answer-only labels)."""

    def __init__(self, processor, images: ImageCache, rows: Sequence[dict]):
        self.processor, self.images, self.rows = processor, images, rows

    def __call__(self, items: list[dict]):
        from ..models.loading import build_inputs

        rows = [self.rows[item["row"]] for item in items]
        return build_inputs(
            self.processor,
            [self.images(r["image"]) for r in rows],
            [r["prompt"] for r in rows],
            [r["answer"] for r in rows],
        )


# ---- evaluation ----------------------------------------------------------------------------------------
def evaluate_heldout(
    model,
    processor,
    rows: Sequence[dict],
    images: ImageCache,
    max_new_tokens: int,
    batch_size: int = 32,
    synced: bool = False,
) -> dict[str, float]:
    """Greedy replies on held-out states: perception exact-match, share of cells read right, and format
    rate, overall and per game.

    ``synced``: every rank generates in lockstep (ZeRO-3 gathers the sharded weights in each forward).
    """
    import torch

    from ..models.loading import build_inputs

    hits: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            inputs = build_inputs(
                processor, [images(r["image"]) for r in chunk], [r["prompt"] for r in chunk]
            )
            with torch.no_grad():  # not inference_mode: ZeRO-3 keeps weights it gathers here for training
                out = model.generate(
                    **inputs.to(model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    synced_gpus=synced,
                )
            texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for row, text in zip(chunk, texts, strict=True):
                truth = row["text_observation"]
                hits[row["game"]].append(
                    (
                        float(answer.perception_exact(text, truth)),
                        answer.perception_cell_accuracy(text, truth),
                        float(answer.is_well_formed(text)),
                    )
                )
    finally:
        model.train(was_training)
    names = ("perception_exact", "perception_cells", "format_rate")
    every = [h for game in hits.values() for h in game]
    metrics = {
        f"heldout.{name}": float(np.mean([h[i] for h in every])) if every else float("nan")
        for i, name in enumerate(names)
    }
    for game, game_hits in sorted(hits.items()):
        for i, name in enumerate(names):
            metrics[f"heldout.{game}.{name}"] = float(np.mean([h[i] for h in game_hits]))
    return metrics


# ---- the run -------------------------------------------------------------------------------------------
def _evaluate_callback():
    """The held-out evaluation every ``eval_every`` steps, kept in the Trainer's state (so checkpoints hold
    it); built lazily: transformers is imported only when a run starts."""
    from transformers import TrainerCallback

    class Evaluate(TrainerCallback):
        def __init__(self, run: SftRun):
            self.run = run

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 0:  # the starting point, kept in the state like every later one
                self.run.record_eval(model, state)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            every = self.run.s.eval_every
            if every and state.global_step % every == 0:
                self.run.record_eval(model, state)

    return Evaluate


def _trainer_class():
    """``SFTTrainer`` whose loss is the token mean of each optimizer step, and that restores checkpoint
    weights through ``from_pretrained`` (:func:`training.checkpoint_loading`)."""
    from trl import SFTTrainer

    class G1SFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Qwen2.5-VL declares no loss kwargs, so the Trainer would not count the answer tokens of a
            # whole step and the loss would be a mean of per-micro-batch means (over accumulation steps and
            # processes); with the count, TRL's loss is the token mean of the step, however it is split.
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # TRL's fused LM head scores only the answer tokens where Triton runs (CUDA); elsewhere it scores
            # every position (and recomputes each tile in the backward), which on a CPU costs ~40 % of a step
            # when the prompt is 4x longer than the answer. Our batches hold every answer in the last columns.
            if return_outputs or inputs["input_ids"].device.type == "cuda":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return self._answer_window_loss(model, inputs, num_items_in_batch)

        def _answer_window_loss(self, model, inputs, num_items_in_batch):
            """The same loss (token mean over the step's answer tokens), with the LM head run only on the
            last columns, from the first one that holds a label (``build_inputs`` puts answers at the end)."""
            import torch
            import torch.nn.functional as F

            from ..models.loading import IGNORE_INDEX

            labels = inputs["labels"]
            labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
            first = int(labelled[0]) if len(labelled) else labels.shape[1] - 1
            keep = labels.shape[1] - first + 1  # the position before the first label predicts it
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            logits = model(**model_inputs, use_cache=False, logits_to_keep=keep).logits[:, :-1].float()
            targets = labels[:, first:]
            mask = targets != IGNORE_INDEX
            tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ) / torch.as_tensor(tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as TRL: DDP averages
            with torch.no_grad():  # TRL's training metrics, on the answer tokens
                picked = logits[mask]
                entropy = -(picked.softmax(-1) * picked.log_softmax(-1)).sum(-1)
                hits = (picked.argmax(-1) == targets[mask]).sum()
                gather = self.accelerator.gather_for_metrics
                valid = gather(mask.sum()).sum().clamp(min=1)
                self._metrics["train"]["entropy"].append((gather(entropy.sum()).sum() / valid).item())
                self._metrics["train"]["mean_token_accuracy"].append((gather(hits).sum() / valid).item())
                seen = gather(inputs["attention_mask"].sum()).sum().item()
                self._total_train_tokens += seen // self._tp_size
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    return training.checkpoint_loading(G1SFTTrainer)


class SftRun(training.TrainingRun):
    """One SFT run from ``dataset_uri`` into ``output_uri``; call :meth:`run`."""

    stage = "sft"

    def __init__(
        self,
        cfg: Any,
        dataset_uri: str,
        output_uri: str,
        progress: bool = True,
        on_metrics: MetricsSink | None = None,
        work_dir: str | os.PathLike | None = None,
    ):
        super().__init__(cfg, cfg.sft, output_uri, progress, on_metrics, work_dir)
        self.dataset_uri = dataset_uri
        self.history: list[dict] = []

    @property
    def eval_seconds(self) -> float:
        """Seconds spent in held-out evaluations (not counted as training time)."""
        return self.paused

    def record_eval(self, model, state) -> dict[str, float]:
        """Evaluate on the held-out states, log it, and keep it in the Trainer state's log history."""
        if not self.heldout:
            return {}
        t0 = time.perf_counter()
        synced = self.world > 1 and distributed.zero_stage(self.ds_config) == 3
        metrics = evaluate_heldout(
            model,
            self.processor,
            self.heldout,
            self.images,
            self.max_new_tokens,
            self.s.eval_batch_size,
            synced,
        )
        entry = {"step": state.global_step, "samples_seen": self.samples_seen(state), **metrics}
        state.log_history.append({"g1_eval": entry})
        log.info(
            "step %d: held-out perception exact %.3f (cells %.3f), format %.3f (%.1f s)",
            state.global_step, metrics["heldout.perception_exact"], metrics["heldout.perception_cells"],
            metrics["heldout.format_rate"],
            time.perf_counter() - t0,
        )  # fmt: skip
        self.emit(metrics, state.global_step)
        self.paused += time.perf_counter() - t0
        return metrics

    def samples_per_step(self) -> int:
        """Training samples per optimizer step, over every process."""
        return self.s.batch_size * self.s.grad_accum * self.world

    def samples_seen(self, state) -> int:
        return min(state.global_step * self.samples_per_step(), len(self.train))

    # ---- setup ------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        from .distill import load_manifest

        root = _local_dataset(self.dataset_uri)
        rows = load_manifest(str(root))
        if self.s.games:
            rows = [r for r in rows if r["game"] in self.s.games or r["spec"] in self.s.games]
        if not rows:
            raise ValueError(
                f"dataset_uri {self.dataset_uri!r} has no samples"
                + (f" of sft.games={self.s.games}" if self.s.games else "")
            )
        train, self.heldout = split_heldout(rows, self.s.heldout_per_game, self.s.seed)
        total = self.s.samples or max(1, round(self.s.epochs * len(train)))
        self.train = mix(train, self.s.game_weights, total, self.s.seed)
        self.images = ImageCache(root)
        log.info(
            "SFT data: %d samples from %s (%d training, %d held-out states) -> %d training samples",
            len(rows), self.dataset_uri, len(train), len(self.heldout), len(self.train),
        )  # fmt: skip

    def _load_model(self):
        from ..models.budget import PixelBudget
        from ..models.loading import count_image_tokens, load_model, preflight
        from ..policies import resolve_model

        m = self.cfg.model
        budget = PixelBudget(m.pixels.min_pixels, m.pixels.max_pixels)
        model, self.processor = load_model(
            resolve_model(m.name_or_path), dtype=self.weights_dtype(), device=self.device(), budget=budget
        )
        prompts = {(tuple(r["image_size"]), r["prompt"]) for r in self.train + self.heldout}
        self.prompt_tokens = max(
            preflight(self.processor, size, prompt, m.max_prompt_tokens) for size, prompt in prompts
        )
        self.image_tokens = max(count_image_tokens(self.processor, size) for size, _ in prompts)
        answers = {r["answer"] for r in self.train}  # the mix repeats rows: each answer tokenized once
        self.answer_tokens = max(len(self.processor.tokenizer(a)["input_ids"]) for a in answers)
        self.max_new_tokens = self.s.eval_max_new_tokens or self.answer_tokens + 16
        return self.prepare_model(model)

    def memory_workload(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "answer_tokens": self.answer_tokens}

    def _training_args(self):
        from trl import SFTConfig as TrlSFTConfig

        return TrlSFTConfig(
            **self.common_args(),
            gradient_accumulation_steps=self.s.grad_accum,
            num_train_epochs=1,  # the mix already holds every pass over the data
            max_length=None,
            dataset_kwargs={"skip_prepare_dataset": True},
        )

    # ---- run --------------------------------------------------------------------------------------
    def run(self) -> SftResult:
        done = self.finished()
        if done is not None:
            return SftResult(**done)
        processes = distributed.resolve_num_processes(self.s.num_processes)
        if processes > 1 and not distributed.launched():
            return self._launch(processes)
        return self._train()

    def _launch(self, processes: int) -> SftResult:
        """Train in ``processes`` workers (see :mod:`g1core.distributed`) after doing once what all need."""
        from ..policies import resolve_model

        data = _local_dataset(self.dataset_uri)
        model = self.cfg.model.model_copy(update={"name_or_path": resolve_model(self.cfg.model.name_or_path)})
        args = {
            "cfg": {"model": model.model_dump(mode="json"), "sft": self.s.model_dump(mode="json")},
            "dataset_uri": str(data),
        }
        return SftResult(**self.launch(f"{__name__}:_worker", args, processes))

    def _train(self) -> SftResult:
        """Train in this process (alone, or as one rank of a launch)."""
        self.setup_process()
        self._load_data()
        model = self._load_model()
        resume = self.restore_checkpoint()
        with distributed.deepspeed_session() if self.ds_config else nullcontext():
            trainer, output, seconds = self._fit(model, resume)
            evals = self._final_evals(trainer)
            model_uri = self.save_final(trainer, self.processor)
        state = trainer.state
        steps_run = state.global_step - (int(Path(resume).name.split("-")[-1]) if resume else 0)
        tokens = float(getattr(trainer, "_total_train_tokens", 0))
        result = SftResult(
            uri=self.uri,
            model_uri=model_uri,
            steps=state.global_step,
            samples_seen=self.samples_seen(state),
            train_samples=len(self.train),
            heldout_states=len(self.heldout),
            train_seconds=seconds,
            eval_seconds=self.eval_seconds,
            samples_per_s=steps_run * self.samples_per_step() / seconds if seconds else 0.0,
            tokens_per_s=tokens / seconds if seconds else 0.0,
            train_loss=float(output.training_loss),
            resumed_from_step=state.global_step - steps_run,
            final={k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith("heldout.")},
            history=evals,
        )
        self.write_result(result.to_dict())
        if self.main:
            log.info("SFT done: %d steps, model in %s", result.steps, model_uri)
        return result

    def _fit(self, model, resume: str | None):
        """(trainer, train output, seconds): the Trainer built over this run's data, and its training."""
        from datasets import Dataset

        # The Trainer's sampler orders (and on resume skips) row numbers; the collator looks the rows up.
        dataset = Dataset.from_dict({"row": list(range(len(self.train)))})
        throughput, mirror, cooldown = training.callbacks()
        args = self._training_args()
        self.world = args.world_size
        self.log_memory_plan(model)
        trainer = _trainer_class()(
            model=model,
            args=args,
            data_collator=Collator(self.processor, self.images, self.train),
            train_dataset=dataset,
            processing_class=self.processor,
            callbacks=[_evaluate_callback()(self), throughput(self), mirror(self), cooldown(self)],
        )
        training.quiet_console(trainer, self.progress and self.main)
        self.started, self.paused = time.perf_counter(), 0.0
        output = trainer.train(resume_from_checkpoint=resume)
        return trainer, output, self.training_time()

    def _final_evals(self, trainer) -> list[dict]:
        """The run's held-out evaluations, the last one at the final step (evaluated now if need be)."""
        state = trainer.state
        evals = [e["g1_eval"] for e in state.log_history if "g1_eval" in e]
        if not evals or evals[-1]["step"] != state.global_step:
            self.record_eval(trainer.model, state)
            evals = [e["g1_eval"] for e in state.log_history if "g1_eval" in e]
        return evals


def _worker(args: dict) -> None:
    """One process of a launched run (:func:`g1core.distributed.launch`): the same run, on its share of data;
    rank 0 writes its metrics to the log the parent forwards."""
    sink = distributed.MetricsLog(args["metrics_log"]) if distributed.rank() == 0 else None
    cfg = SftRunConfig.model_validate(args["cfg"])
    SftRun(cfg, args["dataset_uri"], args["output_uri"], args["progress"], sink, args["work_dir"]).run()


def run(
    cfg: Any,
    dataset_uri: str,
    output_uri: str,
    progress: bool = True,
    on_metrics: MetricsSink | None = None,
    work_dir: str | os.PathLike | None = None,
) -> SftResult:
    """Fine-tune ``cfg.model`` on the data set at ``dataset_uri`` with ``cfg.sft``, into ``output_uri``.

    ``cfg`` is a PipelineConfig with an ``sft`` section, or an :class:`SftRunConfig`. A run that finds
    checkpoints under ``output_uri`` resumes from the newest; one that finds ``result.json`` returns it.
    ``on_metrics(metrics, step)`` receives training and held-out metrics as they come (MLflow).
    """
    return SftRun(cfg, dataset_uri, output_uri, progress, on_metrics, work_dir).run()


def metrics(result: SftResult) -> dict[str, float]:
    """Flat numbers for MLflow: final held-out scores, throughput, and the run's size."""
    out = {
        "steps": float(result.steps),
        "samples_seen": float(result.samples_seen),
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "samples_per_s": result.samples_per_s,
        "tokens_per_s": result.tokens_per_s,
        "train_loss": result.train_loss,
    }
    out.update({k: float(v) for k, v in result.final.items()})
    return out
