"""Artifact storage: every artifact is addressed by a URI under one root, local or S3.

A URI is a plain local path, a ``file://`` URI or ``s3://bucket/key``. The module-level functions
dispatch on the scheme, so a stage writes ``storage.put_dir(out, join(artifact_root(), run, "sft"))``
and runs unchanged on a laptop (local folder) and on the cluster (S3: SeaweedFS, MinIO or AWS).

S3 is reached through boto3 with the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) and path-style addressing.
Every upload carries its SHA-256 in the object metadata (key ``sha256``); downloads verify it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from .errors import G1Error

log = logging.getLogger(__name__)

ARTIFACT_ROOT_ENV = "G1_ARTIFACT_ROOT"
MULTIPART_THRESHOLD_ENV = "G1_S3_MULTIPART_THRESHOLD"  # bytes; files at least this big go up in parts
DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest allowed part (all but the last)
SHA256_META = "sha256"
_CHUNK = 1024 * 1024
_WORKERS = 8


class StorageError(G1Error):
    """Raised for any storage failure, with a message that says what to fix."""


class ObjectNotFound(StorageError):
    """No object (or file) at the URI."""


class BucketNotFound(StorageError):
    """The S3 bucket itself is missing."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a manifest records about one stored object."""

    uri: str
    size: int
    sha256: str


# ----------------------------------------------------------------------------------------- URIs


def artifact_root() -> str:
    """The root every artifact lives under: ``$G1_ARTIFACT_ROOT``, else ``<cwd>/g1-work/artifacts``."""
    root = os.environ.get(ARTIFACT_ROOT_ENV, "").strip()
    return root or str(Path.cwd().joinpath("g1-work", "artifacts").resolve())


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return str(uri).startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path, ``file://`` or ``s3://`` URI with single slashes."""
    base = str(base)
    if "://" not in base:
        return str(Path(base).joinpath(*[p.strip("/") for p in parts if p]))
    pieces = [base.rstrip("/")] + [p.strip("/") for p in parts if p and p.strip("/")]
    return "/".join(pieces)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; raises StorageError when the bucket is missing."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(uri: str | os.PathLike) -> Path:
    """The filesystem path of a plain path or ``file://`` URI; StorageError for other schemes."""
    text = str(uri)
    if "://" not in text:
        return Path(text)
    parsed = urlparse(text)
    if parsed.scheme != "file":
        raise StorageError(
            f"unsupported URI scheme {parsed.scheme!r} in {text!r} (use a path, file:// or s3://)"
        )
    if parsed.netloc not in ("", "localhost"):
        raise StorageError(f"file:// URI names a host ({parsed.netloc!r}); only local files work: {text!r}")
    return Path(unquote(parsed.path))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks so big checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ S3 client


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (None means AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def s3_client():
    """A boto3 S3 client for the current environment, cached per endpoint and credentials.

    The cache key includes the credentials so that changing them (e.g. in a test) gives a new client.
    """
    import boto3
    from botocore.config import Config

    endpoint = s3_endpoint()
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    access = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    key = (endpoint, region, access, hashlib.sha256((secret or "").encode()).hexdigest())
    with _clients_lock:
        if key not in _clients:
            config = Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=120,
                max_pool_connections=_WORKERS * 2,
            )
            _clients[key] = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint,
                region_name=region,
                aws_access_key_id=access,
                aws_secret_access_key=secret,
                config=config,
            )
            log.debug("new S3 client for endpoint %s (region %s)", endpoint or "AWS", region)
        return _clients[key]


def transfer_config(multipart_threshold: int | None = None):
    """boto3 TransferConfig; the threshold (bytes) comes from the argument or $G1_S3_MULTIPART_THRESHOLD."""
    from boto3.s3.transfer import TransferConfig

    threshold = multipart_threshold or int(
        os.environ.get(MULTIPART_THRESHOLD_ENV, DEFAULT_MULTIPART_THRESHOLD)
    )
    chunk = max(threshold, MIN_PART_SIZE)
    return TransferConfig(multipart_threshold=threshold, multipart_chunksize=chunk, max_concurrency=4)


def _client_error(exc: BaseException):
    """The botocore ClientError behind ``exc`` (boto3 wraps them in transfer errors), or None."""
    from botocore.exceptions import ClientError

    seen = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _missing_bucket_message(bucket: str) -> str:
    endpoint = s3_endpoint() or "AWS"
    return (
        f"S3 bucket {bucket!r} does not exist at {endpoint}; create it with "
        f"g1core.storage.ensure_bucket({bucket!r}) or `aws s3 mb s3://{bucket}` "
        "(`g1 stack up` creates its bucket g1-artifacts)"
    )


