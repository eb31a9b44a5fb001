"""KFP component: evaluation of every configured player under the paper's protocol."""

from kfp import dsl

from components.images import image_for


@dsl.component(base_image=image_for("evaluate"))
def evaluate(
    config_json: str,
    pipeline_run_id: str,
    artifact_root: str = "",
    sft_uri: str = "",
    g0_uri: str = "",
    g1_uri: str = "",
    scores: dsl.Output[dsl.Metrics] = None,
    report: dsl.Output[dsl.Markdown] = None,
) -> str:
    """Play every game with every player; returns the URI of the report (results, tables, plots).

    ``sft_uri``, ``g0_uri`` and ``g1_uri`` are the training stages' outputs, whose models play as
    ``kind: hf, model: sft | g0 | g1`` (empty: those of the same pipeline run); as inputs they also order
    this stage after them. The pipeline's exit handler (components/finish) ends the MLflow parent run.
    ``scores`` (every player's mean per game) and ``report`` (the report's markdown) show in KFP's UI.
    """
    import logging

    from g1core.stages import run_stage_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from g1core.stages.evaluate import headline

    uri = run_stage_json(
        "evaluate",
        config_json,
        pipeline_run_id,
        artifact_root,
        upstream={"sft": sft_uri, "g0": g0_uri, "g1": g1_uri},
    )
    numbers, markdown = headline(uri)
    for name, value in numbers.items():
        scores.log_metric(name, value)
    with open(report.path, "w") as f:
        f.write(markdown)
    return uri
