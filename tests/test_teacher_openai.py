"""OpenAICompatPolicy against a real OpenAI-style HTTP server on 127.0.0.1 whose answers each test scripts."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import make_small
from PIL import Image

from g1core.teachers import OpenAICompatPolicy, TeacherError, image_data_url
from g1core.teachers.openai_compat import retry_after_s

KEY_ENV = "G1_TEST_TEACHER_KEY"
KEY = "sk-test-4f9c2e7d1a"
REPLY = "<perception>a board</perception><think>any move will do</think><answer>4</answer>"
PROMPT_TOKENS, COMPLETION_TOKENS = 1000, 250


class ChatServer:
    """``POST /v1/chat/completions`` in the OpenAI format. Each request takes the next scripted action:
    ``("ok",)``, ``("status", code, headers)``, ``("sleep", seconds)`` (then ok) or ``("malformed",)``;
    with the script empty it answers ok. It records every request and the most requests it held at once."""

    def __init__(self, ok_delay_s: float = 0.0):
        self.script: deque[tuple] = deque()
        self.requests: list[dict] = []
        self.ok_delay_s = ok_delay_s
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else every answer waits ~40 ms for a delayed ACK

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                    action = server.script.popleft() if server.script else ("ok",)
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    code, headers, payload = server.answer(action, body, self.headers.get("Authorization"))
                finally:
                    with server.lock:  # before the answer leaves, so the count never runs ahead of the client
                        server.active -= 1
                try:
                    self.send_response(code)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (timeout tests)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def answer(self, action: tuple, body: dict, authorization: str | None) -> tuple[int, dict, bytes]:
        kind = action[0]
        if kind == "status":
            code, headers = action[1], action[2] if len(action) > 2 else {}
            # Like some gateways, echo what was sent: the policy must keep the key out of its error.
            error = {"message": f"refused; you sent Authorization: {authorization}", "type": "error"}
            return code, headers, json.dumps({"error": error}).encode()
        if kind == "malformed":
            return 200, {}, b'{"id": "x", "choices": [ {"message": '
        time.sleep(action[1] if kind == "sleep" else self.ok_delay_s)
        completion = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        }
        return 200, {}, json.dumps(completion).encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    chat = ChatServer()
    yield chat
    chat.close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def policy(server: ChatServer, **kwargs) -> OpenAICompatPolicy:
    kwargs = {"api_key_env": KEY_ENV, "backoff_s": 0.001, "timeout_s": 5.0, "max_retries": 3, **kwargs}
    return OpenAICompatPolicy("teacher-vlm", server.base_url, **kwargs)


def envs(n: int, game: str = "2048") -> list:
    made = [make_small(game) for _ in range(n)]
    for seed, env in enumerate(made):
        env.reset(seed=seed)
    return made


def test_request_carries_screen_prompt_and_key(server, key):
    env = envs(1, "shisen-sho")[0]
    teacher = policy(
        server, temperature=0.6, max_tokens=321, system_prompt="Be brief.", extra_body={"top_k": 7}
    )
    assert teacher.replies([env]) == [REPLY]
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {key}"
    body = request["body"]
    assert (body["model"], body["temperature"], body["max_tokens"], body["top_k"]) == (
        "teacher-vlm",
        0.6,
        321,
        7,
    )
    system, user = body["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    image, text = user["content"]
    assert text == {"type": "text", "text": env.prompt}
    prefix = "data:image/png;base64,"
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith(prefix)
    png = base64.b64decode(image["image_url"]["url"][len(prefix) :])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), env.render())


def test_reply_parses_as_a_move(server, key):
    env = envs(1)[0]
    (reply,) = policy(server).replies([env])
    assert env.parse_action(reply) == 4


def test_no_key_for_local_servers(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert policy(server, api_key_env=None).try_replies(envs(1)) == [REPLY]
    assert "authorization" not in server.requests[0]["headers"]


def test_missing_key_variable_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(TeacherError, match=KEY_ENV):
        policy(server)


def test_bad_arguments_name_the_field(server, key):
    for field, value in [("concurrency", 0), ("timeout_s", 0), ("image_format", "gif"), ("max_retries", -1)]:
        with pytest.raises(ValueError, match=field):
            policy(server, **{field: value})
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatPolicy("m", "127.0.0.1:8000/v1", api_key_env=None)


def test_concurrency_never_exceeds_the_limit(key):
    chat = ChatServer(ok_delay_s=0.05)
    try:
        teacher = policy(chat, concurrency=3)
        assert teacher.replies(envs(12)) == [REPLY] * 12
        assert chat.max_active == 3
        # Two callers at once share the same limit.
        chat.max_active = 0
        batch = envs(6)
        threads = [threading.Thread(target=teacher.replies, args=(batch,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert chat.max_active == 3 and len(chat.requests) == 24
    finally:
        chat.close()


def test_server_errors_are_retried_and_counted(server, key):
    teacher = policy(server, max_retries=5)
    server.script.extend([("status", 500), ("status", 502), ("status", 503)])
    assert teacher.try_replies(envs(1)) == [REPLY]
    usage = teacher.usage
    assert (usage["requests"], usage["retries"], usage["succeeded"], usage["failed"]) == (4, 3, 1, 0)

    server.script.extend([("status", 500)] * 3)
    assert policy(server, max_retries=2).try_replies(envs(1)) == [None]


def test_backoff_doubles(server, key):
    server.script.extend([("status", 503)] * 5)
    teacher, batch = policy(server, backoff_s=0.02, max_retries=5), envs(1)
    start = time.perf_counter()
    assert teacher.replies(batch) == [REPLY]
    # waits 0.02 * (1 + 2 + 4 + 8 + 16), each jittered x0.5-1.5: at least 0.31 s (flat waits: at most 0.15 s)
    assert time.perf_counter() - start >= 0.02 * 31 * 0.5


def test_rate_limit_honours_retry_after(server, key):
    teacher = policy(server, backoff_s=0.0)
    server.script.append(("status", 429, {"Retry-After": "0.4"}))
    start = time.perf_counter()
    assert teacher.replies(envs(1)) == [REPLY]
    assert time.perf_counter() - start >= 0.4
    assert teacher.usage["retries"] == 1


def test_retry_after_forms():
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_s({"retry-after": date}) <= 31
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None


def test_timeouts_fail_the_item_only(server, key):
    teacher = policy(server, timeout_s=0.3, max_retries=0, concurrency=1)
    server.script.extend([("ok",), ("sleep", 1.0)])
    assert teacher.try_replies(envs(2)) == [REPLY, None]
    server.script.extend([("sleep", 1.0), ("ok",)])
    assert teacher.replies(envs(2)) == ["", REPLY]
    assert (teacher.usage["failed"], teacher.usage["succeeded"]) == (2, 2)


def test_malformed_json_is_retried(server, key):
    teacher = policy(server, max_retries=1)
    server.script.append(("malformed",))
    assert teacher.try_replies(envs(1)) == [REPLY]
    server.script.extend([("malformed",), ("malformed",)])
    assert teacher.try_replies(envs(1)) == [None]
    assert teacher.usage["retries"] == 2 and teacher.usage["failed"] == 1


def test_connection_refused_fails_the_item(key):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    teacher = OpenAICompatPolicy("m", f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV, max_retries=1,
                                 backoff_s=0.001, timeout_s=2.0)  # fmt: skip
    assert teacher.try_replies(envs(1)) == [None]
    assert (teacher.usage["requests"], teacher.usage["retries"], teacher.usage["failed"]) == (2, 1, 1)


def test_unauthorised_is_fatal_and_keeps_the_key_secret(server, key, caplog):
    caplog.set_level(logging.DEBUG)
    teacher = policy(server, concurrency=2, max_retries=5)
    server.script.extend([("status", 401)] * 50)
    with pytest.raises(TeacherError) as raised:
        teacher.replies(envs(40))
    message = str(raised.value)
    assert "401" in message and server.base_url in message and "teacher-vlm" in message and KEY_ENV in message
    assert "refused; you sent Authorization" in message  # the server's words are kept ...
    assert key not in message and key not in repr(teacher) and key not in caplog.text  # ... the key is not
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert len(server.requests) <= 4 and teacher.usage["retries"] == 0


@pytest.mark.parametrize("code", [400, 403, 404])
def test_client_errors_are_fatal(server, key, code):
    server.script.append(("status", code))
    with pytest.raises(TeacherError, match=f"HTTP {code}"):
        policy(server).try_replies(envs(1))
    assert len(server.requests) == 1


def test_usage_and_cost(server, key):
    teacher = policy(server, price_input_per_mtok=3.0, price_output_per_mtok=15.0, concurrency=4)
    server.script.append(("status", 500))
    assert teacher.replies(envs(4)) == [REPLY] * 4
    usage = teacher.usage
    assert (usage["requests"], usage["succeeded"], usage["failed"], usage["retries"]) == (5, 4, 0, 1)
    assert (usage["input_tokens"], usage["output_tokens"]) == (4 * PROMPT_TOKENS, 4 * COMPLETION_TOKENS)
    assert usage["cost_usd"] == pytest.approx(4 * (1000 * 3.0 + 250 * 15.0) / 1e6)  # 0.027
    assert usage["wall_s"] > 0
    assert teacher.try_replies([]) == []


def test_jpeg_and_missing_screen(server, key):
    env = envs(1)[0]
    assert image_data_url(env.render(), "jpeg").startswith("data:image/jpeg;base64,")
    blind = make_small("2048", render_mode=None)
    blind.reset(seed=0)
    with pytest.raises(ValueError, match="render_mode"):
        policy(server).replies([blind])
