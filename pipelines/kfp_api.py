"""Talking to a Kubeflow Pipelines API server: ``g1 pipeline submit``, ``upload`` and ``schedule``.

- **Credentials.** In a pod, the projected service-account token (audience ``pipelines.kubeflow.org``) at
  ``$KF_PIPELINES_SA_TOKEN_PATH`` (default ``/var/run/secrets/kubeflow/pipelines/token``) goes with every
  request as a bearer token. ``kfp.Client`` given an explicit ``host`` loads no token by itself (kfp 2.17
  ``client/client.py``, ``_load_config`` returns before its in-cluster branch), so a multi-user KFP would
  answer 401/403; the credentials are passed explicitly here.
- **Backend version.** The API server's ``/apis/v2beta1/healthz`` gives its ``tag_name``. The pipeline needs
  :data:`MIN_BACKEND` (optional secrets as environment variables came in KFP 2.15, driver ``k8s.go``); an
  older server is refused before anything is uploaded, naming the way out (``--kfp-backend`` at compile).
- **Versions named by content.** A pipeline version is named ``<pipeline>-<hash of its spec>``: an unchanged
  pipeline finds its version, an edited one gets a new one (KFP refuses a changed spec under an existing
  version: its PipelineVersion webhook compares the old and new spec).
- **Schedules.** A KFP recurring run with ``max_concurrency=1`` and no catch-up. KFP reads cron with a
  leading seconds field (robfig/cron ``Parse``): a five-field expression gets ``0`` seconds prepended.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from g1core.errors import G1Error

log = logging.getLogger(__name__)

TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
MIN_BACKEND = (2, 15, 0)  # optional secrets and config maps as env (kubeflow/pipelines#12216)
OLDEST_BACKEND = (2, 5, 0)  # task retries (argocompiler retryStrategy) and resource placeholders (2.4)


def token_path() -> Path | None:
    """The service-account token file a pod mounts for KFP, or None outside such a pod."""
    path = Path(os.environ.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN_PATH)
    return path if path.is_file() else None


def connect(host: str, namespace: str | None = None):
    """A ``kfp.Client`` for ``host`` that sends the pod's KFP token when one is mounted."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    token = token_path()
    credentials = ServiceAccountTokenVolumeCredentials(path=str(token)) if token else None
    log.info("KFP API %s (%s)", host, f"bearer token from {token}" if token else "no token mounted")
    return kfp.Client(host=host, namespace=namespace, credentials=credentials)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``"2.15.0"`` / ``"v2.15.0-rc.1"`` -> (2, 15, 0); None when it names no version (``"unknown"``)."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return (int(match[1]), int(match[2]), int(match[3] or 0)) if match else None


def backend_info(client) -> dict[str, Any]:
    """The API server's healthz answer (``tag_name``, ``multi_user``, ``pipeline_store``), read raw: the SDK's
    model keeps only two of its fields. A server that cannot be reached or refuses us is a clear error."""
    import kfp_server_api
    import urllib3

    host = client._existing_config.host
    try:
        response = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    except kfp_server_api.ApiException as err:
        hint = ""
        if err.status in (401, 403):
            hint = (
                f"; in a pod, mount a service-account token with audience pipelines.kubeflow.org at "
                f"{DEFAULT_TOKEN_PATH} (or set {TOKEN_PATH_ENV}), as manifests/schedules does, and bind the "
                "account to kubeflow-edit in your profile namespace"
            )
        raise G1Error(f"KFP API at {host} answered {err.status} {err.reason}{hint}") from None
    except urllib3.exceptions.HTTPError as err:
        raise G1Error(f"KFP API at {host} cannot be reached: {err}") from None
    return json.loads(response.data or b"{}")


def check_backend(info: dict[str, Any], minimum: tuple[int, int, int] = MIN_BACKEND) -> None:
    """Refuse a backend older than ``minimum``; warn when it does not say its version."""
    version = parse_version(str(info.get("tag_name", "")))
    need = ".".join(map(str, minimum))
    if version is None:
        log.warning("the KFP API server does not say its version (tag_name %r); g1 needs %s or newer",
                    info.get("tag_name"), need)  # fmt: skip
        return
    if version < minimum:
        have = ".".join(map(str, version))
        raise G1Error(
            f"this KFP backend is {have}; the g1 pipeline as compiled needs {need} or newer (optional "
            f"secrets as environment variables). On {'.'.join(map(str, OLDEST_BACKEND))} to {need}, pass "
            f"--kfp-backend {have} and create every secret the stages read with all their keys (empty "
            "values are fine; manifests/README.md)"
        )


