"""Batched greedy generation with the model's chat template, served from the response cache first.

Prompts are sorted by token length so each left-padded batch wastes little compute; every finished
batch is written to the cache before the next one starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from msafety_bench.generation.cache import ResponseCache, cache_key


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    batch_size: int = 64
    seed: int = 0
    system_prompt: str | None = None  # None keeps the chat template's own default

    def cache_fields(self) -> dict:
        """Settings that change the text produced; the batch size only changes speed."""
        fields = asdict(self)
        fields.pop("batch_size")
        return fields


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
    """Answers for ``prompts`` (plain user messages), in order."""
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
    import torch
    from tqdm.auto import tqdm

    tok, model = loaded.tokenizer, loaded.model
    fields = settings.cache_fields()
    keys = [cache_key(model_fp, editor_fp, r, fields) for r in rendered]
    answers = cache.get_many(list(dict.fromkeys(keys)))
    todo = sorted({k: r for k, r in zip(keys, rendered) if k not in answers}.items(),
                  key=lambda kv: -len(tok(kv[1], add_special_tokens=False).input_ids))
    stats = stats if stats is not None else GenerationStats()
    stats.requested += len(rendered)
    stats.cached += len(rendered) - sum(1 for k in keys if k not in answers)
    torch.manual_seed(settings.seed)
    bar = tqdm(total=len(todo), desc=desc, unit="prompt", disable=not progress or not todo)
    for start in range(0, len(todo), settings.batch_size):
        batch = todo[start : start + settings.batch_size]
        texts = _generate_batch(model, tok, [r for _, r in batch], settings, loaded.device)
        cache.put_many([(k, model_fp, editor_fp, fields, r, t) for (k, r), t in zip(batch, texts)])
        answers.update({k: t for (k, _), t in zip(batch, texts)})
        stats.generated += len(batch)
        stats.batches += 1
        bar.update(len(batch))
    bar.close()
    return [answers[k] for k in keys]


def _generate_batch(model, tok, rendered: list[str], settings: GenerationSettings, device: str) -> list[str]:
    import torch

    # The chat template already holds any BOS token, so the tokenizer must not add one more.
    enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    return [t.strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]
