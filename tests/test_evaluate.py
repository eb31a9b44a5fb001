"""Evaluation stage: the protocol for several players, with tables, plots and a report."""

import csv
import io
import json

from g1core import storage
from g1core.config import PolicyConfig, load_config
from g1core.policies import resolve_model
from g1core.stages import evaluate


def test_report_tables_and_plots(tmp_path):
    cfg = load_config(
        None,
        [
            "evaluate.games=[2048, swap]",
            "evaluate.runs=3",
            "evaluate.steps=20",
            "evaluate.screen_size=[112, 112]",
        ],
    )
    out = str(tmp_path / "eval")
    result = evaluate.run(cfg, out, progress=False)
    rows = result.table()
    assert [(r["game"], r["policy"]) for r in rows] == [
        ("2048", "random"),
        ("swap", "random"),
        ("2048", "oracle"),
        ("swap", "oracle"),
    ]
    results = json.loads(storage.read_bytes(storage.join(out, "results.json")))
    assert len(results) == 4 and all(len(r["scores"]) == 3 for r in results)
    table = list(csv.DictReader(io.StringIO(storage.read_bytes(storage.join(out, "table.csv")).decode())))
    assert float(table[3]["mean"]) == 100.0  # the oracle always swaps legally
    report = storage.read_bytes(storage.join(out, "report.md")).decode()
    assert "| swap | oracle | 100.0 ± 0.0 |" in report and "Claude-3.7-Sonnet-Thinking" in report
    for name in ("2048", "swap", "comparison"):  # a chart per game, and every game in one (Figure 1)
        png = storage.read_bytes(storage.join(out, f"plot-{name}.png"))
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![every game](plot-comparison.png)" in report
    metrics = evaluate.metrics(result)
    assert metrics["swap/oracle/mean"] == 100.0 and metrics["2048/random/format_rate"] == 0.0


def test_full_protocol_for_random_and_oracle_is_quick(tmp_path):
    """The issue's figure: 4 games x 10 runs x 100 steps for random and oracle (printed, not timed here)."""
    cfg = load_config(None, ["evaluate.screen_size=[112, 112]"])
    result = evaluate.run(cfg, str(tmp_path / "eval"), progress=False)
    scores = {(r["game"], r["policy"]): r["mean"] for r in result.table()}
    assert scores[("shisen-sho", "oracle")] == 18.0 and scores[("swap", "oracle")] == 100.0
    assert scores[("2048", "oracle")] > scores[("2048", "random")]


def test_metric_names_are_mlflow_safe():
    assert (
        evaluate.metric_name("shisen-sho:size=8", "hf:model@x", "mean") == "shisen-sho_size_8/hf_model_x/mean"
    )


def test_players_are_checked_before_any_play_and_partial_results_kept(tmp_path):
    import pytest

    cfg = load_config(
        "local-tiny",
        ["evaluate.games=[swap]", "evaluate.runs=1", "evaluate.steps=2", "model.max_prompt_tokens=64"],
    )
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        tiny = resolve_model("tiny")
        evaluate.run(
            cfg, str(tmp_path / "early"), progress=False, models=dict.fromkeys(("sft", "g0", "g1"), tiny)
        )
    assert not storage.exists(str(tmp_path / "early" / "results.json"))  # nothing was played

    class Broken:
        name = "broken"

        def replies(self, envs):
            raise RuntimeError("the endpoint went away")

    cfg = load_config(
        None,
        ["evaluate.games=[swap]", "evaluate.runs=1", "evaluate.steps=2", "evaluate.screen_size=[112, 112]"],
    )
    result = evaluate.EvaluateResult(str(tmp_path / "late"))
    from g1core.gym.protocol import play

    result.results.append(
        play("swap", __import__("g1core.gym.policies", fromlist=["x"]).RandomPolicy(), 1, 2)
    )
    evaluate.write_outputs(result, cfg)
    with pytest.raises(RuntimeError):
        play("swap", Broken(), 1, 2)
    assert json.loads(storage.read_bytes(str(tmp_path / "late" / "results.json")))[0]["policy"] == "random"


def test_duplicate_player_names_are_refused():
    import pytest

    from g1core.config import ConfigError

    with pytest.raises(ConfigError, match="distinct 'name'"):
        load_config(None, ["evaluate.policies=[{kind: random}, {kind: random, seed: 1}]"])


def test_players_name_the_models_of_training_stages(tmp_path):
    """``kind: hf, model: sft`` plays the model the pipeline's sft stage trained (given as a URI)."""
    import pytest

    trained = resolve_model("tiny")  # any Hugging Face folder stands in for an SFT model here
    cfg = load_config("local-tiny", ["evaluate.games=[swap]", "evaluate.runs=1", "evaluate.steps=1"])
    models = {"sft": trained, "g0": trained, "g1": trained}
    players = evaluate.stage_models(cfg.evaluate.policies, models)
    assert [p.label for p in players] == [p.label for p in cfg.evaluate.policies]
    assert [p.model for p in players if p.kind == "hf"] == ["base"] + [
        trained
    ] * 3  # 'base' stays the base model
    with pytest.raises(ValueError, match=r"evaluate.policies.4 \(g0-tiny\): model 'g0'.*no g0 output"):
        evaluate.stage_models(cfg.evaluate.policies, {"sft": trained})

    with pytest.raises(ValueError, match=r"evaluate.policies.3 \(sft-tiny\): model 'sft'.*no sft output"):
        evaluate.stage_models(cfg.evaluate.policies, None)
    missing = str(tmp_path / "run" / "sft" / "model")
    with pytest.raises(FileNotFoundError, match=f"no trained model at '{missing}'"):
        evaluate.stage_models(cfg.evaluate.policies, {"sft": missing})

    sft_player = PolicyConfig(kind="hf", model="sft", max_new_tokens=4)
    result = evaluate.run(
        cfg, str(tmp_path / "eval"), policies=[sft_player], progress=False, models={"sft": trained}
    )
    assert [(r["game"], r["policy"]) for r in result.table()] == [("swap", "hf:sft")]
