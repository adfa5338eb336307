"""What every engine shares: generation settings, the chat template, counters, and (in ``cache``) the
response cache. The engines that produce answers are in ``msafety_bench.engines``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    batch_size: int = 16
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
