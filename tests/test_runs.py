"""The pipeline run's headline on its MLflow parent run, and `g1 runs compare`, on a real MLflow server."""

from __future__ import annotations

import math

import mlflow
import pytest

from g1core.cli import main
from g1core.config import config_to_json, load_config
from g1core.runs import compare
from g1core.stages import finish_pipeline_json
from g1core.tracking import Tracker

RUNS_PER_GAME = 2


def _config(beta: float):
    return load_config(
        "local-tiny", [f"grpo.beta={beta}", f"evaluate.runs={RUNS_PER_GAME}", "tracking.experiment=cmp"]
    )


def _pipeline(tracker: Tracker, run_id: str, g1_score: float, evaluate: bool = True, g1_fails: bool = False):
    """Child runs as the stages leave them: SFT's held-out exact-match, G1's reward history, the scores."""
    with tracker.stage_run("sft", run_id) as run:
        run.log_metrics({"heldout.perception_exact": 0.5}, step=3)
    with pytest.raises(RuntimeError) if g1_fails else _nothing(), tracker.stage_run("g1", run_id) as run:
        for step, reward in enumerate((-0.5, 0.1, 0.4), start=1):
            run.log_metrics({"train.rewards/game/mean": reward}, step=step)
        if g1_fails:
            raise RuntimeError("killed")
    if evaluate:
        with tracker.stage_run("evaluate", run_id) as run:
            run.log_metrics({"2048/g1-tiny/mean": g1_score, "2048/g1-tiny/std": 2.0, "2048/random/mean": 3.0,
                             "2048/random/std": 1.0})  # fmt: skip


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_two_pipeline_runs_compared_by_their_headlines(mlflow_server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracker = Tracker("cmp", mlflow_server)
    for run_id, beta, score in (("run-a", 0.01, 10.0), ("run-b", 0.3, 14.0)):
        _pipeline(tracker, run_id, score)
        finish_pipeline_json(
            config_to_json(_config(beta)), run_id, "SUCCEEDED", tags={"g1.image.g1-cpu": "x:1"}
        )
    parent = mlflow.MlflowClient(mlflow_server).get_run(tracker.parent_run_id("run-b"))
    m = parent.data.metrics
    assert parent.info.status == "FINISHED" and parent.data.params["grpo.beta"] == "0.3"
    assert m["score/2048/g1-tiny"] == 14.0 and math.isclose(m["score_se/2048/g1-tiny"], 2.0 / math.sqrt(2))
    assert m["sft/perception_exact"] == 0.5
    assert (m["g1/game_reward_first"], m["g1/game_reward_last"]) == (-0.5, 0.4)
    assert {"time/sft_s", "time/g1_s", "time/evaluate_s"} <= m.keys()
    assert parent.data.tags["g1.image.g1-cpu"] == "x:1" and parent.data.tags["g1.version"]

    table = compare(tracker, last=5)
    assert [r["name"] for r in table.runs] == ["pipeline-run-b", "pipeline-run-a"]
    assert table.differing == ["grpo.beta"] and table.scores == ["2048/g1-tiny", "2048/random"]
    md, png = tmp_path / "cmp.md", tmp_path / "cmp.png"
    assert main(["runs", "compare", "--experiment", "cmp", "--markdown", str(md), "--png", str(png)]) == 0
    assert "pipeline runs of cmp" in capsys.readouterr().out  # the rich table
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| run | status | grpo.beta | 2048/g1-tiny | 2048/random |")
    assert lines[2].startswith("| pipeline-run-b | FINISHED | 0.3 | 14 ± 1.4 | 3 ± 0.71 |")
    assert lines[3].startswith("| pipeline-run-a | FINISHED | 0.01 | 10 ± 1.4 |")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # given run ids: just those
    assert [r["id"] for r in compare(tracker, [parent.info.run_id]).runs] == [parent.info.run_id]


def test_a_failed_run_keeps_the_figures_that_exist(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracker = Tracker("cmp-failed", mlflow_server)
    _pipeline(tracker, "run-f", 0.0, evaluate=False, g1_fails=True)
    cfg = load_config("local-tiny", ["tracking.experiment=cmp-failed"])
    finish_pipeline_json(config_to_json(cfg), "run-f", "FAILED", "g1 failed")
    parent = mlflow.MlflowClient(mlflow_server).get_run(tracker.parent_run_id("run-f"))
    assert parent.info.status == "FAILED"
    assert (
        parent.data.metrics["sft/perception_exact"] == 0.5
        and parent.data.metrics["g1/game_reward_last"] == 0.4
    )
    assert not [k for k in parent.data.metrics if k.startswith("score/")]  # no evaluation ran
    assert parent.data.params["model"] == "tiny"


def test_models_are_registered_by_reference_with_a_candidate_alias(mlflow_server, monkeypatch, tmp_path):
    """A training stage's model becomes a version of <config>-<stage> pointing at its stored folder (no copy),
    tagged with its pipeline run and fingerprints; the newest is @candidate; a retried stage does not register
    twice; models:/<name>@<alias> resolves to the folder wherever a model is named."""
    from g1core.policies import resolve_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracker = Tracker("registry", mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    folders = {}
    for run_id in ("first", "second", "second"):  # the second pipeline run's stage is retried once
        folders[run_id] = tmp_path / run_id / "model"
        folders[run_id].mkdir(parents=True, exist_ok=True)
        (folders[run_id] / "config.json").write_text("{}")
        with tracker.stage_run("g1", run_id) as run:
            model_id = run.log_model_reference(str(folders[run_id]), name="reg-g1")
            tags = {"g1.pipeline_run_id": run_id, "g1.stage": "g1", "g1.config_sha256": "abc"}
            run.register_model("reg-g1", model_id, str(folders[run_id]), tags)
    versions = sorted(client.search_model_versions("name = 'reg-g1'"), key=lambda v: int(v.version))
    assert [v.tags["g1.pipeline_run_id"] for v in versions] == ["first", "second"]
    assert versions[1].tags["g1.model_uri"] == str(folders["second"]) and versions[1].source.startswith(
        "models:/"
    )
    assert client.get_model_version_by_alias("reg-g1", "candidate").version == versions[1].version
    assert resolve_model("models:/reg-g1@candidate") == str(folders["second"])
    assert resolve_model(f"models:/reg-g1/{versions[0].version}") == str(folders["first"])
    with pytest.raises(Exception, match="champion"):
        resolve_model("models:/reg-g1@champion")  # no such alias yet: a clear error, not a fallback
