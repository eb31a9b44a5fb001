"""The SFT stage in the pipeline: run_stage("sft") into real S3 with metrics streamed to a real MLflow
server, its model recorded there by reference, and clear errors for a missing data set."""

import pytest

from g1core import storage
from g1core.cli import main
from g1core.config import load_config
from g1core.stages import run_stage, stage_inputs, stage_uri
from g1core.tracking import Tracker

SETTINGS = [
    "distill.gym.games=[2048]",
    "distill.states_per_game=12",
    "distill.teacher.skill=1.0",
    "sft.samples=12",
    "sft.batch_size=4",
    "sft.heldout_per_game=2",
    "sft.log_every=1",
    "sft.eval_every=2",
    "sft.checkpoint_every=2",
    "sft.eval_max_new_tokens=8",
]


def test_sft_stage_on_s3_streams_metrics_and_records_the_model_by_reference(
    s3_prefix, mlflow_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = load_config("local-tiny", SETTINGS)
    data = run_stage("distill", cfg, "sft-s3", artifact_root=s3_prefix, progress=False)
    uri = run_stage("sft", cfg, "sft-s3", artifact_root=s3_prefix, progress=False)
    assert uri == f"{s3_prefix}/g1-local/sft-s3/sft" == stage_uri(cfg, "sft-s3", "sft", s3_prefix)
    model = f"{uri}/model"
    assert storage.exists(f"{model}/config.json") and storage.exists(f"{model}/model.safetensors")
    assert storage.exists(f"{uri}/result.json")
    assert not storage.list_uris(f"{uri}/checkpoints")  # a finished stage never resumes: checkpoints dropped

    tracker = Tracker("g1-local", mlflow_server)
    rows = tracker.runs_table("sft-s3")
    assert [(r["stage"], r["status"]) for r in rows] == [("distill", "FINISHED"), ("sft", "FINISHED")]
    client, run_id = tracker.client, rows[1]["run_id"]
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in ("train.loss", "train.learning_rate", "train.tokens_per_s", "heldout.perception_exact")
    }
    assert [step for step, _ in history["train.loss"]] == [1, 2, 3]  # streamed every log_every step
    assert [step for step, _ in history["train.learning_rate"]] == [1, 2, 3]
    assert len(history["train.tokens_per_s"]) >= 2 and all(v > 0 for _, v in history["train.tokens_per_s"])
    assert sorted({step for step, _ in history["heldout.perception_exact"]}) == [0, 2, 3]
    run = client.get_run(run_id)
    assert run.data.metrics["steps"] == 3 and run.data.params["sft.samples"] == "12"
    assert run.data.tags["g1.input.dataset_uri"] == data and run.data.tags["g1.model_uri"] == model

    # the model: an external LoggedModel of the run that names the S3 URI; MLflow holds no weights
    logged = client.get_logged_model(run.data.tags["g1.model_id"])
    assert str(logged.status) == "READY" and logged.source_run_id == run_id
    assert logged.tags["g1.model_uri"] == model and logged.tags["mlflow.model.isExternal"] == "true"
    assert logged.params["dataset_uri"] == data and logged.params["base_model"] == "tiny"
    assert {m.key for m in logged.metrics} >= {"heldout.perception_exact", "train_loss"}
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]
    assert [f.path for f in client.list_logged_model_artifacts(logged.model_id)] == ["MLmodel"]
    assert [f.path for f in client.list_artifacts(run_id)] == ["result.json"]
    sizes = [f.file_size for f in client.list_logged_model_artifacts(logged.model_id)]
    assert max(sizes) < 10_000  # a stub, while the weights are:
    assert storage.read_bytes(f"{model}/model.safetensors").__len__() > 1_000_000


def test_missing_dataset_names_the_uri(s3_prefix, mlflow_server, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = load_config("local-tiny", SETTINGS)
    expected = f"{s3_prefix}/g1-local/no-data/distill"
    with pytest.raises(FileNotFoundError, match=f"no manifest.jsonl under '{expected}'.*distill stage"):
        run_stage("sft", cfg, "no-data", artifact_root=s3_prefix, progress=False)
    failed = Tracker("g1-local", mlflow_server).runs_table("no-data")
    assert [(r["stage"], r["status"]) for r in failed] == [("sft", "FAILED")]
    assert not storage.list_uris(f"{s3_prefix}/g1-local/no-data")  # nothing written

    # the CLI: `g1 sft --dataset URI` reads that data set instead, and names it when it is not there
    code = main(
        ["sft", "--dataset", f"{s3_prefix}/elsewhere", "--output", f"{s3_prefix}/out", "--run-id", "x"]
    )
    assert code == 2 and f"no manifest.jsonl under '{s3_prefix}/elsewhere' (given)" in caplog.text


def test_inputs_default_to_the_same_run_and_can_be_pointed_elsewhere(tmp_path):
    cfg = load_config("local-tiny")
    data = tmp_path / "mine"
    data.mkdir()
    (data / "manifest.jsonl").write_text("")
    assert stage_inputs("distill", cfg, "r1", str(tmp_path)) == {}
    run = tmp_path / "g1-local" / "r1"
    assert stage_inputs("evaluate", cfg, "r1", str(tmp_path)) == {
        "models": {stage: str(run / stage / "model") for stage in ("sft", "g0", "g1")},
        "training": {
            stage: str(run / stage) for stage in ("sft", "g0", "g1")
        },  # their curves, for the report
    }
    with pytest.raises(FileNotFoundError, match="g1 needs model_uri: no config.json under"):
        stage_inputs("g1", cfg, "r1", str(tmp_path))  # G1 starts from the sft stage's model
    assert stage_inputs("g0", cfg, "r1", str(tmp_path)) == {}  # G0 from the base model
    assert stage_inputs("sft", cfg, "r1", str(tmp_path), upstream={"distill": str(data)}) == {
        "dataset_uri": str(data)
    }
    pointed = stage_inputs("evaluate", cfg, "r1", upstream={"sft": "s3://b/run/sft", "distill": ""})
    assert (
        pointed["models"]["sft"] == "s3://b/run/sft/model" and pointed["training"]["sft"] == "s3://b/run/sft"
    )
    with pytest.raises(ValueError, match="unknown upstream stage"):
        stage_inputs("sft", cfg, "r1", upstream={"grpo": "s3://b/x"})
