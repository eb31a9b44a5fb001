"""The pipeline's stages, and the one function that runs any of them with tracking and storage.

The CLI (``g1 distill --config …``) and the KFP components both call ``run_stage``, so a stage behaves
the same on a laptop and in a cluster: it writes its outputs under one URI, reads what earlier stages
wrote from theirs (``STAGE_INPUTS``), and records its config, metrics, small report files and, for a
training stage, its model (by reference) in an MLflow child run of the pipeline run.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from .. import storage
from ..config import PipelineConfig, config_from_json

log = logging.getLogger(__name__)

STAGES = ("distill", "sft", "g0", "g1", "evaluate", "promote")
# Stages that run another stage's code and config section: G0 and G1 are both GRPO (grpo.py, the grpo
# section), G0 from the base model, G1 from the sft stage's model.
STAGE_CODE = {"g0": "grpo", "g1": "grpo"}
# Small outputs copied into MLflow as artifacts; everything else is recorded by reference (its URI).
REPORT_FILES = {
    "distill": ("stats.json",),
    "sft": ("result.json",),
    "g0": ("result.json",),
    "g1": ("result.json",),
    "evaluate": ("report.md", "table.md", "table.csv", "results.json", "learning.json"),
    "promote": ("decision.md", "decision.json"),
}
# Stages that train a model, kept under MODEL_DIR of their output; an evaluation player names one
# (``kind: hf, model: sft``) to play the model that stage trained in the same pipeline run.
MODEL_STAGES = ("sft", "g0", "g1")
MODEL_DIR = "model"


@dataclass(frozen=True)
class Input:
    """An argument of a stage's ``run()`` filled from the outputs of earlier stages of the same run."""

    stages: tuple[str, ...]  # the stages it comes from
    sub: str = ""  # a path inside each of their outputs ("" = the output itself)
    needs: str = ""  # a file that must be there before the stage starts ("" = checked by the stage)
    several: bool = False  # {stage: URI} rather than the one stage's URI


# run() keyword -> where it comes from. The URIs default to the upstream stages' outputs of the same
# pipeline run; ``run_stage(upstream=...)`` (a KFP input, ``g1 sft --dataset``) points elsewhere.
STAGE_INPUTS: dict[str, dict[str, Input]] = {
    "sft": {"dataset_uri": Input(("distill",), needs="manifest.jsonl")},
    "g1": {"model_uri": Input(("sft",), sub=MODEL_DIR, needs="config.json")},
    "evaluate": {
        "models": Input(MODEL_STAGES, sub=MODEL_DIR, several=True),
        "training": Input(MODEL_STAGES, several=True),  # their result.json: the report's training curves
    },
}


def stage_uri(cfg: PipelineConfig, pipeline_run_id: str, stage: str, artifact_root: str | None = None) -> str:
    """Where a stage of a pipeline run writes: <root>/<pipeline name>/<run id>/<stage>."""
    return storage.join(artifact_root or storage.artifact_root(), cfg.name, pipeline_run_id, stage)


def model_uri(stage_output_uri: str) -> str:
    """Where a training stage's output keeps its model."""
    return storage.join(stage_output_uri, MODEL_DIR)


