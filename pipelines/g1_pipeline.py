"""The g1 pipeline, the paper's whole experiment: two branches, then one evaluation.

    base model ──────────────────────────── grpo (G0) ──┐
    base model ── distill ── sft ────────── grpo (G1) ──┴── evaluate (base, G0, SFT, G1, teacher, random)

Each stage is a lightweight KFP component (components/), so the same function runs in a pod and in
``kfp.local``. A stage's output URI is the next one's input: sft trains on distill's data set, G1 starts
from sft's model, and evaluate plays the trained models (``kind: hf, model: sft | g0 | g1``). Pod settings
(GPUs, secrets, node selectors, /dev/shm, retries) are compiled in from ``STAGE_RESOURCES``; edit them
there and run ``g1 pipeline compile``. The GPU counts of the SFT and GRPO stages are also pipeline
parameters (``sft_gpus``, ``grpo_gpus``).
"""

from kfp import dsl, kubernetes

from components.distill import distill
from components.evaluate import evaluate
from components.grpo import grpo
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

# The g1-data volume (manifests/data: CIFAR-10 for shisen-sho-cifar10) is mounted here in every stage.
DATA_PVC = ("g1-data", "/data")

# A training pod (SFT, GRPO): one 8-GPU node.
GPU_TRAINING_NODE = {
    "cpu": "32",
    "memory": "256G",
    "gpus": 8,
    "accelerator": "nvidia.com/gpu",
    "node_selector": {"nvidia.com/gpu.present": "true"},
    "shm": "64Gi",
    "retries": 3,
}
# Per stage: CPU/memory requests, GPUs (accelerator type and count), node selector, /dev/shm size.
STAGE_RESOURCES = {
    # retries: a restarted distill pod resumes from its shards (same pipeline run id, same output URI)
    "distill": {"cpu": "4", "memory": "16G", "gpus": 0, "node_selector": {}, "shm": "2Gi", "retries": 3},
    # retries: a killed SFT pod resumes from the checkpoints under its output URI (same run id)
    "sft": dict(GPU_TRAINING_NODE),
    # retries: a killed GRPO pod resumes from its checkpoints, the state stream where it stopped
    "grpo": dict(GPU_TRAINING_NODE),
    "evaluate": {
        "cpu": "8",
        "memory": "64G",
        "gpus": 1,
        "accelerator": "nvidia.com/gpu",
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "shm": "16Gi",
    },
}


def configure(
    task: dsl.PipelineTask, stage: str, secrets=(S3_SECRET, HF_SECRET), gpus=None
) -> dsl.PipelineTask:
    """Apply a stage's pod settings to its task; ``gpus`` (e.g. a pipeline parameter) overrides the count."""
    r = STAGE_RESOURCES[stage]
    task.set_cpu_request(r["cpu"]).set_memory_request(r["memory"])
    if r.get("gpus"):
        task.set_accelerator_type(r["accelerator"]).set_accelerator_limit(gpus or r["gpus"])
    for key, value in r.get("node_selector", {}).items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if r.get("shm"):
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=r["shm"]
        )
    for name, keys in secrets:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, optional=True)
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=SETTINGS_CONFIG_MAP[0],
        config_map_key_to_env=SETTINGS_CONFIG_MAP[1],
        optional=True,
    )
    kubernetes.mount_pvc(task, pvc_name=DATA_PVC[0], mount_path=DATA_PVC[1])
    if r.get("retries"):
        task.set_retry(num_retries=r["retries"], backoff_duration="60s", backoff_factor=2)
    task.set_caching_options(False)  # stages resume from their own outputs; KFP's cache would skip reruns
    return task


@dsl.pipeline(
    name="g1",
    description="G1: GRPO from the base model (G0) beside distill -> SFT cold start -> GRPO (G1), then one "
    "evaluation of base, G0, SFT, G1, the teacher and random (spec §5-7).",
)
def g1_pipeline(
    config_json: str = DEFAULT_CONFIG_JSON,
    artifact_root: str = "",
    sft_gpus: int = STAGE_RESOURCES["sft"]["gpus"],
    grpo_gpus: int = STAGE_RESOURCES["grpo"]["gpus"],
) -> str:
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    data = distill(config_json=config_json, pipeline_run_id=run_id, artifact_root=artifact_root)
    configure(data, "distill", (S3_SECRET, HF_SECRET, TEACHER_SECRET))
    data.set_display_name("distill")
    tuned = sft(
        config_json=config_json, pipeline_run_id=run_id, artifact_root=artifact_root, dataset_uri=data.output
    )
    configure(tuned, "sft", gpus=sft_gpus)
    tuned.set_display_name("sft")
    g0 = grpo(config_json=config_json, pipeline_run_id=run_id, branch="g0", artifact_root=artifact_root)
    configure(g0, "grpo", gpus=grpo_gpus)
    g0.set_display_name("grpo-g0")
    g1 = grpo(
        config_json=config_json,
        pipeline_run_id=run_id,
        branch="g1",
        artifact_root=artifact_root,
        sft_uri=tuned.output,
    )
    configure(g1, "grpo", gpus=grpo_gpus)
    g1.set_display_name("grpo-g1")
    report = evaluate(
        config_json=config_json,
        pipeline_run_id=run_id,
        artifact_root=artifact_root,
        sft_uri=tuned.output,
        g0_uri=g0.output,
        g1_uri=g1.output,
    )
    configure(report, "evaluate", (S3_SECRET, HF_SECRET, TEACHER_SECRET))
    report.set_display_name("evaluate")
    return report.output


PIPELINES = {"g1_pipeline": g1_pipeline}
