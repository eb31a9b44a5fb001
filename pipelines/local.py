"""Run a whole DAG on this machine with ``kfp.local`` (each stage a subprocess, no cluster needed)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def run_local(
    config: str = "local-tiny", overrides: list[str] | None = None, work_dir: str | None = None
) -> str:
    """Run the g1 pipeline locally on ``config`` (a file or preset); returns the evaluation report's URI.

    Everything lands in ``work_dir`` (default ``./g1-work``): artifacts, the MLflow sqlite store and
    KFP's own outputs, unless G1_ARTIFACT_ROOT / MLFLOW_TRACKING_URI already point elsewhere.
    """
    from kfp import local

    from g1core.config import config_to_json, load_config

    cfg = load_config(config, overrides)  # fails here, before any work, on a bad config
    work = Path(work_dir or os.environ.get("G1_WORK_DIR") or Path.cwd() / "g1-work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["G1_WORK_DIR"] = str(work)
    os.environ.setdefault("G1_ARTIFACT_ROOT", str(work / "artifacts"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"))

    from .g1_pipeline import g1_pipeline

    log.info("running pipeline %s locally in %s", cfg.name, work)
    task = g1_pipeline(config_json=config_to_json(cfg), artifact_root=os.environ["G1_ARTIFACT_ROOT"])
    return task.output
