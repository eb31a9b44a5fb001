"""GRPO on VLM-Gym: the RL stage (G1 spec section 5). G0 starts from the base model, G1 from the SFT model.

Each RL step samples ``states_per_step`` game states, generates ``num_generations`` answers to each, scores
every answer by executing its move from that exact state, and takes one optimizer step on TRL's
``GRPOTrainer`` loss (the ``paper`` preset: group-normalised advantages, k3 KL to the initial model at 0.01,
clip 0.2, constant lr 1e-6; ``dapo`` and ``dr-grpo`` are the other presets).

- **States**: a virtual, reproducible training set. Row ``i`` is a game spec (drawn by ``game_weights``
  from ``(seed, i)``) and the state ``EnvPool.sample_state(spec, state_seed(seed, i, spec))``, rendered when
  the row is read; step ``k`` reads rows ``k * states_per_step ...`` in order, so a resumed run continues
  the stream where it stopped (the Trainer skips the rows already used) and repeats nothing.
- **Rewards**: the pool's named components (game, format, perception, survival, legal), each a TRL reward
  with its weight (``reward_weights``); all are computed once per answer and logged apart.
- **Generation**: vLLM colocated on the training GPUs (``use_vllm``), Hugging Face ``generate`` elsewhere;
  the same code path otherwise.
- **Metrics per step**: each reward component's mean, game reward per game, perception exact-match P_acc,
  reasoning accuracy R_acc = P(game reward > 0 | perception exact), unparseable and illegal rates, the
  share of zero-variance groups, KL, entropy, answer length, generation tokens/s, and the step's time
  split (state sampling, generation, scoring, update).
- **Output**: ``model/`` (Hugging Face format with its processor), ``result.json`` (summary and the
  per-step history), ``checkpoints/`` (resumable, see :mod:`g1core.stages.training`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from .. import distributed
from ..config import GrpoConfig, ModelConfig, Section, TrackingConfig
from ..gym import answer, rewards
from ..gym.pool import EnvPool, GameSpec, SampledState, Scored, state_seed
from ..models import vllm_bridge
from . import training
from .training import MetricsSink

log = logging.getLogger(__name__)

# the per-step series kept in result.json (and so in the benchmark's output); one per reward component
HISTORY_KEYS = (
    "reward", *(f"rewards/{name}/mean" for name in rewards.REWARDS), "perception_exact", "reasoning_accuracy",
    "unparseable_rate", "illegal_rate", "frac_reward_zero_std", "kl", "entropy", "completions/mean_length",
    "generation_tokens_per_s", "time/sampling", "time/generation", "time/scoring", "time/update",
    "time/step", "time/sampling_and_scoring_share",
)  # fmt: skip


class GrpoRunConfig(Section):
    """What the stage reads: the base model and the grpo section (a PipelineConfig has both)."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model (pixel budget too).")
    grpo: GrpoConfig = Field(default_factory=GrpoConfig, description="GRPO settings.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow settings.")


