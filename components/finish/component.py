"""KFP component: the pipeline's exit handler, which ends the MLflow pipeline run as the KFP run ended."""

from kfp import dsl

from components.images import image_for


@dsl.component(base_image=image_for("finish"))
def finish(
    config_json: str, pipeline_run_id: str, status: dsl.PipelineTaskFinalStatus, artifact_root: str = ""
) -> str:
    """Put the run's headline (scores, params, image tags, stage times) on the MLflow parent run and mark it
    FINISHED, FAILED or KILLED as the KFP run ended; returns the URI of the evaluation's report (the
    pipeline's output).

    It runs after every stage has ended, whatever happened to them: a stage's failed try that KFP retries
    leaves the parent running, and a pod killed without a chance to report (OOM, eviction) still ends it.
    """
    import logging

    from components.images import image_table
    from g1core.stages import finish_pipeline_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    images = {f"g1.image.{name}": spec["image"] for name, spec in image_table()["images"].items()}
    return finish_pipeline_json(
        config_json, pipeline_run_id, status.state, status.error_message, artifact_root, images
    )
