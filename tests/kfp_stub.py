"""A stub of the KFP v2beta1 REST API, enough for ``kfp.Client`` to upload, run and schedule against.

It keeps what it is sent in memory and refuses any request without the expected bearer token (401),
as a multi-user KFP does for a call it cannot authenticate. Only what g1 calls is answered.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class KfpStub:
    def __init__(self, token: str | None, tag_name: str = "2.15.0"):
        self.token, self.tag_name = token, tag_name
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization header
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.runs: list[dict] = []
        self.recurring: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                stub._handle(self, "GET")

            def do_POST(self):
                stub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> KfpStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- the API ---------------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        auth = req.headers.get("Authorization")
        self.requests.append((method, url.path, auth))
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        if self.token is not None and auth != f"Bearer {self.token}":
            return self._send(req, 401, {"error": "unauthenticated", "code": 16})
        route = (method, url.path)
        if route == ("GET", "/apis/v2beta1/healthz"):
            return self._send(req, 200, {"multi_user": True, "tag_name": self.tag_name, "commit_sha": "x"})
        if route == ("GET", "/apis/v2beta1/experiments"):
            name = _filter_value(query.get("filter"))
            found = [e for e in self.experiments.values() if name in (None, e["display_name"])]
            return self._send(req, 200, {"experiments": found, "total_size": len(found)})
        if route == ("POST", "/apis/v2beta1/experiments"):
            experiment = {**json.loads(body), "experiment_id": str(uuid.uuid4())}
            self.experiments[experiment["experiment_id"]] = experiment
            return self._send(req, 200, experiment)
        if route == ("GET", "/apis/v2beta1/pipelines"):
            name = _filter_value(query.get("filter"))
            found = [p for p in self.pipelines.values() if name in (None, p["display_name"])]
            return self._send(req, 200, {"pipelines": found, "total_size": len(found)})
        if route == ("POST", "/apis/v2beta1/pipelines/upload"):
            pipeline = {"pipeline_id": str(uuid.uuid4()), "display_name": query["name"]}
            pipeline["namespace"] = query.get("namespace")
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self.versions[pipeline["pipeline_id"]] = [self._version(pipeline["pipeline_id"], query["name"])]
            return self._send(req, 200, pipeline)
        if route == ("POST", "/apis/v2beta1/pipelines/upload_version"):
            version = self._version(query["pipelineid"], query["name"], body)
            self.versions[query["pipelineid"]].append(version)
            return self._send(req, 200, version)
        match = re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", url.path)
        if method == "GET" and match:
            versions = self.versions.get(match[1], [])
            return self._send(req, 200, {"pipeline_versions": versions, "total_size": len(versions)})
        if route == ("POST", "/apis/v2beta1/runs"):
            run = {**json.loads(body), "run_id": str(uuid.uuid4()), "state": "PENDING"}
            self.runs.append(run)
            return self._send(req, 200, run)
        if route == ("GET", "/apis/v2beta1/runs"):
            found = [r for r in self.runs if r.get("experiment_id") == query.get("experiment_id")]
            return self._send(req, 200, {"runs": found, "total_size": len(found)})
        if route == ("POST", "/apis/v2beta1/recurringruns"):
            recurring = {**json.loads(body), "recurring_run_id": str(uuid.uuid4())}
            self.recurring.append(recurring)
            return self._send(req, 200, recurring)
        return self._send(req, 404, {"error": f"the stub has no {method} {url.path}"})

    def _version(self, pipeline_id: str, name: str, body: bytes = b"") -> dict:
        return {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "display_name": name,
                "bytes": len(body)}  # fmt: skip

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        req.send_response(code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


def _filter_value(text: str | None) -> str | None:
    """The string value of a KFP list filter's first predicate (the SDK filters by display name)."""
    if not text:
        return None
    predicates = json.loads(text).get("predicates") or []
    return predicates[0].get("string_value", predicates[0].get("stringValue")) if predicates else None
