"""MLflow tracking: one parent run per pipeline run, one child run per stage.

Every stage (each its own process or pod) calls ``Tracker().stage_run(stage, pipeline_run_id, config)``;
the parent run is found through its tag ``g1.pipeline_run_id`` (created by whoever comes first), so
the MLflow UI shows a pipeline run with its stages nested under it. The tracking URI is
``$MLFLOW_TRACKING_URI`` (the cluster's or ``g1 stack``'s server) or a local SQLite file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # else every process hangs ~20 s at exit
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # library code keeps stdout clean

from mlflow.entities import LoggedModelOutput, Metric, Param, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_IS_EXTERNAL, MLFLOW_PARENT_RUN_ID  # noqa: E402
from mlflow.utils.validation import (  # noqa: E402
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from .errors import G1Error  # noqa: E402

log = logging.getLogger(__name__)

PIPELINE_TAG = "g1.pipeline_run_id"
STAGE_TAG = "g1.stage"
ROLE_TAG = "g1.role"  # "pipeline" on parent runs
ERROR_TAG = "g1.error"
ATTEMPT_TAG = "g1.attempt"  # tries of a stage that share its child run (retries continue it)
RESUME_TAG = "g1.resume_key"  # identifies one stage task across retries (its output URI)
MODEL_URI_TAG = "g1.model_uri"  # where a stage's model is stored (runs and logged models)
MODEL_ID_TAG = "g1.model_id"  # the MLflow LoggedModel that records it
CANDIDATE = "candidate"  # the alias of a registered model's newest version (a promotion moves "champion")
DEFAULT_EXPERIMENT = "g1"
PARENT_SETTLE_S = 1.5  # longer than creating a run takes (and than clock skew between pods)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite file ``<cwd>/g1-work/mlflow.db`` (its folder is created)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    folder = Path.cwd().joinpath("g1-work").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _text(value: Any, limit: int = MAX_PARAM_VAL_LENGTH) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten(config: Mapping, sep: str = ".") -> dict[str, str]:
    """Nested dicts/lists (and dataclasses / pydantic models) to ``{"a.b.0": "value"}`` MLflow params.

    Values become strings cut to MLflow's param length limit; empty containers stay as ``{}`` / ``[]``.
    """
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(v, f"{key}{sep}{k}" if key else str(k))
        elif isinstance(value, list | tuple) and value:
            for i, v in enumerate(value):
                walk(v, f"{key}{sep}{i}" if key else str(i))
        else:
            out[key] = _text(value)

    walk(config, "")
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StageRun:
    """One stage's MLflow run: log metrics, params, artifacts and tags to it."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None
    ) -> None:
        """Log numeric metrics at ``step`` (default 0), in as few requests as MLflow allows.

        With ``model_id`` (a LoggedModel of this run) they are also shown on that model's page.
        """
        stamp, entries = _now_ms(), []
        for key, value in metrics.items():
            try:
                entries.append(Metric(key, float(value), stamp, step or 0, model_id=model_id))
            except (TypeError, ValueError):
                raise ValueError(f"metric {key!r} must be a number, got {value!r}") from None
        for batch in _chunks(entries, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (nested ones are flattened to dotted keys)."""
        entries = [Param(k, v) for k, v in flatten(params).items()]
        for batch in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values become strings)."""
        entries = [RunTag(k, _text(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for batch in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=batch)

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Store one file with the run (under ``artifact_path`` if given)."""
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Store a whole folder with the run."""
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_dict(self, obj: Any, file_name: str) -> None:
        """Store a dict/list as a JSON or YAML artifact (by the extension of ``file_name``)."""
        self.client.log_dict(self.run_id, obj, file_name)

    def log_model_reference(
        self,
        uri: str,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        model_type: str = "hf-image-text-to-text",
        step: int = 0,
    ) -> str:
        """Record the model stored at ``uri`` as an MLflow LoggedModel of this run, without copying it.

        Weights stay in the artifact store (S3 or a folder); MLflow gets an *external* model (as
        ``mlflow.create_external_model`` makes, on this run's tracking server) that names ``uri`` in
        the tag ``g1.model_uri``, an MLmodel stub so that it can be registered, and a link as this run's
        output. The run is tagged with the URI and the model id too. Returns the model id.
        """
        from mlflow.models.model import MLMODEL_FILE_NAME
        from mlflow.models.utils import get_external_mlflow_model_spec

        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        model_tags = {k: _text(v, MAX_TAG_VAL_LENGTH) for k, v in (tags or {}).items()}
        model_tags.update({MLFLOW_MODEL_IS_EXTERNAL: "true", MODEL_URI_TAG: uri})
        model = self.client.create_logged_model(
            experiment_id,
            name=name,
            source_run_id=self.run_id,
            tags=model_tags,
            params=flatten(params or {}),
            model_type=model_type,
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                get_external_mlflow_model_spec(model).save(Path(tmp) / MLMODEL_FILE_NAME)
                self.client.log_model_artifacts(model.model_id, tmp)
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
        self.set_tags({MODEL_URI_TAG: uri, MODEL_ID_TAG: model.model_id})
        log.info("model %s recorded in MLflow by reference: %s", uri, model.model_id)
        return model.model_id

    def register_model(
        self, name: str, model_id: str, uri: str, tags: Mapping[str, Any], alias: str = CANDIDATE
    ) -> str:
        """Register the LoggedModel ``model_id`` (stored at ``uri``) as a version of the registered model
        ``name``, tagged with ``tags``, and point ``alias`` at it; returns the version. A version made earlier
        with the same ``g1.pipeline_run_id`` and ``g1.stage`` tags (a retried stage) is reused."""
        tags = {k: _text(v, MAX_TAG_VAL_LENGTH) for k, v in {**tags, MODEL_URI_TAG: uri}.items()}
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
        same = versions_made_by(self.client, name, tags.get(PIPELINE_TAG, ""), tags.get(STAGE_TAG, ""))
        if same:
            version = max(same, key=lambda v: int(v.version)).version
        else:
            created = self.client.create_model_version(
                name, source=f"models:/{model_id}", run_id=self.run_id, tags=tags, model_id=model_id
            )
            version = created.version
        self.client.set_registered_model_alias(name, alias, version)
        log.info("registered %s version %s (@%s) -> %s", name, version, alias, uri)
        return str(version)


def versions_made_by(client: MlflowClient, name: str, pipeline_run_id: str, stage: str) -> list:
    """The versions of registered model ``name`` that ``stage`` of pipeline run ``pipeline_run_id`` made."""
    return [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if v.tags.get(PIPELINE_TAG) == pipeline_run_id and v.tags.get(STAGE_TAG) == stage
    ]


def model_version_uri(reference: str, uri: str | None = None) -> str:
    """The storage URI of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: the ``g1.model_uri``
    tag its registered version carries (the weights stay where the stage wrote them)."""
    body = reference.removeprefix("models:/")
    client = MlflowClient(tracking_uri=uri or tracking_uri())
    if "@" in body:
        name, alias = body.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in body:
        name, number = body.rsplit("/", 1)
        version = client.get_model_version(name, number)
    else:
        raise ValueError(f"{reference!r}: give models:/<name>@<alias> or models:/<name>/<version>")
    if MODEL_URI_TAG not in version.tags:
        raise ValueError(
            f"{reference!r} (version {version.version}) has no {MODEL_URI_TAG} tag: not a g1 model"
        )
    return version.tags[MODEL_URI_TAG]


class Tracker:
    """MLflow access for the pipeline: get-or-create the parent run, open stage runs, compare runs."""

    def __init__(self, experiment: str = DEFAULT_EXPERIMENT, uri: str | None = None):
        self.uri = uri or tracking_uri()
        self.experiment = experiment
        self._experiment_id: str | None = None
        self._parents: dict[str, str] = {}
        self._db = Path(self.uri[len("sqlite:///") :]) if self.uri.startswith("sqlite:///") else None
        if self._db is None:
            self.client = MlflowClient(tracking_uri=self.uri)
            return
        if importlib.util.find_spec("sqlalchemy") is None:  # mlflow-skinny alone: a client, no SQL store
            raise G1Error(
                f"MLflow tracking to {self.uri} needs MLflow's SQL store (pip install 'g1[stack]'); in a "
                "stage image, set MLFLOW_TRACKING_URI to the tracking server (config map g1-settings)"
            )
        # the client builds/migrates the database schema; parallel stages would race on that
        self._db.parent.mkdir(parents=True, exist_ok=True)
        with open(self._db.with_name(self._db.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.client = MlflowClient(tracking_uri=self.uri)

    @property
    def experiment_id(self) -> str:
        """The experiment's id, creating (or restoring) the experiment on first use."""
        if self._experiment_id is None:
            self._experiment_id = self._get_or_create_experiment()
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        location = None
        if self._db is not None:  # keep local artifacts next to the database, not in ./mlruns
            location = (self._db.parent / "mlflow-artifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException as err:  # another process created it first
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            log.debug("experiment %s appeared concurrently: %s", self.experiment, err)
            return found.experiment_id

    def _parents_of(self, pipeline_run_id: str) -> list:
        if "'" in pipeline_run_id or not pipeline_run_id:
            raise ValueError(f"pipeline_run_id must be non-empty and free of quotes, got {pipeline_run_id!r}")
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}' and tags.`{ROLE_TAG}` = 'pipeline'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=100,
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def parent_run_id(self, pipeline_run_id: str, name: str | None = None) -> str:
        """The run id of the pipeline run's parent MLflow run, created if no process made it yet.

        Concurrent creators converge on the run with the earliest start time: a parent younger than
        PARENT_SETTLE_S may still lose to one stamped earlier whose creation is not visible yet, so
        the caller waits until it is that old, looks again, and a creator that lost deletes its own.
        """
        if pipeline_run_id in self._parents:
            return self._parents[pipeline_run_id]
        found, mine = self._parents_of(pipeline_run_id), None
        if not found:
            tags = {PIPELINE_TAG: pipeline_run_id, ROLE_TAG: "pipeline"}
            run_name = name or f"pipeline-{pipeline_run_id}"
            mine = self.client.create_run(self.experiment_id, _now_ms(), tags, run_name).info.run_id
        oldest = min([r.info.start_time for r in found] or [_now_ms()])
        wait = oldest / 1000 + PARENT_SETTLE_S - time.time()
        if mine or wait > 0:
            time.sleep(max(wait, 0))
            found = self._parents_of(pipeline_run_id)
        winner = found[0].info.run_id
        if mine and mine != winner:
            log.debug("parent of %s was made concurrently; dropping duplicate %s", pipeline_run_id, mine)
            self.client.delete_run(mine)
        self._parents[pipeline_run_id] = winner
        return winner

    def run_url(self, run) -> str:
        """Where to look at a run: its UI page on a tracking server, else its id and the database."""
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        return f"{run.info.run_id} in {self.uri}"

    def finish_pipeline(self, pipeline_run_id: str, status: str = "FINISHED") -> None:
        """Mark the parent run ended (FINISHED, FAILED or KILLED) when the whole pipeline is done."""
        self.client.set_terminated(self.parent_run_id(pipeline_run_id), status)

    def _unfinished_stage_run(self, stage: str, pipeline_run_id: str, key: str, params: Mapping[str, str]):
        """The newest child run of ``stage`` in this pipeline run with resume key ``key`` that did not finish
        (failed, killed, or left RUNNING by a killed pod) and was started with the same params; else None."""
        if "'" in key or "'" in stage:
            return None
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}' and tags.`{STAGE_TAG}` = '{stage}' "
            f"and tags.`{RESUME_TAG}` = '{key}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=100,
            order_by=["attributes.start_time DESC"],
        )
        for run in runs:
            if run.info.status == "FINISHED":
                return None  # the newest try finished: a new try of the stage is a new run
            if all(run.data.params.get(k, v) == v for k, v in params.items()):
                return run
        return None

    @contextlib.contextmanager
    def stage_run(
        self,
        stage: str,
        pipeline_run_id: str,
        config: Mapping | None = None,
        tags: Mapping[str, Any] | None = None,
        resume_key: str | None = None,
    ) -> Iterator[StageRun]:
        """A child run for one stage: logs the flattened ``config`` as params; FAILED if the block raises.

        With ``resume_key`` (what identifies one task across its retries: the stage's output URI), a retried
        stage (a pod restarted after a failure or a kill) continues the child run of the try that did not
        finish, so its metric history stays in one run; ``g1.attempt`` counts the tries. Without it, or for
        another key (a parallel branch running the same stage), every call makes a run of its own."""
        parent = self.parent_run_id(pipeline_run_id)
        params = flatten(config) if config else {}
        run = self._unfinished_stage_run(stage, pipeline_run_id, resume_key, params) if resume_key else None
        attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1 if run else 1
        run_tags = {MLFLOW_PARENT_RUN_ID: parent, STAGE_TAG: stage, PIPELINE_TAG: pipeline_run_id}
        run_tags.update({k: _text(v, MAX_TAG_VAL_LENGTH) for k, v in (tags or {}).items()})
        run_tags[ATTEMPT_TAG] = str(attempt)
        if resume_key:
            run_tags[RESUME_TAG] = _text(resume_key, MAX_TAG_VAL_LENGTH)
        if run is None:
            run = self.client.create_run(self.experiment_id, tags=run_tags, run_name=stage)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        stage_run = StageRun(self.client, run.info.run_id)
        if attempt > 1:
            stage_run.set_tags(run_tags)
            log.info("stage %s of pipeline run %s: try %d continues MLflow run %s", stage, pipeline_run_id,
                     attempt, self.run_url(run))  # fmt: skip
        else:
            log.info("stage %s of pipeline run %s: MLflow run %s", stage, pipeline_run_id, self.run_url(run))
        try:
            if config:
                stage_run.log_params(config)
            yield stage_run
        except BaseException as err:
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception):  # never hide the stage's own error
                stage_run.set_tags({ERROR_TAG: f"{type(err).__name__}: {err}"})
            self.client.set_terminated(run.info.run_id, status)
            raise
        if attempt > 1:
            with contextlib.suppress(Exception):  # the error of an earlier try no longer describes the run
                self.client.delete_tag(run.info.run_id, ERROR_TAG)
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def runs_table(self, pipeline_run_id: str) -> list[dict]:
        """The stage runs of one pipeline run, oldest first: stage, run_id, status, metrics, times."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}' and tags.`{STAGE_TAG}` != ''",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
        )
        rows = [
            {
                "stage": run.data.tags.get(STAGE_TAG),
                "run_id": run.info.run_id,
                "status": run.info.status,
                "metrics": dict(run.data.metrics),
                "start_time": run.info.start_time,
                "end_time": run.info.end_time,
            }
            for run in runs
        ]
        return sorted(rows, key=lambda row: (row["start_time"] or 0, row["run_id"]))


def runs_table(experiment: str, pipeline_run_id: str, uri: str | None = None) -> list[dict]:
    """The stage runs of ``pipeline_run_id`` in ``experiment`` for comparing runs (Tracker.runs_table)."""
    return Tracker(experiment, uri).runs_table(pipeline_run_id)


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name from parts (game specs, player labels): letters, digits, _ - . / space."""
    return "/".join(re.sub(r"[^\w\-. ]", "_", str(p)) for p in parts)
