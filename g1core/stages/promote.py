"""The promotion gate: does this pipeline run's model become the registered ``champion``?

The candidate is the version the ``promote.stage`` stage registered in this pipeline run (``@candidate``).
Its scores are this run's evaluation. The champion's are the scores tagged on its version when they were
measured under the same protocol (games, runs, steps, seed); otherwise the champion plays that protocol
again here, with the candidate's player settings. Every score is divided by the teacher's on that game in
this run, since raw scores differ by orders of magnitude between games.

The rule (``promote`` config): with d_g the normalised difference on game g and s_g its standard error,
promote when mean(d_g) > margin_se * SE(mean) and no d_g < -worse_se * s_g. The first candidate, with no
champion yet, is promoted. The decision, its figures and its reasons go to ``decision.json`` and
``decision.md`` under the stage's output and to its MLflow run; a registry error fails the stage. A rerun
finds its decision and changes nothing.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import storage
from ..config import PipelineConfig, PolicyConfig
from ..runs import evaluation_protocol
from ..tracking import PIPELINE_TAG, STAGE_TAG, Tracker, metric_key, versions_made_by
from .learning import candidate_player

log = logging.getLogger(__name__)

CHAMPION = "champion"
DECISION = "decision.json"


@dataclass
class Decision:
    promote: bool
    model: str  # the registered model
    candidate: str  # its version
    champion: str | None  # the champion's version before the gate, None for the first
    reasons: list[str] = field(default_factory=list)
    games: dict[str, dict[str, float]] = field(default_factory=dict)  # per game: the figures compared
    mean_diff: float = float("nan")
    mean_diff_se: float = float("nan")
    champion_replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        verdict = "**promoted**" if self.promote else "**not promoted**"
        head = f"# Promotion gate: {self.model} version {self.candidate} {verdict}\n\n"
        champ = f"champion before: version {self.champion}" if self.champion else "no champion before"
        lines = [head, f"{champ}.\n\n", *[f"- {r}\n" for r in self.reasons]]
        if self.games:
            lines.append(
                "\n| game | candidate / teacher | champion / teacher | difference ± se |\n|---|---|---|---|\n"
            )
            for game, g in self.games.items():
                figures = f"{g['candidate']:.3g} | {g['champion']:.3g} | {g['diff']:+.3g} ± {g['se']:.2g}"
                lines.append(f"| {game} | {figures} |\n")
        return "".join(lines)


def decide(
    candidate: dict[str, tuple[float, float]],
    champion: dict[str, tuple[float, float]],
    teacher: dict[str, float],
    margin_se: float,
    worse_se: float,
) -> tuple[bool, list[str], dict[str, dict[str, float]], float, float]:
    """The rule on per-game (mean, standard error) pairs; returns (promote, reasons, per game, mean, se)."""
    games, reasons = {}, []
    for game in sorted(candidate):
        if game not in champion:
            continue
        scale = abs(teacher.get(game, 0.0)) or 1.0  # a teacher score of 0 leaves that game unscaled
        (c, c_se), (h, h_se) = candidate[game], champion[game]
        games[game] = {
            "candidate": c / scale,
            "champion": h / scale,
            "diff": (c - h) / scale,
            "se": math.hypot(c_se, h_se) / scale,
        }
    if not games:
        return False, ["no game was scored for both the candidate and the champion"], {}, math.nan, math.nan
    mean = sum(g["diff"] for g in games.values()) / len(games)
    se = math.sqrt(sum(g["se"] ** 2 for g in games.values())) / len(games)
    better = mean > margin_se * se
    reasons.append(
        f"mean teacher-normalised difference {mean:+.3g} ± {se:.2g}: "
        + ("more" if better else "not more")
        + f" than {margin_se:g} standard errors"
    )
    worse = [g for g, v in games.items() if v["diff"] < -worse_se * v["se"]]
    if worse:
        reasons.append(f"worse beyond {worse_se:g} standard errors on: {', '.join(worse)}")
    return better and not worse, reasons, games, mean, se


def _scores(metrics: dict[str, float], label: str, runs: int) -> dict[str, tuple[float, float]]:
    """Per game (mean, standard error) of player ``label`` from an evaluation run's metrics."""
    out, suffix = {}, "/" + metric_key(label) + "/mean"
    for key, mean in metrics.items():
        if key.endswith(suffix):
            game = key[: -len(suffix)]
            out[game] = (mean, metrics.get(key[:-5] + "/std", 0.0) / math.sqrt(max(runs, 1)))
    return out


def _player(cfg: PipelineConfig) -> PolicyConfig:
    player, stage = candidate_player(cfg), cfg.promote.stage
    if player is None:
        raise ValueError(
            f"promote.stage {stage!r}: no evaluation player plays that stage's model "
            f"(kind: hf, model: {stage})"
        )
    return player


