"""`g1 pipeline submit | upload | schedule` against a stub KFP API server that checks the bearer token."""

from __future__ import annotations

import pytest
from kfp_stub import KfpStub

from g1core.cli import main
from pipelines import kfp_api

TOKEN = "sa-token-of-g1-scheduler"


@pytest.fixture
def mounted_token(tmp_path, monkeypatch):
    """A pod's projected service-account token, where manifests/schedules mounts it."""
    path = tmp_path / "token"
    path.write_text(TOKEN)
    monkeypatch.setenv(kfp_api.TOKEN_PATH_ENV, str(path))
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads and writes ~/.config/kfp
    return path


def submit(stub: KfpStub, *extra: str) -> int:
    args = ["pipeline", "submit", "--host", stub.url, "--namespace", "team-a", "--experiment", "weekly"]
    return main([*args, "--config", "local-tiny", *extra])


def test_submit_sends_the_pods_token_and_names_the_version_by_content(mounted_token):
    with KfpStub(TOKEN) as stub:
        assert submit(stub) == 0
        assert stub.requests and all(auth == f"Bearer {TOKEN}" for _, _, auth in stub.requests)
        (pipeline,) = stub.pipelines.values()
        assert pipeline["display_name"] == "g1" and pipeline["namespace"] == "team-a"
        names = [v["display_name"] for v in stub.versions[pipeline["pipeline_id"]]]
        assert names[-1].startswith("g1-") and len(names[-1]) == len("g1-") + 10
        (run,) = stub.runs
        assert (
            run["pipeline_version_reference"]["pipeline_version_id"]
            == (stub.versions[pipeline["pipeline_id"]][-1]["pipeline_version_id"])
        )
        assert '"name": "g1-local"' in run["runtime_config"]["parameters"]["config_json"]
        # the same spec again: the version is found, not uploaded twice; a second run starts
        assert submit(stub) == 0
        assert [v["display_name"] for v in stub.versions[pipeline["pipeline_id"]]] == names
        assert len(stub.runs) == 2
        # --if-idle (the CronJob's guard): a run that has not ended keeps a new one from starting
        assert submit(stub, "--if-idle") == 0 and len(stub.runs) == 2
        # a changed pipeline (another GPU count) is a new version, never a changed one
        assert submit(stub, "--sft-gpus", "4") == 0
        assert len(stub.versions[pipeline["pipeline_id"]]) == len(names) + 1


def test_without_the_token_the_refusal_says_what_to_mount(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(kfp_api.TOKEN_PATH_ENV, str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with KfpStub(TOKEN) as stub:
        assert submit(stub) == 2
        assert not stub.runs and all(auth is None for _, _, auth in stub.requests)
    assert "answered 401" in caplog.text and "pipelines.kubeflow.org" in caplog.text


def test_an_old_backend_is_refused_unless_compiled_for_it(mounted_token, caplog):
    with KfpStub(TOKEN, tag_name="2.5.0") as stub:
        assert submit(stub) == 2
        assert not stub.pipelines and "--kfp-backend 2.5.0" in caplog.text
        assert submit(stub, "--kfp-backend", "2.5") == 0 and len(stub.runs) == 1


def test_schedule_is_a_recurring_run_one_at_a_time(mounted_token):
    with KfpStub(TOKEN) as stub:
        args = ["pipeline", "schedule", "--host", stub.url, "--namespace", "team-a", "--config", "local-tiny"]
        assert main([*args, "--cron", "0 3 * * 1", "--experiment", "weekly"]) == 0
        (recurring,) = stub.recurring
        assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"  # KFP's cron: seconds first
        assert int(recurring["max_concurrency"]) == 1 and recurring["no_catchup"] is True
        assert recurring["pipeline_version_reference"]["pipeline_version_id"]
        assert main([*args, "--cron", "3 * * 1"]) == 2  # four fields: a clear error, nothing scheduled
        assert len(stub.recurring) == 1


def test_versions_and_cron():
    assert kfp_api.parse_version("v2.15.0-rc.1") == (2, 15, 0) and kfp_api.parse_version("unknown") is None
    assert kfp_api.version_name("g1-pipeline", [{"a": 1}, {"b": 2}]) == kfp_api.version_name(
        "g1-pipeline", [{"a": 1}, {"b": 2}]
    )
    assert kfp_api.version_name("p", {"a": 1}) != kfp_api.version_name("p", {"a": 2})
    assert kfp_api.cron6("0 3 * * 1") == "0 0 3 * * 1" and kfp_api.cron6("0 0 3 * * 1") == "0 0 3 * * 1"
