"""The GRPO learning benchmark: does RL raise the game reward of the tiny model, from SFT and from base?

``g1 bench grpo --json [--game G]`` (default a 2x2 2048) builds the G1 branch at the tiny scale on a CPU:
it distils data from the oracle teacher at ``skill`` 0.5 (half its moves random), runs the SFT cold start
on it (the SFT benchmark's settings), then GRPO from that SFT model (G1) and from the base model (G0) for
the same time budget each, and plays the protocol with the teacher, the base, SFT, G0 and G1 models, the
random policy and the reward-greedy policy (the best one-step learner of the run's reward). It prints one
JSON object: each run's per-step game reward, its mean over the first and the last 10 % of steps, the time
split of a step, and every player's protocol score with its standard error. ``--reward NAME=W`` changes
the reward's weights (e.g. ``survival=2``; the paper's by default).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..gym.policies import OraclePolicy, Policy, RandomPolicy, RewardGreedyPolicy
from ..gym.pool import WARMUP_DRAWS, GameSpec
from ..stages.learning import edge_mean
from .settings import BENCH_GAMES, BENCH_SFT, MAX_SAMPLES_PER_S, bench_config, bench_screen

log = logging.getLogger(__name__)

TEACHER_SKILL = 0.5
# A small 2048 (2x2, a cell two merged visual tokens): the tiny model learns there which move merges. On
# the 4x4 board its SFT policy picks moves no better than random (game reward 0.05 against the random
# move's 0.07 and the oracle's 0.55), and 110 GRPO steps there (lr 1e-4, stopped early) left the reward
# at 0.03-0.08.
BENCH_GRPO_GAME = "2048:size=2"
BENCH_GRPO = {  # the tiny model on 2 CPU cores; every field can be overridden (grpo_overrides)
    "states_per_step": 16,
    "num_generations": 4,
    "batch_size": 16,
    # a twentieth of the SFT benchmark's rate, as in the paper (RL 1e-6, SFT 2e-5): the paper's own 1e-6
    # would not move the tiny model in the ~500 steps 30 CPU minutes allow; at 1e-4 on 2048 4x4 the
    # reward-blind drift took perception exact-match (P_acc) from 0.98 to 0.22 in 90 steps
    "learning_rate": 5e-5,
    "lr_scheduler": "constant",
    "steps": 100_000,  # the time budget ends the run
    "checkpoint_every": 100_000,
    "log_every": 1,
}
# The paper plays 10 runs; on the 2x2 board one run's score has a spread of ~25 points, so 10 runs leave a
# standard error of ~8, as large as the gaps between the players. 100 runs bring it to ~2.5.
PROTOCOL_RUNS = 100


def stream_game_reward(grpo_cfg, policy, states: int = 512) -> float:
    """Mean game reward of a model-free policy's moves on the first ``states`` rows of the GRPO run's own
    state stream: the teacher's (and the random policy's) number in the trained model's own measure."""
    from ..stages.grpo import StateStream, training_pool

    s = grpo_cfg.grpo
    pool = training_pool(s)
    stream = StateStream(pool, states, s.seed, s.game_weights)
    rewards = []
    for row in range(states):
        state = stream.state(row)
        env = pool.scratch(state.spec)
        env.set_state(state.state)
        reply = policy.replies([env])[0]
        rewards.append(pool.score_group(state, [reply]).scores[0].parts["game"])
    return float(np.mean(rewards))


