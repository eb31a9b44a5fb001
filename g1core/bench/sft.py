"""The SFT learning benchmark: does the cold start teach the tiny model to read boards, on a CPU?

``g1 bench sft --json [--game G]`` distils oracle-teacher data for one game at a screen where each cell
lies on whole patches, measures the tiny random-weight Qwen2.5-VL before training (held-out perception
exact-match, format rate, the paper's protocol score), runs the real SFT stage for a fixed wall-time
budget, measures again, and prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from ..gym.pool import GameSpec
from .settings import BENCH_GAMES, BENCH_SFT, MAX_SAMPLES_PER_S, bench_config, bench_screen

log = logging.getLogger(__name__)


def _protocol(
    game: str,
    model,
    processor,
    screen: tuple[int, int],
    runs: int,
    steps: int,
    max_new_tokens: int,
    temperature: float,
) -> float:
    """Mean protocol score of the model playing ``runs`` x ``steps`` at ``temperature`` (0 = greedy)."""
    from ..gym.protocol import play
    from ..models.policy import HFPolicy

    policy = HFPolicy(
        model=model,
        processor=processor,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=runs,
    )
    return play(game, policy, runs, steps, screen_size=screen, progress=False).mean


def _random_score(game: str, screen: tuple[int, int], runs: int, steps: int) -> float:
    """The random policy's protocol score on the same boards: the bar a trained model has to clear."""
    from ..gym.policies import RandomPolicy
    from ..gym.protocol import play

    return play(game, RandomPolicy(seed=0), runs, steps, screen_size=screen, progress=False).mean


def bench_sft(
    game: str = "2048",
    minutes: float | None = None,
    states: int | None = None,
    seed: int = 0,
    protocol_runs: int = 10,
    protocol_steps: int = 100,
    work_dir: str | Path | None = None,
    progress: bool = False,
    sft_overrides: dict | None = None,
    mix: list[str] | None = None,
    warmup: int | None = None,
) -> dict:
    """Run the benchmark for ``game`` and return its figures (see the module docstring).

    ``minutes`` and ``states`` default per game (``BENCH_GAMES``); ``protocol_runs=0`` skips the protocol
    scores. ``sft_overrides`` replaces fields of the benchmark's SFT settings (``BENCH_SFT``). ``mix``
    adds games trained alongside ``game`` (as many states each, equal shares, on ``game``'s screen);
    the perception figures are ``game``'s own, with every game's in ``by_game``. ``warmup`` sets the random
    moves that lead to each sampled state (default: the pool's per game; 0 = fresh boards).
    """
    from ..config import PolicyConfig
    from ..models.budget import PixelBudget
    from ..models.loading import load_model
    from ..policies import resolve_model
    from ..stages import distill, sft

    spec = GameSpec.parse(game)
    specs = [spec, *(GameSpec.parse(g) for g in mix or ())]
    for s in specs:
        if s.game not in BENCH_GAMES:
            raise ValueError(f"bench sft: unknown game {str(s)!r}; games: {', '.join(BENCH_GAMES)}")
    if len({s.game for s in specs}) < len(specs):
        raise ValueError(f"bench sft: each game once in a mix (held-out figures are per game): {specs}")
    defaults = BENCH_GAMES[spec.game]
    minutes = defaults.minutes if minutes is None else minutes
    screen = bench_screen(spec)
    states = states or defaults.states
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="g1-bench-sft-") as tmp:
        root = Path(work_dir) if work_dir else Path(tmp)
        cfg = bench_config(specs, screen, states, seed, skill=1.0, warmup=warmup)
        data_uri = str(root / "data")
        t0 = time.perf_counter()
        distilled = distill.run(cfg, data_uri, progress=progress)
        distill_s = time.perf_counter() - t0

        settings = {**BENCH_SFT, "seed": seed, "max_train_minutes": minutes, **(sft_overrides or {})}
        # more samples than the time budget can take (the budget ends the run); the list is built up front
        settings.setdefault("samples", max(1000, int(minutes * 60 * MAX_SAMPLES_PER_S)))
        run_cfg = sft.SftRunConfig(model=cfg.model, sft=sft.SftConfig.model_validate(settings))
        pixels = cfg.model.pixels
        budget = PixelBudget(pixels.min_pixels, pixels.max_pixels)
        rows = distill.load_manifest(data_uri)

        def score(model_path: str, temperature: float) -> float:
            """Protocol score of a model, replies long enough for the longest answer in the data."""
            if not protocol_runs:
                return float("nan")
            model, processor = load_model(model_path, budget=budget)
            answer_tokens = max(len(processor.tokenizer(r["answer"])["input_ids"]) for r in rows)
            return _protocol(
                str(spec), model, processor, screen, protocol_runs, protocol_steps,
                answer_tokens + 16, temperature,
            )  # fmt: skip

        # the evaluation stage's default sampling (PolicyConfig.temperature), and greedy after training
        sampled = PolicyConfig().temperature
        score_before = score(resolve_model(cfg.model.name_or_path), sampled)
        result = sft.run(run_cfg, data_uri, str(root / "sft"), progress=progress, work_dir=root / "work")
        trained = str(sft.storage.local_path(result.model_uri))
        score_after, score_after_greedy = score(trained, sampled), score(trained, 0.0)
        score_random = (
            _random_score(str(spec), screen, protocol_runs, protocol_steps) if protocol_runs else float("nan")
        )
    first = result.history[0] if result.history else {}
    nan = float("nan")

    def held(entry: dict, name: str, of: str = spec.game) -> float:
        """A held-out figure of one game (the SFT stage logs each game's beside the overall one)."""
        return entry.get(f"heldout.{of}.{name}", nan)

    figures = ("perception_exact", "perception_cells", "format_rate")

    def by_game(entry: dict) -> dict:
        return {s.game: {name: held(entry, name, s.game) for name in figures} for s in specs}

    curve = [
        {
            "step": e["step"],
            "samples_seen": e["samples_seen"],
            **{name: held(e, name) for name in figures},
            **({"by_game": by_game(e)} if mix else {}),
        }
        for e in result.history
    ]
    return {
        "game": str(spec),
        "mix": [str(s) for s in specs[1:]],
        "screen": list(screen),
        "perception_exact_before": held(first, "perception_exact"),
        "perception_exact_after": held(result.final, "perception_exact"),
        "perception_cells_after": held(result.final, "perception_cells"),
        "format_rate_before": held(first, "format_rate"),
        "format_rate_after": held(result.final, "format_rate"),
        "by_game": by_game(result.final),
        "score_before": score_before,
        "score_after": score_after,
        "score_after_greedy": score_after_greedy,
        "score_random": score_random,
        "score_temperature": sampled,
        "protocol": {"runs": protocol_runs, "steps": protocol_steps},
        "samples_seen": result.samples_seen,
        "steps": result.steps,
        "heldout_states": result.heldout_states,
        "dataset_samples": distilled.samples,
        "sft_train_s": result.train_seconds,
        "sft_eval_s": result.eval_seconds,
        "samples_per_s": result.samples_per_s,
        "tokens_per_s": result.tokens_per_s,
        "distill_s": distill_s,
        "wall_s": time.perf_counter() - started,
        "sft": settings,
        "curve": curve,
    }


