"""KFP component: perception-enhanced SFT (the cold start) on the distilled data set."""

from typing import NamedTuple

from kfp import dsl

from components.images import image_for


@dsl.component(base_image=image_for("sft"))
def sft(config_json: str, pipeline_run_id: str, artifact_root: str = "", dataset_uri: str = "") -> NamedTuple(
    "Outputs", uri=str, model_uri=str
):
    """Fine-tune the base model on ``dataset_uri``; returns the stage's URI and its model's (``<uri>/model``),
    which the pipeline records as a KFP Model artifact without copying it.

    ``dataset_uri`` is the distill stage's output (empty: that of the same pipeline run). A retried pod
    resumes from the checkpoints stored under the stage's URI.
    """
    import logging

    from g1core.stages import model_uri, run_stage_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uri = run_stage_json(
        "sft", config_json, pipeline_run_id, artifact_root, upstream={"distill": dataset_uri}
    )
    return (uri, model_uri(uri))