@contextlib.contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn boto errors into StorageError naming the URI, endpoint or bucket — never a secret."""
    from botocore.exceptions import (
        BotoCoreError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    endpoint = s3_endpoint() or "AWS"
    try:
        yield
    except StorageError:
        raise
    except (EndpointConnectionError, ConnectTimeoutError) as err:
        raise StorageError(
            f"S3 endpoint {endpoint} is unreachable ({type(err).__name__}) while accessing {uri}; "
            "is the server running (`g1 stack up`) and AWS_ENDPOINT_URL right?"
        ) from err
    except NoCredentialsError as err:
        raise StorageError(
            f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from err
    except Exception as err:
        client_err = _client_error(err)
        if client_err is None:
            if isinstance(err, BotoCoreError):
                raise StorageError(f"S3 error at {endpoint} for {uri}: {err}") from err
            raise
        code = str(client_err.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            raise BucketNotFound(_missing_bucket_message(split_s3(uri)[0])) from err
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ObjectNotFound(f"no object at {uri} (endpoint {endpoint})") from err
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
            access = os.environ.get("AWS_ACCESS_KEY_ID") or ""
            shown = f"{access[:4]}…" if access else "(none)"
            raise StorageError(
                f"S3 at {endpoint} rejected the credentials (access key {shown}, error {code}) for {uri}; "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions"
            ) from err
        raise StorageError(f"S3 error {code} at {endpoint} for {uri}: {client_err}") from err


def _check_bucket(bucket: str) -> None:
    """Raise BucketNotFound (HEAD answers a bare 404, which reads as a missing object) when absent."""
    try:
        with _s3_errors(f"s3://{bucket}"):
            s3_client().head_bucket(Bucket=bucket)
    except ObjectNotFound:
        raise BucketNotFound(_missing_bucket_message(bucket)) from None


def _head(uri: str) -> dict:
    """HEAD an object; ObjectNotFound or BucketNotFound when it is not there."""
    bucket, key = split_s3(uri)
    try:
        with _s3_errors(uri):
            return s3_client().head_object(Bucket=bucket, Key=key)
    except ObjectNotFound:
        _check_bucket(bucket)
        raise


def ensure_bucket(bucket: str) -> None:
    """Create an S3 bucket unless it exists (used by the stack and the test fixtures)."""
    try:
        _check_bucket(bucket)
        return
    except BucketNotFound:
        pass
    with _s3_errors(f"s3://{bucket}"):
        s3_client().create_bucket(Bucket=bucket)
    log.info("created bucket %s at %s", bucket, s3_endpoint() or "AWS")


# ------------------------------------------------------------------------------- local helpers


@contextlib.contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """A temp file next to ``path`` that replaces it only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ObjectNotFound(f"{what} {str(path)!r} is not a file")


# ---------------------------------------------------------------------------------- operations


def write_bytes(uri: str, data: bytes) -> ObjectInfo:
    """Store ``data`` at ``uri`` (atomically on local disks) and return its size and checksum."""
    digest = hashlib.sha256(data).hexdigest()
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, Metadata={SHA256_META: digest})
    else:
        with _atomic_target(local_path(uri)) as tmp:
            tmp.write_bytes(data)
    return ObjectInfo(str(uri), len(data), digest)


def read_bytes(uri: str) -> bytes:
    """The bytes at ``uri``; S3 reads are checked against the stored checksum."""
    if not is_s3(uri):
        path = local_path(uri)
        if not path.is_file():
            raise ObjectNotFound(f"no file at {uri}")
        return path.read_bytes()
    bucket, key = split_s3(uri)
    with _s3_errors(uri):
        response = s3_client().get_object(Bucket=bucket, Key=key)
        data = response["Body"].read()
    _verify(uri, response.get("Metadata", {}).get(SHA256_META), hashlib.sha256(data).hexdigest())
    return data


def _verify(uri: str, expected: str | None, actual: str) -> None:
    if expected and expected != actual:
        raise StorageError(f"checksum mismatch for {uri}: stored sha256 {expected}, received {actual}")


