"""Evaluation: the paper's protocol (spec section 7) for a list of players, with a report.

Players are configs (``evaluate.policies``); an ``hf`` player whose ``model`` names a training stage
(``model: sft``) plays the model that stage trained in the same pipeline run, so one table compares the
base model, the trained ones and the teacher.

Writes to one URI: ``results.json`` (every run's score and the answer-quality rates), ``table.md`` and
``table.csv``, one bar chart per game (``plot-<game>.png``), all games in one figure
(``plot-comparison.png``, the paper's Figure 1 for this run) and ``report.md`` that puts our numbers beside
the paper's.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import storage
from ..config import PipelineConfig, PolicyConfig
from ..gym import make
from ..gym.pool import GameSpec
from ..gym.protocol import ProtocolResult, play
from ..policies import build_policy, usage
from . import learning

log = logging.getLogger(__name__)

# The paper's Table (spec section 7), for the report's comparison column.
PAPER_SCORES: dict[str, dict[str, float]] = {
    "G1-7B": {"2048": 1070, "shisen-sho": 17.5, "shisen-sho-cifar10": 14.1, "swap": 78},
    "Claude-3.7-Sonnet-Thinking": {"2048": 892, "shisen-sho": 15.3, "shisen-sho-cifar10": 8.7, "swap": 43},
    "G0-7B": {"2048": 759, "shisen-sho": 12.8, "shisen-sho-cifar10": 8.0, "swap": 5},
    "GPT-4o": {"2048": 620, "shisen-sho": 1.5, "shisen-sho-cifar10": 4.7, "swap": 1},
    "o1": {"2048": 539, "shisen-sho": 3.9, "shisen-sho-cifar10": 5.4, "swap": 4},
    "Qwen2.5-VL-72B": {"2048": 243, "shisen-sho": 2.6, "shisen-sho-cifar10": 0.8, "swap": 6},
    "Qwen2.5-VL-7B (base)": {"2048": 246, "shisen-sho": 1.9, "shisen-sho-cifar10": 0.4, "swap": 2},
    "Random": {"2048": 701, "shisen-sho": 0.4, "shisen-sho-cifar10": 0.4, "swap": 1},
}

# The paper's Figure 1 for this run: every player on every game (beside one bar chart per game)
COMPARISON_PLOT = "plot-comparison.png"

COLUMNS = (
    "game",
    "policy",
    "mean",
    "std",
    "unreadable_rate",
    "illegal_rate",
    "format_rate",
    "perception_exact_rate",
)


@dataclass
class EvaluateResult:
    uri: str
    results: list[ProtocolResult] = field(default_factory=list)
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # per player: tokens, cost, speed
    histories: dict[str, list[dict]] = field(default_factory=dict)  # training stage -> its result's history
    learned: dict = field(default_factory=dict)  # learning.json: the training curves, the candidate's margins

    def table(self) -> list[dict]:
        rows = []
        for r in self.results:
            d = r.to_dict()
            rows.append({c: d[c] for c in COLUMNS})
        return rows


def metric_name(*parts: str) -> str:
    """An MLflow-safe metric key (letters, digits, _ - . / and spaces only)."""
    from ..tracking import metric_key

    return metric_key(*parts)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| game | policy | score (mean ± std) | unreadable | illegal | format | perception exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['game']} | {r['policy']} | {r['mean']:.1f} ± {r['std']:.1f} | "
            f"{r['unreadable_rate']:.0%} | {r['illegal_rate']:.0%} | {r['format_rate']:.0%} | "
            f"{r['perception_exact_rate']:.0%} |"
        )
    return "\n".join(lines)


def plot_game(game: str, rows: list[dict]) -> bytes:
    """A bar chart of one game's scores per policy (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3.5), dpi=100)
    ax.bar(
        [r["policy"] for r in rows],
        [r["mean"] for r in rows],
        yerr=[r["std"] for r in rows],
        capsize=4,
        color="#4c72b0",
    )
    ax.set_title(f"{game}: protocol score")
    ax.set_ylabel("score")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_comparison(rows: list[dict]) -> bytes:
    """Every player on every game in one figure, a panel per game and a colour per player, as the
    paper's Figure 1 compares G1 with its teacher and the other models (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = list(dict.fromkeys(r["game"] for r in rows))
    players = list(dict.fromkeys(r["policy"] for r in rows))
    colours = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(players)}
    fig, axes = plt.subplots(
        1, len(games), figsize=(max(4.0, 0.5 * len(players) + 1.5) * len(games), 3.8), dpi=100, squeeze=False
    )
    for ax, game in zip(axes[0], games, strict=True):
        here = [r for r in rows if r["game"] == game]
        ax.bar(
            range(len(here)),
            [r["mean"] for r in here],
            yerr=[r["std"] for r in here],
            capsize=3,
            color=[colours[r["policy"]] for r in here],
        )
        ax.set_xticks(range(len(here)), [r["policy"] for r in here], rotation=30, ha="right")
        ax.set_title(game)
    axes[0][0].set_ylabel("protocol score")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def usage_lines(usage: dict[str, dict[str, float]]) -> str:
    """A line per player that spent requests or generated tokens; failed requests are flagged."""
    lines = []
    for player, u in usage.items():
        if not u:
            continue
        parts = ", ".join(f"{k} {v:.4g}" for k, v in u.items())
        warn = (
            " — **some requests failed: their replies were scored as unreadable**" if u.get("failed") else ""
        )
        lines.append(f"- {player}: {parts}{warn}")
    return "\n".join(lines)


def report(
    rows: list[dict],
    cfg: PipelineConfig,
    usage: dict[str, dict[str, float]] | None = None,
    learned: dict | None = None,
) -> str:
    e = cfg.evaluate
    games = list(dict.fromkeys(r["game"] for r in rows))
    paper = ["| model | " + " | ".join(games) + " |", "|---|" + "---|" * len(games)]
    for model, scores in PAPER_SCORES.items():
        paper.append(
            f"| {model} | "
            + " | ".join(f"{scores.get(g.split(':')[0], float('nan')):g}" for g in games)
            + " |"
        )
    plots = "\n".join(f"![{g}](plot-{re.sub(r'[^A-Za-z0-9_.-]', '_', g)}.png)" for g in games)
    learned_text = learning.markdown(learned) if learned else ""
    return (
        f"# g1 evaluation\n\nProtocol: {e.runs} runs x {e.steps} steps per game from fresh boards "
        f"(seeds {e.seed}..{e.seed + e.runs - 1}). 2048: sum of merge rewards; Shisen-Sho: pairs removed; "
        "Swap: legal swaps per 100 steps.\n\n## Our players\n\n"
        f"{markdown_table(rows)}\n\n![every game]({COMPARISON_PLOT})\n\n{plots}\n\n"
        + (f"{learned_text}\n" if learned_text else "")
        + (f"## What the players used\n\n{usage_lines(usage)}\n\n" if usage and usage_lines(usage) else "")
        + "## The paper (for reference, Qwen2.5-VL-7B scale)\n\n"
        + "\n".join(paper)
        + "\n"
    )


def stage_models(policies: list[PolicyConfig], models: Mapping[str, str] | None) -> list[PolicyConfig]:
    """The players with each ``model: <training stage>`` replaced by the URI of the model it trained.

    ``models`` maps a stage name to its model's URI (the pipeline gives the same run's). A player keeps
    its label (``hf:sft`` unless named). A reference to a stage with no model there fails, naming it.
    """
    from . import MODEL_STAGES

    models = models or {}
    out = []
    for i, player in enumerate(policies):
        stage = player.model if player.kind == "hf" else None
        if stage not in MODEL_STAGES:
            out.append(player)
            continue
        where = f"evaluate.policies.{i} ({player.label})"
        if stage not in models:
            raise ValueError(
                f"{where}: model {stage!r} is the model of the pipeline's {stage} stage, but no {stage} "
                "output was given (run evaluate in the pipeline, or with the run id of a run that has it)"
            )
        if not storage.exists(storage.join(models[stage], "config.json")):
            raise FileNotFoundError(
                f"{where}: no trained model at {models[stage]!r} (no config.json): has the {stage} stage "
                "of this pipeline run finished?"
            )
        out.append(player.model_copy(update={"model": models[stage], "name": player.label}))
    return out


def run(
    cfg: PipelineConfig,
    output_uri: str,
    policies: list[PolicyConfig] | None = None,
    progress: bool = True,
    models: Mapping[str, str] | None = None,
    training: Mapping[str, str] | None = None,
) -> EvaluateResult:
    """Play every game with every policy under the protocol and write the report to ``output_uri``.

    ``models`` maps training stages to the URIs of their models, for players that name a stage
    (:func:`stage_models`); ``training`` maps them to their outputs, whose histories give the report's
    training curves (:mod:`.learning`). Every player is built and preflighted on every game before the
    first move, and the outputs are rewritten after each player, so a failure late in the run keeps what
    was measured before it.
    """
    e = cfg.evaluate
    configs = stage_models(policies if policies is not None else e.policies, models)
    players = [build_policy(p, cfg.model) for p in configs]
    for game in e.games:  # fail now, not after an hour of other players, if a prompt cannot fit
        spec = GameSpec.parse(game)
        env = make(spec.game, screen_size=tuple(e.screen_size), **spec.knobs)
        env.reset(seed=e.seed)
        for player in players:
            if hasattr(player, "check"):
                player.check(env)
    result = EvaluateResult(output_uri, histories=learning.read_histories(training))
    curves = learning.plot(result.histories)  # the training is over: its curves are drawn once
    if curves is not None:
        storage.write_bytes(storage.join(output_uri, learning.TRAINING_PLOT), curves)
    for player in players:
        for game in e.games:
            result.results.append(play(game, player, e.runs, e.steps, e.seed, tuple(e.screen_size), progress))
        result.usage[player.name] = usage(player)
        write_outputs(result, cfg)
    log.info("evaluation written to %s", output_uri)
    return result


def write_outputs(result: EvaluateResult, cfg: PipelineConfig) -> None:
    """results.json, usage.json, table.md/.csv, one plot per game, learning.json with the training curves
    and the candidate's margins, and report.md under the result's URI."""
    uri = result.uri
    rows = result.table()
    result.learned = learning.learning(cfg, rows, result.histories)
    storage.write_bytes(
        storage.join(uri, learning.LEARNING_FILE), json.dumps(result.learned, indent=2).encode()
    )
    storage.write_bytes(
        storage.join(uri, "results.json"),
        json.dumps([r.to_dict() for r in result.results], indent=2).encode(),
    )
    storage.write_bytes(storage.join(uri, "usage.json"), json.dumps(result.usage, indent=2).encode())
    storage.write_bytes(storage.join(uri, "table.md"), (markdown_table(rows) + "\n").encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(storage.join(uri, "table.csv"), buf.getvalue().encode())
    for game in dict.fromkeys(r["game"] for r in rows):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", game)
        storage.write_bytes(
            storage.join(uri, f"plot-{name}.png"), plot_game(game, [r for r in rows if r["game"] == game])
        )
    storage.write_bytes(storage.join(uri, COMPARISON_PLOT), plot_comparison(rows))
    storage.write_bytes(
        storage.join(uri, "report.md"), report(rows, cfg, result.usage, result.learned).encode()
    )


def metrics(result: EvaluateResult) -> dict[str, float]:
    """Every (game, policy) number as an MLflow metric."""
    out = {}
    for row in result.table():
        for key in COLUMNS[2:]:
            out[metric_name(row["game"], row["policy"], key)] = float(row[key])
    for player, numbers in result.usage.items():
        for key, value in numbers.items():
            out[metric_name(player, "usage", key)] = float(value)
    out.update(learning.metrics(result.learned) if result.learned else {})
    return out


def headline(uri: str) -> tuple[dict[str, float], str]:
    """The written evaluation at ``uri`` as KFP shows it: each player's mean score per game
    (``<game>/<player>``) and the report's markdown."""
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(storage.join(uri, "table.csv")).decode())))
    scores = {metric_name(row["game"], row["policy"]): float(row["mean"]) for row in rows}
    return scores, storage.read_bytes(storage.join(uri, "report.md")).decode()