def spec_digest(ir: Any) -> str:
    """A short hash of a compiled pipeline's IR, the same for the same spec whatever its key order."""
    return hashlib.sha256(json.dumps(ir, sort_keys=True).encode()).hexdigest()[:10]


def version_name(pipeline_name: str, ir: Any) -> str:
    """``<pipeline>-<spec hash>``: a DNS-1123 name, as Kubernetes-native KFP needs for its resources."""
    return f"{pipeline_name}-{spec_digest(ir)}"


def cron6(expression: str) -> str:
    """A cron expression as KFP reads it (seconds first): five fields get ``0`` seconds prepended."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise G1Error(
        f"--cron {expression!r}: give 5 fields (minute hour day month weekday) or 6 (seconds first)"
    )


@dataclass(frozen=True)
class Uploaded:
    pipeline_id: str
    version_id: str
    version_name: str
    created: bool  # False: that exact spec was uploaded before


def upload(client, ir_path: Path, pipeline_name: str, namespace: str | None = None) -> Uploaded:
    """Upload the compiled IR as a version of ``pipeline_name`` named by its content (kept if there)."""
    import yaml

    ir = list(yaml.safe_load_all(Path(ir_path).read_text()))  # the pipeline spec and its platform spec
    name = version_name(pipeline_name, ir)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(ir_path), pipeline_name=pipeline_name, namespace=namespace)
        pipeline_id = pipeline.pipeline_id
        log.info("created pipeline %s (%s)", pipeline_name, pipeline_id)
    existing = _version_named(client, pipeline_id, name)
    if existing is not None:
        log.info("pipeline %s already has version %s: this spec is unchanged", pipeline_name, name)
        return Uploaded(pipeline_id, existing, name, False)
    version = client.upload_pipeline_version(
        str(ir_path), pipeline_version_name=name, pipeline_id=pipeline_id
    )
    log.info("uploaded version %s of pipeline %s", name, pipeline_name)
    return Uploaded(pipeline_id, version.pipeline_version_id, name, True)


def _version_named(client, pipeline_id: str, name: str) -> str | None:
    token = ""
    while True:
        page = client.list_pipeline_versions(pipeline_id, page_size=100, page_token=token)
        for version in page.pipeline_versions or []:
            if version.display_name == name:
                return version.pipeline_version_id
        token = page.next_page_token or ""
        if not token:
            return None


def experiment_id(client, name: str, namespace: str | None = None) -> str:
    """The id of experiment ``name``, created when missing."""
    return client.create_experiment(name, namespace=namespace).experiment_id  # returns the existing one too


def schedule(
    client,
    uploaded: Uploaded,
    *,
    cron: str,
    experiment: str,
    job_name: str,
    params: dict[str, Any],
    namespace: str | None = None,
    service_account: str | None = None,
):
    """A recurring run of ``uploaded``: one run at a time (``max_concurrency=1``), no catch-up of missed
    slots, at ``cron`` in the scheduler's time zone (UTC unless its CRON_SCHEDULE_TIMEZONE says otherwise)."""
    return client.create_recurring_run(
        experiment_id=experiment_id(client, experiment, namespace),
        job_name=job_name,
        cron_expression=cron6(cron),
        max_concurrency=1,
        no_catchup=True,
        params=params,
        pipeline_id=uploaded.pipeline_id,
        version_id=uploaded.version_id,
        enabled=True,
        service_account=service_account,
    )


def active_runs(client, experiment: str, namespace: str | None = None) -> list[str]:
    """Ids of the experiment's runs that have not ended (pending, running, paused or being cancelled)."""
    ended = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED"}
    runs, token = [], ""
    while True:
        page = client.list_runs(
            experiment_id=experiment, namespace=namespace, page_size=100, page_token=token
        )
        runs += [r.run_id for r in page.runs or [] if str(r.state or "").upper() not in ended]
        token = page.next_page_token or ""
        if not token:
            return runs
