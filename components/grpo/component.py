"""KFP component: GRPO RL on VLM-Gym, as the G0 branch (from the base model) or the G1 branch (from SFT)."""

from typing import NamedTuple

from kfp import dsl

from components.images import image_for


@dsl.component(base_image=image_for("grpo"))
def grpo(
    config_json: str, pipeline_run_id: str, branch: str, artifact_root: str = "", sft_uri: str = ""
) -> NamedTuple("Outputs", uri=str, model_uri=str):
    """Train with GRPO; returns the stage's URI and its model's (``<uri>/model``),
    which the pipeline records as a KFP Model artifact without copying it.

    ``branch`` is ``g0`` (start from the base model) or ``g1`` (start from the model of ``sft_uri``, the
    sft stage's output; empty: that of the same pipeline run). A retried pod resumes from the checkpoints
    stored under the stage's URI, and the state stream continues where it stopped.
    """
    import logging

    from g1core.stages import model_uri, run_stage_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if branch not in ("g0", "g1"):
        raise ValueError(
            f"grpo: branch must be 'g0' (from the base model) or 'g1' (from SFT), got {branch!r}"
        )
    uri = run_stage_json(branch, config_json, pipeline_run_id, artifact_root, upstream={"sft": sft_uri})
    return (uri, model_uri(uri))
