"""Typed configs: one per stage, every field with a default and a line saying why.

A config file (YAML) holds the whole pipeline; each stage reads its own section. ``load_config`` applies
``--set key=value`` overrides and validates everything before any work starts, so a typo or a bad value
fails at once with the field's dotted name.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import G1Error
from .gym import GAMES, game_class, rewards
from .gym.pool import WARMUP_DRAWS, GameSpec

# Presets: configs/ in the repo; the stage images copy them and point G1_CONFIG_DIR there.
CONFIG_DIR = Path(os.environ.get("G1_CONFIG_DIR") or Path(__file__).resolve().parent.parent / "configs")


class ConfigError(G1Error, ValueError):
    """A config that cannot be used; the message names every bad field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_games(games: Any) -> list[str]:
    if isinstance(games, str | int):
        games = [games]
    if not isinstance(games, list | tuple) or not games:
        raise ValueError("a non-empty list of games is needed")
    games = [str(g) for g in games]  # YAML reads a bare 2048 as a number
    specs = []
    for g in games:
        spec = GameSpec.parse(g)
        if spec.game not in GAMES:
            raise ValueError(f"unknown game {spec.game!r}; the games are: {', '.join(GAMES)}")
        _check_knobs(spec)
        specs.append(spec)
    if len(set(specs)) != len(specs):
        raise ValueError(f"a game is listed twice: {games}")
    return games


def _check_knobs(spec: GameSpec) -> None:
    """Knob names must be the game's; values are tried on a real env (except paths, which may only exist
    where the stage runs)."""
    cls = game_class(spec.game)
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "screen_size", "render_mode"}
    unknown = set(spec.knobs) - known
    if unknown:
        raise ValueError(f"{spec.game} has no knob {sorted(unknown)}; its knobs: {sorted(known)}")
    if "tiles" not in spec.knobs:
        cls(**spec.knobs, screen_size=(840, 640), render_mode=None)


def _check_screen(size: tuple[int, int]) -> tuple[int, int]:
    if min(size) < 28:
        raise ValueError(f"a screen is at least 28x28 pixels, got {size}")
    return size


class GymConfig(Section):
    games: list[str] = Field(
        default=["2048"],
        description="Games to play, each a name or name:knob=value,... (e.g. shisen-sho:size=8).",
    )
    screen_size: tuple[int, int] = Field(
        default=(840, 640), description="Screen (height, width) the model sees; the paper uses 840x640."
    )
    warmup: dict[str, int] = Field(
        default={},
        description="Random warm-up moves per game when sampling states; empty = the paper's 100/250/0.",
    )
    warmup_draw: Literal[WARMUP_DRAWS] = Field(
        default="fixed",
        description="fixed: every state gets the full warm-up (the paper). uniform: each state's count is "
        "drawn from 0..warm-up, so states span a whole game; on small boards, where 100 random moves "
        "always end the game, fixed gives only states one move from the end, unlike play from a fresh board.",
    )

    check_games = field_validator("games", mode="before")(_check_games)
    check_screen = field_validator("screen_size")(_check_screen)

    @field_validator("warmup")
    @classmethod
    def check_warmup(cls, warmup: dict[str, int]) -> dict[str, int]:
        for game, moves in warmup.items():
            if game not in GAMES:
                raise ValueError(f"unknown game {game!r} in warmup; the games are: {', '.join(GAMES)}")
            if moves < 0:
                raise ValueError(f"warm-up moves for {game} must be >= 0, got {moves}")
        return warmup


class PixelBudgetConfig(Section):
    min_pixels: int = Field(
        default=112 * 112, ge=28 * 28, description="Smallest image the processor may resize to."
    )
    max_pixels: int = Field(
        default=840 * 640,
        ge=28 * 28,
        description="Largest image the processor may resize to (caps visual tokens).",
    )

    @model_validator(mode="after")
    def _order(self):
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class ModelConfig(Section):
    name_or_path: str = Field(
        default="tiny",
        description="Base model: a Hugging Face id, a local folder, an artifact URI, or 'tiny' (built here).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights dtype; bf16 on GPU in the paper."
    )
    pixels: PixelBudgetConfig = Field(
        default_factory=PixelBudgetConfig, description="One pixel budget everywhere."
    )
    max_prompt_tokens: int = Field(
        default=4096,
        ge=64,
        description="Longest prompt (image tokens included); preflight refuses anything longer.",
    )


