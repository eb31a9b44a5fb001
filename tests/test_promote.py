"""The promotion gate on a real MLflow server: first promotion, a better candidate, a refusal, a rerun that
moves nothing twice, and a champion played again when its stored scores are from another protocol."""

from __future__ import annotations

import json

import mlflow
import pytest

from g1core import storage
from g1core.config import config_to_json, load_config
from g1core.policies import resolve_model
from g1core.stages import finish_pipeline_json, run_stage
from g1core.stages.promote import DECISION, decide
from g1core.tracking import Tracker


def _cfg(experiment: str, runs: int = 2):
    """local-tiny scored on 2048 only, its registered models named after the experiment (one per test)."""
    settings = ["evaluate.games=[2048]", f"evaluate.runs={runs}", "evaluate.steps=1"]
    return load_config("local-tiny", [*settings, f"tracking.experiment={experiment}", f"name={experiment}"])


def _trained(tracker: Tracker, cfg, run_id: str, g1_mean: float, g1_std: float = 2.0) -> None:
    """What the training and evaluation stages leave: G1's registered version (the tiny model's folder) and
    this run's scores of G1 and of the teacher (the oracle)."""
    with tracker.stage_run("g1", run_id) as run:
        folder = resolve_model("tiny")
        model_id = run.log_model_reference(folder, name=f"{cfg.name}-g1")
        run.register_model(
            f"{cfg.name}-g1", model_id, folder, {"g1.pipeline_run_id": run_id, "g1.stage": "g1"}
        )
    with tracker.stage_run("evaluate", run_id) as run:
        run.log_metrics({"2048/g1-tiny/mean": g1_mean, "2048/g1-tiny/std": g1_std,
                         "2048/oracle_0.5/mean": 100.0, "2048/oracle_0.5/std": 5.0})  # fmt: skip


def _gate(cfg, run_id: str, root: str) -> dict:
    uri = run_stage("promote", cfg, run_id, artifact_root=root, progress=False)
    finish_pipeline_json(config_to_json(cfg), run_id, "SUCCEEDED", artifact_root=root)  # tags the scores
    return json.loads(storage.read_bytes(storage.join(uri, "decision.json")))


def test_promote_refuse_and_rerun(mlflow_server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg, root = _cfg("gate"), str(tmp_path / "artifacts")
    tracker, client = Tracker("gate", mlflow_server), mlflow.MlflowClient(mlflow_server)
    name = "gate-g1"

    _trained(tracker, cfg, "r1", 20.0)
    first = _gate(cfg, "r1", root)
    assert first["promote"] and first["champion"] is None
    assert client.get_model_version_by_alias(name, "champion").version == first["candidate"] == "1"

    _trained(tracker, cfg, "r2", 60.0)  # +0.40 of the teacher's score, se 0.02: clearly better
    second = _gate(cfg, "r2", root)
    assert second["promote"] and second["champion"] == "1" and not second["champion_replayed"]
    assert second["games"]["2048"]["diff"] == pytest.approx(0.4)
    assert client.get_model_version_by_alias(name, "champion").version == "2"

    _trained(tracker, cfg, "r3", 59.0)  # worse by construction: below the champion
    third = _gate(cfg, "r3", root)
    assert not third["promote"] and any("not more than 2 standard errors" in r for r in third["reasons"])
    assert client.get_model_version_by_alias(name, "champion").version == "2"  # kept from the champion
    md = storage.read_bytes(f"{root}/gate/r3/promote/decision.md").decode()
    assert "not promoted" in md and "| 2048 |" in md

    # a rerun after a crash: the stored decision stands; nothing registered or moved again
    versions = len(client.search_model_versions(f"name = '{name}'"))
    assert _gate(cfg, "r3", root) == third and _gate(cfg, "r2", root) == second
    assert len(client.search_model_versions(f"name = '{name}'")) == versions
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    # a crash after the alias moved but before the decision was written: the rerun sees it is done
    storage.delete(f"{root}/gate/r2/promote/{DECISION}")
    again = _gate(cfg, "r2", root)
    assert again["promote"] and again["champion"] == "2" and "already the champion" in again["reasons"][0]
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert len(client.search_model_versions(f"name = '{name}'")) == versions
    promote_runs = client.search_runs(
        [client.get_experiment_by_name("gate").experiment_id], "tags.`g1.stage` = 'promote'"
    )
    assert {r.data.metrics["promoted"] for r in promote_runs} == {0.0, 1.0}

    # the champion by its alias, played as `g1 gym play` plays any policy
    from g1core.cli import main

    args = ["gym", "play", "--game", "2048", "--policy", "hf", "--model", f"models:/{name}@champion"]
    assert (
        main([*args, "--runs", "1", "--steps", "1", "--max-new-tokens", "8", "--screen", "112", "--json"])
        == 0
    )
    played = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert played["game"] == "2048" and played["runs"] == 1


def test_a_champion_from_another_protocol_is_played_again(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    root = str(tmp_path / "artifacts")
    tracker = Tracker("gate-replay", mlflow_server)
    old, new = _cfg("gate-replay", runs=2), _cfg("gate-replay", runs=1)
    _trained(tracker, old, "p1", 20.0)
    assert _gate(old, "p1", root)["promote"]
    _trained(tracker, new, "p2", 1e6)  # the protocol changed (1 run, not 2): the stored scores do not count
    decision = _gate(new, "p2", root)
    assert decision["champion_replayed"] and "played again" in " ".join(decision["reasons"])
    assert decision["games"]["2048"]["champion"] < 1  # the untrained tiny model, played here, not the tag
    assert decision["promote"]


def test_the_rule():
    same = {"a": (10.0, 1.0), "b": (10.0, 1.0)}
    assert not decide(same, same, {}, 2.0, 2.0)[0]  # equal: not better
    better = {"a": (14.0, 1.0), "b": (14.0, 1.0)}
    assert decide(better, same, {}, 2.0, 2.0)[0]  # +4 ± 1: promoted
    mixed = {"a": (30.0, 1.0), "b": (4.0, 1.0)}  # better on average, far worse on b
    promote, reasons, *_ = decide(mixed, same, {}, 2.0, 2.0)
    assert not promote and "worse beyond 2 standard errors on: b" in reasons[-1]
    # normalised by the teacher: a game with large raw scores does not drown the others
    scaled = decide({"a": (1100.0, 10.0), "b": (1.0, 0.1)}, {"a": (1000.0, 10.0), "b": (2.0, 0.1)},
                    {"a": 1000.0, "b": 2.0}, 2.0, 2.0)  # fmt: skip
    assert not scaled[0] and "b" in scaled[1][-1]
