"""Every stage of a local run in its container image: kfp.local's ``DockerRunner`` over podman's Docker API.

``g1 pipeline run --local --containers`` runs the compiled components' own commands in the stage images
built by ``make images``, each container as a pod would see it:

- **Images**: the stage -> image table of ``G1_IMAGES_FILE`` (``make images`` writes ``out/images-local.yaml``
  with the local tags). A stage whose image is not here (the CUDA-based g1-gpu cannot be built on a machine
  that cannot pull its base) runs in g1-cpu's, and the run says so when it starts.
- **Environment**: exactly the variables the cluster's pods get from secrets ``g1-s3``, ``g1-teacher``,
  ``g1-hf`` and config map ``g1-settings`` (read from ``pipelines/g1_pipeline.py``, the definitions the
  pipeline compiles in), with this machine's values. Artifacts must go to S3 and metrics to an MLflow server
  (``g1 stack up``): nothing is shared through the host's disk but KFP's own output folder.
- **Pod hygiene**: the image's non-root user, a read-only root filesystem, writable HOME and /tmp only
  (tmpfs), the host's network (to reach S3 and MLflow on loopback).

podman runs with ``images/containers.conf``; ``podman system service`` serves the Docker API on a socket in
the run's folder for as long as the run lasts.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = REPO_ROOT / "images" / "containers.conf"
CPU_IMAGE = "g1-cpu"
HOME, TMP = "/home/g1", "/tmp"  # the images' writable places (the user's HOME, and /tmp)
# tmpfs mounts writable by the image's user: podman's U (chown to it); its mode=1777 is not applied here
TMPFS = {HOME: "rw,size=8g,U", TMP: "rw,size=8g,U"}


def pod_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a stage's pod gets from the secrets and the config map the pipeline names, with this
    machine's values; artifacts and tracking must be services the containers reach (S3, an MLflow server)."""
    from .g1_pipeline import HF_SECRET, S3_SECRET, SETTINGS_CONFIG_MAP, TEACHER_SECRET

    environ = dict(os.environ if environ is None else environ)
    keys = [
        env
        for _, mapping in (S3_SECRET, TEACHER_SECRET, HF_SECRET, SETTINGS_CONFIG_MAP)
        for env in mapping.values()
    ]
    env = {key: environ[key] for key in keys if environ.get(key)}
    root, tracking = env.get("G1_ARTIFACT_ROOT", ""), env.get("MLFLOW_TRACKING_URI", "")
    if not root.startswith("s3://") or not tracking.startswith(("http://", "https://")):
        raise ValueError(
            "a containers run keeps artifacts in S3 and runs in an MLflow server, as a cluster does: start "
            "them with `g1 stack up` and export its stack.env (G1_ARTIFACT_ROOT=s3://..., "
            f"MLFLOW_TRACKING_URI=http://...); got G1_ARTIFACT_ROOT={root!r}, "
            f"MLFLOW_TRACKING_URI={tracking!r}"
        )
    return env


def stage_images(table: dict, available) -> tuple[dict, list[str]]:
    """``table`` (images.yaml) with the stages of every image that is not ``available`` moved to g1-cpu's
    image; and a line for each move."""
    images = {name: dict(spec) for name, spec in table["images"].items()}
    cpu = images[CPU_IMAGE]
    if not available(cpu["image"]):
        raise ValueError(f"{cpu['image']} is not built here: run `make images` first")
    moved = []
    for name, spec in images.items():
        if name != CPU_IMAGE and spec.get("stages") and not available(spec["image"]):
            moved.append(
                f"{', '.join(spec['stages'])} run in {cpu['image']}: {spec['image']} is not built here"
            )
            cpu["stages"] = [*cpu["stages"], *spec["stages"]]
            spec["stages"] = []
    return {**table, "images": images}, moved


@contextmanager
def podman_service(folder: Path, timeout: float = 30.0) -> Iterator[str]:
    """``podman system service`` on a socket in ``folder`` for the block; yields its ``DOCKER_HOST``."""
    if shutil.which("podman") is None:
        raise ValueError("podman is not installed: `make images` installs it (apt-get install podman runc)")
    folder.mkdir(parents=True, exist_ok=True)
    socket = folder / "podman.sock"
    socket.unlink(missing_ok=True)
    env = {"CONTAINERS_CONF": str(CONTAINERS_CONF), **os.environ}
    log_file = (folder / "podman-service.log").open("w")
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=env,
        stdout=log_file,
        stderr=log_file,
    )
    try:
        deadline = time.monotonic() + timeout
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"podman's API service did not start; see {folder / 'podman-service.log'}")
            time.sleep(0.2)
        yield f"unix://{socket}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


def runner(env: dict[str, str]):
    """kfp.local's DockerRunner with the pod's environment and hygiene."""
    from kfp import local

    return local.DockerRunner(
        environment=env,
        network_mode="host",
        read_only=True,
        tmpfs=TMPFS,
    )


def run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """Run one task's container, stream its log, and return its exit code; then remove it.

    Replaces kfp.local's own (2.17), which starts containers with auto-remove: podman removes a finished
    container before the exit code is read, and kfp then takes the missing container for a success, so a
    failed stage passed as SUCCESS with no outputs. Here the container stays until its code is read."""
    container = client.containers.run(
        image=image, command=command, volumes=volumes, detach=True, stdout=True, stderr=True, **run_args
    )
    try:
        for chunk in container.logs(stream=True, follow=True):
            sys.stdout.write(chunk.decode(errors="replace"))
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


def images_for_run(work: Path, images_file: Path) -> Path:
    """The images file of the run (every stage in an image that is here), for ``G1_IMAGES_FILE``."""
    import docker

    if not images_file.is_file():
        raise ValueError(f"{images_file} does not exist: `make images` writes it")
    client = docker.from_env()
    try:

        def available(ref: str) -> bool:
            return any(ref in image.tags for image in client.images.list())

        table, moved = stage_images(yaml.safe_load(images_file.read_text()), available)
    finally:
        client.close()
    for line in moved:
        log.warning("%s", line)
    out = work / "images-run.yaml"
    out.write_text(yaml.safe_dump(table, sort_keys=False))
    return out