class PolicyConfig(Section):
    kind: Literal["random", "oracle", "hf", "openai"] = Field(
        default="oracle",
        description="random / oracle (reads the true state) / hf (local model) / openai (endpoint).",
    )
    name: str | None = Field(
        default=None, description="Label in tables and MLflow; defaults from kind and model."
    )
    skill: float = Field(
        default=1.0, ge=0.0, le=1.0, description="oracle: chance of the oracle's move, else random."
    )
    seed: int = Field(default=0, description="Seed of the policy's own randomness (sampling, random moves).")
    model: str | None = Field(
        default=None,
        description="hf: model id/folder/URI, 'base' (the pipeline's model) or a training stage's name "
        "('sft': the model that stage trained in the same pipeline run); openai: model name.",
    )
    base_url: str | None = Field(default=None, description="openai: endpoint, e.g. http://vllm:8000/v1.")
    api_key_env: str | None = Field(
        default="OPENAI_API_KEY",
        description="openai: env var holding the API key (None for keyless servers).",
    )
    temperature: float = Field(default=1.0, ge=0.0, description="Sampling temperature (paper: 1.0).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=1024, ge=1, description="Longest reply (paper: up to 8192).")
    batch_size: int = Field(default=8, ge=1, description="hf: states generated per forward batch.")
    concurrency: int = Field(default=8, ge=1, description="openai: requests in flight at once.")
    timeout_s: float = Field(default=120.0, gt=0, description="openai: per-request timeout.")
    max_retries: int = Field(default=5, ge=0, description="openai: retries on timeouts, 429 and 5xx.")
    price_input_per_mtok: float = Field(
        default=0.0, ge=0, description="openai: USD per million input tokens."
    )
    price_output_per_mtok: float = Field(
        default=0.0, ge=0, description="openai: USD per million output tokens."
    )
    extra_body: dict[str, Any] = Field(
        default={},
        description="openai: extra request fields, e.g. {thinking: {type: enabled, budget_tokens: 4096}}.",
    )

    @model_validator(mode="after")
    def _needs(self):
        if self.kind == "openai" and (not self.model or not self.base_url):
            raise ValueError("an openai policy needs 'model' and 'base_url'")
        if self.kind == "hf" and not self.model:
            raise ValueError("an hf policy needs 'model' (a folder, an id, a URI, 'base' or 'sft')")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.kind == "oracle":
            return "oracle" if self.skill == 1.0 else f"oracle@{self.skill:g}"
        if self.kind in ("hf", "openai"):
            return f"{self.kind}:{Path(str(self.model)).name}"
        return self.kind


class DistillConfig(Section):
    gym: GymConfig = Field(
        default_factory=GymConfig, description="Which games, and the screens the teacher sees."
    )
    teacher: PolicyConfig = Field(
        default_factory=PolicyConfig, description="Who answers (paper: Claude-3.7)."
    )
    states_per_game: int = Field(default=1000, ge=1, description="Sampled states per game (paper: ~1,000).")
    answers_per_state: int = Field(default=1, ge=1, description="Teacher answers asked for each state (K).")
    seed: int = Field(default=0, description="Seed of the state stream; states are reproducible from it.")
    keep_if: list[Literal["well_formed", "legal", "merged"]] = Field(
        default=["well_formed", "legal"],
        description="Filter on the perception-enhanced answer; 'merged' = positive game reward (GR > 0).",
    )
    batch_size: int = Field(default=32, ge=1, description="States per teacher batch and per manifest shard.")
    png_compress_level: int = Field(
        default=1, ge=0, le=9, description="PNG zlib level: 1 is fast, 9 is small."
    )
    allow_unfinished: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of states that may end without a teacher answer before the stage fails.",
    )


