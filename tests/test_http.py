"""Generation and judging over HTTP against a real OpenAI-compatible server serving SmolLM2."""

import json
import os

from msafety_bench.pipeline import RunOptions
from msafety_bench.errors import UsageError

import pytest

SECRET = "sk-test-not-a-real-key-5f1c"


def _remote_args(tmp_path, base, model, *extra):
    return ["--backend", "openai", "--base-url", base, "--served-model", model, "--languages", "en,sw",
            "--limit", "1", "--max-new-tokens", "24", "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "-p", "no:cacheprovider", *extra]


@pytest.mark.slow
def test_suites_over_http_with_the_rubric_judge_over_http(suites, served_smollm2, tmp_path, monkeypatch):
    base, model = served_smollm2
    with open(os.path.join(os.path.dirname(__file__), "..", "suites", "test_utility.py"), encoding="utf-8") as fh:
        suites.makepyfile(test_suite_utility=fh.read())  # tests/ has a test_utility module
    monkeypatch.setenv("MSB_TEST_KEY", SECRET)
    judge = ["--judge", "llm-rubric", "--judge-url", base, "--judge-model", model,
             "--judge-opt", "key_env=MSB_TEST_KEY", "--judge-opt", "max_tokens=24"]
    result = suites.runpytest_inprocess(*_remote_args(tmp_path, base, model, *judge))
    result.assert_outcomes(passed=4, deselected=None)  # asr + over-refusal for en and sw
    result.stdout.fnmatch_lines([f"*msafety-bench: {model} / editor none / judge llm-rubric*",
                                 "generation: 4 prompts, 0 from cache, 4 generated",
                                 "*utility and drift tests deselected: --backend openai*"])
    files = sorted((tmp_path / "results").glob("*.json"))
    text = files[0].read_text()
    data = json.loads(text)
    assert SECRET not in text
    assert data["backend"] == "openai" and data["model"]["kind"] == "openai" and data["model"]["name"] == model
    assert data["editor"]["name"] == "none"
    assert data["judge"]["name"] == "llm-rubric" and data["judge"]["config"]["key_env"] == "MSB_TEST_KEY"
    assert set(data["metrics"]["languages"]) == {"en", "sw"} and len(data["samples"]) == 4
    for s in data["samples"]:
        assert s["response"] and s["raw"] is not None  # the grader's own text is kept for every sample
        assert s["verdict"] in ("unsafe", "refusal", "invalid")
    print("rubric outputs:", [s["raw"] for s in data["samples"]], "unparseable:", data["judge"]["unparseable"])
    # The same run again is served from the cache: no request reaches the server.
    files[0].unlink()
    again = suites.runpytest_inprocess(*_remote_args(tmp_path, base, model, *judge))
    again.assert_outcomes(passed=4)
    again.stdout.fnmatch_lines(["generation: 4 prompts, 4 from cache, 0 generated"])
    second = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert [s["response"] for s in second["samples"]] == [s["response"] for s in data["samples"]]
    assert [s["raw"] for s in second["samples"]] == [s["raw"] for s in data["samples"]]


def test_weight_editors_need_a_local_model(suites, tmp_path):
    result = suites.runpytest_inprocess(*_remote_args(tmp_path, "http://127.0.0.1:9/v1", "m", "--editor", "sparse"))
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--editor sparse changes weights and needs them here*msafety-bench export*"])
    assert "Traceback" not in result.stderr.str()


def test_remote_backend_needs_url_and_model():
    with pytest.raises(UsageError, match="needs --base-url"):
        RunOptions(backend="openai").check()
    with pytest.raises(UsageError, match="must start with http"):
        RunOptions(backend="openai", base_url="127.0.0.1:8000", served_model="m").check()
    with pytest.raises(UsageError, match="unknown backend 'grpc'"):
        RunOptions(backend="grpc").check()


def test_unreachable_server_is_one_clear_error(suites, tmp_path):
    result = suites.runpytest_inprocess(*_remote_args(tmp_path, "http://127.0.0.1:9/v1", "m",
                                                       "--request-timeout", "2"))
    assert result.ret == 4
    result.stdout.fnmatch_lines(["*request to http://127.0.0.1:9/v1 (model 'm') failed after retries*"])
