"""The g1 pipeline, the paper's whole experiment: two branches, then one evaluation, then the run's status.

    base model ──────────────────────────── grpo (G0) ──┐
    base model ── distill ── sft ────────── grpo (G1) ──┴── evaluate (base, G0, SFT, G1, teacher, random)
    ... evaluate ── promote (the new G1 becomes the registered champion, or the decision says why not)
    finish (exit handler): the MLflow pipeline run ends FINISHED, FAILED or KILLED as the KFP run did

Each stage is a lightweight KFP component (components/), so the same function runs in a pod and in
``kfp.local``. A stage's output URI is the next one's input: sft trains on distill's data set, G1 starts
from sft's model, and evaluate plays the trained models (``kind: hf, model: sft | g0 | g1``).

Pod settings that are the same on every cluster (CPU, memory, GPUs, /dev/shm, retries) are in
``STAGE_RESOURCES``; those that depend on the cluster (GPUs per training pod, GPU node labels and taints,
image pull secrets, the KFP backend's version) are a :class:`PodSettings`, set by ``g1 pipeline compile``
(and ``submit``) flags. GPU counts are compiled in as constants, not pipeline parameters: KFP's driver reads
a ``resourceCount`` placeholder with ``GetStringValue()``, so an ``int`` parameter resolves to "" and the pod
gets no GPU limit; backends before 2.4 ignore placeholders there; and kfp 2.17's compiler does not pass a
parameter used only in ``resourceCount`` into the exit handler's sub-DAG (docs/cluster.md).

No ``from __future__ import annotations`` here: KFP reads the pipeline function's annotations as types.
"""

from dataclasses import dataclass, field

from kfp import dsl, kubernetes

from components.distill import distill
from components.evaluate import evaluate
from components.finish import finish
from components.grpo import grpo
from components.promote import promote
from components.sft import sft
from g1core.config import config_to_json, load_config

# Embedded default: the paper's recipe. `g1 pipeline run --local` passes the local-tiny preset instead.
DEFAULT_CONFIG_JSON = config_to_json(load_config("g1-paper"))