class EvaluateConfig(Section):
    games: list[str] = Field(
        default=["2048", "shisen-sho", "shisen-sho-cifar10", "swap"], description="Games."
    )
    policies: list[PolicyConfig] = Field(
        default_factory=lambda: [PolicyConfig(kind="random"), PolicyConfig(kind="oracle")],
        description="Players to compare; an hf player with model 'base' or 'sft' plays a pipeline model.",
    )
    runs: int = Field(default=10, ge=1, description="Runs per game from fresh boards (paper: 10).")
    steps: int = Field(default=100, ge=1, description="Steps per run (paper: 100).")
    seed: int = Field(default=0, description="Run i starts from reset(seed + i).")
    screen_size: tuple[int, int] = Field(default=(840, 640), description="Screens the model players see.")

    check_games = field_validator("games", mode="before")(_check_games)
    check_screen = field_validator("screen_size")(_check_screen)

    @field_validator("policies")
    @classmethod
    def check_labels(cls, policies: list[PolicyConfig]) -> list[PolicyConfig]:
        labels = [p.label for p in policies]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"two players are called {twice}: give each a distinct 'name'")
        return policies


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


DEEPSPEED_PRESETS = ("zero2", "zero3")  # configs/deepspeed/<name>.json


def check_game_weights(weights: dict[str, float]) -> None:
    """A training stage's per-game shares: none negative, and not all zero (empty = every game equally)."""
    bad = {g: w for g, w in weights.items() if w < 0}
    if bad:
        raise ValueError(f"game_weights must be >= 0, got {bad}")
    if weights and not any(weights.values()):
        raise ValueError("game_weights: at least one weight must be > 0")


