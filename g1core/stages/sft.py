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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from .. import storage
from ..config import ModelConfig, Section, TrackingConfig
from ..gym import answer

log = logging.getLogger(__name__)

MetricsSink = Callable[[dict[str, float], int], None]  # (metrics, step), e.g. StageRun.log_metrics
LATEST = "LATEST"  # names the newest fully uploaded checkpoint under <output>/checkpoints/
RESULT = "result.json"


class LoraSettings(Section):
    r: int = Field(
        default=0, ge=0, description="LoRA rank; 0 trains all weights (needs the peft package if > 0)."
    )
    alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator (alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Language-model linear layers that get adapters (the final model is merged).",
    )


class SftConfig(Section):
    # ---- data ----
    games: list[str] = Field(
        default=[], description="Games (or game specs) of the data set to train on; empty = all of them."
    )
    game_weights: dict[str, float] = Field(
        default={},
        description="Sampling weight per game; empty = each game as often as it has samples (a plain epoch).",
    )
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training samples (paper: 1).")
    samples: int | None = Field(
        default=None, ge=1, description="Training samples to draw in all; overrides epochs when set."
    )
    heldout_per_game: int = Field(
        default=32, ge=0, description="States per game kept out of training to measure perception."
    )
    # ---- optimisation ----
    learning_rate: float = Field(default=2e-5, gt=0, description="Peak learning rate (paper: 2e-5).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule over the run."
    )
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(default=16, ge=1, description="Samples per device per forward pass.")
    grad_accum: int = Field(default=1, ge=1, description="Forward passes per optimizer step.")
    seed: int = Field(default=0, description="Seed of the weights' noise, the data mix and the data order.")
    freeze_vision: bool = Field(
        default=False, description="Freeze the vision tower (patch embedding and blocks; the merger trains)."
    )
    lora: LoraSettings = Field(
        default_factory=LoraSettings, description="Low-rank adapters instead of full SFT."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass: less memory, more compute."
    )
    bf16: Literal["auto", "on", "off"] = Field(
        default="auto", description="bf16 mixed precision: auto = on GPUs that support it, never on CPU."
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads for torch; None = every core of the machine."
    )
    max_train_minutes: float | None = Field(
        default=None,
        gt=0,
        description="Stop training after this much wall time (benchmarks); None = no limit.",
    )
    # ---- checkpoints, logging, evaluation ----
    checkpoint_every: int = Field(default=200, ge=1, description="Optimizer steps between checkpoints.")
    keep_checkpoints: int = Field(default=2, ge=1, description="Checkpoints kept locally and in the store.")
    log_every: int = Field(default=10, ge=1, description="Steps between loss / lr / tokens-per-s records.")
    eval_every: int = Field(
        default=100, ge=0, description="Steps between held-out evaluations; 0 = only before and after."
    )
    eval_batch_size: int = Field(default=32, ge=1, description="Held-out states per generation batch.")
    eval_max_new_tokens: int | None = Field(
        default=None, ge=1, description="Longest generated reply; None = longest training answer + 16 tokens."
    )

    @model_validator(mode="after")
    def _weights(self):
        bad = {g: w for g, w in self.game_weights.items() if w < 0}
        if bad:
            raise ValueError(f"game_weights must be >= 0, got {bad}")
        if self.game_weights and not any(self.game_weights.values()):
            raise ValueError("game_weights: at least one weight must be > 0")
        return self


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
    train_seconds: float = 0.0
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
    model, processor, rows: Sequence[dict], images: ImageCache, max_new_tokens: int, batch_size: int = 32
) -> dict[str, float]:
    """Greedy replies on held-out states: perception exact-match and format rate, overall and per game."""
    import torch

    from ..models.loading import build_inputs

    hits: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            inputs = build_inputs(
                processor, [images(r["image"]) for r in chunk], [r["prompt"] for r in chunk]
            )
            with torch.inference_mode():
                out = model.generate(
                    **inputs.to(model.device), max_new_tokens=max_new_tokens, do_sample=False, use_cache=True
                )
            texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for row, text in zip(chunk, texts, strict=True):
                hits[row["game"]].append(
                    (answer.perception_exact(text, row["text_observation"]), answer.is_well_formed(text))
                )
    finally:
        model.train(was_training)
    every = [h for game in hits.values() for h in game]
    metrics = {
        "heldout.perception_exact": float(np.mean([p for p, _ in every])) if every else float("nan"),
        "heldout.format_rate": float(np.mean([f for _, f in every])) if every else float("nan"),
    }
    for game, game_hits in sorted(hits.items()):
        metrics[f"heldout.{game}.perception_exact"] = float(np.mean([p for p, _ in game_hits]))
        metrics[f"heldout.{game}.format_rate"] = float(np.mean([f for _, f in game_hits]))
    return metrics


