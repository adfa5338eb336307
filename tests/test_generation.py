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