class TrainingSettings(Section):
    """What every training stage (SFT, GRPO) sets the same way: optimisation, precision, scale-out, time
    limit, checkpoints. Each stage's section adds its own data and recipe fields."""

    # ---- optimisation ----
    learning_rate: float = Field(default=2e-5, gt=0, description="Peak learning rate (paper SFT: 2e-5).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule over the run."
    )
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(default=16, ge=1, description="Samples per device per forward pass.")
    seed: int = Field(default=0, description="Seed of the weights' noise, the data and its order.")
    freeze_vision: bool = Field(
        default=False, description="Freeze the vision tower (patch embedding and blocks; the merger trains)."
    )
    lora: LoraSettings = Field(
        default_factory=LoraSettings, description="Low-rank adapters instead of training every weight."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass: less memory, more compute."
    )
    bf16: Literal["auto", "on", "off"] = Field(
        default="auto", description="bf16 mixed precision: auto = on GPUs that support it, never on CPU."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for torch per process; None = the machine's cores shared by its processes.",
    )
    # ---- scale-out (one node) ----
    num_processes: int | Literal["auto"] = Field(
        default=1,
        description="Training processes on this node, one per GPU: 'auto' = every visible CUDA GPU (1 on "
        "CPU); > 1 launches worker processes (accelerate launch) that run the same code.",
    )
    deepspeed: str | None = Field(
        default=None,
        description="DeepSpeed ZeRO: 'zero2' or 'zero3' (configs/deepspeed/), or the path of a DeepSpeed "
        "JSON config; None = no DeepSpeed (plain DDP when num_processes > 1).",
    )
    max_train_minutes: float | None = Field(
        default=None,
        gt=0,
        description="Stop after this much time spent training (benchmarks); the stage's own measurements "
        "(held-out evaluations) are not counted: they measure the run, not train it. None = no limit.",
    )
    time_cooldown: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="With max_train_minutes: the last share of that time over which the learning rate falls "
        "linearly to 0, on top of lr_scheduler (a run stopped by time cannot know its step count, so a "
        "step-based decay cannot end where the run ends). 0 = off.",
    )
    # ---- checkpoints, logging ----
    checkpoint_every: int = Field(default=200, ge=1, description="Optimizer steps between checkpoints.")
    keep_checkpoints: int = Field(default=2, ge=1, description="Checkpoints kept locally and in the store.")
    keep_checkpoints_when_done: bool = Field(
        default=False,
        description="Keep the stored checkpoints once the stage has saved its model and result. They exist "
        "to resume an unfinished stage (weights and optimizer state: ~108 GiB each at 7B), and a finished "
        "stage never resumes, so by default they are deleted.",
    )
    log_every: int = Field(default=10, ge=1, description="Steps between loss / lr / tokens-per-s records.")

    @model_validator(mode="after")
    def _cooldown(self):
        if self.time_cooldown and self.max_train_minutes is None:
            raise ValueError("time_cooldown needs max_train_minutes (it is a share of that time)")
        return self

    @field_validator("num_processes")
    @classmethod
    def _processes(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be >= 1 or 'auto', got {value}")
        return value

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed(cls, value: str | None) -> str | None:
        if value is not None and value not in DEEPSPEED_PRESETS and not value.endswith(".json"):
            raise ValueError(f"must be one of {', '.join(DEEPSPEED_PRESETS)} or a .json file, got {value!r}")
        return value


class SftConfig(TrainingSettings):
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
    grad_accum: int = Field(default=1, ge=1, description="Forward passes per optimizer step.")
    # ---- evaluation ----
    eval_every: int = Field(
        default=100, ge=0, description="Steps between held-out evaluations; 0 = only before and after."
    )
    eval_batch_size: int = Field(default=32, ge=1, description="Held-out states per generation batch.")
    eval_max_new_tokens: int | None = Field(
        default=None, ge=1, description="Longest generated reply; None = longest training answer + 16 tokens."
    )

    @model_validator(mode="after")
    def _weights(self):
        check_game_weights(self.game_weights)
        return self


# GRPO recipes: the TRL loss settings each preset stands for; a grpo field set in the config wins.
GRPO_PRESETS: dict[str, dict[str, Any]] = {
    # the G1 paper: sequence-mean GRPO loss, k3 KL to the initial model at 0.01, clip 0.2, group-std scaling
    "paper": {"loss_type": "grpo", "beta": 0.01, "epsilon": 0.2, "epsilon_high": 0.2,
              "scale_rewards": "group", "mask_truncated_completions": False},
    # DAPO: token-level loss, clip-higher (0.2 / 0.28), no KL, truncated answers left out of the loss
    "dapo": {"loss_type": "dapo", "beta": 0.0, "epsilon": 0.2, "epsilon_high": 0.28,
             "scale_rewards": "group", "mask_truncated_completions": True},
    # Dr. GRPO: no length or std normalisation (unbiased advantages), no KL
    "dr-grpo": {"loss_type": "dr_grpo", "beta": 0.0, "epsilon": 0.2, "epsilon_high": 0.2,
                "scale_rewards": "none", "mask_truncated_completions": False},
}  # fmt: skip


class GrpoConfig(TrainingSettings):
    # ---- states and rewards ----
    gym: GymConfig = Field(
        default_factory=GymConfig,
        description="Games to train on (any mix), the screens the policy sees, random warm-up moves.",
    )
    game_weights: dict[str, float] = Field(
        default={}, description="Share of each game (by spec or game name) in every step; empty = equal."
    )
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: dict(rewards.PAPER_WEIGHTS),
        description="Weight of each reward component in the total (paper: game 1, format 1, perception 0; "
        "ours, off by default: survival, -1 for a move that loses the game; legal, -1 for one that changes "
        "nothing).",
    )
    # ---- the RL recipe ----
    preset: Literal["paper", "dapo", "dr-grpo"] = Field(
        default="paper", description="Loss recipe (GRPO_PRESETS); fields below that are set override it."
    )
    steps: int = Field(default=450, ge=1, description="RL steps, one optimizer step each (paper: ~400-500).")
    states_per_step: int = Field(default=128, ge=1, description="Game states sampled per step (paper: 128).")
    num_generations: int = Field(
        default=5, ge=2, description="Answers sampled per state, the group (paper: 5)."
    )
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature (paper: 1.0).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=8192, ge=1, description="Longest answer (paper: 8,192).")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] | None = Field(
        default=None, description="TRL loss normalisation; None = the preset's."
    )
    beta: float | None = Field(default=None, ge=0, description="k3 KL coefficient; None = the preset's.")
    epsilon: float | None = Field(default=None, gt=0, description="Lower clip range; None = the preset's.")
    epsilon_high: float | None = Field(
        default=None, gt=0, description="Upper clip range (clip-higher); None = the preset's."
    )
    scale_rewards: Literal["group", "batch", "none"] | None = Field(
        default=None, description="Divide advantages by the group's (or batch's) reward std; None = preset."
    )
    mask_truncated_completions: bool | None = Field(
        default=None, description="Leave answers cut at max_new_tokens out of the loss; None = the preset's."
    )
    entropy_coef: float = Field(
        default=0.0,
        ge=0,
        description="Weight of a mean per-token entropy bonus in the loss (TRL's; not the paper's): keeps "
        "the policy from growing certain of one answer, after which its groups score alike and GRPO can no "
        "longer correct it.",
    )
    # ---- generation backend ----
    use_vllm: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Generate with vLLM colocated on the training GPUs: auto = when vllm imports and a GPU "
        "is there; off = Hugging Face generate (the CPU path).",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.3, gt=0, le=1, description="Share of each GPU's memory vLLM may take beside training."
    )
    vllm_sleep_mode: bool = Field(
        default=False,
        description="Free vLLM's weights and KV cache while the update runs (TRL's level-2 sleep; they come "
        "back at the next generation, the weights synced from the policy as every step does anyway): the "
        "update then has vLLM's share of the GPU for its activations. The 7B recipe needs it on 80 GB.",
    )
    g0_overrides: dict[str, Any] = Field(
        default={},
        description="Fields of this section set otherwise for the G0 branch (GRPO from the base model), e.g. "
        "{max_train_minutes: 3}: G0 is the paper's ablation, and a short run shows where the base model "
        "starts without costing what G1's run does; empty = G0 trains as G1 does.",
    )
    # ---- defaults of the shared settings that differ for RL ----
    learning_rate: float = Field(default=1e-6, gt=0, description="Learning rate (paper: 1e-6 constant).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        default="constant", description="Learning-rate schedule over the run (paper: constant)."
    )
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Share of steps spent warming up.")
    batch_size: int = Field(
        default=8,
        ge=1,
        description="Answers per device per forward pass; a step's states_per_step * num_generations answers "
        "are split into forward passes of this size and summed into one optimizer step.",
    )
    checkpoint_every: int = Field(default=20, ge=1, description="RL steps between checkpoints.")
    log_every: int = Field(default=1, ge=1, description="RL steps between metric records.")

    @model_validator(mode="after")
    def _check(self):
        rewards.check_weights(self.reward_weights)
        check_game_weights(self.game_weights)
        answers = self.states_per_step * self.num_generations
        if answers % self.batch_size:
            raise ValueError(
                f"states_per_step * num_generations ({answers}) must be a multiple of batch_size "
                f"({self.batch_size}): each step's answers are split into forward passes of that size"
            )
        if self.g0_overrides:
            self.for_branch("g0")  # G0's settings must hold too, and fail at load, not when G0 starts
        return self

    @field_validator("g0_overrides")
    @classmethod
    def _g0_fields(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(overrides) - (set(cls.model_fields) - {"g0_overrides"}))
        if unknown:
            raise ValueError(f"{unknown} are not grpo fields (a G0 override sets a field of this section)")
        return overrides

    def for_branch(self, branch: str) -> GrpoConfig:
        """The settings of the ``g0`` or ``g1`` branch: G0's are this section with ``g0_overrides`` set."""
        if branch != "g0" or not self.g0_overrides:
            return self
        fields = {**self.model_dump(exclude_unset=True), **self.g0_overrides, "g0_overrides": {}}
        try:
            return type(self).model_validate(fields)
        except ValidationError as err:
            raise ConfigError(f"grpo.g0_overrides: {_explain(err)}") from None

    def recipe(self) -> dict[str, Any]:
        """The loss settings in force: the preset's, with every field set here taking precedence."""
        preset = GRPO_PRESETS[self.preset]
        return {k: (preset[k] if getattr(self, k) is None else getattr(self, k)) for k in preset}


