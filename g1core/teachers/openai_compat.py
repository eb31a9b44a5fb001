"""An OpenAI-compatible chat endpoint as a policy: the teacher for distillation and an evaluated baseline.

Any server that speaks ``POST {base_url}/chat/completions`` works: a vLLM or KServe server, OpenAI, or
a gateway in front of another vendor. Each env becomes one chat request holding the screen as an image
data URL and the game prompt; the assistant text is the reply.

Failures are sorted into two kinds. Transient ones (timeouts, dropped connections, 408/409/429, 5xx,
a body that is not a chat completion) are retried with exponential backoff and jitter, honouring
``Retry-After``; an item that still fails gives None from ``try_replies`` (so distillation can retry
that state later) and "" from ``replies`` (so evaluation counts it as unreadable). Refusals of the
whole job (400, 401, 403, 404 and other 4xx) raise ``TeacherError`` at once: retrying cannot fix a bad
key or an unknown model. The API key is read from an environment variable and never logged, shown in
a repr or put in an error.
"""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import openai
from PIL import Image
from tqdm.auto import tqdm

from ..errors import G1Error
from ..gym.base import GridGameEnv
from ..gym.policies import Policy

log = logging.getLogger(__name__)

IMAGE_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg")}
RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx
MAX_WAIT_S = 120.0  # the longest single wait between attempts, whatever the server asks for
PROGRESS_MIN = 32  # batches at least this large show a progress bar
MESSAGE_CHARS = 500  # how much of a server's error message goes into a TeacherError


class TeacherError(G1Error, RuntimeError):
    """The endpoint refused the job itself (bad key, unknown model, bad request): retrying cannot help."""


class _Transient(Exception):
    """One attempt failed in a way a later attempt may not; ``wait_s`` is the server's Retry-After."""

    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


