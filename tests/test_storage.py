"""Artifact storage on local folders, file:// URIs and a real SeaweedFS S3 server."""

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest

from g1core import stack, storage


@pytest.fixture(params=["path", "file-uri", "s3"])
def base(request, tmp_path) -> str:
    """The same tests run on a plain folder, a file:// URI and S3."""
    if request.param == "path":
        return str(tmp_path / "store")
    if request.param == "file-uri":
        return (tmp_path / "store").as_uri()
    return request.getfixturevalue("s3_prefix")


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(3000), "sub/deeper/c.json": b'{"c": 1}'}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_join_and_root(monkeypatch, tmp_path):
    assert storage.join("s3://bucket/", "runs/", "/x", "model.bin") == "s3://bucket/runs/x/model.bin"
    assert storage.join("file:///tmp/a", "b") == "file:///tmp/a/b"
    assert storage.join("/data/a", "b/", "c") == "/data/a/b/c"
    assert storage.split_s3("s3://bkt/a/b") == ("bkt", "a/b")
    monkeypatch.setenv(storage.ARTIFACT_ROOT_ENV, "s3://g1-artifacts/artifacts")
    assert storage.artifact_root() == "s3://g1-artifacts/artifacts"
    monkeypatch.delenv(storage.ARTIFACT_ROOT_ENV)
    monkeypatch.chdir(tmp_path)
    assert storage.artifact_root() == str(tmp_path.resolve() / "g1-work" / "artifacts")
    with pytest.raises(storage.StorageError, match="unsupported URI scheme 'gs'"):
        storage.read_bytes("gs://bucket/x")
    with pytest.raises(storage.StorageError, match="s3://bucket/key"):
        storage.split_s3("s3:///no-bucket")


def test_bytes_and_file_round_trip(base, tmp_path):
    info = storage.write_bytes(storage.join(base, "one", "x.txt"), b"hello")
    assert info == storage.ObjectInfo(
        storage.join(base, "one", "x.txt"), 5, hashlib.sha256(b"hello").hexdigest()
    )
    assert storage.read_bytes(info.uri) == b"hello"
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(10_000))
    put = storage.put_file(src, storage.join(base, "two", "src.bin"))
    assert (put.size, put.sha256) == (10_000, storage.sha256_file(src))
    got = storage.get_file(put.uri, tmp_path / "back" / "src.bin")
    assert got.read_bytes() == src.read_bytes()
    assert storage.exists(put.uri) and not storage.exists(storage.join(base, "two", "nope"))


def test_dir_round_trip_list_and_delete(base, tmp_path):
    files = make_tree(tmp_path / "tree")
    infos = storage.put_dir(tmp_path / "tree", storage.join(base, "model"))
    assert sorted(i.uri for i in infos) == storage.list_uris(storage.join(base, "model"))
    assert {i.uri: i.sha256 for i in infos} == {
        storage.join(base, "model", rel): hashlib.sha256(data).hexdigest() for rel, data in files.items()
    }
    out = storage.get_dir(storage.join(base, "model"), tmp_path / "copy")
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    # a sibling whose name merely starts with the folder's name is not listed under it
    storage.write_bytes(storage.join(base, "model-2", "x"), b"x")
    assert len(storage.list_uris(storage.join(base, "model"))) == 3
    storage.delete(storage.join(base, "model", "a.txt"))
    assert not storage.exists(storage.join(base, "model", "a.txt"))
    storage.delete(storage.join(base, "model", "a.txt"))  # deleting what is gone is fine
    storage.delete(storage.join(base, "model"), recursive=True)
    assert storage.list_uris(storage.join(base, "model")) == []
    assert storage.list_uris(storage.join(base, "model-2")) == [storage.join(base, "model-2", "x")]


def test_missing_objects(base, tmp_path):
    with pytest.raises(storage.ObjectNotFound, match="nope"):
        storage.get_file(storage.join(base, "nope.bin"), tmp_path / "x")
    with pytest.raises(storage.ObjectNotFound):
        storage.read_bytes(storage.join(base, "nope.bin"))
    with pytest.raises(storage.ObjectNotFound, match="nothing stored under"):
        storage.get_dir(storage.join(base, "empty"), tmp_path / "y")
    assert not (tmp_path / "x").exists()


def test_multipart_upload_records_checksum(s3_prefix, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    uri = storage.join(s3_prefix, "big.bin")
    info = storage.put_file(big, uri, multipart_threshold=5 * 1024 * 1024)
    bucket, key = storage.split_s3(uri)
    head = storage.s3_client().head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert head["Metadata"][storage.SHA256_META] == info.sha256 == storage.sha256_file(big)
    assert storage.sha256_file(storage.get_file(uri, tmp_path / "got.bin")) == info.sha256


def test_multipart_threshold_from_env(s3_prefix, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.MULTIPART_THRESHOLD_ENV, str(5 * 1024 * 1024))
    src = tmp_path / "six.bin"
    src.write_bytes(os.urandom(6 * 1024 * 1024))
    uri = storage.put_file(src, storage.join(s3_prefix, "six.bin")).uri
    bucket, key = storage.split_s3(uri)
    assert storage.s3_client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-2")


def test_checksum_mismatch_is_refused(s3_prefix, tmp_path):
    uri = storage.join(s3_prefix, "tampered.bin")
    bucket, key = storage.split_s3(uri)
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=b"data", Metadata={"sha256": "0" * 64})
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(storage.StorageError, match="checksum mismatch"):
        storage.get_file(uri, target)
    assert target.read_bytes() == b"previous"  # the old file survives a bad download
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temp file left behind
    with pytest.raises(storage.StorageError, match="checksum mismatch"):
        storage.read_bytes(uri)


def test_missing_bucket(s3_server, tmp_path):
    uri = "s3://no-such-bucket-g1/x.bin"
    for call in (
        lambda: storage.write_bytes(uri, b"x"),
        lambda: storage.get_file(uri, tmp_path / "x"),
        lambda: storage.exists(uri),
        lambda: storage.list_uris("s3://no-such-bucket-g1/runs"),
    ):
        with pytest.raises(storage.BucketNotFound, match="'no-such-bucket-g1' does not exist.*ensure_bucket"):
            call()


def test_bad_credentials_never_leak_the_secret(s3_prefix, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(storage.StorageError, match="rejected the credentials") as err:
        storage.write_bytes(storage.join(s3_prefix, "x"), b"x")
    assert "wrong-secret-value" not in str(err.value) and "wrong-secret-value" not in caplog.text
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(storage.StorageError, match="rejected the credentials.*AWS_ACCESS_KEY_ID"):
        storage.read_bytes(storage.join(s3_prefix, "x"))


def test_unreachable_endpoint(s3_server, monkeypatch):
    endpoint = f"http://127.0.0.1:{stack.free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    start = time.monotonic()
    with pytest.raises(storage.StorageError, match=f"endpoint {endpoint} is unreachable"):
        storage.read_bytes("s3://g1-test/x")
    assert time.monotonic() - start < 15


def test_client_cached_per_endpoint_and_credentials(s3_server, monkeypatch):
    first = storage.s3_client()
    assert storage.s3_client() is first
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "other")
    assert storage.s3_client() is not first
