"""KFP component: evaluation of every configured player under the paper's protocol."""

from kfp import dsl

from components.images import image_for


@dsl.component(base_image=image_for("evaluate"))
def evaluate(
    config_json: str, pipeline_run_id: str, artifact_root: str = "", sft_uri: str = "", last: bool = True
) -> str:
    """Play every game with every player; returns the URI of the report (results, tables, plots).

    ``sft_uri`` is the sft stage's output, whose model plays as ``kind: hf, model: sft`` (empty: that of
    the same pipeline run); as an input it also orders this stage after sft. ``last`` marks the
    pipeline's MLflow parent run finished when this stage succeeds.
    """
    import logging

    from g1core.stages import run_stage_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_stage_json(
        "evaluate",
        config_json,
        pipeline_run_id,
        artifact_root,
        finish_pipeline=last,
        upstream={"sft": sft_uri},
    )
