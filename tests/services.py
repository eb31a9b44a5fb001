"""Pytest fixtures that run the REAL services on 127.0.0.1: SeaweedFS S3 and an MLflow server.

Loaded from conftest.py (``pytest_plugins = ["services"]``). Each server starts once per session on
free ports in a temporary folder and is stopped at the end; tests skip only when the executable
(``weed`` / ``mlflow``) is missing.

- ``s3_service``: S3Service (url, bucket, keys); ``s3_server``: its URL, with AWS_* set for the session.
- ``s3_prefix``: a fresh ``s3://g1-test/<test>-<random>/`` for one test.
- ``mlflow_server``: the tracking URI of a real ``mlflow server`` (artifacts in a local folder).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from g1core import stack

TEST_BUCKET = "g1-test"


@dataclass(frozen=True)
class S3Service:
    """A running SeaweedFS S3 endpoint and the credentials it accepts."""

    url: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)

    def env(self) -> dict[str, str]:
        """AWS_* variables that point boto3 (and g1core.storage) at this server."""
        return stack.s3_env(self.url, self.access_key, self.secret_key)


def _need(executable: str) -> None:
    if stack.find_executable(executable) is None:
        pytest.skip(
            f"`{executable}` executable not found (next to the Python or on PATH); install the dev extras"
        )


@pytest.fixture(scope="session")
def s3_service(tmp_path_factory) -> Iterator[S3Service]:
    """Start SeaweedFS (`weed mini`) for the session with auth on and the bucket `g1-test` created."""
    _need("weed")
    root = tmp_path_factory.mktemp("seaweedfs")
    access, secret = "test" + secrets.token_hex(6), secrets.token_urlsafe(24)
    server = stack.start_seaweedfs(
        root / "data", stack.free_port(), access, secret, log_path=root / "weed.log"
    )
    try:
        service = S3Service(f"http://{stack.HOST}:{server.ports['s3.port']}", TEST_BUCKET, access, secret)
        stack.create_bucket(TEST_BUCKET, service.env())
        yield service
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(s3_service: S3Service) -> Iterator[str]:
    """The S3 endpoint URL; AWS_* variables point at it until the session ends (then restored)."""
    with stack.environ(s3_service.env()):
        yield s3_service.url


@pytest.fixture
def s3_prefix(s3_server: str, request) -> str:
    """A fresh folder URI in the test bucket, unique to this test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return f"s3://{TEST_BUCKET}/{name}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """Start a real `mlflow server` (SQLite backend, artifacts proxied to a local folder); yields its URI."""
    _need("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    server = stack.start_mlflow(
        stack.free_port(), f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"), root / "mlflow.log"
    )
    try:
        yield server.url
    finally:
        server.stop()
