"""Pipeline runs side by side in MLflow: each run's headline on its parent run, and ``g1 runs compare``.

The stages log their detail in child runs. MLflow's run-comparison view compares runs of one level, so the
pipeline's parent run carries the headline (:func:`write_headline`, called by the pipeline's exit handler,
after a failed stage too):

- ``score/<game>/<player>`` and ``score_se/<game>/<player>``: the evaluation's protocol score (the mean over
  its runs) and its standard error (std / sqrt(runs)), for every player;
- ``sft/perception_exact``: SFT's held-out perception exact-match; ``g1/game_reward_first`` and
  ``g1/game_reward_last``: G1's game reward at its first and last logged step;
- ``time/<stage>_s``: each stage's wall time;
- params that tell runs apart (model, teacher, games, reward weights, preset, beta, learning rates, steps,
  seeds) and tags for the g1 version and the stage images.

``compare`` reads those back for the last N pipeline runs of an experiment (or given run ids), keeps the
params that differ, and renders a rich table, markdown or a PNG chart.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import PipelineConfig
from .tracking import PIPELINE_TAG, ROLE_TAG, STAGE_TAG, StageRun, Tracker, metric_key, versions_made_by

log = logging.getLogger(__name__)

SCORE, SCORE_SE = "score/", "score_se/"
G1_REWARD = "train.rewards/game/mean"  # the GRPO stages' game reward per logged step


def evaluation_protocol(cfg: PipelineConfig) -> str:
    """The protocol scores were measured under (games aside): ``<runs>x<steps> seed <seed>``; scores compare
    only under the same one."""
    e = cfg.evaluate
    return f"{e.runs}x{e.steps} seed {e.seed}"


def headline_params(cfg: PipelineConfig) -> dict[str, str]:
    """The config values that tell pipeline runs apart, named to sort well in MLflow's compare view."""
    teacher = cfg.distill.teacher
    params: dict[str, Any] = {
        "config": cfg.name,
        "model": cfg.model.name_or_path,
        "teacher": teacher.name or teacher.model or teacher.kind,
        "distill.games": ",".join(cfg.distill.gym.games),
        "distill.states_per_game": cfg.distill.states_per_game,
        "distill.seed": cfg.distill.seed,
        "sft.learning_rate": cfg.sft.learning_rate,
        "sft.epochs": cfg.sft.epochs,
        "sft.samples": cfg.sft.samples,
        "sft.seed": cfg.sft.seed,
        "grpo.games": ",".join(cfg.grpo.gym.games),
        "grpo.preset": cfg.grpo.preset,
        "grpo.beta": cfg.grpo.beta,
        "grpo.learning_rate": cfg.grpo.learning_rate,
        "grpo.steps": cfg.grpo.steps,
        "grpo.seed": cfg.grpo.seed,
        "evaluate.games": ",".join(cfg.evaluate.games),
        "evaluate.protocol": evaluation_protocol(cfg),
    }
    params.update({f"grpo.reward.{k}": v for k, v in sorted(cfg.grpo.reward_weights.items())})
    return {k: "default" if v is None else str(v) for k, v in params.items()}


def headline_metrics(tracker: Tracker, pipeline_run_id: str, runs_per_game: int) -> dict[str, float]:
    """The headline numbers from the pipeline run's child runs (the newest try of each stage)."""
    children = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    newest: dict[str, Any] = {}
    for run in children:
        stage = run.data.tags.get(STAGE_TAG)
        if stage and run.data.tags.get(ROLE_TAG) != "pipeline":
            newest.setdefault(stage, run)
    out: dict[str, float] = {}
    for stage, run in newest.items():
        if run.info.end_time and run.info.start_time:
            out[metric_key("time", f"{stage}_s")] = (run.info.end_time - run.info.start_time) / 1000
    if "evaluate" in newest:
        m = newest["evaluate"].data.metrics
        for key, mean in m.items():
            if key.endswith("/mean") and f"{key[:-5]}/std" in m:
                out[SCORE + key[:-5]] = mean
                out[SCORE_SE + key[:-5]] = m[f"{key[:-5]}/std"] / math.sqrt(max(runs_per_game, 1))
            elif key.startswith("training/") or "-vs-" in key:  # what the run learned (stages/learning.py)
                out[key] = m[key]
    if "sft" in newest and "heldout.perception_exact" in newest["sft"].data.metrics:
        out["sft/perception_exact"] = newest["sft"].data.metrics["heldout.perception_exact"]
    if "g1" in newest:
        history = tracker.client.get_metric_history(newest["g1"].info.run_id, G1_REWARD)
        if history:
            steps = sorted(history, key=lambda h: (h.step, h.timestamp))
            out["g1/game_reward_first"], out["g1/game_reward_last"] = steps[0].value, steps[-1].value
    return out