def bench_grpo(
    game: str = BENCH_GRPO_GAME,
    minutes: float = 30.0,
    sft_minutes: float | None = None,
    states: int = 4000,
    seed: int = 0,
    protocol_runs: int = PROTOCOL_RUNS,
    protocol_steps: int = 100,
    work_dir: str | Path | None = None,
    progress: bool = False,
    grpo_overrides: dict | None = None,
    sft_overrides: dict | None = None,
) -> dict:
    """Run the benchmark for ``game`` (see the module docstring) and return its figures.

    ``grpo_overrides`` and ``sft_overrides`` replace fields of the two stages' benchmark settings (a
    ``gym`` entry of ``grpo_overrides`` is merged into the GRPO gym section, whose games are the bench's)."""
    from ..config import PolicyConfig
    from ..models.budget import PixelBudget
    from ..models.loading import load_model
    from ..policies import build_policy, resolve_model
    from ..stages import distill, grpo, sft

    spec = GameSpec.parse(game)
    screen = bench_screen(spec)
    overrides = dict(grpo_overrides or {})
    settings = {
        **BENCH_GRPO,
        "gym": {"games": [str(spec)], "screen_size": list(screen), **overrides.pop("gym", {})},
        "seed": seed,
        "max_train_minutes": minutes,
        **overrides,
    }
    grpo.GrpoConfig.model_validate(settings)  # a bad override fails now, not after distillation and SFT
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="g1-bench-grpo-") as tmp:
        root = Path(work_dir) if work_dir else Path(tmp)
        cfg = bench_config([spec], screen, states, seed, skill=TEACHER_SKILL)
        data_uri = str(root / "data")
        distill.run(cfg, data_uri, progress=progress)
        rows = distill.load_manifest(data_uri)

        sft_minutes = sft_minutes or BENCH_GAMES[spec.game].minutes
        samples = max(1000, int(sft_minutes * 60 * MAX_SAMPLES_PER_S))  # more than the time budget can take
        sft_settings = {**BENCH_SFT, "seed": seed, "max_train_minutes": sft_minutes, "samples": samples}
        sft_settings.update(sft_overrides or {})
        sft_cfg = sft.SftRunConfig(model=cfg.model, sft=sft.SftConfig.model_validate(sft_settings))
        sft_result = sft.run(sft_cfg, data_uri, str(root / "sft"), progress=progress, work_dir=root / "work")
        sft_model = str(sft.storage.local_path(sft_result.model_uri))

        pixels = cfg.model.pixels
        budget = PixelBudget(pixels.min_pixels, pixels.max_pixels)
        _, processor = load_model(sft_model, budget=budget)
        answer_tokens = max(len(processor.tokenizer(r["answer"])["input_ids"]) for r in rows)
        settings = {"max_new_tokens": answer_tokens + 16, **settings}  # an override keeps its own
        grpo_cfg = grpo.GrpoRunConfig(model=cfg.model, grpo=grpo.GrpoConfig.model_validate(settings))
        runs = {}
        for branch, start in (("g1", sft_model), ("g0", None)):
            runs[branch] = grpo.run(
                grpo_cfg, str(root / branch), start, progress=progress, work_dir=root / "work"
            )

        def protocol(player: PolicyConfig | Policy) -> tuple[float, float]:
            """The player's protocol score: mean and standard error over the runs."""
            if not protocol_runs:
                return float("nan"), float("nan")
            from ..gym.protocol import play

            policy = player if isinstance(player, Policy) else build_policy(player, cfg.model)
            result = play(
                str(spec), policy, protocol_runs, protocol_steps, screen_size=screen, progress=False
            )
            return result.mean, result.std / math.sqrt(protocol_runs)

        def model_player(path: str, name: str) -> PolicyConfig:
            return PolicyConfig(
                kind="hf", model=path, name=name, max_new_tokens=answer_tokens + 16, batch_size=16
            )

        players = {
            "random": PolicyConfig(kind="random"),
            "teacher": PolicyConfig(kind="oracle", skill=TEACHER_SKILL),
            "base": model_player(resolve_model("tiny"), "base"),
            "sft": model_player(sft_model, "sft"),
            "g0": model_player(str(sft.storage.local_path(runs["g0"].model_uri)), "g0"),
            "g1": model_player(str(sft.storage.local_path(runs["g1"].model_uri)), "g1"),
            # the best a one-step learner of the run's reward can do: what that reward asks for
            "reward_greedy": RewardGreedyPolicy(grpo_cfg.grpo.reward_weights, seed=seed),
        }
        played = {name: protocol(player) for name, player in players.items()}
        stream_reward = {
            "teacher": stream_game_reward(grpo_cfg, OraclePolicy(skill=TEACHER_SKILL, seed=seed)),
            "random": stream_game_reward(grpo_cfg, RandomPolicy(seed=seed)),
            "reward_greedy": stream_game_reward(grpo_cfg, players["reward_greedy"]),
        }

    out: dict = {"game": str(spec), "screen": list(screen), "teacher_skill": TEACHER_SKILL}
    for branch, start in (("g1", "sft"), ("g0", "base")):
        result = runs[branch]
        series = [e.get("rewards/game/mean", float("nan")) for e in result.history]
        prefix = f"{start}_start"
        out[f"game_reward_first_{prefix}"] = edge_mean(series, first=True)
        out[f"game_reward_last_{prefix}"] = edge_mean(series, first=False)
        out[f"game_reward_series_{prefix}"] = series
        out[f"steps_{prefix}"] = result.steps
        out[f"train_s_{prefix}"] = result.train_seconds
        split = {
            k: float(np.mean([e[k] for e in result.history if k in e]))
            for k in ("time/sampling", "time/generation", "time/scoring", "time/update", "time/step")
        }
        split["sampling_and_scoring_share"] = (
            (split["time/sampling"] + split["time/scoring"]) / split["time/step"] if split["time/step"] else 0
        )
        out[f"time_split_{prefix}"] = split
        out[f"perception_exact_series_{prefix}"] = [e.get("perception_exact") for e in result.history]
    # the names: the SFT start is the main one
    out["game_reward_first"] = out["game_reward_first_sft_start"]
    out["game_reward_last"] = out["game_reward_last_sft_start"]
    out["score"] = {name: mean for name, (mean, _) in played.items()}
    out["score_se"] = {name: se for name, (_, se) in played.items()}
    # the same measure as the series: one move's game reward on the run's own states
    out["game_reward_teacher"] = stream_reward["teacher"]
    out["game_reward_random"] = stream_reward["random"]
    out["game_reward_reward_greedy"] = stream_reward["reward_greedy"]
    out["score_protocol"] = {"runs": protocol_runs, "steps": protocol_steps}
    out["sft"] = {
        "steps": sft_result.steps,
        "perception_exact": sft_result.final.get("heldout.perception_exact"),
    }
    out["grpo"] = settings
    out["wall_s"] = time.perf_counter() - started
    return out


