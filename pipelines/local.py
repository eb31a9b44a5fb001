"""Run a whole DAG on this machine with ``kfp.local`` (each stage a subprocess, no cluster needed)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def run_local(
    config: str = "local-tiny",
    overrides: list[str] | None = None,
    work_dir: str | None = None,
    containers: bool = False,
    images_file: str | None = None,
) -> str:
    """Run the g1 pipeline locally on ``config`` (a file or preset); returns the evaluation report's URI.

    Everything lands in ``work_dir`` (default ``./g1-work``): artifacts, the MLflow sqlite store and
    KFP's own outputs, unless G1_ARTIFACT_ROOT / MLFLOW_TRACKING_URI already point elsewhere. With
    ``containers``, every stage runs in its image (:mod:`pipelines.containers`; ``images_file`` default
    ``out/images-local.yaml``), artifacts in S3 and runs in an MLflow server.
    """
    from kfp import local

    from g1core.config import config_to_json, load_config

    cfg = load_config(config, overrides)  # fails here, before any work, on a bad config
    work = Path(work_dir or os.environ.get("G1_WORK_DIR") or Path.cwd() / "g1-work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    if containers:
        return _run_in_containers(cfg, work, Path(images_file or Path.cwd() / "out" / "images-local.yaml"))
    os.environ["G1_WORK_DIR"] = str(work)
    os.environ.setdefault("G1_ARTIFACT_ROOT", str(work / "artifacts"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"))

    from .g1_pipeline import LOCAL_SETTINGS, make_pipeline

    log.info("running pipeline %s locally in %s", cfg.name, work)
    task = make_pipeline(LOCAL_SETTINGS)(
        config_json=config_to_json(cfg), artifact_root=os.environ["G1_ARTIFACT_ROOT"]
    )
    return task.output


def _run_in_containers(cfg, work: Path, images_file: Path) -> str:
    """The DAG with each stage in its container image (see :mod:`pipelines.containers`)."""
    import sys

    from kfp import local

    from g1core.config import config_to_json

    from . import containers

    if "components.images" in sys.modules:  # the components' images are fixed when they are imported
        raise RuntimeError("run a containers run in a fresh process: the components are already imported")
    with containers.podman_service(work / "podman") as docker_host:
        os.environ["DOCKER_HOST"] = docker_host
        os.environ["G1_IMAGES_FILE"] = str(containers.images_for_run(work, images_file))
        env = containers.pod_env()  # imports the pipeline, and so its components, with those images
        root = work / "kfp"
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o777)  # the containers' non-root user writes its outputs there
        local.init(runner=containers.runner(env), pipeline_root=str(root))
        from kfp.local import docker_task_handler

        docker_task_handler.run_docker_container = containers.run_container  # reads the exit code
        from .g1_pipeline import LOCAL_SETTINGS, make_pipeline

        log.info("running pipeline %s with every stage in a container (outputs in %s)", cfg.name, root)
        task = make_pipeline(LOCAL_SETTINGS)(
            config_json=config_to_json(cfg), artifact_root=env["G1_ARTIFACT_ROOT"]
        )
        return task.output