def write_headline(
    tracker: Tracker, cfg: PipelineConfig, pipeline_run_id: str, tags: Mapping[str, str]
) -> dict:
    """Put the headline on the pipeline's parent run; returns the metrics written. Idempotent: a retried
    exit handler writes the same params and the same latest values."""
    from . import __version__

    parent = tracker.parent_run_id(pipeline_run_id)
    metrics = headline_metrics(tracker, pipeline_run_id, cfg.evaluate.runs)
    run = StageRun(tracker.client, parent)
    run.log_params(headline_params(cfg))
    run.set_tags({"g1.version": __version__, **tags})
    run.log_metrics(metrics, step=0)
    _tag_versions(tracker, cfg, pipeline_run_id, metrics)
    log.info("pipeline run %s: %d headline figures on MLflow run %s", pipeline_run_id, len(metrics), parent)
    return metrics


def _tag_versions(
    tracker: Tracker, cfg: PipelineConfig, pipeline_run_id: str, metrics: Mapping[str, float]
) -> None:
    """Tag the registered versions this pipeline run made with their own player's scores (``score/<game>``,
    ``score_se/<game>``) and the evaluation protocol they were measured under."""
    from .stages import MODEL_STAGES, registered_name

    for stage in MODEL_STAGES:
        label = next((p.label for p in cfg.evaluate.policies if p.kind == "hf" and p.model == stage), None)
        name = registered_name(cfg, stage)
        versions = versions_made_by(tracker.client, name, pipeline_run_id, stage)
        if label is None or not versions:
            continue
        suffix = "/" + metric_key(label)
        tags = {"g1.protocol": evaluation_protocol(cfg)}
        for key, value in metrics.items():
            if key.startswith((SCORE, SCORE_SE)) and key.endswith(suffix):
                tags[key[: -len(suffix)]] = f"{value:.6g}"
        for version in versions:
            for key, value in tags.items():
                tracker.client.set_model_version_tag(name, version.version, key, value)


# ---- g1 runs compare -----------------------------------------------------------------------------------
@dataclass
class Comparison:
    runs: list[dict] = field(default_factory=list)  # per run: id, name, status, start, params, metrics
    scores: list[str] = field(default_factory=list)  # "<game>/<player>" keys present in any run
    others: list[str] = field(default_factory=list)  # other headline metrics present in any run
    differing: list[str] = field(default_factory=list)  # params whose values differ between the runs


def compare(tracker: Tracker, run_ids: Sequence[str] = (), last: int = 5) -> Comparison:
    """The given parent runs, or the experiment's last ``last`` pipeline runs, newest first."""
    if run_ids:
        runs = [tracker.client.get_run(r) for r in run_ids]
    else:
        runs = tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'pipeline'",
            order_by=["attributes.start_time DESC"],
            max_results=last,
        )
    table = Comparison()
    for r in runs:
        table.runs.append(
            {
                "id": r.info.run_id,
                "name": r.info.run_name or r.info.run_id,
                "status": r.info.status,
                "params": dict(r.data.params),
                "metrics": dict(r.data.metrics),
            }
        )
    keys = sorted({k for r in table.runs for k in r["metrics"]})
    table.scores = [k[len(SCORE) :] for k in keys if k.startswith(SCORE)]
    table.others = [k for k in keys if not k.startswith((SCORE, SCORE_SE, "time/"))]
    names = sorted({k for r in table.runs for k in r["params"]})
    table.differing = [n for n in names if len({r["params"].get(n) for r in table.runs}) > 1]
    return table


def _cell(run: dict, score: str) -> str:
    m = run["metrics"]
    if SCORE + score not in m:
        return "-"
    se = m.get(SCORE_SE + score)
    return f"{m[SCORE + score]:.4g}" + (f" ± {se:.2g}" if se is not None else "")


