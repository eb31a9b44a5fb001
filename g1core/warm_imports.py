"""Import what the stages import, once, where the image is built: ``python -m g1core.warm_imports``.

The stage images install their packages without bytecode (``pip install --no-compile``) and then run this,
so that Python writes ``__pycache__`` for exactly the modules a stage loads. Compiling every installed
module instead put 475 MB of bytecode in g1-cpu, most of it for modules no stage imports; compiling none
made every stage start take 11 s instead of 5 s, because a pod's read-only root cannot cache it. The list
was taken from the modules the local-tiny pipeline's stage processes had loaded at exit
(``docs/containers.md``); a module missing here still imports, only compiled anew at each start.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

log = logging.getLogger(__name__)

MODULES = (
    # KFP's launcher and the component code it runs
    "kfp.dsl.executor_main",
    "g1core.cli",
    "g1core.stages.distill",
    "g1core.stages.sft",
    "g1core.stages.grpo",
    "g1core.stages.evaluate",
    "g1core.stages.memory",
    "g1core.gym.games",
    "g1core.gym.photos",
    "g1core.models.loading",
    "g1core.models.policy",
    "g1core.models.processor",
    "g1core.models.tiny",
    "g1core.teachers.openai_compat",
    "g1core.tracking",
    "g1core.storage",
    # what those load lazily, when a model, a trainer or a client is first made
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
    "transformers.models.qwen2_5_vl.processing_qwen2_5_vl",
    "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
    "transformers.trainer",
    "transformers.generation.utils",
    "trl.trainer.grpo_trainer",
    "trl.trainer.sft_trainer",
    "peft",
    "accelerate",
    "torch.utils.serialization",
    "mlflow",
    "mlflow.tracking",
    "mlflow.utils.name_utils",
    "boto3",
    "openai",
    "matplotlib.pyplot",
    "matplotlib.backends.backend_agg",
    "rich.progress",
    "rich.traceback",
)


def warm() -> int:
    """Import every module of :data:`MODULES` (an ImportError stops the image build); return their count."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in MODULES:
        importlib.import_module(name)
    import boto3
    from PIL import Image

    Image.init()  # Pillow's format plugins, loaded on the first save
    boto3.session.Session().client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1")
    return len(sys.modules)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    loaded = warm()
    log.info("warm_imports: %d modules loaded in %.1f s", loaded, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
