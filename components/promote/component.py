"""KFP component: the promotion gate, which moves the registered ``champion`` alias or says why not."""

from kfp import dsl

from components.images import image_for


@dsl.component(base_image=image_for("promote"))
def promote(config_json: str, pipeline_run_id: str, artifact_root: str = "", report_uri: str = "") -> str:
    """Compare this run's candidate with the champion under the config's rule; returns the stage's URI
    (``decision.md``, ``decision.json``). ``report_uri`` (the evaluation's output) orders it after the
    evaluation. A rerun finds its decision and moves nothing twice; a registry error fails it."""
    import logging

    from g1core.stages import run_stage_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_stage_json("promote", config_json, pipeline_run_id, artifact_root)
