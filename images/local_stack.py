"""What the scripts that run the DAG in containers share (bench.py, paper_shapes.py): an images.yaml copy
naming the local g1-cpu tag, and a fresh S3 and MLflow stack (``g1 stack up`` on free ports) in a
temporary folder, stopped again at the end."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LocalStack:
    folder: Path  # the temporary folder: work folders go here
    images_file: Path  # images.yaml with g1-cpu's local tag (G1_IMAGES_FILE, --images-file)
    env: dict[str, str]  # this process's environment pointed at the stack (S3 keys, MLflow, artifact root)
    mlflow_url: str


@contextlib.contextmanager
def local_stack(tag: str, prefix: str) -> Iterator[LocalStack]:
    from g1core import stack

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        folder = Path(tmp)
        table = yaml.safe_load((REPO_ROOT / "images" / "images.yaml").read_text())
        table["images"]["g1-cpu"]["image"] = tag
        images_file = folder / "images.yaml"
        images_file.write_text(yaml.safe_dump(table, sort_keys=False))
        info = stack.stack_up(folder / "stack", stack.free_port(), stack.free_port())
        try:
            env = {**os.environ, **info.env(), "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
            env.pop("G1_WORK_DIR", None)
            yield LocalStack(folder, images_file, env, info.mlflow_url)
        finally:
            stack.stack_down(folder / "stack")