def grpo_overrides(args) -> dict:
    """The GRPO settings that ``g1 bench grpo``'s flags change (reward weights, the states' warm-up, and any
    field of the stage's config through ``--set``, applied last)."""
    from ..config import apply_overrides
    from ..gym.rewards import parse_weights

    overrides: dict = {"gym": {"warmup_draw": args.warmup_draw}}
    if args.warmup is not None:
        overrides["gym"]["warmup"] = {GameSpec.parse(args.game).game: args.warmup}
    if args.reward:
        overrides["reward_weights"] = parse_weights(args.reward)
    return apply_overrides(overrides, args.overrides)


def cmd_bench_grpo(args) -> int:
    """``g1 bench grpo``: run the RL benchmark; one JSON object with ``--json``, else a summary."""
    out = bench_grpo(
        game=args.game,
        minutes=args.minutes,
        sft_minutes=args.sft_minutes,
        seed=args.seed,
        protocol_runs=args.protocol_runs,
        protocol_steps=args.protocol_steps,
        work_dir=args.work_dir,
        progress=not args.json,
        grpo_overrides=grpo_overrides(args),
    )
    if args.json:
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    s, se = out["score"], out["score_se"]
    first, last = out["game_reward_first"], out["game_reward_last"]
    first0, last0 = out["game_reward_first_base_start"], out["game_reward_last_base_start"]
    sys.stdout.write(
        f"{out['game']}: reward: SFT {first:.3f} -> {last:.3f}, base {first0:.3f} -> {last0:.3f}; "
        + "protocol: "
        + ", ".join(f"{name} {value:.1f} +- {se[name]:.1f}" for name, value in s.items())
        + f"\n{out['wall_s']:.0f} s in all\n"
    )
    return 0


def register_cli(bench) -> None:
    """Add ``grpo`` to the ``g1 bench`` subcommands."""
    from ..cli import add_set_flag

    p = bench.add_parser(
        "grpo", help="GRPO on CPU: tiny model, G1 (from SFT) and G0 (from base), protocol scores"
    )
    p.add_argument("--game", default=BENCH_GRPO_GAME, help=f"game or game spec (default {BENCH_GRPO_GAME})")
    p.add_argument("--minutes", type=float, default=30.0, help="GRPO wall-time budget per branch")
    p.add_argument(
        "--sft-minutes", type=float, default=None, help="SFT budget (default: the SFT benchmark's)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the states and the training")
    p.add_argument(
        "--reward",
        action="append",
        metavar="NAME=WEIGHT",
        help="a GRPO reward weight over the paper's (repeatable), e.g. --reward survival=2",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="random warm-up moves of GRPO's states (default: the paper's; the SFT data keeps the paper's)",
    )
    p.add_argument(
        "--warmup-draw",
        choices=WARMUP_DRAWS,
        default="fixed",
        help="fixed: every GRPO state gets the whole warm-up (paper); uniform: 0..warm-up, drawn per state",
    )
    add_set_flag(p, "a GRPO setting over the bench's (repeatable), e.g. --set beta=0.1")
    p.add_argument(
        "--protocol-runs",
        type=int,
        default=PROTOCOL_RUNS,
        help=f"protocol runs per player (default {PROTOCOL_RUNS}; 0 skips the scores)",
    )
    p.add_argument("--protocol-steps", type=int, default=100, help="steps per protocol run")
    p.add_argument("--work-dir", default=None, help="keep the data and models here (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(fn=cmd_bench_grpo)
