"""Every stage in its container image (issue 16): the local-tiny DAG with each stage in g1-cpu, the pod's
hygiene inside the image, and a training stage's container killed mid-run and started again.

These need the image that ``make images`` builds (podman, a few minutes) and run under ``make
test-containers``, which sets ``G1_CONTAINER_TESTS=1``; ``make test`` skips them with that reason. The
services are the real SeaweedFS and MLflow server of ``tests/services.py``, reached from the containers
over the host's network.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from g1core import storage
from pipelines.containers import CONTAINERS_CONF, TMPFS

REPO = Path(__file__).resolve().parent.parent
IMAGES_FILE = REPO / "out" / "images-local.yaml"
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}

pytestmark = pytest.mark.skipif(
    os.environ.get("G1_CONTAINER_TESTS") != "1",
    reason="containers: `make test-containers` builds the image and runs these (G1_CONTAINER_TESTS=1)",
)


@pytest.fixture(scope="module")
def image() -> str:
    if not IMAGES_FILE.is_file():
        pytest.fail(f"{IMAGES_FILE} is missing: `make images` builds g1-cpu and writes it")
    return yaml.safe_load(IMAGES_FILE.read_text())["images"]["g1-cpu"]["image"]


@pytest.fixture
def pod_env(s3_service, mlflow_server) -> dict[str, str]:
    """What the cluster's secrets and config map give a pod, pointing at this session's services."""
    root = f"s3://{s3_service.bucket}/containers-{secrets.token_hex(4)}"
    return {**s3_service.env(), "MLFLOW_TRACKING_URI": mlflow_server, "G1_ARTIFACT_ROOT": root}


def _podman(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], env=PODMAN_ENV, check=check, text=True, capture_output=True, **kwargs
    )


def _run_args(env: dict[str, str], name: str | None = None) -> list[str]:
    """``podman run`` as a pod runs a stage: the image's user, read-only root, tmpfs HOME and /tmp."""
    args = ["run", "--rm", "--network", "host", "--read-only"]
    args += [arg for path, options in TMPFS.items() for arg in ("--tmpfs", f"{path}:{options}")]
    args += [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    return args + (["--name", name] if name else [])


def test_pod_hygiene_inside_the_image(image):
    out = _podman(*_run_args({}), image, "sh", "-c", "id -u; touch /opt/g1/x 2>&1 || echo read-only").stdout
    assert out.split()[:1] == ["10001"] and "read-only" in out
    stages = "import g1core.stages.distill, g1core.stages.sft, g1core.stages.grpo, g1core.stages.evaluate"
    _podman(*_run_args({}), image, "python", "-c", f"{stages}; import components.sft, pipelines.g1_pipeline")
    assert "usage: g1" in _podman(*_run_args({}), image, "g1", "--help").stdout
    from kfp import __version__ as kfp_version

    # KFP's bootstrap installs kfp at the compiled version: with no network at all it must find it there
    offline = ["run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/home/g1:rw,U", image]
    done = _podman(*offline, "python", "-m", "pip", "install", "--no-deps", f"kfp=={kfp_version}")
    assert "Requirement already satisfied" in done.stdout


def test_the_dag_runs_with_every_stage_in_a_container(image, pod_env, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    cmd = [sys.executable, "-m", "g1core.cli", "pipeline", "run", "--local", "--containers"]
    cmd += ["--config", "local-tiny", "--work-dir", str(tmp_path), "--images-file", str(IMAGES_FILE)]
    env = {**os.environ, **pod_env}
    env.pop("G1_WORK_DIR", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-4000:]
    assert "run in " + image in done.stderr  # the GPU stages' image is not built here, and the run says so
    report = done.stdout.strip().splitlines()[-1]
    assert report.startswith(pod_env["G1_ARTIFACT_ROOT"] + "/") and report.endswith("/evaluate")
    with _env(pod_env):
        assert storage.exists(storage.join(report, "report.md"))
        run_root = report.rsplit("/", 1)[0]
        assert storage.exists(storage.join(run_root, "distill", "manifest.jsonl"))
        for stage in ("sft", "g0", "g1"):
            assert storage.exists(storage.join(run_root, stage, "result.json")), stage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images-run.yaml", "kfp", "podman"]  # no artifacts
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("g1-local")
    runs = client.search_runs([experiment.experiment_id])
    stages = {r.data.tags.get("g1.stage") for r in runs} - {None}
    assert {"distill", "sft", "g0", "g1", "evaluate"} <= stages
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]


def _env(env: dict[str, str]):
    from g1core import envvars

    return envvars.set_for_block(env)


def _weights_hash(uri: str) -> str:
    return hashlib.sha256(storage.read_bytes(storage.join(uri, "model", "model.safetensors"))).hexdigest()


def test_a_killed_training_container_resumes_from_s3_and_ends_with_the_same_weights(image, pod_env):
    run_id = "kill-" + secrets.token_hex(3)
    root = pod_env["G1_ARTIFACT_ROOT"]
    stage = ["g1", "sft", "--config", "local-tiny", "--run-id", run_id, "--set", "sft.samples=512"]
    _podman(*_run_args(pod_env), image, "g1", "distill", "--config", "local-tiny", "--run-id", run_id)
    whole, killed = f"{root}/whole", f"{root}/killed"
    _podman(*_run_args(pod_env), image, *stage, "--output", whole, timeout=900)

    name = "g1-kill-" + secrets.token_hex(3)
    _podman(*_run_args(pod_env, name), "--detach", image, *stage, "--output", killed)
    latest = storage.join(killed, "checkpoints", "LATEST")
    with _env(pod_env):
        deadline = time.monotonic() + 600
        while not storage.exists(latest):
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.5)
        _podman("kill", name)  # as a node that goes away: no clean-up in the stage
        first = storage.read_bytes(latest).decode()
        assert not storage.exists(storage.join(killed, "result.json"))  # nothing half-done is taken as done
    _podman(*_run_args(pod_env), image, *stage, "--output", killed, timeout=900)  # KFP's retry: same task
    with _env(pod_env):
        result = json.loads(storage.read_bytes(storage.join(killed, "result.json")))
        assert result["resumed_from_step"] == int(first.split("-")[-1]) > 0
        assert _weights_hash(killed) == _weights_hash(whole)


