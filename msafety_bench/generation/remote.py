"""Chat completions from any OpenAI-compatible server (vLLM, llama.cpp server, TGI, SGLang,
``transformers serve``), with bounded concurrency, retries with backoff, timeouts and the same SQLite
cache as local generation.

Used by ``--backend openai`` (the model under test) and by the ``llm-rubric`` judge. The API key is
read from an environment variable at call time and is never written anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from msafety_bench.errors import UsageError
from msafety_bench.generation.cache import ResponseCache, cache_key

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
                      timeout=self.timeout_s, max_retries=0)  # retried by ``_with_retries``


class _Throttle:
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



def chat_many(endpoint: Endpoint, conversations: list[list[dict]], *, max_tokens: int, seed: int,
              cache: ResponseCache, cache_tag: str, progress: bool = True, desc: str = "requests",
              stats=None) -> list[str]:
    """The assistant reply to each conversation (a list of chat messages), greedy, in order.

    Replies are cached under (endpoint, tag, messages, max_tokens, seed) and committed in chunks, so an
    interrupted run resumes without repeating requests.
    """
    from tqdm.auto import tqdm

    fields = {"max_new_tokens": max_tokens, "seed": seed, "temperature": 0}
    rendered = [json.dumps(c, ensure_ascii=False, sort_keys=True) for c in conversations]
    keys = [cache_key(endpoint.identity, cache_tag, r, fields) for r in rendered]
    answers = cache.get_many(list(dict.fromkeys(keys)))
    todo = list({k: c for k, c in zip(keys, conversations) if k not in answers}.items())
    if stats is not None:
        stats.requested += len(conversations)
        stats.cached += len(conversations) - sum(1 for k in keys if k not in answers)
    client = endpoint.client()
    throttle = _Throttle(endpoint.concurrency)

    def ask(messages):
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
                    raise
                if isinstance(exc, openai.RateLimitError):
                    throttle.lower()
                time.sleep(delay)

    bar = tqdm(total=len(todo), desc=desc, unit="req", disable=not progress or not todo)
    chunk = endpoint.concurrency * 4
    try:
        with ThreadPoolExecutor(max_workers=endpoint.concurrency) as pool:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                texts = list(pool.map(ask, [c for _, c in part]))
                cache.put_many([(k, endpoint.identity, cache_tag, fields, json.dumps(c, ensure_ascii=False), t)
                                for (k, c), t in zip(part, texts)])
                answers.update({k: t for (k, _), t in zip(part, texts)})
                if stats is not None:
                    stats.generated += len(part)
                    stats.batches += 1
                bar.update(len(part))
    except Exception as exc:  # the openai client raises its own error types; name the endpoint and stop
        if type(exc).__module__.split(".")[0] != "openai":
            raise
        raise UsageError(f"request to {endpoint.public_url} (model '{endpoint.model}') failed after retries: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} -- check that "
                         "the server is running and serves that model (GET /v1/models)") from None
    finally:
        bar.close()
    return [answers[k] for k in keys]


def user_conversation(prompt: str, system_prompt: str | None) -> list[dict]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}]