class PromoteConfig(Section):
    """The promotion gate: does this run's model replace the registered ``champion``?"""

    stage: Literal["sft", "g0", "g1"] = Field(
        default="g1", description="The training stage whose model is the candidate (its evaluation player)."
    )
    teacher: str | None = Field(
        default=None,
        description="The evaluation player whose per-game scores normalise the others' (scores differ by "
        "orders of magnitude between games); None = the first player that is neither a model nor random.",
    )
    margin_se: float = Field(
        default=2.0,
        ge=0,
        description="Promote only when the mean teacher-normalised score beats the champion's by more than "
        "this many standard errors of the difference (noise, with 10 runs a game, is large).",
    )
    worse_se: float = Field(
        default=2.0,
        ge=0,
        description="... and no game is worse than the champion's by more than this many standard errors.",
    )


class TrackingConfig(Section):
    experiment: str = Field(default="g1", description="MLflow experiment that holds the pipeline's runs.")


class PipelineConfig(Section):
    name: str = Field(
        default="g1",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Pipeline name (run names, folders).",
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="The base model every stage starts from."
    )
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Teacher distillation stage.")
    sft: SftConfig = Field(default_factory=SftConfig, description="Perception-enhanced SFT (cold start).")
    grpo: GrpoConfig = Field(default_factory=GrpoConfig, description="GRPO RL (G0 from base, G1 from SFT).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation stage.")
    promote: PromoteConfig = Field(default_factory=PromoteConfig, description="The promotion gate.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow settings.")


