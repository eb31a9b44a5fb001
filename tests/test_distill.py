"""Distillation: perception-enhanced, filtered, content-addressed, resumable, safe on teacher errors."""

import hashlib
import json

import pytest

from g1core import storage
from g1core.config import load_config
from g1core.gym import answer
from g1core.stages import distill


def small_config(*extra):
    return load_config(
        "local-tiny",
        [
            "distill.gym.games=[2048, shisen-sho]",
            "distill.states_per_game=12",
            "distill.batch_size=5",
            "distill.answers_per_state=2",
            *extra,
        ],
    )


def test_dataset_is_perception_enhanced_and_filtered(tmp_path):
    out = str(tmp_path / "data")
    result = distill.run(small_config(), out, progress=False)
    samples = distill.load_manifest(out)
    assert len(samples) == result.samples > 0
    for s in samples:
        assert answer.is_well_formed(s["answer"]) and s["legal"]
        assert answer.perception_exact(s["answer"], s["text_observation"])
        data = storage.read_bytes(storage.join(out, s["image"]))
        assert hashlib.sha256(data).hexdigest() == s["image_sha256"]
        assert s["teacher"] == "oracle@0.5" and s["prompt_version"] == 1 and s["rewards"]["game"] >= -1
    stats = json.loads(storage.read_bytes(storage.join(out, "stats.json")))
    for game in ("2048", "shisen-sho"):
        g = stats["games"][game]
        assert g["states"] == 12 and g["answers"] == 24
        assert 0 < g["kept"] < 24  # the teacher plays at skill 0.5: some answers are illegal and dropped
    assert {s["game"] for s in samples} == {"2048", "shisen-sho"}
    metrics = distill.metrics(result)
    assert metrics["2048.states"] == 12.0 and metrics["2048.run.kept_per_s"] > 0


def test_perception_block_is_rewritten_with_the_truth():
    reply = "<perception>\nI see a 2 somewhere\n</perception><think>t</think><answer>0</answer>"
    fixed = answer.with_perception(reply, " 2 | - \n - | - ")
    assert answer.perception_exact(fixed, " 2 | - \n - | - ") and "somewhere" not in fixed
    assert answer.with_perception("<answer>0</answer>", "x") == "<answer>0</answer>"


class Crash(Exception):
    pass


class FlakyTeacher:
    """Wraps the real teacher: crashes on call ``crash_on``; answers None for every third env."""

    def __init__(self, inner, crash_on=None, fail_some=False):
        self.inner, self.crash_on, self.fail_some, self.calls = inner, crash_on, fail_some, 0
        self.name = inner.name

    def try_replies(self, envs):
        self.calls += 1
        if self.calls == self.crash_on:
            raise Crash("killed mid-run")
        replies = self.inner.replies(envs)
        return [None if self.fail_some and i % 3 == 0 else r for i, r in enumerate(replies)]

    replies = try_replies


def test_resume_after_a_crash_gives_the_same_data_set(tmp_path):
    cfg = small_config()
    clean = str(tmp_path / "clean")
    distill.run(cfg, clean, progress=False)

    crashed = str(tmp_path / "crashed")
    first = distill.Distiller(cfg, crashed, progress=False)
    first.teacher = FlakyTeacher(first.teacher, crash_on=3)
    with pytest.raises(Crash):
        first.run()
    assert not storage.exists(storage.join(crashed, "manifest.jsonl"))
    resumed = distill.Distiller(cfg, crashed, progress=False).run()
    assert resumed.resumed_states == 10  # two batches of 5 were written before the crash

    def content(uri):
        return sorted((s["id"], s["answer"], s["image_sha256"]) for s in distill.load_manifest(uri))

    assert content(crashed) == content(clean)


def test_teacher_failures_are_retried_on_the_next_run(tmp_path):
    cfg = small_config()
    out = str(tmp_path / "data")
    d = distill.Distiller(cfg, out, progress=False)
    d.teacher = FlakyTeacher(d.teacher, fail_some=True)
    with pytest.raises(distill.DistillError, match="got no teacher answer") as err:
        d.run()  # the stage fails, so the pipeline does not go on with a partial data set ...
    stats = json.loads(storage.read_bytes(storage.join(out, "stats.json")))  # ... but keeps what it did
    failed = sum(g["this_run"]["failed_requests"] for g in stats["games"].values())
    assert failed > 0 and f"{failed} of 24" in str(err.value)
    assert sum(g["remaining"] for g in stats["games"].values()) == failed
    assert sum(g["states"] for g in stats["games"].values()) == 24 - failed
    second = distill.Distiller(cfg, out, progress=False).run()
    assert second.resumed_states == 24 - failed
    stats = json.loads(storage.read_bytes(storage.join(out, "stats.json")))
    assert sum(g["states"] for g in stats["games"].values()) == 24


def test_keep_everything_or_only_merges(tmp_path):
    everything = distill.run(small_config("distill.keep_if=[]"), str(tmp_path / "all"), progress=False)
    merged = distill.run(
        small_config("distill.keep_if=[merged]", "distill.gym.games=[2048]"),
        str(tmp_path / "merged"),
        progress=False,
    )
    assert everything.samples == 2 * 12 * 2
    assert all(s["rewards"]["game"] > 0 for s in distill.load_manifest(str(tmp_path / "merged")))
    assert merged.samples < 24


def test_a_few_failures_may_be_allowed(tmp_path):
    cfg = small_config("distill.allow_unfinished=0.9")
    d = distill.Distiller(cfg, str(tmp_path / "data"), progress=False)
    d.teacher = FlakyTeacher(d.teacher, fail_some=True)
    assert d.run().samples > 0


def test_resume_refuses_other_settings(tmp_path):
    out = str(tmp_path / "data")
    distill.run(small_config("distill.keep_if=[]"), out, progress=False)
    with pytest.raises(distill.DistillError, match="answers_per_state, keep_if"):
        distill.run(
            small_config("distill.answers_per_state=3", "distill.keep_if=[legal]"), out, progress=False
        )
    grown = distill.run(small_config("distill.keep_if=[]", "distill.states_per_game=15"), out, progress=False)
    assert grown.resumed_states == 24 and grown.summary["games"]["2048"]["states"] == 15  # extending is fine


def test_stats_per_difficulty(tmp_path):
    cfg = small_config("distill.gym.games=[shisen-sho:size=4, shisen-sho]", "distill.states_per_game=4")
    result = distill.run(cfg, str(tmp_path / "data"), progress=False)
    assert set(result.summary["games"]) == {"shisen-sho:size=4", "shisen-sho"}
    manifest = distill.load_manifest(str(tmp_path / "data"))
    small = [s for s in manifest if s["spec"] == "shisen-sho:size=4"]
    assert small and small[0]["difficulty"] == {"size": 4, "colours": 16, "shapes": 6}
    assert "shisen-sho_size_4.states" in distill.metrics(result)
