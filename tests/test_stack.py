"""`g1 stack up|status|down` end to end: real SeaweedFS and MLflow on free ports in a temporary folder."""

import argparse
import json
import socket
import subprocess
import sys

import pytest

from g1core import stack, storage


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="g1")
    stack.register_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def read_env(path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    assert all(line.startswith("export ") for line in lines)
    return dict(line.removeprefix("export ").split("=", 1) for line in lines)


@pytest.fixture(autouse=True)
def need_services():
    for name in ("weed", "mlflow"):
        if stack.find_executable(name) is None:
            pytest.skip(f"`{name}` executable not found")


def test_up_status_down(tmp_path, capsys):
    folder = tmp_path / "stack"
    s3_port, mlflow_port = stack.free_port(), stack.free_port()
    args = parse(
        ["stack", "up", "--dir", str(folder), "--s3-port", str(s3_port), "--mlflow-port", str(mlflow_port)]
    )
    try:
        assert args.fn(args) == 0
        assert f"source {folder / 'stack.env'}" in capsys.readouterr().out
        env = read_env(folder / "stack.env")
        assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{s3_port}"
        assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{mlflow_port}"
        assert env["G1_ARTIFACT_ROOT"] == "s3://g1-artifacts/artifacts"
        assert (folder / "stack.env").stat().st_mode & 0o077 == 0  # it holds the secret key
        status = stack.stack_status(folder)
        assert status["s3"]["answers"] and status["mlflow"]["answers"]
        pids = (status["s3"]["pid"], status["mlflow"]["pid"])

        again = stack.stack_up(folder, s3_port, mlflow_port)  # idempotent: same processes, same keys
        assert (stack.stack_status(folder)["s3"]["pid"], stack.stack_status(folder)["mlflow"]["pid"]) == pids
        assert again.env() == env
        with pytest.raises(stack.StackError, match=f"already runs weed on port {s3_port}"):
            stack.stack_up(folder, stack.free_port(), mlflow_port)

        with stack.environ(env):  # the bucket exists, and MLflow keeps run artifacts in it
            from g1core.tracking import Tracker

            storage.write_bytes(storage.join(env["G1_ARTIFACT_ROOT"], "hello.txt"), b"hi")
            with Tracker("stack-test", env["MLFLOW_TRACKING_URI"]).stage_run("sft", "p1") as run:
                run.log_dict({"a": 1}, "cfg.json")
            stored = storage.list_uris("s3://g1-artifacts/mlflow")
            assert any(uri.endswith(f"{run.run_id}/artifacts/cfg.json") for uri in stored)

        args = parse(["stack", "status", "--dir", str(folder)])
        assert args.fn(args) == 0
        assert json.loads(capsys.readouterr().out)["mlflow"]["url"] == env["MLFLOW_TRACKING_URI"]
    finally:
        # `down` from another process, as a user would run it
        code = f"from g1core.stack import stack_down; stack_down({str(folder)!r})"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    status = stack.stack_status(folder)
    assert not status["s3"]["running"] and not status["mlflow"]["running"]
    assert not any(stack.pid_alive(pid) for pid in pids)
    assert not (folder / "weed.pid").exists() and (folder / "seaweedfs").is_dir()  # data stays
    args = parse(["stack", "status", "--dir", str(folder)])
    assert args.fn(args) == 1
    stack.stack_down(folder)  # down twice is fine


def test_busy_port_is_named_and_nothing_is_left_running(tmp_path, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(stack.StackError, match=f"port {port} \\(S3\\) on 127.0.0.1 is already in use"):
            stack.stack_up(tmp_path, s3_port=port, mlflow_port=stack.free_port())
        args = parse(["stack", "up", "--dir", str(tmp_path), "--s3-port", str(stack.free_port())])
        args.mlflow_port = port
        assert args.fn(args) == 2  # MLflow cannot start: SeaweedFS, started first, is stopped again
    assert f"port {port} (MLflow)" in caplog.text
    status = stack.stack_status(tmp_path)
    assert not status["s3"]["running"] and not status["mlflow"]["running"]
