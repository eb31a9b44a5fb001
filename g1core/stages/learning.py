"""What a pipeline run learned, for its report: the training curves and the candidate against the others.

- The training curves come from the training stages' ``result.json`` histories: SFT's held-out perception
  exact-match (did the cold start learn to read the board?) and each GRPO branch's game reward per step
  (did RL raise it?). MLflow holds the same curves in the stages' runs; the report puts them side by side.
- The candidate (``promote.stage``'s evaluation player, G1 by default) is set against every other player
  on every game: the difference of protocol scores and its standard error, ``hypot`` of the two players'
  standard errors (the players' runs are independent samples; the promotion gate uses the same rule).

The evaluation stage writes ``learning.json`` with both; ``make run`` ends by quoting it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping

import numpy as np

from .. import storage
from ..config import PipelineConfig, PolicyConfig

LEARNING_FILE = "learning.json"
TRAINING_PLOT = "plot-training.png"
# the curve each training stage is judged by: (history key, what it measures)
CURVES = {
    "sft": ("heldout.perception_exact", "held-out perception exact-match"),
    "g0": ("rewards/game/mean", "game reward per step"),
    "g1": ("rewards/game/mean", "game reward per step"),
}
SHARE = 0.1  # a GRPO curve's start and end: the mean of its first and last tenth (one step is noisy)
Histories = Mapping[str, list[dict]]  # training stage -> its result.json history


def read_histories(training: Mapping[str, str] | None) -> dict[str, list[dict]]:
    """Each training stage's history from its ``result.json`` (stages without one are left out)."""
    out = {}
    for stage, uri in (training or {}).items():
        path = storage.join(uri, "result.json")
        if stage in CURVES and storage.exists(path):
            out[stage] = json.loads(storage.read_bytes(path)).get("history", [])
    return out


def curve(stage: str, history: list[dict]) -> list[tuple[int, float]]:
    """(step, value) of ``stage``'s curve."""
    key = CURVES[stage][0]
    return [(int(e["step"]), float(e[key])) for e in history if key in e and "step" in e]


def edge_mean(values: list[float], first: bool, share: float = SHARE) -> float:
    """Mean over the first (or last) ``share`` of a series, at least one value (nan when it is empty)."""
    if not values:
        return float("nan")
    n = max(1, math.ceil(len(values) * share))
    return float(np.mean(values[:n] if first else values[-n:]))


def rise(points: list[tuple[int, float]]) -> tuple[float, float]:
    """The least-squares line's rise from the first step to the last, and its standard error: a noisy
    per-step series (each step's states are new) rises or not by its trend, not by a window at each end."""
    if len(points) < 3:
        return float("nan"), float("nan")
    x, y = np.array(points, dtype=float).T
    span, dx = x[-1] - x[0], x - x.mean()
    if not dx.any():
        return float("nan"), float("nan")
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    residual = y - y.mean() - slope * dx
    se = math.sqrt(float(residual @ residual) / (len(y) - 2) / float(dx @ dx))
    return float(slope * span), float(se * span)


def training_rows(histories: Histories) -> list[dict]:
    """A row per training stage: its curve's start and end (SFT: the first and last held-out evaluation and
    the best; GRPO: the means of the first and last tenth of the steps, and the least-squares rise)."""
    rows = []
    for stage, history in histories.items():
        points = curve(stage, history)
        if not points:
            continue
        values = [v for _, v in points]
        row = {"stage": stage, "measure": CURVES[stage][1], "steps": points[-1][0], "points": len(points)}
        if stage == "sft":
            row.update(start=values[0], end=values[-1], best=max(values))
        else:
            row.update(start=edge_mean(values, first=True), end=edge_mean(values, first=False))
            row["rise"], row["rise_se"] = rise(points)
        rows.append(row)
    return rows


def trend(row: dict) -> str:
    """``; best X`` for SFT, ``; least-squares rise +X ± se`` for a GRPO row."""
    if "best" in row:
        return f"; best {row['best']:.3g}"
    if math.isfinite(row.get("rise", math.nan)):
        return f"; least-squares rise {row['rise']:+.3g} ± {row['rise_se']:.2g}"
    return ""


def candidate_player(cfg: PipelineConfig) -> PolicyConfig | None:
    """``promote.stage``'s evaluation player (None if no player plays that stage's model)."""
    for p in cfg.evaluate.policies:
        if p.kind == "hf" and p.model == cfg.promote.stage:
            return p
    return None


def candidate(cfg: PipelineConfig) -> str | None:
    """The label of ``promote.stage``'s evaluation player (None if there is none)."""
    player = candidate_player(cfg)
    return player.label if player else None


