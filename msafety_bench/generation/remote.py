"""Chat completions from any OpenAI-compatible server (vLLM, llama.cpp server, TGI, SGLang,
``transformers serve``), with bounded concurrency, retries with backoff, timeouts and the same SQLite
cache as local generation.

Used by the ``openai`` engine (the model under test) and by the ``llm-rubric`` judge (through
``engines.openai.chat_many``). The API key is
read from an environment variable at call time and is never written anywhere.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass

from msafety_bench.errors import UsageError

MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is capped: the run should fail in bounded time


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str  # the served model name
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 4  # connection errors, timeouts, 408/409/429 and 5xx are retried with backoff

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise UsageError(f"base URL '{self.public_url}' must start with http:// or https:// "
                             "(e.g. http://127.0.0.1:8000/v1)")
        if not self.model:
            raise UsageError("a remote endpoint needs a served model name (--served-model / --judge-model)")
        if self.concurrency < 1 or self.timeout_s <= 0:
            raise UsageError("concurrency must be at least 1 and the timeout positive")

    @property
    def public_url(self) -> str:
        """The base URL as it may be stored or printed: credentials in it replaced by ***."""
        from msafety_bench.safeio import redact_url

        return redact_url(self.base_url)

    @property
    def identity(self) -> str:
        """What the cache and results file know the endpoint by (no key, no credentials in the URL)."""
        return f"openai:{self.model}@{self.public_url.rstrip('/')}"

    def client(self):
        try:
            from openai import OpenAI
        except ImportError:
            raise UsageError("the OpenAI-compatible backend needs the openai package: "
                             "pip install 'msafety-bench[serving]'") from None
        return OpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "not-needed",
                      timeout=self.timeout_s, max_retries=0)  # retried by ``ask``


class Throttle:
    """At most ``limit`` requests in flight; a 429 halves the limit (down to one) for the rest of the run."""

    def __init__(self, limit: int):
        self.limit = limit
        self._active = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def slot(self):
        with self._cond:
            while self._active >= self.limit:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def lower(self) -> None:
        with self._cond:
            self.limit = max(1, self.limit // 2)


def _retry_delay(exc, attempt: int) -> float | None:
    """Seconds to wait before retrying after ``exc`` (the server's Retry-After when it sends one), or
    None when retrying cannot help (a 400, 401, 404 ...)."""
    import openai

    retryable = isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)) or (
        isinstance(exc, openai.APIStatusError) and (exc.status_code in (408, 409, 429) or exc.status_code >= 500))
    if not retryable:
        return None
    response = getattr(exc, "response", None)
    try:
        after = float(response.headers.get("retry-after")) if response is not None else None
    except (TypeError, ValueError):
        after = None
    return min(after, MAX_RETRY_AFTER_S) if after is not None and after >= 0 else min(0.5 * 2 ** attempt, 8.0)



def ask(endpoint: Endpoint, client, throttle: Throttle, messages: list[dict], *, max_tokens: int, seed: int) -> str:
    """One greedy chat completion, retried with backoff (the server's Retry-After when it sends one); a
    429 lowers the endpoint's concurrency. What cannot be retried, or fails every retry, is one
    UsageError naming the server."""
    import openai

    for attempt in range(endpoint.max_retries + 1):
        try:
            with throttle.slot():
                reply = client.chat.completions.create(model=endpoint.model, messages=messages,
                                                       max_tokens=max_tokens, temperature=0, seed=seed)
            return (reply.choices[0].message.content or "").strip()
        except openai.OpenAIError as exc:
            delay = _retry_delay(exc, attempt)
            if delay is None or attempt == endpoint.max_retries:
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise UsageError(f"request to {endpoint.public_url} (model '{endpoint.model}') failed after "
                                 f"retries: {type(exc).__name__}: {first} -- check that the server is running and "
                                 "serves that model (GET /v1/models)") from None
            if isinstance(exc, openai.RateLimitError):
                throttle.lower()
            time.sleep(delay)
    raise AssertionError("unreachable")


def user_conversation(prompt: str, system_prompt: str | None) -> list[dict]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}]