@dataclass
class GrpoResult:
    """What a finished GRPO run produced (also stored as ``result.json`` beside the model)."""

    uri: str
    model_uri: str
    start_model: str = ""
    steps: int = 0
    states_seen: int = 0
    answers_seen: int = 0
    train_seconds: float = 0.0
    resumed_from_step: int = 0
    final: dict[str, float] = field(default_factory=dict)  # the last step's metrics
    history: list[dict] = field(default_factory=list)  # one entry per logged step

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the state stream ------------------------------------------------------------------------------------
class StateStream:
    """The training set: row ``i`` -> game spec and seed -> state -> prompt and screen, made when read.

    Rows are cached (the Trainer reads each row once per answer and once per accumulation step), and the
    time spent sampling and rendering new states is added up for the step's time split.
    """

    def __init__(
        self,
        pool: EnvPool,
        rows: int,
        seed: int,
        weights: dict[str, float] | None = None,
        cache_rows: int = 256,
    ):
        self.pool, self.rows, self.seed = pool, int(rows), int(seed)
        self.specs = list(pool.specs)
        share = np.asarray([_spec_weight(weights or {}, s) for s in self.specs], dtype=float)
        if share.sum() <= 0:
            raise ValueError("grpo.game_weights: every game of grpo.gym.games has weight 0")
        self.share = share / share.sum()
        self.cache_rows = cache_rows
        self._cache: OrderedDict[int, tuple[SampledState, Any]] = OrderedDict()
        self.sampling_seconds = 0.0

    def __len__(self) -> int:
        return self.rows

    def spec(self, i: int) -> GameSpec:
        """The game of row ``i``: drawn with the games' shares from ``(seed, i)``, the same on every run."""
        if len(self.specs) == 1:
            return self.specs[0]
        u = np.random.default_rng([self.seed, int(i), 0x6A3E]).random()
        k = int(np.searchsorted(np.cumsum(self.share), u, side="right"))
        return self.specs[min(k, len(self.specs) - 1)]

    def state(self, i: int) -> SampledState:
        return self._entry(i)[0]

    def _entry(self, i: int) -> tuple[SampledState, Any]:
        i = int(i)
        if not 0 <= i < self.rows:
            raise IndexError(f"state stream row {i} out of range(0, {self.rows})")
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        from PIL import Image

        t0 = time.perf_counter()
        spec = self.spec(i)
        state = self.pool.sample_state(spec, state_seed(self.seed, i, str(spec)))
        entry = (state, Image.fromarray(state.image))
        self.sampling_seconds += time.perf_counter() - t0
        self._cache[i] = entry
        if len(self._cache) > self.cache_rows:
            self._cache.popitem(last=False)
        return entry

    def __getitem__(self, i: int) -> dict[str, Any]:
        from ..models.loading import build_messages

        state, image = self._entry(i)
        prompt = build_messages(state.prompt)
        return {"prompt": prompt, "image": image, "row": int(i), "game": state.spec.game}

    def transform(self, batch: dict[str, list]) -> dict[str, list]:
        """A batch of row numbers -> the rows themselves (a ``datasets`` on-the-fly transform)."""
        items = [self[i] for i in batch["row"]]
        return {key: [item[key] for item in items] for key in ("prompt", "image", "row", "game")}

    def as_dataset(self):
        """A ``datasets.Dataset`` of row numbers that reads as this stream (TRL's trainer wants one): its
        sampler orders and, on resume, skips row numbers; only the rows read are ever sampled."""
        from datasets import Dataset

        return Dataset.from_dict({"row": list(range(self.rows))}).with_transform(self.transform)

    def take_sampling_seconds(self) -> float:
        seconds, self.sampling_seconds = self.sampling_seconds, 0.0
        return seconds


def training_pool(settings: GrpoConfig) -> EnvPool:
    """The pool a GRPO section's states are sampled and its answers scored with (its games, screens,
    warm-up and reward weights)."""
    g = settings.gym
    return EnvPool(
        g.games, 0, g.screen_size, weights=settings.reward_weights, warmup=g.warmup, warmup_draw=g.warmup_draw
    )


def _spec_weight(weights: dict[str, float], spec: GameSpec) -> float:
    if not weights:
        return 1.0
    weight = weights.get(str(spec), weights.get(spec.game))
    if weight is None:
        raise ValueError(f"grpo.game_weights has no weight for {spec} (keys: {sorted(weights)})")
    return float(weight)