def apply_overrides(tree: dict, items: Sequence[str]) -> dict:
    """Apply ``--set``-style ``a.b=value`` items to a nested dict in place (and return it)."""
    for item in items:
        _set_path(tree, *parse_override(item))
    return tree


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {dotted}: {where} is not an item of a list of {len(node)}")
            key = int(key)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:depth])} is a value, not a section")
        if last:
            node[key] = value
        else:
            node = node[key] if isinstance(node, list) else node.setdefault(key, {})


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value), the value read as YAML (numbers, lists, true/false, null)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, _, raw = item.partition("=")
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key.strip()):
        raise ConfigError(f"--set: bad key {key!r}")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "invalid config:\n" + "\n".join(lines)


def resolve_preset(path: str | Path) -> Path:
    """A config file path, or the name of a preset in configs/ (:func:`presets`)."""
    p = Path(path)
    if p.is_file():
        return p
    preset = CONFIG_DIR / f"{path}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(f"config {path!r} not found (presets: {', '.join(presets())})")


def presets() -> list[str]:
    """The preset names: local-tiny (smoke, minutes), local-learn (learning on a CPU), g1-paper (the 7B)."""
    return sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config (or the defaults), apply ``key=value`` overrides, validate."""
    tree: dict = {}
    if path is not None:
        text = resolve_preset(path).read_text()
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    tree = _merge(PipelineConfig().model_dump(mode="json"), tree)
    return config_from_dict(apply_overrides(tree, overrides or []))


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: sections merge key by key, values and lists replace."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_from_dict(tree: dict) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


def config_to_json(cfg: BaseModel) -> str:
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


def config_from_json(text: str) -> PipelineConfig:
    return config_from_dict(json.loads(text))
