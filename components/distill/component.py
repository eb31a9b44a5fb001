"""KFP component: teacher distillation (the perception-enhanced cold-start data set)."""

from kfp import dsl

from components.images import image_for


@dsl.component(base_image=image_for("distill"))
def distill(config_json: str, pipeline_run_id: str, artifact_root: str = "") -> str:
    """Sample states, ask the teacher, keep perception-enhanced legal answers; returns the data set URI."""
    import logging

    from g1core.stages import run_stage_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_stage_json("distill", config_json, pipeline_run_id, artifact_root)