# Kubernetes secrets the stages read: S3 credentials for artifacts, the teacher's API key, the HF token.
S3_SECRET = (
    "g1-s3",
    {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")},
)
TEACHER_SECRET = (
    "g1-teacher",
    {"OPENAI_API_KEY": "OPENAI_API_KEY", "ANTHROPIC_API_KEY": "ANTHROPIC_API_KEY"},
)
HF_SECRET = ("g1-hf", {"HF_TOKEN": "HF_TOKEN"})
SETTINGS_CONFIG_MAP = (
    "g1-settings",
    {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "G1_ARTIFACT_ROOT": "G1_ARTIFACT_ROOT"},
)

# A training pod (SFT, GRPO): one 8-GPU node (GPUs: PodSettings). Scratch: the work folder (start model,
# checkpoints, saved model) on the node's disk, from the disk plan of the paper preset at 7B (docs/cluster.md,
# tests/test_gpu_paths.py): 15.4 GiB downloaded + 2 checkpoints of 108 GiB + the 15.4 GiB model = 247 GiB.
GPU_TRAINING_NODE = {
    "cpu": "32",
    "memory": "256G",
    "gpus": 8,
    "shm": "64Gi",
    "scratch": "300Gi",
    "retries": 3,
}
# Per stage: CPU/memory requests, GPUs, /dev/shm size, scratch volume (work folder and model downloads),
# retries.
STAGE_RESOURCES = {
    # retries: a restarted distill pod resumes from its shards (same pipeline run id, same output URI)
    "distill": {"cpu": "4", "memory": "16G", "gpus": 0, "shm": "2Gi", "scratch": "20Gi", "retries": 3},
    # retries: a killed SFT pod resumes from the checkpoints under its output URI (same run id)
    "sft": dict(GPU_TRAINING_NODE),
    # retries: a killed GRPO pod resumes from its checkpoints, the state stream where it stopped
    "grpo": dict(GPU_TRAINING_NODE),
    # scratch: the base model and the three trained ones, 15.4 GiB each at 7B
    "evaluate": {"cpu": "8", "memory": "64G", "gpus": 1, "shm": "16Gi", "scratch": "100Gi"},
    # the promotion gate: MLflow calls, and the champion played again on one GPU when its scores are stale
    "promote": {"cpu": "8", "memory": "64G", "gpus": 1, "shm": "16Gi", "scratch": "50Gi"},
    # the exit handler: a few MLflow calls
    "finish": {"cpu": "250m", "memory": "1G", "gpus": 0, "retries": 3},
}
GPU_RESOURCE = "nvidia.com/gpu"
SCRATCH = "/scratch"
IMAGE_UID = 10001  # the stage images' user (images/*/Dockerfile)


@dataclass(frozen=True)
class Toleration:
    """A pod toleration (``kubectl explain pod.spec.tolerations``)."""

    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Toleration":
        """``key``, ``key:Effect``, ``key=value`` or ``key=value:Effect`` (``Equal`` with a value)."""
        spec, _, effect = text.partition(":")
        key, eq, value = spec.partition("=")
        if not key or (effect and effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute")):
            raise ValueError(f"toleration {text!r}: give key[=value][:NoSchedule|PreferNoSchedule|NoExecute]")
        return cls(key, "Equal" if eq else "Exists", value if eq else None, effect or None)


@dataclass(frozen=True)
class PodSettings:
    """What differs between clusters, compiled into the pipeline (``g1 pipeline compile --help``)."""

    # GPUs of one SFT pod and of one GRPO pod (one node each): the processes the stage launches.
    sft_gpus: int = 8
    grpo_gpus: int = 8
    # Secrets g1-teacher and g1-hf (and each key of g1-s3, g1-settings) may be missing: needs KFP 2.15+.
    # On older backends every secret must exist with all its keys (PodSettings.for_backend).
    optional_secrets: bool = True
    # Labels a GPU stage's node must carry. None by default: the nvidia.com/gpu limit alone places the pod
    # on a node that has GPUs; a label such as nvidia.com/gpu.present needs GPU Feature Discovery.
    gpu_node_selector: tuple[tuple[str, str], ...] = ()
    # Taints a GPU stage tolerates: GPU node pools are commonly tainted nvidia.com/gpu (GKE does it itself,
    # AKS and EKS recommend it); a toleration of a taint a node does not have changes nothing.
    gpu_tolerations: tuple[Toleration, ...] = (Toleration(GPU_RESOURCE, "Exists", None, "NoSchedule"),)
    # Secrets for pulling the stage images from a private registry.
    image_pull_secrets: tuple[str, ...] = field(default_factory=tuple)
    # runAsNonRoot with the images' user (uid/gid 10001) on every stage's container: with the defaults KFP's
    # backend enforces (no privilege escalation, no capabilities, RuntimeDefault seccomp) this passes the
    # "restricted" Pod Security Standard. Needs KFP 2.16 (kfp-kubernetes set_security_context, #12832); on
    # older backends the images still run as that user, from their Dockerfile.
    security_context: bool = False
    # CPU and memory limits equal to the requests, for namespaces whose ResourceQuota demands limits (the
    # pods then get the Guaranteed QoS class). Off by default: a limit only adds ways to be killed.
    resource_limits: bool = False
    # Retry a failed stage as STAGE_RESOURCES says (a retried stage resumes from its outputs). Local runs
    # turn it off: kfp.local waits out the same backoff (60 s, doubling) before showing the error.
    retries: bool = True
    # Each stage's work folder and model downloads on an emptyDir at /scratch (STAGE_RESOURCES' sizes), not
    # in the container's writable layer. Local runs turn it off: kfp.local would set the same variables
    # on the host's processes.
    scratch: bool = True

    @classmethod
    def for_backend(cls, version: tuple[int, int, int], **kwargs) -> "PodSettings":
        """Settings a KFP backend of ``version`` can run (see pipelines.kfp_api for the versions)."""
        from .kfp_api import MIN_BACKEND, OLDEST_BACKEND

        if version < OLDEST_BACKEND:
            raise ValueError(
                f"KFP backend {'.'.join(map(str, version))} is too old: g1 needs "
                f"{'.'.join(map(str, OLDEST_BACKEND))} or newer (task retries; GPU counts as parameters)"
            )
        return cls(optional_secrets=version >= MIN_BACKEND, security_context=version >= (2, 16, 0), **kwargs)


def configure(
    task: dsl.PipelineTask,
    stage: str,
    settings: PodSettings,
    secrets=(S3_SECRET, HF_SECRET),
    gpus=None,
) -> dsl.PipelineTask:
    """Apply a stage's pod settings to its task; ``gpus`` overrides the stage's GPU count."""
    r = STAGE_RESOURCES[stage]
    task.set_cpu_request(r["cpu"]).set_memory_request(r["memory"])
    if settings.resource_limits:
        task.set_cpu_limit(r["cpu"]).set_memory_limit(r["memory"])
    if r.get("gpus"):
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus or r["gpus"])
        for key, value in settings.gpu_node_selector:
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in settings.gpu_tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
    if r.get("shm"):
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=r["shm"]
        )
    if r.get("scratch") and settings.scratch:
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH, size_limit=r["scratch"])
        task.set_env_variable("G1_WORK_DIR", f"{SCRATCH}/g1-work").set_env_variable(
            "HF_HOME", f"{SCRATCH}/hf"
        )
    for name, keys in secrets:
        kubernetes.use_secret_as_env(
            task, secret_name=name, secret_key_to_env=keys, optional=settings.optional_secrets
        )
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=SETTINGS_CONFIG_MAP[0],
        config_map_key_to_env=SETTINGS_CONFIG_MAP[1],
        optional=settings.optional_secrets,
    )
    if settings.security_context:
        kubernetes.set_security_context(
            task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True
        )
    if settings.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(settings.image_pull_secrets))
    if r.get("retries") and settings.retries:
        task.set_retry(num_retries=r["retries"], backoff_duration="60s", backoff_factor=2)
    task.set_caching_options(False)  # stages resume from their own outputs; KFP's cache would skip reruns
    return task


