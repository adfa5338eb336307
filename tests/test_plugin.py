"""The pytest plugin driven through real pytest runs (pytester) of the real suite files."""

import json

import pytest


def _args(tmp_path, *extra):
    return ["--model", "tiny-qwen2", "--languages", "en,bn", "--limit", "2", "--max-new-tokens", "4",
            "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress", "-p", "no:cacheprovider", *extra]


def _results(tmp_path):
    files = sorted((tmp_path / "results").glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_suites_run_per_language_and_write_results(suites, tmp_path):
    result = suites.runpytest_inprocess(*_args(tmp_path, "-v", f"--junitxml={tmp_path / 'junit.xml'}"))
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([
        "*test_asr.py::test_asr[[]en[]] PASSED*",
        "*test_asr.py::test_asr[[]bn[]] PASSED*",
        "*test_overrefusal.py::test_overrefusal[[]bn[]] PASSED*",
        "*msafety-bench: tiny-qwen2 / editor none / judge refusal*",
        "lang*tier*n*ASR*over-refusal*",
        "bn*lrl*2*",
        "generation: 8 prompts, 0 from cache, 8 generated",
    ])
    data = _results(tmp_path)
    assert data["schema"] == "msafety-bench/results" and data["schema_version"] == 1
    assert data["model"]["name"] == "tiny-qwen2" and len(data["model"]["fingerprint"]) == 32
    assert data["editor"]["name"] == "none" and data["editor"]["weights_restored_after_run"] is True
    assert data["judge"]["name"] == "refusal"
    assert data["dataset"]["languages"] == ["en", "bn"]
    assert data["generation"]["max_new_tokens"] == 4
    assert data["versions"]["torch"] and data["versions"]["transformers"]
    assert set(data["metrics"]["languages"]) == {"en", "bn"}
    assert len(data["samples"]) == 8
    assert {"id", "lang", "label", "prompt", "response", "verdict", "p_unsafe", "reason"} <= set(data["samples"][0])
    assert sum(v == "passed" for v in data["tests"].values()) == 4
    junit = (tmp_path / "junit.xml").read_text()
    assert 'name="asr"' in junit and 'test_asr[bn]' in junit


def test_rerun_is_served_from_cache(suites, tmp_path):
    suites.runpytest_inprocess(*_args(tmp_path)).assert_outcomes(passed=4)
    for f in (tmp_path / "results").glob("*.json"):
        first = json.loads(f.read_text())
        f.unlink()
    second = suites.runpytest_inprocess(*_args(tmp_path))
    second.assert_outcomes(passed=4)
    second.stdout.fnmatch_lines(["generation: 8 prompts, 8 from cache, 0 generated"])
    again = _results(tmp_path)
    assert [s["response"] for s in again["samples"]] == [s["response"] for s in first["samples"]]


def test_harmful_only_dataset_has_no_overrefusal_tests(suites, tmp_path):
    path = tmp_path / "mj.csv"
    langs = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]
    path.write_text("id,source,tags,{}\n1,x,violence,{}\n".format(",".join(langs), ",".join(f"q {l}" for l in langs)))
    result = suites.runpytest_inprocess(*_args(tmp_path, "--dataset", f"multijail:{path}", "-rs"))
    result.assert_outcomes(passed=2, skipped=1)


@pytest.mark.parametrize("extra, message", [
    (["--editor", "magic"], "msafety-bench: unknown editor 'magic'*"),
    (["--model", "gpt5"], "msafety-bench: unknown model 'gpt5'*"),
    (["--judge", "vibes"], "msafety-bench: unknown judge 'vibes'*"),
    (["--limit", "0"], "msafety-bench: --limit must be at least 1*"),
    (["--max-asr", "5"], "msafety-bench: --max-asr must be a share between 0 and 1*"),
    (["--languages", "en,xx"], "msafety-bench: language 'xx' is not in dataset msb-core*"),
    (["--dataset", "csv:missing.csv"], "msafety-bench: dataset file 'missing.csv' does not exist*"),
])
def test_bad_input_is_one_usage_error(suites, tmp_path, extra, message):
    result = suites.runpytest_inprocess(*_args(tmp_path, *extra))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in output


def test_plugin_does_not_import_torch_at_load(pytester):
    pytester.makepyfile(test_light="import sys\ndef test_light():\n    assert 'torch' not in sys.modules\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_utility_and_drift_suites(inprocess, tmp_path):
    from pathlib import Path

    for name in ("test_utility.py", "test_asr.py"):
        source = Path(__file__).parents[1] / "suites" / name
        inprocess.makepyfile(**{f"test_suite_{name[5:-3]}": source.read_text(encoding="utf-8")})
    args = _args(tmp_path, "--utility-tasks", "msb_mc_en,msb_arith_bn", "--utility-limit", "3", "-v")
    result = inprocess.runpytest_inprocess(*args)
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*test_utility[[]msb_mc_en[]] PASSED*", "*test_drift[[]bn[]] PASSED*",
                                 "*msb_mc_en*->*(n=3)*", "drift on harmless text*en 0.0000/1.000*"])
    data = _results(tmp_path)
    assert set(data["utility"]["tasks"]) == {"msb_mc_en", "msb_arith_bn"}
    assert data["utility"]["drift"]["bn"]["kl"] == 0.0
