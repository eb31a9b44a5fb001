"""The KFP pipeline: compiled YAML is current, pod settings are compiled in, and the DAG runs locally."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import yaml

from g1core import storage
from g1core.config import load_config
from g1core.stages import run_stage
from g1core.tracking import runs_table
from pipelines.compile import COMPILED, compile_all

ROOT = Path(__file__).resolve().parent.parent


def test_compiled_pipelines_are_current(tmp_path):
    written = compile_all(tmp_path)
    assert {p.name for p in written} == {"g1_pipeline.yaml", "g1_pipeline.k8s.yaml"}
    for path in written:
        committed = COMPILED / path.name
        assert committed.is_file(), f"{committed} missing: run `g1 pipeline compile` and commit"
        assert filecmp.cmp(path, committed, shallow=False), f"{committed} is stale: run `g1 pipeline compile`"


def test_pod_settings_are_compiled_in():
    ir = list(yaml.safe_load_all((COMPILED / "g1_pipeline.yaml").read_text()))
    platform = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    evaluate, distill = platform["exec-evaluate"], platform["exec-distill"]
    assert {s["secretName"] for s in distill["secretAsEnv"]} == {"g1-s3", "g1-hf", "g1-teacher"}
    assert evaluate["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert evaluate["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    executors = ir[0]["deploymentSpec"]["executors"]
    assert executors["exec-evaluate"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert executors["exec-distill"]["container"]["image"].startswith("ghcr.io/")
    k8s = list(yaml.safe_load_all((COMPILED / "g1_pipeline.k8s.yaml").read_text()))
    assert [d["kind"] for d in k8s] == ["Pipeline", "PipelineVersion"]


def test_local_kfp_run_of_the_whole_dag(tmp_path):
    """`g1 pipeline run --local` in a fresh process: distill -> evaluate via kfp.local, tracked in MLflow."""
    env = {**os.environ, "G1_WORK_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    for key in ("G1_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "g1core.cli",
        "pipeline",
        "run",
        "--local",
        "--config",
        "local-tiny",
        "--set",
        "distill.states_per_game=8",
        "--set",
        "evaluate.runs=1",
        "--set",
        "evaluate.steps=3",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report_uri = done.stdout.strip().splitlines()[-1]
    assert report_uri.startswith(str(tmp_path / "artifacts" / "g1-local"))
    report = storage.read_bytes(storage.join(report_uri, "report.md")).decode()
    assert "base-tiny" in report and "oracle@0.5" in report and "random" in report
    run_id = Path(report_uri).parent.name
    dataset = Path(report_uri).parent / "distill"
    assert (dataset / "manifest.jsonl").read_text().count("\n") > 0
    rows = runs_table("g1-local", run_id, uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    stages = sorted((r["stage"], r["status"]) for r in rows)
    assert stages == [("distill", "FINISHED"), ("evaluate", "FINISHED")]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = client.search_runs(
        [client.get_experiment_by_name("g1-local").experiment_id], "tags.`g1.role` = 'pipeline'"
    )
    assert [p.info.status for p in parents] == ["FINISHED"]  # the last stage closes the pipeline's run


def test_stage_on_real_s3_and_mlflow_server(s3_prefix, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = load_config("local-tiny", ["distill.gym.games=[swap]", "distill.states_per_game=6"])
    uri = run_stage("distill", cfg, "s3-run", artifact_root=s3_prefix, progress=False)
    assert uri == f"{s3_prefix}/g1-local/s3-run/distill"
    assert storage.exists(storage.join(uri, "manifest.jsonl"))
    rows = runs_table("g1-local", "s3-run", uri=mlflow_server)
    assert rows[0]["stage"] == "distill" and rows[0]["metrics"]["swap.states"] == 6.0


def test_cli_rejects_a_bad_config_before_work(tmp_path, capsys, caplog):
    from g1core.cli import main

    assert (
        main(
            [
                "distill",
                "--config",
                "local-tiny",
                "--set",
                "distill.states_per_game=-1",
                "--output",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "distill.states_per_game" in caplog.text
    assert not (tmp_path / "x").exists()


def test_missing_bucket_is_a_clear_error(s3_server, monkeypatch, caplog, tmp_path):
    from g1core.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = main(
        [
            "distill",
            "--config",
            "local-tiny",
            "--set",
            "distill.states_per_game=1",
            "--output",
            "s3://no-such-bucket-g1/x",
        ]
    )
    assert code == 2 and "no-such-bucket-g1" in caplog.text


def test_embedded_default_is_the_paper_recipe():
    from g1core.config import config_from_json
    from pipelines.g1_pipeline import g1_pipeline

    default = g1_pipeline.component_spec.inputs["config_json"].default
    assert config_from_json(default) == load_config("g1-paper")
