"""KFP component: perception-enhanced SFT (the cold start) on the distilled data set."""

from kfp import dsl

from components.images import image_for


@dsl.component(base_image=image_for("sft"))
def sft(config_json: str, pipeline_run_id: str, artifact_root: str = "", dataset_uri: str = "") -> str:
    """Fine-tune the base model on ``dataset_uri``; returns the stage's URI (the model is under ``model/``).

    ``dataset_uri`` is the distill stage's output (empty: that of the same pipeline run). A retried pod
    resumes from the checkpoints stored under the stage's URI.
    """
    import logging

    from g1core.stages import run_stage_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_stage_json(
        "sft", config_json, pipeline_run_id, artifact_root, upstream={"distill": dataset_uri}
    )
