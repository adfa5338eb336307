"""Batched generation and the SQLite response cache: determinism, warm reruns, resume after a crash."""

import sqlite3

import pytest

from msafety_bench.engines.hf import generate_responses
from msafety_bench.generation import GenerationSettings, GenerationStats, render_prompt
from msafety_bench.generation.cache import ResponseCache

PROMPTS = ["Tell me a joke.", "What is two plus two?", "আকাশ নীল কেন?", "Write a haiku about rain, please.",
           "Why is the sky blue?", "猫は何を食べますか？", "Name three rivers.", "Hello!"]
SETTINGS = GenerationSettings(max_new_tokens=6, batch_size=3, seed=0)


def test_render_uses_the_chat_template(tiny):
    text = render_prompt(tiny.tokenizer, "hi")
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_batched_equals_one_by_one_and_is_deterministic(tiny):
    batched = generate_responses(tiny, PROMPTS, SETTINGS, ResponseCache(None), "m", "e", progress=False)
    single = generate_responses(tiny, PROMPTS, GenerationSettings(6, 1, 0), ResponseCache(None), "m", "e",
                                progress=False)
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_warm_cache_makes_no_model_calls(tiny, tmp_path):
    path = tmp_path / "r.sqlite"
    first = generate_responses(tiny, PROMPTS, SETTINGS, ResponseCache(path), "m", "e", progress=False)
    stats = GenerationStats()
    again = generate_responses(tiny, PROMPTS, SETTINGS, ResponseCache(path), "m", "e", progress=False, stats=stats)
    assert again == first and stats.generated == 0 and stats.cached == len(PROMPTS)
    other = GenerationStats()
    generate_responses(tiny, PROMPTS[:2], SETTINGS, ResponseCache(path), "m", "edited", progress=False, stats=other)
    assert other.generated == 2, "a different editor fingerprint must not hit the cache"


class Crash(Exception):
    pass


def test_interrupted_run_resumes_where_it_stopped(tiny, tmp_path):
    """A real crash mid-run (raised from inside the model's forward pass on the third batch)."""
    path = tmp_path / "r.sqlite"
    calls = {"batches": 0}

    def crash_on_third_batch(module, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:  # the prefill step that starts each batch
            calls["batches"] += 1
            if calls["batches"] == 3:
                raise Crash

    handle = tiny.model.register_forward_pre_hook(crash_on_third_batch, with_kwargs=True)
    try:
        with pytest.raises(Crash):
            generate_responses(tiny, PROMPTS, SETTINGS, ResponseCache(path), "m", "e", progress=False)
    finally:
        handle.remove()
    committed = sqlite3.connect(path).execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert committed == 2 * SETTINGS.batch_size
    stats = GenerationStats()
    resumed = generate_responses(tiny, PROMPTS, SETTINGS, ResponseCache(path), "m", "e", progress=False, stats=stats)
    assert stats.cached == committed and stats.generated == len(PROMPTS) - committed
    fresh = generate_responses(tiny, PROMPTS, SETTINGS, ResponseCache(None), "m", "e", progress=False)
    assert resumed == fresh


@pytest.fixture(scope="module")
def varied(tiny):
    """tiny-qwen2's shape with untied, differently seeded weights: its greedy answers differ from prompt to
    prompt (tiny-qwen2's tied embeddings make it repeat the chat template's last token)."""
    import copy
    from types import SimpleNamespace

    import torch
    from transformers import Qwen2ForCausalLM

    config = copy.deepcopy(tiny.model.config)
    config.tie_word_embeddings = False
    state = torch.random.get_rng_state()
    torch.manual_seed(1)
    try:
        model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.random.set_rng_state(state)
    return SimpleNamespace(model=model, tokenizer=tiny.tokenizer, device="cpu")


def _generate_one_at_a_time(loaded, rendered, max_new_tokens, eos):
    """transformers' own greedy ``generate``, one prompt at a time: the reference the engine must match."""
    import torch

    tok, out = loaded.tokenizer, []
    for r in rendered:
        enc = tok([r], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = loaded.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                        top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=eos)
        out.append(ids[0, enc["input_ids"].shape[1]:].tolist())
    return out


def test_engine_text_equals_generate_one_at_a_time(varied):
    from msafety_bench.engines.hf import HfEngine

    tok = varied.tokenizer
    rendered = [render_prompt(tok, p) for p in PROMPTS]
    reference = [tok.decode(ids, skip_special_tokens=True).strip()
                 for ids in _generate_one_at_a_time(varied, rendered, 8, tok.eos_token_id)]
    assert len(set(reference)) == len(reference), "the case needs answers that differ"
    batched = generate_responses(varied, PROMPTS, GenerationSettings(8, 5, 0), ResponseCache(None), "m", "e",
                                 progress=False)
    assert batched == reference
    assert len(HfEngine(varied, "m").batches(rendered, GenerationSettings(8, 5, 0))) > 1


def test_rows_that_finish_early_leave_the_batch_with_the_same_tokens(varied, monkeypatch):
    """With an EOS the model does produce, some rows stop early and others run to the limit; the
    engine's batches (length buckets, rows leaving at EOS) give exactly the token ids of ``generate``
    one prompt at a time."""
    from transformers import DynamicCache

    from msafety_bench.engines import hf

    tok = varied.tokenizer
    rendered = [render_prompt(tok, p) for p in PROMPTS]
    free = _generate_one_at_a_time(varied, rendered, 12, None)
    # An EOS token that ends some answers part-way but not all of them (most rows first).
    first_at = {}
    for ids in free:
        for i, t in enumerate(ids):
            first_at.setdefault(t, []).append(i) if t not in ids[:i] else None
    usable = [t for t, at in first_at.items() if 0 < len(at) < len(free) and 0 < min(at) < 11]
    eos = max(sorted(usable), key=lambda t: len(first_at[t]))
    reference = dict(zip(rendered, _generate_one_at_a_time(varied, rendered, 12, eos)))
    lengths = [len(ids) for ids in reference.values()]
    assert 1 < min(lengths) < 12 and max(lengths) == 12, "the case needs rows finishing at different steps"

    shrunk = []
    real_select = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices",
                        lambda self, index: shrunk.append(len(index)) or real_select(self, index))
    engine = hf.HfEngine(varied, "m")
    for batch_size in (8, 3):
        settings = GenerationSettings(max_new_tokens=12, batch_size=batch_size, seed=0)
        for part in engine.batches(rendered, settings):
            enc = tok(part, return_tensors="pt", padding=True, add_special_tokens=False)
            got = hf.greedy_generate(varied.model, enc["input_ids"], enc["attention_mask"], 12, eos)
            assert got == [reference[r] for r in part], f"batch size {batch_size}: token ids differ"
    assert shrunk, "finished rows must leave the batch"
