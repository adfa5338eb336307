"""``openai``: the model under test behind one or more OpenAI-compatible servers (vLLM, llama.cpp
server, TGI, SGLang, ``transformers serve``). Several base URLs are replicas of one model: requests
are spread over them round-robin. The weights are not here, so only the unedited model runs."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from msafety_bench.errors import UsageError


class OpenAIEngine:
    name = "openai"

    def __init__(self, endpoints: list):
        if not endpoints:
            raise UsageError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1) and --served-model")
        self.endpoints = endpoints
        urls = sorted(e.public_url.rstrip("/") for e in endpoints)
        # One server keeps the identity earlier runs cached under; replicas are known by all their URLs.
        self.model_fingerprint = endpoints[0].identity if len(urls) == 1 else f"openai:{endpoints[0].model}@{'|'.join(urls)}"
        self._clients = self._throttles = None

    def render(self, prompt: str, system_prompt: str | None) -> str:
        from msafety_bench.generation.remote import user_conversation

        return self.render_conversation(user_conversation(prompt, system_prompt))

    @staticmethod
    def render_conversation(messages: list[dict]) -> str:
        """The request's messages as canonical JSON: what the cache keys and what is sent."""
        return json.dumps(messages, ensure_ascii=False, sort_keys=True)

    def cache_fields(self, settings) -> dict:
        return {"max_new_tokens": settings.max_new_tokens, "seed": settings.seed, "temperature": 0}

    def batches(self, rendered: list[str], settings) -> list[list[str]]:
        chunk = sum(e.concurrency for e in self.endpoints) * 4
        return [rendered[i : i + chunk] for i in range(0, len(rendered), chunk)]

    def generate(self, rendered: list[str], settings) -> list[str]:
        from msafety_bench.generation.remote import Throttle, ask

        if self._clients is None:
            self._clients = [e.client() for e in self.endpoints]
            self._throttles = [Throttle(e.concurrency) for e in self.endpoints]
        n = len(self.endpoints)

        def one(item):
            index, messages = item
            i = index % n
            return ask(self.endpoints[i], self._clients[i], self._throttles[i], messages,
                       max_tokens=settings.max_new_tokens, seed=settings.seed)

        workers = sum(e.concurrency for e in self.endpoints)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, enumerate(json.loads(r) for r in rendered)))

    def apply(self, edit):
        if edit.fingerprint != "none":
            raise UsageError(
                f"--editor {edit.editor} changes weights and needs them here; with --backend openai only --editor none "
                f"runs. Use --backend vllm or hf, or write the edited model with `msafety-bench export --editor "
                f"{edit.editor} --out DIR`, serve DIR and point --base-url at it")
        import contextlib

        return contextlib.nullcontext()

    def weights_restored(self) -> bool:
        return True  # nothing was changed

    def close(self) -> None:
        self._clients = self._throttles = None

    def describe(self) -> dict:
        import openai

        return {"name": self.name, "version": openai.__version__, "model": self.endpoints[0].model,
                "base_urls": [e.public_url for e in self.endpoints],
                "concurrency": sum(e.concurrency for e in self.endpoints)}


def chat_many(endpoint, conversations: list[list[dict]], *, max_tokens: int, seed: int,
              cache, cache_tag: str, progress: bool = True, desc: str = "requests",
              stats=None) -> list[str]:
    """The assistant reply to each conversation (a list of chat messages), greedy, in order, cached
    under (endpoint, tag, messages, max_tokens, seed) and committed in chunks."""
    from msafety_bench.engines import generate_cached
    from msafety_bench.generation import GenerationSettings

    engine = OpenAIEngine([endpoint])
    rendered = [engine.render_conversation(c) for c in conversations]
    return generate_cached(engine, rendered, GenerationSettings(max_tokens, 1, seed), cache, cache_tag,
                           progress=progress, stats=stats, desc=desc)
