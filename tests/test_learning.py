"""What a run learned: training curves from the stages' histories, the candidate's margins; G0's settings."""

import json
import math

import pytest

from g1core import storage
from g1core.config import ConfigError, load_config
from g1core.runs import learned_lines
from g1core.stages import learning, stage_config


def _write_result(root, stage: str, history: list[dict]) -> str:
    uri = str(root / stage)
    storage.write_bytes(storage.join(uri, "result.json"), json.dumps({"history": history}).encode())
    return uri


def test_training_rows_read_each_stages_curve(tmp_path):
    sft = [
        {"step": s, "heldout.perception_exact": v} for s, v in ((0, 0.0), (50, 0.6), (100, 1.0), (150, 0.98))
    ]
    sft.insert(1, {"step": 25, "loss": 3.0})  # a training record without the held-out figure is not a point
    g1 = [{"step": i + 1, "rewards/game/mean": 0.1 * (i // 10)} for i in range(40)]  # 0.0 x10 ... 0.3 x10
    training = {
        "sft": _write_result(tmp_path, "sft", sft),
        "g1": _write_result(tmp_path, "g1", g1),
        "g0": str(tmp_path / "g0"),  # no result.json: left out
    }
    histories = learning.read_histories(training)
    assert set(histories) == {"sft", "g1"}
    rows = {r["stage"]: r for r in learning.training_rows(histories)}
    assert rows["sft"] == {
        "stage": "sft", "measure": "held-out perception exact-match", "steps": 150, "points": 4,
        "start": 0.0, "end": 0.98, "best": 1.0,
    }  # fmt: skip
    # the first and last tenth of 40 steps: 4 steps each
    assert rows["g1"]["start"] == pytest.approx(0.0) and rows["g1"]["end"] == pytest.approx(0.3)
    assert rows["g1"]["steps"] == 40 and "best" not in rows["g1"]
    # the trend: a least-squares line through every step, its rise from the first step to the last ± se
    assert learning.rise([(s, 0.5 + 0.01 * s) for s in range(1, 41)]) == pytest.approx((0.39, 0.0), abs=1e-12)
    noisy = [(s, 0.01 * s + (0.2 if s % 2 else -0.2)) for s in range(1, 101)]
    up, se = learning.rise(noisy)
    assert up == pytest.approx(0.99, abs=0.03) and se == pytest.approx(0.2 / math.sqrt(83325) * 99, rel=0.05)
    assert rows["g1"]["rise"] > 0 and "least-squares rise +" in learning.trend(rows["g1"])
    png = learning.plot(histories)
    assert png.startswith(b"\x89PNG")
    assert learning.plot({}) is None


def test_the_candidate_against_every_other_player():
    cfg = load_config("local-tiny")
    assert learning.candidate(cfg) == "g1-tiny"  # promote.stage g1's evaluation player
    assert learning.candidate(load_config("local-tiny", ["promote.stage=sft"])) == "sft-tiny"
    table = [
        {"game": "2048", "policy": "g1-tiny", "mean": 50.0, "std": 20.0},
        {"game": "2048", "policy": "oracle@0.5", "mean": 40.0, "std": 15.0},
        {"game": "2048", "policy": "random", "mean": 52.0, "std": 0.0},
        {"game": "swap", "policy": "random", "mean": 1.0, "std": 1.0},  # no candidate on this game
    ]
    diffs = learning.differences(table, "g1-tiny", runs=100)
    assert [(d["game"], d["other"]) for d in diffs] == [("2048", "oracle@0.5"), ("2048", "random")]
    teacher, random = diffs
    assert teacher["diff"] == 10.0 and teacher["se"] == pytest.approx(math.hypot(2.0, 1.5))
    assert teacher["z"] == pytest.approx(10.0 / 2.5)
    assert random["diff"] == -2.0 and random["z"] == pytest.approx(-1.0)
    found = {"training": [], "candidate": "g1-tiny", "differences": diffs}
    text = learning.markdown(found)
    assert (
        "## g1-tiny against the other players" in text and "| 2048 | oracle@0.5 | +10 ± 2.5 | +4.0 |" in text
    )
    assert "## Training" not in text
    metrics = learning.metrics(found)
    assert metrics["2048/g1-tiny-vs-oracle_0.5/diff"] == 10.0
    assert learned_lines(found) == [
        "g1-tiny against the others on 2048: oracle@0.5 +10 ± 2.5 (+4.0 se), random -2 ± 2 (-1.0 se)"
    ]


def test_g0_runs_with_its_own_overrides_and_g1_without():
    cfg = load_config("local-learn")
    g0, g1 = stage_config(cfg, "g0").grpo, stage_config(cfg, "g1").grpo
    assert g0.max_train_minutes == 2 and g1.max_train_minutes == 15
    assert g0.beta == g1.beta == 0.3 and g0.g0_overrides == {}
    assert stage_config(cfg, "sft") is cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.g0_overrides={stepz: 2}", "['stepz'] are not grpo fields"),
        ("grpo.g0_overrides={g0_overrides: {}}", "['g0_overrides'] are not grpo fields"),
        ("grpo.g0_overrides={steps: 0}", "steps: Input should be greater than or equal to 1"),
        ("grpo.g0_overrides={batch_size: 5}", "must be a multiple of batch_size (5)"),
    ],
)
def test_bad_g0_overrides_fail_at_load(override, message):
    with pytest.raises(ConfigError, match="g0_overrides") as err:
        load_config("local-tiny", [override])
    assert message in str(err.value)


@pytest.mark.parametrize("read, smoke", [(1.0, False), (0.0, True)])
def test_the_closing_summary_quotes_what_was_learned(tmp_path, read, smoke):
    """`g1 pipeline run --local` ends with the curves and the margins, and calls a tiny-model run the smoke
    scale only when its SFT did not learn to read the boards."""
    from g1core.runs import run_summary

    report = str(tmp_path / "evaluate")
    table = "game,policy,mean,std\n2048:size=2,oracle@0.5,40.0,20.0\n2048:size=2,g1-tiny,50.0,20.0\n"
    storage.write_bytes(storage.join(report, "table.csv"), table.encode())
    sft = {"stage": "sft", "measure": "held-out perception exact-match", "steps": 900}
    sft.update(start=0.0, end=read, best=read)
    diffs = learning.differences(
        [
            {"game": "2048:size=2", "policy": p, "mean": m, "std": 20.0}
            for p, m in (("oracle@0.5", 40), ("g1-tiny", 50))
        ],
        "g1-tiny",
        runs=100,
    )
    found = {"training": [sft], "candidate": "g1-tiny", "differences": diffs}
    storage.write_bytes(storage.join(report, learning.LEARNING_FILE), json.dumps(found).encode())
    header, rows, notes = run_summary(
        load_config("local-learn", ["evaluate.runs=100"]), report, "sqlite:////x/mlflow.db"
    )
    assert header == ["player", "2048:size=2"] and rows[1] == ["g1-tiny", "50 ± 2"]
    assert f"sft: held-out perception exact-match 0 -> {read:.3g}; best {read:.3g} (900 steps)" in notes
    assert "g1-tiny against the others on 2048:size=2: oracle@0.5 +10 ± 2.8 (+3.5 se)" in notes
    assert any("smoke scale" in n for n in notes) == smoke