def stage_inputs(
    stage: str,
    cfg: PipelineConfig,
    pipeline_run_id: str,
    artifact_root: str | None = None,
    upstream: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The keyword arguments ``stage``'s ``run()`` takes from earlier stages (see ``STAGE_INPUTS``).

    ``upstream`` maps a stage name to its output URI where it is not the same run's default; empty
    values are ignored (a KFP input left unset). An input that must exist and does not fails here,
    naming the URI and where it was expected to come from.
    """
    given = {name: uri for name, uri in (upstream or {}).items() if uri}
    unknown = sorted(set(given) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown upstream stage(s) {unknown}; stages: {', '.join(STAGES)}")
    kwargs: dict[str, Any] = {}
    for keyword, spec in STAGE_INPUTS.get(stage, {}).items():
        uris = {}
        for source in spec.stages:
            base = given.get(source) or stage_uri(cfg, pipeline_run_id, source, artifact_root)
            uris[source] = storage.join(base, spec.sub) if spec.sub else base
            if spec.needs and not storage.exists(storage.join(uris[source], spec.needs)):
                origin = (
                    "given" if source in given else f"the {source} stage's output of run {pipeline_run_id!r}"
                )
                raise FileNotFoundError(
                    f"{stage} needs {keyword}: no {spec.needs} under {uris[source]!r} ({origin}); "
                    f"run {source} first or point at another {keyword}"
                )
        kwargs[keyword] = uris if spec.several else uris[spec.stages[0]]
    return kwargs


def stage_config(cfg: PipelineConfig, stage: str) -> PipelineConfig:
    """The config ``stage`` runs with: G0's grpo section carries ``grpo.g0_overrides``."""
    if stage in ("g0", "g1"):
        return cfg.model_copy(update={"grpo": cfg.grpo.for_branch(stage)})
    return cfg


def _section(cfg: PipelineConfig, stage: str) -> dict:
    dumped = cfg.model_dump(mode="json")
    section = STAGE_CODE.get(stage, stage)
    return {"model": dumped["model"], section: dumped[section]}


def run_stage(
    stage: str,
    cfg: PipelineConfig,
    pipeline_run_id: str,
    output_uri: str | None = None,
    artifact_root: str | None = None,
    progress: bool = True,
    finish_pipeline: bool = False,
    upstream: Mapping[str, str] | None = None,
    pipeline_status: bool = True,
) -> str:
    """Run one stage inside an MLflow child run; returns the URI of its outputs.

    The stage reads its inputs from the outputs of earlier stages of the same pipeline run, or from
    ``upstream`` (stage name -> output URI). A stage whose ``run()`` takes ``on_metrics`` streams its
    metrics to the child run as it goes; one whose result has a ``model_uri`` gets that model recorded
    in MLflow by reference. With ``pipeline_status`` (a stage run on its own), a failing stage marks the
    pipeline's parent run FAILED and ``finish_pipeline`` marks it FINISHED after success; in the KFP
    pipeline the exit handler does both (:func:`finish_pipeline_json`), since a failed try may be retried.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    from ..tracking import Tracker, flatten

    module = import_module(f"{__name__}.{STAGE_CODE.get(stage, stage)}")
    cfg = stage_config(cfg, stage)
    uri = output_uri or stage_uri(cfg, pipeline_run_id, stage, artifact_root)
    tracker = Tracker(cfg.tracking.experiment)
    try:
        with tracker.stage_run(
            stage, pipeline_run_id, config=_section(cfg, stage), tags={"g1.output_uri": uri}, resume_key=uri
        ) as run:
            inputs = stage_inputs(stage, cfg, pipeline_run_id, artifact_root, upstream)
            run.set_tags({f"g1.input.{k}": v for k, v in flatten(inputs).items()})
            log.info("stage %s of pipeline run %s -> %s", stage, pipeline_run_id, uri)
            extra = {"on_metrics": run.log_metrics} if _takes(module.run, "on_metrics") else {}
            if _takes(module.run, "pipeline_run_id"):  # the promotion gate finds this run's model by it
                extra["pipeline_run_id"] = pipeline_run_id
            result = module.run(cfg, output_uri=uri, progress=progress, **inputs, **extra)
            step, model_id = getattr(result, "steps", 0), None  # the stage's last step, if it counts any
            if getattr(result, "model_uri", None):
                tags = {"g1.pipeline_run_id": pipeline_run_id, "g1.stage": stage}
                model_id = run.log_model_reference(
                    result.model_uri,
                    name=registered_name(cfg, stage),
                    params={"base_model": cfg.model.name_or_path, **inputs},
                    tags=tags,
                    step=step,
                )
                fingerprints = _fingerprints(cfg, stage, inputs)
                run.register_model(
                    registered_name(cfg, stage), model_id, result.model_uri, {**tags, **fingerprints}
                )
            # final numbers at that step, so the histories streamed during the stage end on them
            run.log_metrics({**module.metrics(result), **_peak_memory(stage)}, step=step, model_id=model_id)
            with tempfile.TemporaryDirectory() as tmp:
                for name in REPORT_FILES.get(stage, ()) + _plots(stage, uri):
                    source = storage.join(uri, name)
                    if storage.exists(source):
                        run.log_artifact(str(storage.get_file(source, Path(tmp) / name)))
    except BaseException:
        if pipeline_status:
            tracker.finish_pipeline(pipeline_run_id, "FAILED")
        raise
    if finish_pipeline and pipeline_status:
        tracker.finish_pipeline(pipeline_run_id, "FINISHED")
    return uri


def registered_name(cfg: PipelineConfig, stage: str) -> str:
    """The MLflow registered model a training stage's models are versions of: ``<config name>-<stage>``."""
    return f"{cfg.name}-{stage}"


def _fingerprints(cfg: PipelineConfig, stage: str, inputs: Mapping[str, Any]) -> dict[str, str]:
    """What a model version was made from: its config section's hash, and its data set's (the manifest)."""
    import hashlib
    import json

    section = json.dumps(_section(cfg, stage), sort_keys=True).encode()
    out = {"g1.config_sha256": hashlib.sha256(section).hexdigest()[:16]}
    dataset = inputs.get("dataset_uri")
    if dataset:
        manifest = storage.read_bytes(storage.join(dataset, "manifest.jsonl"))
        out.update(
            {"g1.dataset_uri": dataset, "g1.dataset_sha256": hashlib.sha256(manifest).hexdigest()[:16]}
        )
    return out


def _peak_memory(stage: str) -> dict[str, float]:
    """The stage's peak host (and GPU) memory, logged and returned as metrics."""
    from .memory import peak_gpu_memory_gib, peak_host_memory_gib

    out = {"memory/peak_host_gib": peak_host_memory_gib()}
    gpu = peak_gpu_memory_gib()
    if gpu is not None:
        out["memory/peak_gpu_gib"] = gpu
    log.info(
        "stage %s: peak memory %s", stage, ", ".join(f"{k.split('/')[1]} {v:.2f} GiB" for k, v in out.items())
    )
    return out


def _takes(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _plots(stage: str, uri: str) -> tuple[str, ...]:
    if stage != "evaluate":
        return ()
    return tuple(
        u.rsplit("/", 1)[-1] for u in storage.list_uris(uri) if u.rsplit("/", 1)[-1].startswith("plot-")
    )


def run_stage_json(
    stage: str,
    config_json: str,
    pipeline_run_id: str,
    artifact_root: str = "",
    upstream: Mapping[str, str] | None = None,
) -> str:
    """Entry point of the KFP components: the config travels as JSON, the outputs (and inputs) as URIs."""
    return run_stage(
        stage,
        config_from_json(config_json),
        pipeline_run_id,
        artifact_root=artifact_root or None,
        upstream=upstream,
        pipeline_status=False,
    )


# KFP's final task states (ML Metadata's on a cluster, kfp.local's locally) -> MLflow run statuses
FINAL_STATUS = {"COMPLETE": "FINISHED", "SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}


def finish_pipeline_json(
    config_json: str,
    pipeline_run_id: str,
    state: str,
    error: str = "",
    artifact_root: str = "",
    tags: Mapping[str, str] | None = None,
) -> str:
    """The exit handler's work: put the run's headline on the pipeline's MLflow parent run (the figures that
    exist, after a failure too; ``tags`` such as the stage images with it), then end that run as the KFP run
    ended (any state not a success or a cancellation counts as FAILED); returns the URI of the run's
    evaluation report."""
    from ..runs import write_headline
    from ..tracking import Tracker

    cfg = config_from_json(config_json)
    status = FINAL_STATUS.get(str(state).upper(), "FAILED")
    tracker = Tracker(cfg.tracking.experiment)
    try:
        write_headline(tracker, cfg, pipeline_run_id, dict(tags or {}))
    except Exception as err:  # the run's status matters more than its summary: still set it, loudly
        log.error("pipeline run %s: could not write its headline to MLflow: %s", pipeline_run_id, err)
    tracker.finish_pipeline(pipeline_run_id, status)
    log.info("pipeline run %s ended %s (KFP state %s%s)", pipeline_run_id, status, state,
             f": {error}" if error else "")  # fmt: skip
    return stage_uri(cfg, pipeline_run_id, "evaluate", artifact_root or None)
