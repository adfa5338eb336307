"""The backend interface: registry and options, one cache key across engines, and pytest-xdist refused
with one line for the suites (they share one run) but not for other tests."""

import json

import pytest

from msafety_bench.engines import BACKENDS, backend_name, engine_class, generate_cached, parse_engine_options
from msafety_bench.errors import UsageError
from msafety_bench.generation import GenerationSettings, GenerationStats
from msafety_bench.generation.cache import ResponseCache

SETTINGS = GenerationSettings(max_new_tokens=4, batch_size=2, seed=0)


def test_backends_resolve_lazily_and_local_is_hf():
    assert set(BACKENDS.names()) == {"hf", "vllm", "openai"}
    assert backend_name("local") == "hf" and engine_class("local").name == "hf"
    with pytest.raises(UsageError, match="unknown backend 'tgi': choose one of hf, openai, vllm"):
        backend_name("tgi")


def test_engine_options_are_typed():
    assert parse_engine_options(["tensor_parallel_size=8", "gpu_memory_utilization=0.85", "enforce_eager=true",
                                 "dtype=bfloat16"]) == {"tensor_parallel_size": 8, "gpu_memory_utilization": 0.85,
                                                        "enforce_eager": True, "dtype": "bfloat16"}
    with pytest.raises(UsageError, match="is not key=value"):
        parse_engine_options(["tensor_parallel_size"])


class RecordingEngine:
    """A real HfEngine that notes what it was asked to generate."""

    def __init__(self, inner):
        self.inner, self.asked = inner, []
        self.name, self.model_fingerprint = "recording", inner.model_fingerprint

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, rendered, settings):
        self.asked += rendered
        return self.inner.generate(rendered, settings)


def test_cache_key_does_not_depend_on_the_backend(tiny, tmp_path):
    """Answers cached by one engine are served to another engine of the same weights (hf -> vllm)."""
    from msafety_bench.engines.hf import HfEngine

    hf = HfEngine(tiny, "fp")
    rendered = [hf.render(p, None) for p in ("How do I bake bread?", "Name a colour.", "Say hi.")]
    cache = ResponseCache(tmp_path / "r.sqlite")
    first = generate_cached(hf, rendered, SETTINGS, cache, "none", progress=False)
    other = RecordingEngine(HfEngine(tiny, "fp"))
    stats = GenerationStats()
    assert generate_cached(other, rendered, SETTINGS, cache, "none", progress=False, stats=stats) == first
    assert other.asked == [] and stats.cached == 3
    assert generate_cached(other, rendered, SETTINGS, cache, "edited", progress=False) == first
    assert len(other.asked) == 3  # another edit fingerprint is another key


def test_openai_replicas_share_the_requests():
    from msafety_bench.engines.openai import OpenAIEngine
    from msafety_bench.generation.remote import Endpoint

    one = OpenAIEngine([Endpoint("http://a:1/v1", "m")])
    assert one.model_fingerprint == "openai:m@http://a:1/v1"  # what single-server runs were cached under
    two = OpenAIEngine([Endpoint("http://b:1/v1", "m", concurrency=1), Endpoint("http://a:1/v1", "m", concurrency=2)])
    assert two.model_fingerprint == "openai:m@http://a:1/v1|http://b:1/v1"
    assert [len(b) for b in two.batches([json.dumps([{"role": "user", "content": str(i)}]) for i in range(30)],
                                        SETTINGS)] == [12, 12, 6]


def test_xdist_is_refused_for_the_suites_in_one_line(suites, tmp_path):
    result = suites.runpytest_subprocess("-n", "2", "--model", "tiny-qwen2", "--results-dir", str(tmp_path / "r"),
                                         "-p", "no:cacheprovider")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*msafety-bench: the suites share one run*drop -n*"])
    assert "Traceback" not in result.stderr.str()
    assert not (tmp_path / "r").exists()


def test_xdist_still_runs_other_tests(pytester):
    pytester.makepyfile(test_plain="def test_one():\n    assert 1\n\ndef test_two():\n    assert 2\n")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_weights_travel_to_vllm_workers_bit_for_bit():
    """The vLLM push sends (dtype, shape, bytes): every dtype an engine computes in comes back exact,
    NaN payloads and negative zero included (a cast through float32 or a text form would not)."""
    import torch

    from msafety_bench.engines.vllm_worker import pack, unpack

    base = torch.tensor([[0.0, -0.0, 1e-40, float("nan")], [3.5, -2.25, 1e30, float("-inf")]])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        tensor = base.to(dtype)
        dtype_name, shape, data = pack(tensor.T)  # a transposed (non-contiguous) view too
        assert (dtype_name, shape) == (str(dtype).removeprefix("torch."), [4, 2]) and isinstance(data, bytes)
        back = unpack(dtype_name, shape, data)
        assert back.dtype == dtype
        assert torch.equal(back.reshape(-1).view(torch.uint8), tensor.T.contiguous().reshape(-1).view(torch.uint8))