def differences(table: list[dict], label: str, runs: int) -> list[dict]:
    """Per game, the player ``label`` against each other player: score difference, its standard error and
    the difference in standard errors. ``table`` holds the evaluation's rows (game, policy, mean, std)."""
    se = {(r["game"], r["policy"]): float(r["std"]) / math.sqrt(max(runs, 1)) for r in table}
    mean = {(r["game"], r["policy"]): float(r["mean"]) for r in table}
    out = []
    for game in dict.fromkeys(r["game"] for r in table):
        if (game, label) not in mean:
            continue
        for r in table:
            other = r["policy"]
            if r["game"] != game or other == label:
                continue
            diff = mean[game, label] - mean[game, other]
            err = math.hypot(se[game, label], se[game, other])
            out.append(
                {"game": game, "player": label, "other": other, "diff": diff, "se": err,
                 "z": diff / err if err else math.copysign(math.inf, diff) if diff else 0.0}
            )  # fmt: skip
    return out


def learning(cfg: PipelineConfig, table: list[dict], histories: Histories) -> dict:
    """What ``learning.json`` holds: the training rows and the candidate's differences."""
    label = candidate(cfg)
    return {
        "training": training_rows(histories),
        "candidate": label,
        "differences": differences(table, label, cfg.evaluate.runs) if label else [],
    }


def markdown(found: dict) -> str:
    """The report's two sections on what the run learned (empty when there is nothing to say)."""
    parts = []
    if found["training"]:
        lines = ["| stage | measure | start | end | steps |", "|---|---|---|---|---|"]
        for r in found["training"]:
            cells = (
                r["stage"],
                r["measure"],
                f"{r['start']:.3g}",
                f"{r['end']:.3g}{trend(r)}",
                str(r["steps"]),
            )
            lines.append("| " + " | ".join(cells) + " |")
        parts.append(
            "## Training\n\nSFT: held-out perception exact-match at its first and last evaluation. GRPO: the "
            "game reward per step, mean of the first and the last tenth of the steps, and the rise of its "
            "least-squares line from the first step to the last (± standard error).\n\n"
            + "\n".join(lines)
            + f"\n\n![training]({TRAINING_PLOT})\n"
        )
    if found["differences"]:
        lines = ["| game | against | difference ± se | standard errors |", "|---|---|---|---|"]
        for d in found["differences"]:
            lines.append(f"| {d['game']} | {d['other']} | {d['diff']:+.3g} ± {d['se']:.2g} | {d['z']:+.1f} |")
        parts.append(
            f"## {found['candidate']} against the other players\n\nProtocol score difference; its standard "
            "error is the two players' standard errors added in quadrature.\n\n" + "\n".join(lines) + "\n"
        )
    return "\n".join(parts)


def metrics(found: dict) -> dict[str, float]:
    """The figures as MLflow metrics: ``training/<stage>/start|end`` and ``<game>/<candidate>-vs-<other>/
    diff|se``."""
    from ..tracking import metric_key

    out = {}
    for r in found["training"]:
        for key in ("start", "end", "rise", "rise_se"):
            if key in r and math.isfinite(r[key]):
                out[f"training/{r['stage']}/{key}"] = r[key]
    for d in found["differences"]:
        for key in ("diff", "se"):
            out[metric_key(d["game"], f"{d['player']}-vs-{d['other']}", key)] = d[key]
    return out


def plot(histories: Histories) -> bytes | None:
    """SFT's held-out perception curve and the GRPO branches' game reward (raw and its running mean over a
    tenth of the steps) in one figure (PNG bytes; None without any curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft = curve("sft", histories["sft"]) if "sft" in histories else []
    grpo = {s: curve(s, histories[s]) for s in ("g0", "g1") if s in histories}
    grpo = {s: c for s, c in grpo.items() if c}
    panels = [p for p in (sft and "sft", grpo and "grpo") if p]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), dpi=100, squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "sft":
            ax.plot(*zip(*sft, strict=True), marker="o", markersize=3)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title("SFT: held-out perception exact-match")
        else:
            for i, (stage, points) in enumerate(grpo.items()):
                steps, values = zip(*points, strict=True)
                window = max(1, math.ceil(len(values) * SHARE))
                running = np.convolve(values, np.ones(window) / window, mode="valid")
                colour = plt.get_cmap("tab10")(i)
                ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(steps[window - 1 :], running, color=colour, label=stage.upper())
            ax.legend()
            ax.set_title("GRPO: game reward per step")
        ax.set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
