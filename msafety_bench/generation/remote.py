"""Chat completions from any OpenAI-compatible server (vLLM, llama.cpp server, TGI, SGLang,
``transformers serve``), with bounded concurrency, retries with backoff, timeouts and the same SQLite
cache as local generation.

Used by ``--backend openai`` (the model under test) and by the ``llm-rubric`` judge. The API key is
read from an environment variable at call time and is never written anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from msafety_bench.errors import UsageError
from msafety_bench.generation.cache import ResponseCache


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
            raise UsageError(f"base URL '{self.base_url}' must start with http:// or https:// "
                             "(e.g. http://127.0.0.1:8000/v1)")
        if not self.model:
            raise UsageError("a remote endpoint needs a served model name (--served-model / --judge-model)")
        if self.concurrency < 1 or self.timeout_s <= 0:
            raise UsageError("concurrency must be at least 1 and the timeout positive")

    @property
    def identity(self) -> str:
        """What the cache and results file know the endpoint by (no key)."""
        return f"openai:{self.model}@{self.base_url.rstrip('/')}"

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
    """The assistant reply to each conversation (a list of chat messages), greedy, in order, cached
    under (endpoint, tag, messages, max_tokens, seed) and committed in chunks."""
    from msafety_bench.engines import generate_cached
    from msafety_bench.engines.openai import OpenAIEngine
    from msafety_bench.generation import GenerationSettings

    engine = OpenAIEngine([endpoint])
    rendered = [engine.render_conversation(c) for c in conversations]
    return generate_cached(engine, rendered, GenerationSettings(max_tokens, 1, seed), cache, cache_tag,
                           progress=progress, stats=stats, desc=desc)


def user_conversation(prompt: str, system_prompt: str | None) -> list[dict]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}]
