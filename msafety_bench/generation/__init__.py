"""Generation settings, the chat template, and transformers generation served from the response cache
(the engines in ``msafety_bench.engines`` do the work; these helpers keep the editors' and judges'
calls short).
"""

from __future__ import annotations

from dataclasses import dataclass

from msafety_bench.generation.cache import ResponseCache


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    batch_size: int = 64
    seed: int = 0
    system_prompt: str | None = None  # None keeps the chat template's own default


def render_prompt(tokenizer, prompt: str, system_prompt: str | None = None) -> str:
    """The exact text the model sees: chat template with a generation prompt, or the raw prompt."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class GenerationStats:
    requested: int = 0
    cached: int = 0
    generated: int = 0
    batches: int = 0


def generate_responses(
    loaded,
    prompts: list[str],
    settings: GenerationSettings,
    cache: ResponseCache,
    model_fp: str,
    editor_fp: str,
    progress: bool = True,
    stats: GenerationStats | None = None,
) -> list[str]:
    """Answers for ``prompts`` (plain user messages), in order, from transformers in process."""
    rendered = [render_prompt(loaded.tokenizer, p, settings.system_prompt) for p in prompts]
    return generate_rendered(loaded, rendered, settings, cache, model_fp, editor_fp, progress, stats)


def generate_rendered(
    loaded,
    rendered: list[str],
    settings: GenerationSettings,
    cache: ResponseCache,
    model_fp: str,
    editor_fp: str,
    progress: bool = True,
    stats: GenerationStats | None = None,
    desc: str = "generating",
) -> list[str]:
    """Continuations of already-rendered model inputs (model judges render their own templates)."""
    from msafety_bench.engines import generate_cached
    from msafety_bench.engines.hf import HfEngine

    return generate_cached(HfEngine(loaded, model_fp), rendered, settings, cache, editor_fp, progress=progress,
                           stats=stats, desc=desc)