def _teacher(cfg: PipelineConfig) -> str:
    if cfg.promote.teacher:
        return cfg.promote.teacher
    for p in cfg.evaluate.policies:
        if p.kind in ("oracle", "openai") or (p.kind == "hf" and p.model not in ("base", "sft", "g0", "g1")):
            return p.label
    raise ValueError("promote: no teacher among the evaluation players; set promote.teacher")


def _replay(cfg: PipelineConfig, model: str, version: str, player: PolicyConfig, progress: bool):
    """The champion's (mean, se) per game under this run's protocol, played here."""
    from ..gym.protocol import play
    from ..policies import build_policy

    e = cfg.evaluate
    config = player.model_copy(update={"model": f"models:/{model}/{version}", "name": "champion"})
    policy = build_policy(config, cfg.model)
    out = {}
    for game in e.games:
        r = play(game, policy, e.runs, e.steps, e.seed, tuple(e.screen_size), progress)
        out[metric_key(game)] = (r.mean, r.std / math.sqrt(max(e.runs, 1)))
    return out


def run(cfg: PipelineConfig, output_uri: str, progress: bool = True, pipeline_run_id: str = "") -> Decision:
    done = storage.join(output_uri, DECISION)
    if storage.exists(done):  # a rerun after a crash: the decision stands, nothing moves again
        log.info("%s holds this run's decision already", done)
        return Decision(**json.loads(storage.read_bytes(done)))
    from . import registered_name

    p = cfg.promote
    tracker = Tracker(cfg.tracking.experiment)
    client = tracker.client
    name = registered_name(cfg, p.stage)
    mine = versions_made_by(client, name, pipeline_run_id, p.stage)
    if not mine:
        raise ValueError(
            f"pipeline run {pipeline_run_id!r} registered no version of {name}: nothing to promote"
        )
    candidate = max(mine, key=lambda v: int(v.version)).version
    player, teacher_label = _player(cfg), _teacher(cfg)
    evaluation = _evaluation_metrics(tracker, pipeline_run_id)
    cand = _scores(evaluation, player.label, cfg.evaluate.runs)
    teacher = {g: m for g, (m, _) in _scores(evaluation, teacher_label, cfg.evaluate.runs).items()}
    if not cand:
        raise ValueError(
            f"this run's evaluation has no scores of {player.label!r}: run the evaluate stage first"
        )
    champion = _alias(client, name, CHAMPION)
    decision = Decision(promote=True, model=name, candidate=str(candidate), champion=champion)
    if champion is None:
        decision.reasons.append("no champion yet: the first candidate is promoted")
    elif champion == str(candidate):
        decision.reasons.append("already the champion (an earlier try of this gate promoted it)")
    else:
        stored = client.get_model_version(name, champion).tags
        champ = {
            k.removeprefix("score/"): (
                float(v),
                float(stored.get("score_se/" + k.removeprefix("score/"), 0.0)),
            )
            for k, v in stored.items()
            if k.startswith("score/")
        }
        if stored.get("g1.protocol") != evaluation_protocol(cfg) or not set(cand) <= set(champ):
            log.info("champion %s@%s was scored under %r, not %r: playing it again",
                     name, champion, stored.get("g1.protocol"), evaluation_protocol(cfg))  # fmt: skip
            champ, decision.champion_replayed = _replay(cfg, name, champion, player, progress), True
            decision.reasons.append(
                f"the champion was played again under this run's protocol ({evaluation_protocol(cfg)})"
            )
        promote, reasons, games, mean, se = decide(cand, champ, teacher, p.margin_se, p.worse_se)
        decision.promote, decision.games, decision.mean_diff, decision.mean_diff_se = promote, games, mean, se
        decision.reasons += reasons
    if decision.promote and champion != str(candidate):
        client.set_registered_model_alias(name, CHAMPION, candidate)  # a registry error fails the stage
        log.info("%s version %s is now @%s", name, candidate, CHAMPION)
    storage.write_bytes(storage.join(output_uri, "decision.md"), decision.markdown().encode())
    storage.write_bytes(done, json.dumps(decision.to_dict(), indent=2).encode())
    log.info("promotion gate: %s version %s %s; %s", name, candidate,
             "promoted" if decision.promote else "not promoted", "; ".join(decision.reasons))  # fmt: skip
    return decision


def _alias(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "INVALID_PARAMETER_VALUE" in str(
            err.error_code
        ):
            return None
        raise


def _evaluation_metrics(tracker: Tracker, pipeline_run_id: str) -> dict[str, float]:
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}' and tags.`{STAGE_TAG}` = 'evaluate'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return dict(runs[0].data.metrics) if runs else {}


def metrics(decision: Decision) -> dict[str, float]:
    out = {"promoted": float(decision.promote), "champion_replayed": float(decision.champion_replayed)}
    if not math.isnan(decision.mean_diff):
        out.update({"mean_diff": decision.mean_diff, "mean_diff_se": decision.mean_diff_se})
    return out
