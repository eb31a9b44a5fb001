"""Figures of the containers path (``make bench-containers``): build times, image size, and the DAG's wall
time with every stage in its container beside the same DAG with every stage a host process.

    python images/bench.py [--cold] [--config local-tiny]

- **build**: the g1-cpu build when its content tag exists (warm), and with ``--cold`` a build that reuses no
  layer (``--no-cache``; the Debian base, made once, is kept);
- **size**: the image's size as podman reports it;
- **runs**: one S3 and MLflow stack (``g1 stack up`` in a temporary folder, free ports), then the config's DAG
  through kfp.local's SubprocessRunner and through ``--containers``, one after the other, same services.

Prints one JSON object, then a line per figure. Run from the repository root with the project's venv.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import podman_build  # noqa: E402 (beside this script)
from local_stack import local_stack  # noqa: E402

log = logging.getLogger("g1.images")
REPO_ROOT = podman_build.REPO_ROOT


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return round(time.perf_counter() - t0, 1), out


def dag_seconds(config: str, env: dict[str, str], work: Path, containers: bool, images_file: Path) -> float:
    cmd = [sys.executable, "-m", "g1core.cli", "pipeline", "run", "--local", "--config", config]
    cmd += ["--work-dir", str(work)]
    if containers:
        cmd += ["--containers", "--images-file", str(images_file)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="also time a build that reuses no layer")
    parser.add_argument("--config", default="local-tiny", help="the DAG's config (default local-tiny)")
    args = parser.parse_args(argv)
    spec = yaml.safe_load((REPO_ROOT / "images" / "images.yaml").read_text())["images"]["g1-cpu"]
    out: dict = {}
    if args.cold:
        out["build_cold_s"], _ = timed(
            lambda: podman_build.build("g1-cpu", spec, rebuild=True, no_cache=True)
        )
    out["build_warm_s"], tag = timed(lambda: podman_build.build("g1-cpu", spec))
    out["image"] = tag
    size = podman_build.podman("image", "inspect", "--format", "{{.Size}}", tag, capture=True)
    out["image_gb"] = round(int(size) / 1e9, 2)
    with local_stack(tag, "g1-bench-containers-") as run:
        out["dag_subprocess_s"] = dag_seconds(
            args.config, run.env, run.folder / "host", False, run.images_file
        )
        out["dag_containers_s"] = dag_seconds(
            args.config, run.env, run.folder / "containers", True, run.images_file
        )
    stages = 5
    out["container_target_s"] = round(1.5 * out["dag_subprocess_s"] + 10 * stages, 1)
    sys.stdout.write(json.dumps(out) + "\n")
    if "build_cold_s" in out:
        sys.stdout.write(f"cold build (no layer reused, base kept): {out['build_cold_s']} s\n")
    sys.stdout.write(f"warm build (content tag found): {out['build_warm_s']} s; image {out['image_gb']} GB\n")
    sys.stdout.write(
        f"{args.config} DAG: {out['dag_subprocess_s']} s as host processes, {out['dag_containers_s']} s in "
        f"containers (target <= {out['container_target_s']} s: 1.5x + 10 s per stage)\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