def put_file(local: str | os.PathLike, uri: str, multipart_threshold: int | None = None) -> ObjectInfo:
    """Upload (or copy) one file to ``uri``; big files go up in parts. Records the SHA-256."""
    src = Path(local)
    _require_file(src, "upload source")
    digest, size = sha256_file(src), src.stat().st_size
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            s3_client().upload_file(
                str(src),
                bucket,
                key,
                ExtraArgs={"Metadata": {SHA256_META: digest}},
                Config=transfer_config(multipart_threshold),
            )
    else:
        with _atomic_target(local_path(uri)) as tmp:
            shutil.copyfile(src, tmp)
    log.debug("stored %s -> %s (%d bytes)", src, uri, size)
    return ObjectInfo(str(uri), size, digest)


def get_file(uri: str, local: str | os.PathLike) -> Path:
    """Download (or copy) ``uri`` to ``local``; verifies the recorded SHA-256 and raises on mismatch.

    The target is replaced only after the check passes, so a bad download never leaves a bad file.
    """
    dest = Path(local)
    if not is_s3(uri):
        src = local_path(uri)
        _require_file(src, "stored file")
        with _atomic_target(dest) as tmp:
            shutil.copyfile(src, tmp)
        return dest
    head = _head(uri)
    bucket, key = split_s3(uri)
    with _atomic_target(dest) as tmp:
        with _s3_errors(uri):
            s3_client().download_file(bucket, key, str(tmp), Config=transfer_config())
        _verify(uri, head.get("Metadata", {}).get(SHA256_META), sha256_file(tmp))
    return dest


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _parallel(fn, items: list, desc: str) -> list:
    """Run ``fn`` over ``items`` with a few threads (S3 latency, not CPU, is the limit)."""
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="file", disable=None))


def put_dir(local_dir: str | os.PathLike, uri: str) -> list[ObjectInfo]:
    """Upload every file under ``local_dir`` to ``uri`` keeping relative paths; returns one info each."""
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"upload source {str(root)!r} is not a folder")
    files = _files_under(root)
    infos = _parallel(lambda p: put_file(p, join(uri, p.relative_to(root).as_posix())), files, "upload")
    log.info("stored %d files (%d bytes) under %s", len(infos), sum(i.size for i in infos), uri)
    return infos


def get_dir(uri: str, local_dir: str | os.PathLike) -> Path:
    """Download every object under ``uri`` into ``local_dir`` keeping relative paths."""
    dest = Path(local_dir)
    if is_s3(uri):
        prefix = str(uri).rstrip("/") + "/"
        pairs = [(u, u[len(prefix) :]) for u in list_uris(uri)]
    else:
        root = local_path(uri)
        pairs = [
            (str(p), p.relative_to(root).as_posix()) for p in (_files_under(root) if root.is_dir() else [])
        ]
    if not pairs:
        raise ObjectNotFound(f"nothing stored under {uri}")
    _parallel(lambda pair: get_file(pair[0], dest / pair[1]), pairs, "download")
    return dest


def exists(uri: str) -> bool:
    """True when an object (or, locally, a file or folder) exists at ``uri``."""
    if not is_s3(uri):
        return local_path(uri).exists()
    try:
        _head(uri)  # a missing bucket raises BucketNotFound: an error, not "absent"
    except ObjectNotFound:
        return False
    return True


def list_uris(prefix_uri: str) -> list[str]:
    """Every object under the folder ``prefix_uri``, recursively, as sorted URIs in the same style."""
    if not is_s3(prefix_uri):
        root = local_path(prefix_uri)
        files = _files_under(root) if root.is_dir() else []
        if str(prefix_uri).startswith("file://"):
            return [p.resolve().as_uri() for p in files]
        return [str(p) for p in files]
    bucket, key = split_s3(prefix_uri)
    prefix = key.rstrip("/") + "/" if key else ""
    uris = []
    with _s3_errors(prefix_uri):
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            uris.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    return sorted(uris)


def delete(uri: str, recursive: bool = False) -> None:
    """Remove the object at ``uri`` (absent is fine); ``recursive`` also removes everything under it."""
    if not is_s3(uri):
        path = local_path(uri)
        if path.is_dir():
            if not recursive:
                raise StorageError(f"{uri} is a folder; pass recursive=True to delete it")
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return
    bucket, key = split_s3(uri)
    keys = [key] if key else []
    if recursive:
        keys += [split_s3(u)[1] for u in list_uris(uri)]
    with _s3_errors(uri):
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            response = s3_client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise StorageError(f"could not delete s3://{bucket}/{first['Key']}: {first.get('Message')}")
