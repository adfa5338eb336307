"""Chat completions from any OpenAI-compatible server (vLLM, llama.cpp server, TGI, SGLang,
``transformers serve``), with bounded concurrency, retries with backoff, timeouts and the same SQLite
cache as local generation.

Used by ``--backend openai`` (the model under test) and by the ``llm-rubric`` judge. The API key is
read from an environment variable at call time and is never written anywhere.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from msafety_bench.errors import UsageError
from msafety_bench.generation.cache import ResponseCache, cache_key


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str  # the served model name
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 4  # the client retries connection errors, 408/409/429 and 5xx with backoff

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
                      timeout=self.timeout_s, max_retries=self.max_retries)


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

    def ask(messages):
        reply = client.chat.completions.create(model=endpoint.model, messages=messages, max_tokens=max_tokens,
                                               temperature=0, seed=seed)
        return (reply.choices[0].message.content or "").strip()

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