def rows(table: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows: a row per run (status, the differing params, every score with its standard error,
    the other headline figures)."""
    header = ["run", "status", *table.differing, *table.scores, *table.others]
    body = []
    for r in table.runs:
        body.append(
            [r["name"], r["status"]]
            + [r["params"].get(p, "") for p in table.differing]
            + [_cell(r, s) for s in table.scores]
            + [f"{r['metrics'][o]:.4g}" if o in r["metrics"] else "-" for o in table.others]
        )
    return header, body


def markdown(table: Comparison) -> str:
    header, body = rows(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def chart(table: Comparison) -> bytes:
    """A PNG: one group of bars per score, one bar per run, with its standard error."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(table.runs), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(table.scores) * n), 4))
    width = 0.8 / n
    for i, run in enumerate(table.runs):
        xs = [j + i * width for j in range(len(table.scores))]
        ys = [run["metrics"].get(SCORE + s, float("nan")) for s in table.scores]
        errs = [run["metrics"].get(SCORE_SE + s, 0.0) for s in table.scores]
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=run["name"])
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(table.scores))], table.scores, rotation=60, ha="right"
    )
    ax.set_ylabel("protocol score (± standard error)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# ---- what a local pipeline run ends by showing -----------------------------------------------------------
# SFT's held-out perception exact-match under which a tiny-model run has not learned to read its boards
SMOKE_BELOW = 0.9


def _learned(report_uri: str) -> dict:
    """The evaluation's learning.json (training curves, the candidate's margins); {} when absent."""
    import json

    from . import storage
    from .stages.learning import LEARNING_FILE

    path = storage.join(report_uri, LEARNING_FILE)
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else {}


def learned_lines(learned: dict) -> list[str]:
    """A line per training curve (start -> end) and one per game for the candidate's margins."""
    from .stages.learning import trend

    lines = []
    for r in learned.get("training", []):
        lines.append(
            f"{r['stage']}: {r['measure']} {r['start']:.3g} -> {r['end']:.3g}{trend(r)} ({r['steps']} steps)"
        )
    by_game: dict[str, list[str]] = {}
    for d in learned.get("differences", []):
        by_game.setdefault(d["game"], []).append(
            f"{d['other']} {d['diff']:+.3g} ± {d['se']:.2g} ({d['z']:+.1f} se)"
        )
    for game, items in by_game.items():
        lines.append(f"{learned['candidate']} against the others on {game}: " + ", ".join(items))
    return lines


def run_summary(
    cfg: PipelineConfig, report_uri: str, tracking: str
) -> tuple[list[str], list[list[str]], list[str]]:
    """The evaluation's table (every player on every game, mean ± standard error) and the lines that say
    what ran and where to look: (header, rows, notes)."""
    import csv
    import io

    from . import storage

    table = list(
        csv.DictReader(io.StringIO(storage.read_bytes(storage.join(report_uri, "table.csv")).decode()))
    )
    games = list(dict.fromkeys(r["game"] for r in table))
    players = list(dict.fromkeys(r["policy"] for r in table))
    cell = {(r["game"], r["policy"]): r for r in table}
    runs = cfg.evaluate.runs
    rows = []
    for player in players:
        row = [player]
        for game in games:
            r = cell.get((game, player))
            row.append(f"{float(r['mean']):.3g} ± {float(r['std']) / math.sqrt(runs):.2g}" if r else "-")
        rows.append(row)
    notes = [f"evaluation: {runs} runs x {cfg.evaluate.steps} steps per game; score ± standard error"]
    learned = _learned(report_uri)
    notes += learned_lines(learned)
    read = {r["stage"]: r["end"] for r in learned.get("training", [])}.get("sft", 0.0)
    if cfg.model.name_or_path == "tiny" and read < SMOKE_BELOW:
        notes.append(
            "this is the smoke scale (a random-weight tiny model, a few training steps): the scores say the "
            "pipeline ran, not that it learned; `g1 pipeline run --local --config local-learn` (~35 min on "
            "2 cores) shows the recipe learning (docs/findings.md)"
        )
    notes.append(f"report and plots: {report_uri} (report.md, table.md, plot-*.png)")
    if tracking.startswith("sqlite:///"):
        notes.append(
            f"MLflow: .venv/bin/mlflow ui --backend-store-uri {tracking}   (then http://127.0.0.1:5000)"
        )
    else:
        notes.append(f"MLflow: {tracking}")
    return ["player", *games], rows, notes