def cmd_bench_sft(args) -> int:
    """``g1 bench sft``: run the learning benchmark; one JSON object with ``--json``, else a summary."""
    out = bench_sft(
        game=args.game,
        minutes=args.minutes,
        states=args.states,
        seed=args.seed,
        protocol_runs=args.protocol_runs,
        protocol_steps=args.protocol_steps,
        work_dir=args.work_dir,
        progress=not args.json,
        mix=args.mix,
        warmup=args.warmup,
    )
    if args.json:
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    lines = [f"{'step':>6} {'samples':>8} {'percept':>8} {'format':>7}"]
    lines += [
        f"{c['step']:>6} {c['samples_seen']:>8} {c['perception_exact']:>8.3f} {c['format_rate']:>7.3f}"
        for c in out["curve"]
    ]
    lines.append(
        f"{out['game']}: perception exact {out['perception_exact_before']:.3f} -> "
        f"{out['perception_exact_after']:.3f}, format {out['format_rate_after']:.3f}, score "
        f"{out['score_before']:.1f} -> {out['score_after']:.1f} (greedy {out['score_after_greedy']:.1f}, "
        f"random {out['score_random']:.1f}), {out['samples_seen']} samples in "
        f"{out['sft_train_s']:.0f} s of SFT ({out['wall_s']:.0f} s in all)"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def register_cli(commands) -> None:
    """Add ``sft`` to the ``g1 bench`` subcommands."""
    p = commands.add_parser("sft", help="SFT cold start on CPU: tiny model, oracle data, before/after")
    p.add_argument("--game", default="2048", help=f"one of {', '.join(BENCH_GAMES)} (default 2048)")
    p.add_argument("--minutes", type=float, default=None, help="SFT wall-time budget (default per game)")
    p.add_argument("--states", type=int, default=None, help="distilled states (default per game)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the training")
    p.add_argument("--protocol-runs", type=int, default=10, help="protocol runs (0 skips the scores)")
    p.add_argument("--protocol-steps", type=int, default=100, help="steps per protocol run")
    p.add_argument("--work-dir", default=None, help="keep the data and model here (default: a temp dir)")
    p.add_argument(
        "--mix",
        action="append",
        default=[],
        metavar="GAME",
        help="another game to train alongside, on --game's screen (repeatable); figures stay --game's",
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="random moves before each sampled state (0 = fresh boards)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(fn=cmd_bench_sft)