def image_data_url(screen: np.ndarray, image_format: str = "png") -> str:
    """The screen (RGB uint8, height x width x 3) as a ``data:image/...;base64,`` URL for a chat request."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    screen = np.asarray(screen)
    if screen.dtype != np.uint8 or screen.ndim != 3 or screen.shape[2] != 3:
        raise ValueError(f"screen must be an RGB uint8 array (H, W, 3), got {screen.dtype} {screen.shape}")
    pil_format, mime = IMAGE_FORMATS[image_format]
    buffer = io.BytesIO()
    Image.fromarray(screen).save(buffer, pil_format, **({"quality": 95} if pil_format == "JPEG" else {}))
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds a server asked us to wait (``retry-after-ms``, or ``Retry-After`` as seconds or a date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Usage:
    """Thread-safe request, token and time counters."""

    COUNTS = ("requests", "succeeded", "failed", "retries", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.COUNTS, 0)
        self._wall_s = 0.0

    def add(self, wall_s: float = 0.0, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                self._counts[key] += value
            self._wall_s += wall_s

    def snapshot(self) -> tuple[dict[str, int], float]:
        with self._lock:
            return dict(self._counts), self._wall_s


class OpenAICompatPolicy(Policy):
    """A vision-language model behind an OpenAI-compatible chat endpoint, playing one move per env.

    ``base_url`` is the API root (for vLLM ``http://host:8000/v1``). ``api_key_env`` names the
    environment variable holding the key; None sends no key (a local vLLM server). ``extra_body`` is
    merged into every request (vLLM's ``top_k``, ``chat_template_kwargs``...); when it holds
    ``max_completion_tokens`` (newer OpenAI models), ``max_tokens`` is not sent. Prices are USD per
    million tokens and only feed ``usage["cost_usd"]``.
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 1.0,
        max_tokens: int = 8192,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        price_input_per_mtok: float = 0.0,
        price_output_per_mtok: float = 0.0,
        image_format: str = "png",
        system_prompt: str | None = None,
        extra_body: dict | None = None,
        name: str | None = None,
    ):
        _check(bool(model), "model", model, "a non-empty model name")
        _check(base_url.startswith(("http://", "https://")), "base_url", base_url, "an http(s) URL")
        _check(concurrency >= 1, "concurrency", concurrency, ">= 1")
        _check(timeout_s > 0, "timeout_s", timeout_s, "> 0")
        _check(max_retries >= 0, "max_retries", max_retries, ">= 0")
        _check(backoff_s >= 0, "backoff_s", backoff_s, ">= 0")
        _check(max_tokens >= 1, "max_tokens", max_tokens, ">= 1")
        _check(temperature >= 0, "temperature", temperature, ">= 0")
        _check(price_input_per_mtok >= 0, "price_input_per_mtok", price_input_per_mtok, ">= 0")
        _check(price_output_per_mtok >= 0, "price_output_per_mtok", price_output_per_mtok, ">= 0")
        _check(image_format in IMAGE_FORMATS, "image_format", image_format, f"one of {sorted(IMAGE_FORMATS)}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.price_input_per_mtok = float(price_input_per_mtok)
        self.price_output_per_mtok = float(price_output_per_mtok)
        self.image_format = image_format
        self.system_prompt = system_prompt
        self.name = name or f"openai:{model}"

        key = None
        if api_key_env is not None:
            key = os.environ.get(api_key_env)
            if not key:
                raise TeacherError(
                    f"{self._where()}: environment variable {api_key_env} holding the API key is not set "
                    "(pass api_key_env=None for an endpoint that needs no key)"
                )
        # The SDK insists on some key; without one the placeholder is never sent (see _request).
        self._client = openai.OpenAI(
            api_key=key or "unused", base_url=self.base_url, timeout=self.timeout_s, max_retries=0
        )
        self._request_args: dict[str, Any] = {"model": model, "temperature": float(temperature)}
        extra = dict(extra_body or {})
        if "max_completion_tokens" not in extra:
            self._request_args["max_tokens"] = int(max_tokens)
        if extra:
            self._request_args["extra_body"] = extra
        if key is None:
            self._request_args["extra_headers"] = {"Authorization": openai.Omit()}
        self._slots = threading.BoundedSemaphore(self.concurrency)  # shared by concurrent callers
        self._usage = _Usage()

    def __repr__(self) -> str:
        return f"OpenAICompatPolicy(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r})"

    # ---- public -----------------------------------------------------------------------------
    def replies(self, envs: Sequence[GridGameEnv]) -> list[str]:
        """One reply per env; an item that failed after every retry gives "" (read as unreadable)."""
        return [text if text is not None else "" for text in self.try_replies(envs)]

    def try_replies(self, envs: Sequence[GridGameEnv]) -> list[str | None]:
        """One reply per env, None where every attempt failed, so the caller can retry that state later.

        Raises ``TeacherError`` when the endpoint refuses the job (and stops the rest of the batch).
        """
        envs = list(envs)
        if not envs:
            return []
        start = time.perf_counter()
        abort = threading.Event()
        futures: list[Future[str | None]] = []
        bar = tqdm(total=len(envs), desc=self.name, unit="reply", disable=len(envs) < PROGRESS_MIN)
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(envs)), thread_name_prefix="teacher")

        def finished(future: Future[str | None]) -> None:
            if future.cancelled() or future.exception() is not None:
                abort.set()
            bar.update()

        try:
            for env in envs:  # screens are drawn and encoded here, on the caller's thread
                if abort.is_set():
                    break
                future = pool.submit(self._ask, self._messages(env), abort)
                future.add_done_callback(finished)
                futures.append(future)
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            results = [future.result() for future in futures]
        except BaseException:
            abort.set()
            raise
        finally:
            pool.shutdown(wait=not abort.is_set(), cancel_futures=True)
            bar.close()
            self._usage.add(wall_s=time.perf_counter() - start)
        missing = sum(text is None for text in results)
        log.info("%s: %d/%d replies in %.1f s", self.name, len(results) - missing, len(results),
                 time.perf_counter() - start)  # fmt: skip
        return results

    @property
    def usage(self) -> dict[str, float]:
        """Totals since this policy was made: requests sent, items succeeded/failed, retries, tokens,
        cost in USD at the given per-million-token prices, and wall seconds spent in batches."""
        counts, wall_s = self._usage.snapshot()
        cost = (
            counts["input_tokens"] * self.price_input_per_mtok
            + counts["output_tokens"] * self.price_output_per_mtok
        ) / 1e6
        return {**counts, "cost_usd": cost, "wall_s": wall_s}

    def close(self) -> None:
        """Close the HTTP connections (the policy cannot be used afterwards)."""
        self._client.close()

    # ---- one item ---------------------------------------------------------------------------
    def _messages(self, env: GridGameEnv) -> list[dict[str, Any]]:
        """The chat messages for one env: optional system prompt, then the screen and the game prompt."""
        env = env.unwrapped
        screen = env.render()
        if screen is None:
            raise ValueError(
                f"{type(env).__name__}.render() gave no screen: make the env with render_mode='rgb_array'"
            )
        user = [
            {"type": "image_url", "image_url": {"url": image_data_url(screen, self.image_format)}},
            {"type": "text", "text": env.prompt},
        ]
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": user}]

    def _ask(self, messages: list[dict[str, Any]], abort: threading.Event) -> str | None:
        """The reply to one item with retries; None when every attempt failed or the batch was stopped."""
        for attempt in range(self.max_retries + 1):
            if abort.is_set():
                return None
            try:
                return self._request(messages)
            except _Transient as err:
                problem = err
            if attempt == self.max_retries:
                break
            delay = problem.wait_s if problem.wait_s is not None else self._backoff(attempt)
            delay = min(delay, MAX_WAIT_S)
            log.debug("%s: %s; retry %d in %.2f s", self.name, problem, attempt + 1, delay)
            self._usage.add(retries=1)
            if abort.wait(delay):
                return None
        self._usage.add(failed=1)
        log.warning("%s: gave up on an item after %d attempts: %s", self.name, self.max_retries + 1, problem)
        return None

    def _backoff(self, attempt: int) -> float:
        return self.backoff_s * 2**attempt * random.uniform(0.5, 1.5)

    def _request(self, messages: list[dict[str, Any]]) -> str:
        """One HTTP request: the assistant text, or ``_Transient``/``TeacherError``."""
        with self._slots:
            self._usage.add(requests=1)
            try:
                completion = self._client.chat.completions.create(messages=messages, **self._request_args)
            except openai.APITimeoutError:
                raise _Transient(f"no answer within {self.timeout_s:g} s") from None
            except openai.APIConnectionError as err:
                raise _Transient(f"connection failed ({err.__cause__ or err})") from None
            except openai.APIStatusError as err:
                code = err.status_code
                if code in RETRY_STATUS or code >= 500:
                    raise _Transient(f"HTTP {code}", retry_after_s(err.response.headers)) from None
                raise TeacherError(self._refusal(code, err.message)) from None
            except (ValueError, openai.APIResponseValidationError) as err:
                raise _Transient(f"response is not a chat completion ({type(err).__name__})") from None
        choices = getattr(completion, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise _Transient("response has no choices")
        usage = getattr(completion, "usage", None)
        self._usage.add(
            succeeded=1,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )
        if choices[0].finish_reason == "length":
            log.debug("%s: a reply was cut at the token limit", self.name)
        return choices[0].message.content or ""

    # ---- messages ---------------------------------------------------------------------------
    def _where(self) -> str:
        return f"endpoint {self.base_url} (model {self.model!r})"

    def _refusal(self, code: int, server_message: str) -> str:
        """A TeacherError message: where, what, a hint, and the server's words with the key removed."""
        hints = {
            400: "the server rejected the request",
            401: f"authentication failed: check the key in ${self.api_key_env}"
            if self.api_key_env
            else "authentication failed: this endpoint needs a key (set api_key_env)",
            403: "the key is not allowed to use this model",
            404: "unknown model, or base_url is not the API root (for vLLM it ends in /v1)",
        }
        text = (server_message or "")[:MESSAGE_CHARS]
        key = self._client.api_key
        if self.api_key_env and key:
            text = text.replace(key, "***")
        return f"{self._where()}: HTTP {code}, {hints.get(code, 'request refused')}: {text}"


def _check(ok: bool, field: str, value: object, wanted: str) -> None:
    if not ok:
        raise ValueError(f"OpenAICompatPolicy: {field} must be {wanted}, got {value!r}")
