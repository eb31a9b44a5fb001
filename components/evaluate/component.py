"""KFP component: evaluation of every configured player under the paper's protocol."""

from kfp import dsl

from components.images import image_for


@dsl.component(base_image=image_for("evaluate"))
def evaluate(
    config_json: str, pipeline_run_id: str, artifact_root: str = "", after_uri: str = "", last: bool = True
) -> str:
    """Play every game with every player; returns the URI of the report (results, tables, plots).

    ``after_uri`` only orders the stage after an upstream one (the data set it follows, for the record);
    ``last`` marks the pipeline's MLflow parent run finished when this stage succeeds.
    """
    import logging

    from g1core.stages import run_stage_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if after_uri:
        logging.getLogger("g1").info("evaluating after %s", after_uri)
    return run_stage_json("evaluate", config_json, pipeline_run_id, artifact_root, finish_pipeline=last)
