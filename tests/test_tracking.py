"""MLflow tracking on SQLite and a real `mlflow server`: parent/child runs, params, metrics, artifacts."""

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydantic
import pytest

from g1core import tracking
from g1core.tracking import Tracker

CHILD = """
import sys
from g1core.tracking import Tracker
experiment, uri, pipeline_run = sys.argv[1:]
tracker = Tracker(experiment, uri)
with tracker.stage_run("eval", pipeline_run, config={"games": ["2048", "swap"]}) as run:
    run.log_metrics({"score": 3.5})
print(tracker.parent_run_id(pipeline_run))
"""

KILLED_STAGE = """
import os, sys
from g1core.tracking import Tracker
experiment, uri, pipeline_run = sys.argv[1:]
tracker = Tracker(experiment, uri)
with tracker.stage_run("sft", pipeline_run, config={"sft": {"lr": 0.001}}, resume_key="s3://b/sft") as run:
    run.log_metrics({"loss": 1.5}, step=20)
    print(run.run_id, flush=True)
    os._exit(9)  # like a pod killed outright: nothing closes the run
"""


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


@pytest.fixture(params=["sqlite", "server"])
def uri(request) -> str:
    """Every test runs on a SQLite file and on a real server (each test in its own experiment)."""
    return request.getfixturevalue("sqlite_uri" if request.param == "sqlite" else "mlflow_server")


@pytest.fixture
def experiment() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_flatten():
    @dataclass
    class Opt:
        lr: float = 1e-5

    class Model(pydantic.BaseModel):
        name: str = "qwen"

    flat = tracking.flatten(
        {"a": {"b": [1, {"c": None}], "empty": {}}, "opt": Opt(), "model": Model(), "long": "x" * 7000}
    )
    assert flat == {
        "a.b.0": "1",
        "a.b.1.c": "None",
        "a.empty": "{}",
        "opt.lr": "1e-05",
        "model.name": "qwen",
        "long": "x" * 5997 + "...",
    }
    assert tracking.flatten({"a": {"b": 1}}, sep="/") == {"a/b": "1"}


def test_default_uri_is_sqlite_under_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/g1-work/mlflow.db"
    assert (tmp_path / "g1-work").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_stages_nest_under_one_parent(uri, experiment, tmp_path):
    first, second = Tracker(experiment, uri), Tracker(experiment, uri)
    config = {"model": {"name": "tiny", "layers": [2, 4]}, "lr": 0.001}
    with first.stage_run("sft", "run-1", config=config, tags={"team": "g1"}) as sft:
        sft.log_metrics({"loss": 2.0, "acc": 0.1}, step=1)
        sft.log_metrics({"loss": 1.0}, step=2)
        sft.log_params({"extra": {"seed": 7}})
        sft.set_tags({"phase": "cold-start"})
    with second.stage_run("grpo", "run-1") as grpo:
        grpo.log_metrics({"reward": 0.5})
    with second.stage_run("grpo", "run-2"):
        pass
    parent = first.parent_run_id("run-1")
    assert second.parent_run_id("run-1") == parent != first.parent_run_id("run-2")

    client = first.client
    sft_run = client.get_run(sft.run_id)
    assert sft_run.data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(grpo.run_id).data.tags["mlflow.parentRunId"] == parent
    assert {k: sft_run.data.tags[k] for k in ("g1.stage", "g1.pipeline_run_id", "team", "phase")} == {
        "g1.stage": "sft",
        "g1.pipeline_run_id": "run-1",
        "team": "g1",
        "phase": "cold-start",
    }
    assert sft_run.data.params == {**tracking.flatten(config), "extra.seed": "7"}
    history = client.get_metric_history(sft.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]

    table = tracking.runs_table(experiment, "run-1", uri=uri)
    assert [(row["stage"], row["status"]) for row in table] == [("sft", "FINISHED"), ("grpo", "FINISHED")]
    assert table[0]["metrics"] == {"loss": 1.0, "acc": 0.1} and table[0]["run_id"] == sft.run_id
    first.finish_pipeline("run-1")
    assert client.get_run(parent).info.status == "FINISHED"


def test_artifacts(uri, experiment, tmp_path):
    (tmp_path / "report.txt").write_text("score 3")
    (tmp_path / "ckpt" / "sub").mkdir(parents=True)
    (tmp_path / "ckpt" / "sub" / "w.bin").write_bytes(b"\x00\x01")
    tracker = Tracker(experiment, uri)
    with tracker.stage_run("eval", "run-a") as run:
        run.log_artifact(tmp_path / "report.txt")
        run.log_artifact(tmp_path / "report.txt", artifact_path="reports")
        run.log_artifacts(tmp_path / "ckpt", artifact_path="model")
        run.log_dict({"games": ["2048"]}, "config.json")
    out = tracker.client.download_artifacts(run.run_id, "", str(tmp_path / "down"))
    got = {p.relative_to(out).as_posix() for p in Path(out).rglob("*") if p.is_file()}
    assert got == {"report.txt", "reports/report.txt", "model/sub/w.bin", "config.json"}
    assert json.loads((tmp_path / "down" / "config.json").read_text()) == {"games": ["2048"]}


def test_failed_stage_is_marked_and_reraised(uri, experiment):
    tracker = Tracker(experiment, uri)
    with pytest.raises(RuntimeError, match="out of memory"):
        with tracker.stage_run("grpo", "run-f") as run:
            run.log_metrics({"reward": 0.1}, step=0)
            raise RuntimeError("out of memory")
    failed = tracker.client.get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[tracking.ERROR_TAG] == "RuntimeError: out of memory"
    assert [row["status"] for row in tracker.runs_table("run-f")] == ["FAILED"]