# ---- the run -------------------------------------------------------------------------------------------
def _callbacks():
    """The Trainer callbacks (built lazily: transformers is imported only when a run starts)."""
    from transformers import TrainerCallback

    class Evaluate(TrainerCallback):
        """Held-out evaluation every ``every`` steps, kept in the Trainer's state (so checkpoints hold it)."""

        def __init__(self, run: SftRun):
            self.run = run

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 0:  # the starting point, kept in the state like every later one
                self.run.record_eval(model, state)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            every = self.run.s.eval_every
            if every and state.global_step % every == 0:
                self.run.record_eval(model, state)

    class Throughput(TrainerCallback):
        """Loss, learning rate and tokens/s every ``log_every`` steps, sent to the metrics sink."""

        def __init__(self, run: SftRun):
            self.run = run
            self.mark: tuple[float, float] | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            now, tokens = time.perf_counter(), float(logs.get("num_tokens", 0.0))
            if self.mark is not None and now > self.mark[0] and tokens >= self.mark[1]:
                logs["tokens_per_s"] = (tokens - self.mark[1]) / (now - self.mark[0])
            self.mark = (now, tokens)
            numbers = {
                f"train.{k}": float(v) for k, v in logs.items() if isinstance(v, int | float) and k != "epoch"
            }
            self.run.emit(numbers, state.global_step)

    class Mirror(TrainerCallback):
        """Upload each checkpoint, then name it in LATEST; prune old ones; obey the time limit."""

        def __init__(self, run: SftRun):
            self.run = run

        def on_save(self, args, state, control, **kwargs):
            self.run.mirror_checkpoint(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            limit = self.run.s.max_train_minutes
            if limit is not None and time.perf_counter() - self.run.started > limit * 60:
                log.info("max_train_minutes=%g reached at step %d; stopping", limit, state.global_step)
                control.should_training_stop = True

    return Evaluate, Throughput, Mirror


def _trainer_class():
    """``SFTTrainer`` that restores checkpoint weights through ``from_pretrained``.

    transformers 5 saves Qwen2.5-VL checkpoints under the original (hub) key names but the Trainer's resume
    loads them with a bare ``load_state_dict(strict=False)``, which matches none of them and silently keeps
    the current weights; loading through the model class applies the key conversion.
    """
    from accelerate.utils import is_peft_model
    from trl import SFTTrainer

    class G1SFTTrainer(SFTTrainer):
        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = self.model if model is None else model
            if is_peft_model(model) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            dtype = next(model.parameters()).dtype
            saved = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
            model.load_state_dict(saved.state_dict(), strict=True)
            log.info("model weights restored from %s", resume_from_checkpoint)

    return G1SFTTrainer


def _quiet_console(trainer, progress: bool) -> None:
    """Keep stdout clean: the Trainer prints every log dict; ours go to logging and the metrics sink."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(BarOnly())


class SftRun:
    """One SFT run from ``dataset_uri`` into ``output_uri``; call :meth:`run`."""

    def __init__(
        self,
        cfg: Any,
        dataset_uri: str,
        output_uri: str,
        progress: bool = True,
        on_metrics: MetricsSink | None = None,
        work_dir: str | os.PathLike | None = None,
    ):
        self.cfg = cfg
        self.s: SftConfig = cfg.sft
        self.dataset_uri, self.uri, self.progress = dataset_uri, output_uri, progress
        self.on_metrics = on_metrics
        from ..policies import work_dir as default_work_dir

        root = Path(work_dir) if work_dir else default_work_dir() / "sft"
        self.local = root / hashlib.sha256(output_uri.encode()).hexdigest()[:16]
        self.history: list[dict] = []
        self.started = time.perf_counter()

    # ---- helpers used by the callbacks -----------------------------------------------------------
    def emit(self, metrics: dict[str, float], step: int) -> None:
        """Send metrics to the sink (MLflow in the pipeline); a failing sink never stops training."""
        if self.on_metrics is None or not metrics:
            return
        try:
            self.on_metrics(metrics, step)
        except Exception as err:  # tracking is best effort during training
            log.warning("could not record metrics at step %d: %s", step, err)

    def record_eval(self, model, state) -> dict[str, float]:
        """Evaluate on the held-out states, log it, and keep it in the Trainer state's log history."""
        if not self.heldout:
            return {}
        t0 = time.perf_counter()
        metrics = evaluate_heldout(
            model, self.processor, self.heldout, self.images, self.max_new_tokens, self.s.eval_batch_size
        )
        entry = {"step": state.global_step, "samples_seen": self.samples_seen(state), **metrics}
        state.log_history.append({"g1_eval": entry})
        log.info(
            "step %d: held-out perception exact %.3f, format %.3f (%.1f s)",
            state.global_step, metrics["heldout.perception_exact"], metrics["heldout.format_rate"],
            time.perf_counter() - t0,
        )  # fmt: skip
        self.emit(metrics, state.global_step)
        return metrics

    def samples_seen(self, state) -> int:
        return min(state.global_step * self.s.batch_size * self.s.grad_accum, len(self.train))

    def mirror_checkpoint(self, step: int) -> None:
        """Copy ``checkpoint-<step>`` to the store, mark it newest, drop stored ones the Trainer dropped."""
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

    def _restore_checkpoint(self) -> str | None:
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
        from ..models.loading import load_model, preflight
        from ..policies import resolve_model

        m = self.cfg.model
        budget = PixelBudget(m.pixels.min_pixels, m.pixels.max_pixels)
        model, self.processor = load_model(resolve_model(m.name_or_path), dtype=m.dtype, budget=budget)
        for image_size, prompt in {(tuple(r["image_size"]), r["prompt"]) for r in self.train + self.heldout}:
            preflight(self.processor, image_size, prompt, m.max_prompt_tokens)
        longest = max(len(self.processor.tokenizer(r["answer"])["input_ids"]) for r in self.train)
        self.max_new_tokens = self.s.eval_max_new_tokens or longest + 16
        if self.s.freeze_vision:
            visual = model.model.visual
            for name, p in visual.named_parameters():
                p.requires_grad = name.startswith("merger.")
        if self.s.lora.r > 0:
            model = self._with_lora(model)
        return model

    def _with_lora(self, model):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as err:
            raise ModuleNotFoundError("sft.lora.r > 0 needs the peft package (pip install peft)") from err
        lora = self.s.lora
        targets = rf"model\.language_model\..*\.({'|'.join(lora.target_modules)})"
        peft_cfg = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets
        )
        return get_peft_model(model, peft_cfg)

    def _training_args(self):
        import torch
        from trl import SFTConfig as TrlSFTConfig

        s = self.s
        cuda = torch.cuda.is_available()
        bf16 = s.bf16 == "on" or (s.bf16 == "auto" and cuda and torch.cuda.is_bf16_supported())
        if bf16 and not cuda:
            raise ValueError("sft.bf16=on needs a GPU; use 'auto' or 'off' on CPU")
        return TrlSFTConfig(
            output_dir=str(self.local / "trainer"),
            per_device_train_batch_size=s.batch_size,
            gradient_accumulation_steps=s.grad_accum,
            num_train_epochs=1,  # the mix already holds every pass over the data
            learning_rate=s.learning_rate,
            lr_scheduler_type=s.lr_scheduler,
            warmup_steps=s.warmup_ratio,
            weight_decay=s.weight_decay,
            max_grad_norm=s.max_grad_norm,
            seed=s.seed,
            data_seed=s.seed,
            bf16=bf16,
            use_cpu=not cuda,
            gradient_checkpointing=s.gradient_checkpointing,
            logging_steps=s.log_every,
            save_strategy="steps",
            save_steps=s.checkpoint_every,
            save_total_limit=s.keep_checkpoints,
            report_to="none",
            disable_tqdm=not self.progress,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            max_length=None,
            dataset_kwargs={"skip_prepare_dataset": True},
        )

    # ---- run --------------------------------------------------------------------------------------
    def run(self) -> SftResult:
        done = storage.join(self.uri, RESULT)
        if storage.exists(done):
            log.info("%s already holds a finished SFT run; nothing to do", self.uri)
            return SftResult(**json.loads(storage.read_bytes(done)))
        import torch
        from datasets import Dataset

        torch.set_num_threads(self.s.threads or os.cpu_count() or 1)
        self._load_data()
        model = self._load_model()
        resume = self._restore_checkpoint()
        # The Trainer's sampler orders (and on resume skips) row numbers; the collator looks the rows up.
        dataset = Dataset.from_dict({"row": list(range(len(self.train)))})
        evaluate, throughput, mirror = _callbacks()
        trainer = _trainer_class()(
            model=model,
            args=self._training_args(),
            data_collator=Collator(self.processor, self.images, self.train),
            train_dataset=dataset,
            processing_class=self.processor,
            callbacks=[evaluate(self), throughput(self), mirror(self)],
        )
        _quiet_console(trainer, self.progress)
        self.started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - self.started
        state = trainer.state
        evals = [e["g1_eval"] for e in state.log_history if "g1_eval" in e]
        final = evals[-1] if evals and evals[-1]["step"] == state.global_step else None
        if final is None:
            self.record_eval(trainer.model, state)
            evals = [e["g1_eval"] for e in state.log_history if "g1_eval" in e]
            final = evals[-1] if evals else {}
        model_uri = self._save_final(trainer)
        steps_run = state.global_step - (int(Path(resume).name.split("-")[-1]) if resume else 0)
        tokens = float(getattr(trainer, "_total_train_tokens", 0))
        samples_run = steps_run * self.s.batch_size * self.s.grad_accum
        result = SftResult(
            uri=self.uri,
            model_uri=model_uri,
            steps=state.global_step,
            samples_seen=self.samples_seen(state),
            train_samples=len(self.train),
            heldout_states=len(self.heldout),
            train_seconds=seconds,
            samples_per_s=samples_run / seconds if seconds else 0.0,
            tokens_per_s=tokens / seconds if seconds else 0.0,
            train_loss=float(output.training_loss),
            resumed_from_step=state.global_step - steps_run,
            final={k: v for k, v in (final or {}).items() if k.startswith("heldout.")},
            history=evals,
        )
        storage.write_bytes(done, json.dumps(result.to_dict(), indent=2).encode())
        log.info("SFT done: %d steps, model in %s", result.steps, model_uri)
        return result

    def _save_final(self, trainer) -> str:
        """The trained model (adapters merged) and its processor, in HF format, to ``<uri>/model``."""
        model = trainer.model
        if self.s.lora.r > 0:
            model = model.merge_and_unload()
        out = self.local / "final"
        if out.exists():
            shutil.rmtree(out)
        model.save_pretrained(out)
        self.processor.save_pretrained(out)
        model_uri = storage.join(self.uri, "model")
        storage.put_dir(out, model_uri)
        return model_uri


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
        "samples_per_s": result.samples_per_s,
        "tokens_per_s": result.tokens_per_s,
        "train_loss": result.train_loss,
    }
    out.update({k: float(v) for k, v in result.final.items()})
    return out