def record(uri, artifact_class, name: str, stage: str) -> dsl.PipelineTask:
    """Show ``uri`` (a stage's output in S3) as a typed KFP artifact: an importer records the URI in KFP's
    metadata (``reimport=False``: once) and copies nothing, so the weights stay where the stage wrote them.
    A component output pointing at another bucket than KFP's pipeline root would fail its upload."""
    task = dsl.importer(
        artifact_uri=uri, artifact_class=artifact_class, reimport=False, metadata={"g1.stage": stage}
    )
    task.set_display_name(name)
    return task


def make_pipeline(settings: PodSettings = PodSettings()):  # noqa: B008 (frozen, never mutated)
    """The g1 pipeline with ``settings`` compiled into its pods."""

    @dsl.pipeline(
        name="g1",
        description="G1: GRPO from the base model (G0) beside distill -> SFT cold start -> GRPO (G1), then "
        "one evaluation of base, G0, SFT, G1, the teacher and random (spec §5-7).",
    )
    def g1_pipeline(
        config_json: str = DEFAULT_CONFIG_JSON,
        artifact_root: str = "",
    ) -> str:
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        done = finish(config_json=config_json, pipeline_run_id=run_id, artifact_root=artifact_root)
        configure(done, "finish", settings, (S3_SECRET,))
        done.set_display_name("finish")
        with dsl.ExitHandler(done, name="stages"):
            data = distill(config_json=config_json, pipeline_run_id=run_id, artifact_root=artifact_root)
            configure(data, "distill", settings, (S3_SECRET, HF_SECRET, TEACHER_SECRET))
            data.set_display_name("distill")
            record(data.output, dsl.Dataset, "dataset", "distill")
            tuned = sft(
                config_json=config_json,
                pipeline_run_id=run_id,
                artifact_root=artifact_root,
                dataset_uri=data.output,
            )
            configure(tuned, "sft", settings, gpus=settings.sft_gpus)
            tuned.set_display_name("sft")
            record(tuned.outputs["model_uri"], dsl.Model, "sft-model", "sft")
            g0 = grpo(
                config_json=config_json, pipeline_run_id=run_id, branch="g0", artifact_root=artifact_root
            )
            configure(g0, "grpo", settings, gpus=settings.grpo_gpus)
            g0.set_display_name("grpo-g0")
            record(g0.outputs["model_uri"], dsl.Model, "g0-model", "g0")
            g1 = grpo(
                config_json=config_json,
                pipeline_run_id=run_id,
                branch="g1",
                artifact_root=artifact_root,
                sft_uri=tuned.outputs["uri"],
            )
            configure(g1, "grpo", settings, gpus=settings.grpo_gpus)
            g1.set_display_name("grpo-g1")
            record(g1.outputs["model_uri"], dsl.Model, "g1-model", "g1")
            report = evaluate(
                config_json=config_json,
                pipeline_run_id=run_id,
                artifact_root=artifact_root,
                sft_uri=tuned.outputs["uri"],
                g0_uri=g0.outputs["uri"],
                g1_uri=g1.outputs["uri"],
            )
            configure(report, "evaluate", settings, (S3_SECRET, HF_SECRET, TEACHER_SECRET))
            report.set_display_name("evaluate")
            gate = promote(
                config_json=config_json,
                pipeline_run_id=run_id,
                artifact_root=artifact_root,
                report_uri=report.outputs["Output"],
            )
            configure(gate, "promote", settings, (S3_SECRET, HF_SECRET))
            gate.set_display_name("promote")
        return done.output  # the report's URI: outputs come from the top level, where the exit handler is

    return g1_pipeline


g1_pipeline = make_pipeline()
LOCAL_SETTINGS = PodSettings(retries=False, scratch=False)  # `g1 pipeline run --local`
PIPELINES = {"g1_pipeline": make_pipeline}