def test_a_stage_whose_s3_goes_away_fails_naming_it_and_a_rerun_completes(image, mlflow_server, tmp_path):
    from g1core import stack

    data, access, secret = tmp_path / "s3", "t" + secrets.token_hex(6), secrets.token_urlsafe(24)
    server = stack.start_seaweedfs(data, stack.free_port(), access, secret, log_path=tmp_path / "weed.log")
    url = f"http://{stack.HOST}:{server.ports['s3.port']}"
    env = {**stack.s3_env(url, access, secret), "MLFLOW_TRACKING_URI": mlflow_server}
    env["G1_ARTIFACT_ROOT"] = "s3://outage/run"
    run_id, name = "outage-" + secrets.token_hex(3), "g1-outage-" + secrets.token_hex(3)
    stage = ["g1", "sft", "--config", "local-tiny", "--run-id", run_id, "--set", "sft.samples=512"]
    uri = f"s3://outage/run/g1-local/{run_id}/sft"
    try:
        stack.create_bucket("outage", env)
        _podman(*_run_args(env), image, "g1", "distill", "--config", "local-tiny", "--run-id", run_id)
        kept = [a for a in _run_args(env, name) if a != "--rm"]  # kept, to read its exit code and log
        _podman(*kept, "--detach", image, *stage)
        with _env(env):
            deadline = time.monotonic() + 600
            while not storage.exists(storage.join(uri, "checkpoints", "LATEST")):
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.5)
        server.stop()  # S3 goes away under the running stage
        code = int(_podman("wait", name, timeout=600).stdout.strip())
        log_text = _podman("logs", name).stdout + _podman("logs", name).stderr
        assert code != 0, log_text[-3000:]
        assert url.removeprefix("http://") in log_text, log_text[-3000:]  # the error names the endpoint
    finally:
        _podman("rm", "--force", name, check=False)
        server.stop()
    ports = {k: v for k, v in server.ports.items() if k != "s3.port"}
    server = stack.start_seaweedfs(
        data, server.ports["s3.port"], access, secret, ports, tmp_path / "weed2.log"
    )
    try:
        with _env(env):
            assert not storage.exists(storage.join(uri, "result.json"))  # the failed run is not taken as done
        _podman(*_run_args(env), image, *stage, timeout=900)  # the retry
        with _env(env):
            result = json.loads(storage.read_bytes(storage.join(uri, "result.json")))
        assert result["resumed_from_step"] > 0 and result["steps"] == 32
    finally:
        server.stop()