def test_a_retried_stage_continues_the_run_that_did_not_finish(uri, experiment):
    tracker, config, key = Tracker(experiment, uri), {"sft": {"lr": 0.001}}, "s3://b/sft"
    with pytest.raises(RuntimeError):
        with tracker.stage_run("sft", "run-r", config=config, resume_key=key) as first:
            first.log_metrics({"loss": 2.0}, step=10)
            raise RuntimeError("pod evicted")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_STAGE, experiment, uri, "run-r"], capture_output=True, text=True
    )
    assert killed.returncode == 9 and killed.stdout.strip() == first.run_id
    assert tracker.client.get_run(first.run_id).info.status == "RUNNING"
    with tracker.stage_run("sft", "run-r", config=config, resume_key="s3://b/other-branch") as other:
        pass  # the same stage of another branch (another output) while the first is still RUNNING
    with Tracker(experiment, uri).stage_run("sft", "run-r", config=config, resume_key=key) as third:
        third.log_metrics({"loss": 1.0}, step=30)
    run = tracker.client.get_run(third.run_id)
    assert third.run_id == first.run_id and run.info.status == "FINISHED"
    assert run.data.tags[tracking.ATTEMPT_TAG] == "3" and tracking.ERROR_TAG not in run.data.tags
    history = tracker.client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(10, 2.0), (20, 1.5), (30, 1.0)]
    # a finished stage run again, or a try with other settings, gets a run of its own
    with tracker.stage_run("sft", "run-r", config=config, resume_key=key) as again:
        pass
    with pytest.raises(RuntimeError):
        with tracker.stage_run("sft", "run-r", config=config, resume_key=key) as failed:
            raise RuntimeError("bad")
    with tracker.stage_run("sft", "run-r", config={"sft": {"lr": 0.01}}, resume_key=key) as changed:
        pass
    assert len({first.run_id, other.run_id, again.run_id, failed.run_id, changed.run_id}) == 5
    assert [row["stage"] for row in tracker.runs_table("run-r")] == ["sft"] * 5


def test_bad_metric_names_the_key(uri, experiment):
    with Tracker(experiment, uri).stage_run("sft", "run-m") as run:
        with pytest.raises(ValueError, match="metric 'loss'"):
            run.log_metrics({"loss": "high"})


def test_separate_processes_share_the_parent(uri, experiment, tmp_path):
    """Two stage processes start at once on a fresh pipeline run: both nest under one parent."""
    if uri.startswith("sqlite"):  # a database that does not exist yet: both processes race to create it
        uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, experiment, uri, "run-p"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    parents = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    tracker = Tracker(experiment, uri)
    assert parents == {tracker.parent_run_id("run-p")}
    table = tracker.runs_table("run-p")
    assert [row["stage"] for row in table] == ["eval", "eval"]
    assert all(tracker.client.get_run(r["run_id"]).data.tags["mlflow.parentRunId"] in parents for r in table)


def test_model_is_recorded_by_reference(uri, experiment, tmp_path):
    """A stage's model becomes an external LoggedModel naming its URI; no weights go into MLflow."""
    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"\x00" * 300_000)
    tracker = Tracker(experiment, uri)
    with tracker.stage_run("sft", "run-r") as run:
        model_id = run.log_model_reference(
            str(weights.parent), "g1-sft", params={"base_model": "tiny"}, tags={"g1.stage": "sft"}
        )
        run.log_metrics({"heldout.perception_exact": 0.75}, step=9, model_id=model_id)
    client = tracker.client
    model = client.get_logged_model(model_id)
    assert (model.name, str(model.status), model.source_run_id) == ("g1-sft", "READY", run.run_id)
    assert model.tags["g1.model_uri"] == str(weights.parent) and model.tags["g1.stage"] == "sft"
    assert model.tags["mlflow.model.isExternal"] == "true" and model.params == {"base_model": "tiny"}
    assert [(m.key, m.value, m.step) for m in model.metrics] == [("heldout.perception_exact", 0.75, 9)]
    stored = client.get_run(run.run_id)
    assert (
        stored.data.tags["g1.model_uri"] == str(weights.parent)
        and stored.data.tags["g1.model_id"] == model_id
    )
    assert [o.model_id for o in stored.outputs.model_outputs] == [model_id]
    assert client.list_artifacts(run.run_id) == []
    [stub] = client.list_logged_model_artifacts(model_id)
    assert stub.path == "MLmodel" and stub.file_size < 10_000
    if uri.startswith("sqlite:///"):  # and on disk: the artifact store next to the database holds no weights
        store = Path(uri[len("sqlite:///") :]).parent / "mlflow-artifacts"
        assert not [p for p in store.rglob("*") if p.is_file() and p.stat().st_size >= 10_000]


def test_a_sqlite_store_without_mlflows_sql_store_is_a_clear_error(tmp_path, monkeypatch):
    """The stage images hold mlflow-skinny (a client without the SQL store): local sqlite tracking there
    says what to do instead of failing deep inside MLflow."""
    import importlib.util

    from g1core.errors import G1Error
    from g1core.tracking import Tracker

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else real(name, *a)
    )
    with pytest.raises(G1Error, match=r"g1\[stack\].*MLFLOW_TRACKING_URI"):
        Tracker("x", f"sqlite:///{tmp_path / 'mlflow.db'}")
