"""Which container image each stage's component runs in, read from images/images.yaml (the one table)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml

# In the repo: images/images.yaml; inside the stage images (no repo there) G1_IMAGES_FILE points at a copy.
IMAGES_YAML = Path(
    os.environ.get("G1_IMAGES_FILE") or Path(__file__).resolve().parent.parent / "images" / "images.yaml"
)


@lru_cache(maxsize=1)
def image_table() -> dict:
    if not IMAGES_YAML.is_file():
        raise FileNotFoundError(f"{IMAGES_YAML} is missing: the stage images are pinned there")
    return yaml.safe_load(IMAGES_YAML.read_text())


def image_for(stage: str) -> str:
    """The full image reference (registry/name:tag) that runs ``stage``."""
    matches = [spec["image"] for spec in image_table()["images"].values() if stage in spec.get("stages", [])]
    if len(matches) != 1:
        raise ValueError(f"images.yaml must name exactly one image for stage {stage!r}, found {matches}")
    return matches[0]
