"""The KFP pipeline: compiled YAML is current, pod settings are compiled in, and the DAG runs locally."""

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.images import image_for
from g1core import storage
from g1core.config import load_config
from g1core.stages import run_stage
from g1core.tracking import runs_table
from pipelines.compile import COMPILED, compile_all
from pipelines.g1_pipeline import STAGE_RESOURCES
from pipelines.kfp_api import version_name

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
    evaluate, distill, sft = platform["exec-evaluate"], platform["exec-distill"], platform["exec-sft"]
    g0, g1 = platform["exec-grpo"], platform["exec-grpo-2"]
    assert {s["secretName"] for s in distill["secretAsEnv"]} == {"g1-s3", "g1-hf", "g1-teacher"}
    assert {s["secretName"] for s in sft["secretAsEnv"]} == {"g1-s3", "g1-hf"}
    for gpu_stage in (evaluate, sft, g0, g1):  # no GPU node label by default (it needs GPU Feature Discovery)
        assert "nodeSelector" not in gpu_stage
        assert gpu_stage["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert gpu_stage["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
        assert all(s["optional"] for s in gpu_stage["secretAsEnv"])  # KFP 2.15+, the default --kfp-backend
    assert "tolerations" not in distill and not any("pvcMount" in e for e in platform.values())
    assert sft["emptyDirMounts"][0]["sizeLimit"] == STAGE_RESOURCES["sft"]["shm"]
    # the work folder and model downloads on a scratch volume sized from the disk plan, not the writable layer
    scratch = {e["mountPath"]: e["sizeLimit"] for e in sft["emptyDirMounts"]}["/scratch"]
    assert scratch == STAGE_RESOURCES["sft"]["scratch"]
    sft_env = {
        e["name"]: e["value"] for e in ir[0]["deploymentSpec"]["executors"]["exec-sft"]["container"]["env"]
    }
    assert sft_env == {"G1_WORK_DIR": "/scratch/g1-work", "HF_HOME": "/scratch/hf"}
    executors = ir[0]["deploymentSpec"]["executors"]
    assert executors["exec-evaluate"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert executors["exec-distill"]["container"]["image"].startswith("ghcr.io/")
    assert executors["exec-sft"]["container"]["image"] == image_for("sft") == image_for("evaluate")
    assert executors["exec-grpo"]["container"]["image"] == image_for("grpo")
    # GPU counts are constants (PodSettings), not placeholders: KFP's driver resolves a resourceCount
    # placeholder with GetStringValue(), "" for a number, and backends before 2.4 ignore it
    assert executors["exec-sft"]["container"]["resources"]["accelerator"]["resourceCount"] == "8"
    assert executors["exec-grpo"]["container"]["resources"]["accelerator"]["resourceCount"] == "8"
    assert set(ir[0]["root"]["inputDefinitions"]["parameters"]) == {"config_json", "artifact_root"}
    # every stage runs inside the exit handler; finish runs after them whatever happened, and gives the
    # pipeline's output (the report's URI)
    top = ir[0]["root"]["dag"]
    assert set(top["tasks"]) == {"exit-handler-1", "finish"}
    assert top["tasks"]["finish"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert top["outputs"]["parameters"]["Output"]["valueFromParameter"]["producerSubtask"] == "finish"
    assert executors["exec-finish"]["container"]["image"] == image_for("distill")  # g1-cpu
    tasks = ir[0]["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    for task, stage in (("sft", "sft"), ("grpo", "grpo"), ("grpo-2", "grpo")):
        assert tasks[task]["retryPolicy"]["maxRetryCount"] == STAGE_RESOURCES[stage]["retries"] > 0
    # G0 from the base model beside distill -> sft -> G1; evaluate after both branches, each stage fed
    # the URI its upstream stage returned
    branch = {name: task["inputs"]["parameters"]["branch"]["runtimeValue"]["constant"]
              for name, task in tasks.items() if name.startswith("grpo")}  # fmt: skip
    assert branch == {"grpo": "g0", "grpo-2": "g1"}
    assert "dependentTasks" not in tasks["grpo"] and tasks["grpo-2"]["dependentTasks"] == ["sft"]
    assert tasks["sft"]["dependentTasks"] == ["distill"]
    assert tasks["evaluate"]["dependentTasks"] == ["grpo", "grpo-2", "sft"]
    feeds = {
        (name, key): value["taskOutputParameter"]["producerTask"]
        for name, task in tasks.items()
        for key, value in task["inputs"]["parameters"].items()
        if "taskOutputParameter" in value and not name.startswith("importer")
    }
    assert feeds == {
        ("sft", "dataset_uri"): "distill",
        ("grpo-2", "sft_uri"): "sft",
        ("evaluate", "sft_uri"): "sft",
        ("evaluate", "g0_uri"): "grpo",
        ("evaluate", "g1_uri"): "grpo-2",
        ("promote", "report_uri"): "evaluate",
    }
    # typed artifacts: importers record the data set and the three models at their S3 URIs (no copy)
    importers = {
        task["taskInfo"]["name"]: (
            task["inputs"]["parameters"]["uri"]["taskOutputParameter"],
            ir[0]["deploymentSpec"]["executors"][
                ir[0]["components"][task["componentRef"]["name"]]["executorLabel"]
            ],
        )
        for task in tasks.values()
        if task["componentRef"]["name"].startswith("comp-importer")
    }
    kinds = {
        n: (s["producerTask"], s["outputParameterKey"], e["importer"]["typeSchema"]["schemaTitle"])
        for n, (s, e) in importers.items()
    }
    assert kinds == {
        "dataset": ("distill", "Output", "system.Dataset"),
        "sft-model": ("sft", "model_uri", "system.Model"),
        "g0-model": ("grpo", "model_uri", "system.Model"),
        "g1-model": ("grpo-2", "model_uri", "system.Model"),
    }  # fmt: skip
    assert all(not ex["importer"].get("reimport", False) for _, ex in importers.values())
    outputs = ir[0]["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "scores": "system.Metrics",
        "report": "system.Markdown",
    }
    k8s = list(yaml.safe_load_all((COMPILED / "g1_pipeline.k8s.yaml").read_text()))
    assert [d["kind"] for d in k8s] == ["Pipeline", "PipelineVersion"]
    # the version is named by the spec's content: an edited pipeline is a new version, not a changed one
    assert k8s[1]["metadata"]["name"] == version_name("g1-pipeline", ir)


def test_local_kfp_run_of_the_whole_dag(tmp_path):
    """`g1 pipeline run --local` in a fresh process: G0 beside distill -> sft -> G1, then evaluate, via
    kfp.local, tracked in MLflow; the evaluation plays the models the training stages made, recorded in
    MLflow by reference."""
    env = {**os.environ, "G1_WORK_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    for key in ("G1_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    overrides = [
        "distill.gym.games=[2048, swap]",
        "distill.states_per_game=8",
        "sft.samples=16",
        "sft.batch_size=8",
        "sft.heldout_per_game=1",
        "sft.log_every=1",
        "sft.eval_max_new_tokens=8",
        "grpo.steps=2",
        "grpo.states_per_step=2",
        "grpo.num_generations=2",
        "grpo.batch_size=4",
        "grpo.max_new_tokens=8",
        "grpo.g0_overrides={steps: 1}",
        "evaluate.games=[2048]",
        "evaluate.runs=1",
        "evaluate.steps=2",
    ]
    cmd = [sys.executable, "-m", "g1core.cli", "pipeline", "run", "--local", "--config", "local-tiny"]
    cmd += [arg for item in overrides for arg in ("--set", item)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report_uri = done.stdout.strip().splitlines()[-1]
    # the run ends by telling: the evaluation's table, the scale it ran at, where to look next
    summary = done.stderr[done.stderr.rindex("pipeline g1-local: the evaluation") :]
    assert "g1-tiny" in summary and "±" in summary and "smoke scale" in summary
    assert (
        "sft: held-out perception exact-match 0 -> 0" in summary
        and "g1-tiny against the others on 2048" in summary
    )
    assert (
        f"report and plots: {report_uri}" in summary and "mlflow ui --backend-store-uri sqlite:///" in summary
    )
    # KFP's own view of the run: the evaluation's scores as a Metrics artifact, its report as Markdown
    (evaluate_out,) = (tmp_path / "kfp").glob("g1-*/evaluate/executor_output.json")
    shown = {
        a["name"]: a
        for art in json.loads(evaluate_out.read_text())["artifacts"].values()
        for a in art["artifacts"]
    }
    assert shown["scores"]["metadata"].keys() >= {"2048/sft-tiny", "2048/g1-tiny", "2048/random"}
    assert Path(shown["report"]["uri"]).read_text().startswith("# g1 evaluation")
    assert report_uri.startswith(str(tmp_path / "artifacts" / "g1-local"))
    report = storage.read_bytes(storage.join(report_uri, "report.md")).decode()
    for player in ("base-tiny", "sft-tiny", "g0-tiny", "g1-tiny", "oracle@0.5", "random"):
        assert f"| 2048 | {player} |" in report
    run_dir = Path(report_uri).parent
    run_id = run_dir.name
    assert (run_dir / "distill" / "manifest.jsonl").read_text().count("\n") > 0
    model = run_dir / "sft" / "model"
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert json.loads((run_dir / "sft" / "result.json").read_text())["steps"] == 2
    g1_result = json.loads((run_dir / "g1" / "result.json").read_text())
    assert g1_result["steps"] == 2 and g1_result["start_model"] == str(model)  # G1 starts from SFT
    g0_result = json.loads((run_dir / "g0" / "result.json").read_text())
    assert g0_result["start_model"] == "tiny" and g0_result["steps"] == 1  # G0 with its own overrides
    # what the run learned: the training curves and the candidate's margins, in the report and beside it
    learned = json.loads(storage.read_bytes(storage.join(report_uri, "learning.json")))
    assert {r["stage"]: r["steps"] for r in learned["training"]} == {"sft": 2, "g0": 1, "g1": 2}
    assert learned["candidate"] == "g1-tiny" and len(learned["differences"]) == 5
    assert "## Training" in report and "## g1-tiny against the other players" in report
    assert storage.exists(storage.join(report_uri, "plot-training.png"))

    rows = runs_table("g1-local", run_id, uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    stages = sorted((r["stage"], r["status"]) for r in rows)
    done = [(stage, "FINISHED") for stage in ("distill", "evaluate", "g0", "g1", "promote", "sft")]
    assert stages == done
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    by_stage = {r["stage"]: r["run_id"] for r in rows}
    sft_run = client.get_run(by_stage["sft"])
    assert [m.step for m in client.get_metric_history(sft_run.info.run_id, "train.loss")] == [1, 2]
    assert {"heldout.perception_exact", "train.tokens_per_s", "tokens_per_s"} <= set(sft_run.data.metrics)
    # local-tiny's 112x112 screens at its 112x112 minimum pixel budget: 4 x 4 merged patches per screen
    assert sft_run.data.metrics["tokens/image_per_prompt"] == 16
    assert sft_run.data.metrics["tokens/prompt_max"] > 16 and sft_run.data.metrics["tokens/answer_max"] > 0
    for stage, run_id in by_stage.items():  # every stage's peak memory: the figure a pod's request needs
        assert 0.1 < client.get_run(run_id).data.metrics["memory/peak_host_gib"] < 24, stage
    assert sft_run.data.tags["g1.input.dataset_uri"] == str(run_dir / "distill")
    assert sft_run.data.tags["g1.model_uri"] == str(model)
    logged = client.get_logged_model(sft_run.data.tags["g1.model_id"])
    assert logged.tags["g1.model_uri"] == str(model) and logged.source_run_id == sft_run.info.run_id
    g1_run = client.get_run(by_stage["g1"])
    assert {"train.reward", "train.rewards/game/mean", "train.perception_exact", "train.time/step"} <= set(
        g1_run.data.metrics
    )
    assert g1_run.data.tags["g1.input.model_uri"] == str(model)
    evaluate_run = client.get_run(by_stage["evaluate"])
    assert evaluate_run.data.tags["g1.input.models.sft"] == str(model)
    assert "2048/sft-tiny/mean" in evaluate_run.data.metrics
    assert evaluate_run.data.metrics["sft-tiny/usage/image_tokens_max"] == 16
    stored = [p for p in (tmp_path / "mlflow-artifacts").rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if p.suffix == ".safetensors" or p.stat().st_size > 100_000]
    parents = client.search_runs(
        [client.get_experiment_by_name("g1-local").experiment_id], "tags.`g1.role` = 'pipeline'"
    )
    assert [p.info.status for p in parents] == ["FINISHED"]  # the exit handler closes the pipeline's run
    # ... after putting the run's headline on it, for MLflow's compare view
    headline = parents[0].data.metrics
    assert {
        "score/2048/g1-tiny",
        "score_se/2048/g1-tiny",
        "score/2048/random",
        "sft/perception_exact",
    } <= headline.keys()
    assert {"g1/game_reward_first", "g1/game_reward_last", "time/sft_s", "time/evaluate_s"} <= headline.keys()
    assert parents[0].data.params["model"] == "tiny" and parents[0].data.params["grpo.steps"] == "2"
    assert parents[0].data.tags["g1.image.g1-cpu"] == image_for("distill")
    # each training stage's model is a registered version, @candidate, tagged with its own scores
    g1_version = client.get_model_version_by_alias("g1-local-g1", "candidate")
    # the gate promoted it: no champion before, so the first candidate is the champion
    assert client.get_model_version_by_alias("g1-local-g1", "champion").version == g1_version.version
    decision = json.loads((run_dir / "promote" / "decision.json").read_text())
    assert decision["promote"] and decision["candidate"] == str(g1_version.version)
    assert g1_version.tags["g1.model_uri"] == str(run_dir / "g1" / "model")
    assert g1_version.tags["score/2048"] == f"{headline['score/2048/g1-tiny']:.6g}"
    assert g1_version.tags["g1.protocol"] == "1x2 seed 0"
    sft_version = client.get_model_version_by_alias("g1-local-sft", "candidate")
    assert sft_version.tags["g1.dataset_sha256"] and sft_version.tags["g1.config_sha256"]


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


def test_a_failed_run_ends_failed_in_mlflow_through_the_exit_handler(s3_server, tmp_path):
    """Every stage fails (its artifact bucket does not exist): the run exits non-zero, and the exit handler
    (components/finish) still runs and ends the MLflow pipeline run FAILED, not left RUNNING."""
    import mlflow

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "G1_WORK_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": db}
    env["G1_ARTIFACT_ROOT"] = "s3://no-such-bucket-g1/artifacts"
    cmd = [sys.executable, "-m", "g1core.cli", "pipeline", "run", "--local", "--config", "local-tiny"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "ended FAILED (KFP state FAILED" in done.stdout + done.stderr
    client = mlflow.MlflowClient(db)
    experiment = client.get_experiment_by_name("g1-local").experiment_id
    parents = client.search_runs([experiment], "tags.`g1.role` = 'pipeline'")
    assert [p.info.status for p in parents] == ["FAILED"]
    children = client.search_runs([experiment], "tags.`g1.stage` = 'distill'")
    assert children and all(c.info.status == "FAILED" for c in children)


GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
OLD_BACKEND_FLAGS = ["--kfp-backend", "2.5", "--gpu-toleration", "gpu=a100:NoExecute"]
OLD_BACKEND_FLAGS += ["--gpu-node-selector", "pool=gpu", "--image-pull-secret", "regcred", "--sft-gpus", "4"]
OLD_BACKEND_FLAGS += ["--resource-limits"]
OLD_BACKEND = {
    "optional": False,
    "tolerations": [{"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoExecute"}],
    "nodeSelector": {"labels": {"pool": "gpu"}},
    "imagePullSecret": ["regcred"],
    "gpus": "4",
    "limits": {"resourceCpuLimit": "32", "resourceMemoryLimit": "256G"},
}


RESTRICTED = {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"optional": True, "tolerations": [GPU_TAINT]}),
        (
            ["--kfp-backend", "2.16"],
            {"optional": True, "tolerations": [GPU_TAINT], "securityContext": RESTRICTED},
        ),
        (OLD_BACKEND_FLAGS, OLD_BACKEND),
        (["--gpu-toleration", ""], {"optional": True, "tolerations": None}),
    ],
)
def test_compile_takes_the_clusters_settings(tmp_path, flags, expected):
    from g1core.cli import main

    assert main(["pipeline", "compile", "--out", str(tmp_path), "--namespace", "team-a", *flags]) == 0
    ir = list(yaml.safe_load_all((tmp_path / "g1_pipeline.yaml").read_text()))
    sft_pod = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-sft"]
    assert all(s.get("optional", False) == expected["optional"] for s in sft_pod["secretAsEnv"])
    assert sft_pod.get("tolerations") == expected["tolerations"]
    assert sft_pod.get("nodeSelector") == expected.get("nodeSelector")
    pull = [p["secretName"] for p in sft_pod["imagePullSecret"]] if "imagePullSecret" in sft_pod else None
    assert pull == expected.get("imagePullSecret")
    assert sft_pod.get("securityContext") == expected.get("securityContext")
    sft_container = ir[0]["deploymentSpec"]["executors"]["exec-sft"]["container"]
    assert sft_container["resources"]["accelerator"]["resourceCount"] == expected.get("gpus", "8")
    limits = {
        k: v for k, v in sft_container["resources"].items() if k.startswith("resource") and "Limit" in k
    }
    assert limits == expected.get("limits", {})
    k8s = list(yaml.safe_load_all((tmp_path / "g1_pipeline.k8s.yaml").read_text()))
    assert {d["metadata"]["namespace"] for d in k8s} == {"team-a"}
    assert k8s[1]["metadata"]["name"] == version_name("g1-pipeline", ir)


def test_compile_refuses_a_backend_too_old(tmp_path, caplog):
    from g1core.cli import main

    assert main(["pipeline", "compile", "--out", str(tmp_path), "--kfp-backend", "2.3"]) == 2
    assert "2.5.0 or newer" in caplog.text
