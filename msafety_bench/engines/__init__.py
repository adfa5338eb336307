"""One interface for every way of producing answers: transformers in process (``hf``), vLLM's offline
engine in process (``vllm``) and OpenAI-compatible servers (``openai``).

An engine renders a prompt into the exact model input, generates greedy continuations of rendered
inputs, applies an edit as a context manager that reverts, and describes itself for the results file.
``generate_cached`` puts the response cache in front of any engine; the cache key is (model
fingerprint, edit fingerprint, rendered input, settings), so a run can move between ``hf`` and
``vllm`` and reuse its answers.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from msafety_bench.errors import UsageError
from msafety_bench.options import typed_value
from msafety_bench.registry import Registry

# One registry with editors, judges and datasets: built-ins imported only when used (vllm and openai
# are extras); third-party engines come from the msafety_bench.engines entry-point group.
BACKENDS = Registry("backend", "msafety_bench.engines", {
    "hf": "msafety_bench.engines.hf:HfEngine",
    "vllm": "msafety_bench.engines.vllm:VllmEngine",
    "openai": "msafety_bench.engines.openai:OpenAIEngine",
})
ALIASES = {"local": "hf"}  # the option's first name, kept working
# vLLM's engine options are untyped keyword arguments: a value is read as the first type that takes it.
ENGINE_OPTION_TYPE = int | float | bool | str


class Engine(Protocol):
    name: str
    model_fingerprint: str  # what the cache knows the unedited model by

    def render(self, prompt: str, system_prompt: str | None) -> str: ...

    def cache_fields(self, settings) -> dict: ...

    def batches(self, rendered: list[str], settings) -> list[list[str]]:
        """How uncached inputs are split; each part is generated, then committed to the cache."""

    def generate(self, rendered: list[str], settings) -> list[str]: ...

    def apply(self, edit) -> contextlib.AbstractContextManager:
        """Run the engine as the edited model inside the block; the exit restores the weights."""

    def weights_restored(self) -> bool: ...

    def describe(self) -> dict: ...

    def close(self) -> None:
        """Release what the engine holds (processes, device memory); the engine is not used after."""


def backend_name(name: str) -> str:
    """The registered name of ``--backend``/``--judge-backend`` (``local`` is ``hf``)."""
    return BACKENDS.check(ALIASES.get(name, name))


def engine_class(name: str) -> Any:
    return BACKENDS.get(backend_name(name))


def parse_engine_options(raw: list[str]) -> dict[str, Any]:
    """``key=value`` items into a dict, values typed as int, float, bool or str (first that fits)."""
    options: dict[str, Any] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--engine-opt '{item}' is not key=value: write e.g. --engine-opt tensor_parallel_size=8")
        options[key.strip()] = typed_value(value.strip(), ENGINE_OPTION_TYPE, f"--engine-opt {key.strip()}")
    return options


def generate_cached(engine: Engine, rendered: list[str], settings, cache, editor_fp: str, *,
                    progress: bool = True, stats=None, desc: str = "generating") -> list[str]:
    """Answers for rendered inputs, in order: cached ones from the cache, the rest from the engine,
    committed part by part so an interrupted run resumes."""
    from tqdm.auto import tqdm

    from msafety_bench.generation.cache import cache_key

    fields = engine.cache_fields(settings)
    model_fp = engine.model_fingerprint
    keys = [cache_key(model_fp, editor_fp, r, fields) for r in rendered]
    answers = cache.get_many(list(dict.fromkeys(keys)))
    todo = {k: r for k, r in zip(keys, rendered) if k not in answers}
    if stats is not None:
        stats.requested += len(rendered)
        stats.cached += len(rendered) - sum(1 for k in keys if k not in answers)
    key_of = {r: k for k, r in todo.items()}
    bar = tqdm(total=len(todo), desc=desc, unit="prompt", disable=not progress or not todo)
    try:
        for part in engine.batches(list(todo.values()), settings) if todo else []:
            texts = engine.generate(part, settings)
            cache.put_many([(key_of[r], model_fp, editor_fp, fields, r, t) for r, t in zip(part, texts)])
            answers.update({key_of[r]: t for r, t in zip(part, texts)})
            if stats is not None:
                stats.generated += len(part)
                stats.batches += 1
            bar.update(len(part))
    finally:
        bar.close()
    return [answers[k] for k in keys]