# ---- scoring -----------------------------------------------------------------------------------------------
def _text(completion: Any) -> str:
    """A completion as TRL hands it to reward functions: a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] if isinstance(m["content"], str) else "" for m in completion)


class Scorer:
    """Scores a batch of answers once (each executed from its row's exact state) and serves each reward
    component to TRL as its own reward function; keeps the batch's scores for the step's metrics."""

    def __init__(self, stream: StateStream, names: Sequence[str]):
        self.stream, self.names = stream, list(names)
        self._key: tuple | None = None
        self.scores: list[Scored] = []
        self.truths: list[str] = []
        self.texts: list[str] = []
        self.games: list[str] = []

    def score(self, rows: Sequence[int], completions: Sequence[Any]) -> list[Scored]:
        texts = [_text(c) for c in completions]
        key = (tuple(int(r) for r in rows), tuple(texts))
        if key == self._key:
            return self.scores
        by_row: dict[int, list[int]] = defaultdict(list)
        for k, row in enumerate(key[0]):
            by_row[row].append(k)
        scores: list[Scored | None] = [None] * len(texts)
        truths = [""] * len(texts)
        for row, where in by_row.items():
            state = self.stream.state(row)
            group = self.stream.pool.score_group(state, [texts[k] for k in where])
            for k, scored in zip(where, group.scores, strict=True):
                scores[k], truths[k] = scored, state.text
        self._key, self.scores, self.truths, self.texts = key, scores, truths, texts
        self.games = [self.stream.spec(r).game for r in key[0]]
        return self.scores

    def reward_functions(self) -> list:
        """One function per component, named after it (TRL logs ``rewards/<name>/mean``)."""

        def make(name: str):
            def component(prompts, completions, row, **kwargs) -> list[float]:
                return [s.parts[name] for s in self.score(row, completions)]

            component.__name__ = name
            return component

        return [make(name) for name in self.names]

    def tallies(self) -> dict[str, tuple[float, float]]:
        """The last scored batch as (sum, count) per metric, every game of the stream keyed even when the
        batch had none of it, so that the processes of a multi-process run hold the same keys to add up."""
        pairs = zip(self.texts, self.truths, strict=True)
        exact = np.array([answer.perception_exact(text, truth) for text, truth in pairs], dtype=bool)
        game = np.array([s.parts["game"] for s in self.scores], dtype=float)
        n = float(len(self.scores))
        out = {
            "perception_exact": (float(exact.sum()), n),
            "reasoning_accuracy": (float((game[exact] > 0).sum()) if n else 0.0, float(exact.sum())),
            "unparseable_rate": (float(sum(not s.parsed for s in self.scores)), n),
            "illegal_rate": (float(sum(s.parsed and not s.legal for s in self.scores)), n),
        }
        for name in sorted({spec.game for spec in self.stream.specs}):
            mask = np.array([g == name for g in self.games], dtype=bool)
            out[f"game_reward/{name}"] = (float(game[mask].sum()) if mask.any() else 0.0, float(mask.sum()))
        return out

    @staticmethod
    def metrics(tallies: dict[str, tuple[float, float]]) -> dict[str, float]:
        """Tallies (of one process, or added up over all) -> P_acc, R_acc, the unparseable and illegal
        rates and the game reward per game; R_acc is NaN when no answer read the board exactly, a game
        with no answer in the batch is left out."""
        out = {}
        for name, (total, count) in tallies.items():
            if count:
                out[name] = total / count
            elif name == "reasoning_accuracy":
                out[name] = float("nan")
        return out


# ---- the trainer -----------------------------------------------------------------------------------------
class _ReferenceKwargsUsed(logging.Filter):
    """Drops TRL's warning that ``model_init_kwargs`` are ignored beside a model instance: TRL still builds
    the KL reference model from them (GRPOTrainer.__init__, "Reference model"), which is why we pass them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "model_init_kwargs" not in record.getMessage()


def _trainer_class():
    """``GRPOTrainer`` that records the step's time split and our per-step metrics beside TRL's."""
    from trl import GRPOTrainer

    trl_log = logging.getLogger(GRPOTrainer.__module__)
    if not any(isinstance(f, _ReferenceKwargsUsed) for f in trl_log.filters):
        trl_log.addFilter(_ReferenceKwargsUsed())

    class G1GRPOTrainer(GRPOTrainer):
        def __init__(self, *args, stream: StateStream, scorer: Scorer, **kwargs):
            super().__init__(*args, **kwargs)
            self.stream, self.scorer = stream, scorer
            if self.use_vllm:  # one placeholder per screen for vLLM to expand, and its prompts checked
                vllm_bridge.guard_generation(self.vllm_generation, self.processing_class.image_token_id)
            self._split = defaultdict(float)  # seconds (and tokens) of the RL step under way
            self._mark: float | None = None  # when it began

        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            seconds = time.perf_counter() - t0
            self._split["generation"] += seconds
            self._split["generated_tokens"] += sum(len(ids) for ids in out[1])
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            t0 = time.perf_counter()
            out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._split["scoring"] += time.perf_counter() - t0
            mode = "train" if self.model.training else "eval"
            for name, value in self._gathered_metrics().items():
                self._metrics[mode][name].append(value)
            return out

        def _gathered_metrics(self) -> dict[str, float]:
            """Our answer metrics over the whole batch: each process's tallies added up (TRL gathers its
            own reward metrics the same way), so a multi-GPU run logs all answers, not rank 0's share."""
            import torch

            tallies = self.scorer.tallies()
            names = sorted(tallies)
            device = self.accelerator.device
            local = torch.tensor([tallies[k] for k in names], dtype=torch.float32, device=device)
            total = self.accelerator.reduce(local, reduction="sum").cpu().tolist()
            return Scorer.metrics({k: (float(s), float(c)) for k, (s, c) in zip(names, total, strict=True)})

        def training_step(self, model, inputs, num_items_in_batch):
            if self._mark is None:  # the first step began when its states started to be read
                self._mark = time.perf_counter() - self.stream.sampling_seconds
            out = super().training_step(model, inputs, num_items_in_batch)
            if self._step % self.current_gradient_accumulation_steps == 0:
                self._record_split()
            return out

        def _record_split(self) -> None:
            """The RL step's wall time (since the previous step's record), split: sampling (reading new
            states: the data loader, before the micro-steps), generation, scoring, and the update
            (everything else: the processor, log-probabilities, the loss, its backward pass and the
            previous optimizer step)."""
            s, m = self._split, self._metrics["train"]
            now = time.perf_counter()
            step, self._mark = now - self._mark, now
            sampling = self.stream.take_sampling_seconds()
            parts = {
                "sampling": sampling,
                "generation": s["generation"],
                "scoring": s["scoring"],
                "update": max(0.0, step - sampling - s["generation"] - s["scoring"]),
            }
            for name, seconds in parts.items():
                m[f"time/{name}"].append(seconds)
            m["time/step"].append(step)
            m["time/sampling_and_scoring_share"].append((sampling + s["scoring"]) / step if step else 0.0)
            if s["generation"]:
                m["generation_tokens_per_s"].append(s["generated_tokens"] / s["generation"])
            self._split = defaultdict(float)

    return training.checkpoint_loading(G1GRPOTrainer)


def _history_callback():
    from transformers import TrainerCallback

    class History(TrainerCallback):
        """Keeps each logged step's metrics (the Trainer's log history holds them for checkpoints too)."""

        def __init__(self, run: GrpoRun):
            self.run = run

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                entry = {"step": state.global_step, **{k: float(v) for k, v in logs.items() if _number(v)}}
                state.log_history.append({"g1_step": entry})
                nan = float("nan")
                parts = ", ".join(
                    f"{name} {entry[key]:.3f}"
                    for name in rewards.REWARDS
                    if (key := f"rewards/{name}/mean") in entry
                )
                log.info(
                    "step %d: reward %.3f (%s), P_acc %.3f, %.1f s (%.1f%% sample+score)",
                    state.global_step, entry["reward"], parts, entry.get("perception_exact", nan),
                    entry.get("time/step", nan), 100 * entry.get("time/sampling_and_scoring_share", nan),
                )  # fmt: skip

    return History


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def use_vllm(setting: str) -> bool:
    """Whether generation runs on vLLM: ``on``, ``off``, or ``auto`` (vllm importable and a GPU there)."""
    import importlib.util

    import torch

    available = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
    if setting == "on" and not available:
        raise ValueError("grpo.use_vllm=on needs a GPU and the vllm package (pip install 'g1[gpu]')")
    return setting == "on" or (setting == "auto" and available)


class GrpoRun(training.TrainingRun):
    """One GRPO run from ``start_model`` into ``output_uri``; call :meth:`run`."""

    stage = "grpo"

    def __init__(
        self,
        cfg: Any,
        output_uri: str,
        start_model: str | None = None,
        progress: bool = True,
        on_metrics: MetricsSink | None = None,
        work_dir: str | os.PathLike | None = None,
    ):
        super().__init__(cfg, cfg.grpo, output_uri, progress, on_metrics, work_dir)
        self.start_model = start_model or cfg.model.name_or_path
        self.vllm = False  # generation on a colocated vLLM engine, settled when training starts
        self.prompt_tokens = 0  # the longest prompt (image tokens included), known once the model loads

    # ---- setup ------------------------------------------------------------------------------------
    def start_model_path(self) -> str:
        """The local folder of the model training starts from (built or downloaded once if need be)."""
        from ..policies import resolve_model

        return resolve_model(self.start_model)

    def _load_model(self):
        from ..models.budget import PixelBudget
        from ..models.loading import count_image_tokens, load_model, preflight

        m = self.cfg.model
        budget = PixelBudget(m.pixels.min_pixels, m.pixels.max_pixels)
        start = self.start_model_path()
        model, processor = load_model(start, dtype=self.weights_dtype(), device=self.device(), budget=budget)
        processor.tokenizer.padding_side = "left"  # TRL appends answers after left-padded prompts
        self.processor = processor
        self.prompt_tokens = max(
            preflight(processor, self.s.gym.screen_size, self.pool.scratch(spec).prompt, m.max_prompt_tokens)
            for spec in self.pool.specs
        )
        self.image_tokens = count_image_tokens(processor, self.s.gym.screen_size)
        if self.vllm:  # TRL builds the engine (and the KL reference) from this folder: it carries our budget
            own = self.local / f"vllm-model-rank{distributed.rank()}"  # the node's ranks each write their own
            folder = vllm_bridge.budgeted_model_folder(start, processor, own)
            model.config._name_or_path = str(folder)
        return self.prepare_model(model)

    def _training_args(self):
        from trl import GRPOConfig as TrlGRPOConfig

        s = self.s
        world = distributed.world_size()
        answers = s.states_per_step * s.num_generations
        if answers % (s.batch_size * world):
            raise ValueError(
                f"grpo: a step's {answers} answers (states_per_step * num_generations) do not split into "
                f"forward passes of batch_size={s.batch_size} on {world} processes"
            )
        return TrlGRPOConfig(
            **self.common_args(),
            **s.recipe(),
            gradient_accumulation_steps=answers // (s.batch_size * world),  # one optimizer step per RL step
            num_generations=s.num_generations,
            num_iterations=1,
            max_steps=s.steps,
            temperature=s.temperature,
            top_p=s.top_p,
            max_completion_length=s.max_new_tokens,
            reward_weights=[s.reward_weights.get(name, 0.0) for name in rewards.REWARDS],
            entropy_coef=s.entropy_coef,
            use_bias_correction_kl=False,  # the paper's plain k3 estimator (on-policy, the ratio is 1)
            shuffle_dataset=False,  # the stream is already random; in order, a resume continues it exactly
            disable_dropout=True,
            log_completions=False,
            model_init_kwargs=self._reference_init(),
            use_vllm=self.vllm,
            **(self._vllm_args() if self.vllm else {}),
        )

    def memory_workload(self) -> dict[str, Any]:
        s = self.s
        return {
            "prompt_tokens": self.prompt_tokens,
            "answer_tokens": s.max_new_tokens,
            "reference": self._reference_present(),
            "generated_sequences": s.states_per_step * s.num_generations // self.world,
            "vllm_share": s.vllm_gpu_memory_utilization if self.vllm else 0.0,
            "vllm_sleeps": self.vllm and s.vllm_sleep_mode,
        }

    def _reference_present(self) -> bool:
        """Whether TRL builds a KL reference model: not at beta 0, nor with LoRA (the adapters switch off)."""
        return self.s.recipe()["beta"] != 0 and self.s.lora.r == 0

    def _vllm_args(self) -> dict[str, Any]:
        """TRL's colocated-vLLM settings: the context the prompts and answers need (vLLM's default is the
        model's whole 128k context, whose KV cache for one sequence alone overflows the memory share), the
        share, sleep during the update, and the image placeholder never sampled."""
        s = self.s
        return {
            "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": s.vllm_gpu_memory_utilization,
            "vllm_max_model_length": self.cfg.model.max_prompt_tokens + s.max_new_tokens,
            "vllm_enable_sleep_mode": s.vllm_sleep_mode,
            "generation_kwargs": vllm_bridge.suppress_image_token(self.processor.image_token_id),
        }

    def _reference_init(self) -> dict[str, Any] | None:
        """TRL's ``model_init_kwargs``: with a model instance passed, TRL reads them for the KL reference
        model alone, loading it in the policy's dtype unless they name one (fp32 weights under bf16 autocast
        would then give the reference an fp32 copy too)."""
        if not self._reference_present():
            return None
        dtype = self.reference_dtype()
        return {"dtype": dtype} if dtype != self.weights_dtype() else None

    # ---- run --------------------------------------------------------------------------------------
    def run(self) -> GrpoResult:
        done = self.finished()
        if done is not None:
            return GrpoResult(**done)
        processes = distributed.resolve_num_processes(self.s.num_processes)
        if processes > 1 and not distributed.launched():
            return self._launch(processes)
        return self._train()

    def _launch(self, processes: int) -> GrpoResult:
        args = {
            "cfg": {"model": self.cfg.model.model_dump(mode="json"), "grpo": self.s.model_dump(mode="json")},
            "start_model": self.start_model_path(),
        }
        return GrpoResult(**self.launch(f"{__name__}:_worker", args, processes))

    def _train(self) -> GrpoResult:
        self.setup_process()
        s = self.s
        self.vllm = use_vllm(s.use_vllm)
        self.pool = training_pool(s)
        model = self._load_model()
        resume = self.restore_checkpoint()
        # the cache holds a step's states (and the next one's, read ahead): 840x640 screens are ~1.6 MB each
        stream = StateStream(
            self.pool, s.steps * s.states_per_step, s.seed, s.game_weights, cache_rows=2 * s.states_per_step
        )
        scorer = Scorer(stream, list(rewards.REWARDS))
        throughput, mirror, cooldown = training.callbacks()
        # no launcher and no DeepSpeed session: a colocated vLLM sets up the torch.distributed world itself
        vllm_world = not distributed.launched() and not self.ds_config
        # the launch variables TRL's vLLM sets are undone at the end (a later run here must not take itself
        # for a launched worker); the arguments are built inside the DeepSpeed session, as SFT's: building
        # them sets up accelerate's process state, which must see the session's one-process world
        session = distributed.deepspeed_session() if self.ds_config else nullcontext()
        with distributed.preserved_env(), session:
            args = self._training_args()
            self.world = args.world_size
            self.log_memory_plan(model)
            trainer = _trainer_class()(
                model=model,
                reward_funcs=scorer.reward_functions(),
                args=args,
                train_dataset=stream.as_dataset(),
                processing_class=self.processor,
                callbacks=[_history_callback()(self), throughput(self), mirror(self), cooldown(self)],
                stream=stream,
                scorer=scorer,
            )
            training.quiet_console(trainer, self.progress and self.main)
            self.started, self.paused = time.perf_counter(), 0.0
            trainer.train(resume_from_checkpoint=resume)
            seconds = self.training_time()
            model_uri = self.save_final(trainer, self.processor)
            if self.vllm:
                vllm_bridge.release(trainer.vllm_generation, vllm_world)
        state = trainer.state
        history = [e["g1_step"] for e in state.log_history if "g1_step" in e]
        result = GrpoResult(
            uri=self.uri,
            model_uri=model_uri,
            start_model=self.start_model,
            steps=state.global_step,
            states_seen=state.global_step * s.states_per_step,
            answers_seen=state.global_step * s.states_per_step * s.num_generations,
            train_seconds=seconds,
            resumed_from_step=int(Path(resume).name.split("-")[-1]) if resume else 0,
            final={k: v for k, v in (history[-1] if history else {}).items() if k != "step"},
            history=[{k: e[k] for k in ("step", *HISTORY_KEYS, *_per_game(e)) if k in e} for e in history],
        )
        self.write_result(result.to_dict())
        if self.main:
            log.info("GRPO done: %d steps, model in %s", result.steps, model_uri)
        return result


def _per_game(entry: dict) -> list[str]:
    return [k for k in entry if k.startswith("game_reward/")]


def _worker(args: dict) -> None:
    """One process of a launched run (:func:`g1core.distributed.launch`)."""
    sink = distributed.MetricsLog(args["metrics_log"]) if distributed.rank() == 0 else None
    cfg = GrpoRunConfig.model_validate(args["cfg"])
    GrpoRun(cfg, args["output_uri"], args["start_model"], args["progress"], sink, args["work_dir"]).run()


def run(
    cfg: Any,
    output_uri: str,
    model_uri: str | None = None,
    progress: bool = True,
    on_metrics: MetricsSink | None = None,
    work_dir: str | os.PathLike | None = None,
) -> GrpoResult:
    """Train with GRPO from ``model_uri`` (an SFT model: G1) or ``cfg.model`` (the base model: G0).

    ``cfg`` is a PipelineConfig with a ``grpo`` section, or a :class:`GrpoRunConfig`. A run that finds
    checkpoints under ``output_uri`` resumes from the newest; one that finds ``result.json`` returns it.
    """
    return GrpoRun(cfg, output_uri, model_uri, progress, on_metrics, work_dir).run()


def metrics(result: GrpoResult) -> dict[str, float]:
    """Flat numbers for MLflow: the run's size and its last step's metrics."""
    out = {
        "steps": float(result.steps),
        "states_seen": float(result.states_seen),
        "train_seconds": result.train_seconds,
    }
    out.update({f"final.{k}": float(v) for k, v in result.final.items() if _number(v)})
    return out
