"""The pipeline's stages, and the one function that runs any of them with tracking and storage.

The CLI (``g1 distill --config …``) and the KFP components both call ``run_stage``, so a stage behaves
the same on a laptop and in a cluster: it writes its outputs under one URI, and records its config,
metrics and small report files in an MLflow child run of the pipeline run.
"""

from __future__ import annotations

import logging
import tempfile
from importlib import import_module
from pathlib import Path

from .. import storage
from ..config import PipelineConfig, config_from_json

log = logging.getLogger(__name__)

STAGES = ("distill", "evaluate")
# Small outputs copied into MLflow as artifacts; everything else is recorded by reference (its URI).
REPORT_FILES = {
    "distill": ("stats.json",),
    "evaluate": ("report.md", "table.md", "table.csv", "results.json"),
}


def stage_uri(cfg: PipelineConfig, pipeline_run_id: str, stage: str, artifact_root: str | None = None) -> str:
    """Where a stage of a pipeline run writes: <root>/<pipeline name>/<run id>/<stage>."""
    return storage.join(artifact_root or storage.artifact_root(), cfg.name, pipeline_run_id, stage)


def _section(cfg: PipelineConfig, stage: str) -> dict:
    dumped = cfg.model_dump(mode="json")
    return {"model": dumped["model"], stage: dumped[stage]}


def run_stage(
    stage: str,
    cfg: PipelineConfig,
    pipeline_run_id: str,
    output_uri: str | None = None,
    artifact_root: str | None = None,
    progress: bool = True,
    finish_pipeline: bool = False,
) -> str:
    """Run one stage inside an MLflow child run; returns the URI of its outputs.

    A failing stage marks the pipeline's parent run FAILED; ``finish_pipeline`` (the DAG's last stage)
    marks it FINISHED after success.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    from ..tracking import Tracker

    module = import_module(f"{__name__}.{stage}")
    uri = output_uri or stage_uri(cfg, pipeline_run_id, stage, artifact_root)
    tracker = Tracker(cfg.tracking.experiment)
    try:
        with tracker.stage_run(
            stage, pipeline_run_id, config=_section(cfg, stage), tags={"g1.output_uri": uri}
        ) as run:
            log.info("stage %s of pipeline run %s -> %s", stage, pipeline_run_id, uri)
            result = module.run(cfg, uri, progress=progress)
            run.log_metrics(module.metrics(result))
            with tempfile.TemporaryDirectory() as tmp:
                for name in REPORT_FILES.get(stage, ()) + _plots(stage, uri):
                    source = storage.join(uri, name)
                    if storage.exists(source):
                        run.log_artifact(str(storage.get_file(source, Path(tmp) / name)))
    except BaseException:
        tracker.finish_pipeline(pipeline_run_id, "FAILED")
        raise
    if finish_pipeline:
        tracker.finish_pipeline(pipeline_run_id, "FINISHED")
    return uri


def _plots(stage: str, uri: str) -> tuple[str, ...]:
    if stage != "evaluate":
        return ()
    return tuple(
        u.rsplit("/", 1)[-1] for u in storage.list_uris(uri) if u.rsplit("/", 1)[-1].startswith("plot-")
    )


def run_stage_json(
    stage: str, config_json: str, pipeline_run_id: str, artifact_root: str = "", finish_pipeline: bool = False
) -> str:
    """Entry point of the KFP components: the config travels as JSON, the outputs as a URI."""
    return run_stage(
        stage,
        config_from_json(config_json),
        pipeline_run_id,
        artifact_root=artifact_root or None,
        finish_pipeline=finish_pipeline,
    )
