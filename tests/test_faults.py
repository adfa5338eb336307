"""The fuzz and fault matrix: random and valid-looking bad input into every loader and CLI verb, kill -9
while files are written, two runs into one folder, and a local server that fails in every usual way.
Each test's name says what it tries. Only tiny-qwen2 and servers on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msafety_bench.errors import UsageError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)


def _only_usage_errors(call) -> None:
    """``call`` either succeeds or raises a one-line UsageError; anything else is a crash."""
    try:
        call()
    except UsageError as exc:
        assert "\n" not in str(exc), str(exc)


# -- loaders: random bytes and valid-looking documents -------------------------------------------------
def _loaders(path):
    from msafety_bench.data import load_dataset_spec
    from msafety_bench.editing import check_editor_options
    from msafety_bench.gates import read_baseline
    from msafety_bench.judges.validation import read_labels
    from msafety_bench.results import read_results

    return [lambda: load_dataset_spec(f"csv:{path}"), lambda: load_dataset_spec(f"jsonl:{path}"),
            lambda: read_labels(str(path)), lambda: read_baseline(str(path)), lambda: read_results(path),
            lambda: read_results(path, answers_only=True), lambda: check_editor_options("sparse", [], str(path))]


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_into_every_loader_give_a_usage_error_or_nothing(tmp_path, data):
    path = tmp_path / "input"
    path.write_bytes(data)
    for load in _loaders(path):
        _only_usage_errors(load)


@FUZZ
@given(doc=JSON_VALUES, schema=st.sampled_from(["msafety-bench/results", "msafety-bench/baseline", None]))
def test_valid_json_of_any_shape_into_results_and_baseline_readers(tmp_path, doc, schema):
    if schema and isinstance(doc, dict):
        doc["schema"] = schema
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    for load in _loaders(path)[3:6]:
        _only_usage_errors(load)


CELLS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@FUZZ
@given(rows=st.lists(st.lists(CELLS, min_size=0, max_size=6), max_size=5),
       header=st.sampled_from([["id", "lang", "prompt", "label"], ["prompt", "completion", "final_label"],
                               ["id", "lang", "prompt", "label", "category", "split"]]))
def test_valid_looking_csv_into_dataset_and_label_loaders(tmp_path, rows, header):
    import csv

    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    for load in _loaders(path)[:3]:
        _only_usage_errors(load)


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(["id", "lang", "prompt", "label", "split", "x"]), JSON_VALUES,
                                     max_size=6), max_size=4))
def test_valid_looking_jsonl_into_the_dataset_loader(tmp_path, rows):
    from msafety_bench.data import load_dataset_spec

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _only_usage_errors(lambda: load_dataset_spec(f"jsonl:{path}"))


@FUZZ
@given(config=st.dictionaries(st.sampled_from(["rank", "layer", "gamma", "lambda", "projection", "two_sided", "x"]),
                              JSON_VALUES, max_size=4))
def test_valid_looking_yaml_editor_configs(tmp_path, config):
    import yaml

    from msafety_bench.editing import check_editor_options

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(config))
    _only_usage_errors(lambda: check_editor_options("sparse", [], str(path)))


# -- CLI verbs: random bytes as every file argument ----------------------------------------------------
VERBS = [
    lambda f, out: ["summary", f],
    lambda f, out: ["report", f, "-o", out / "r.html"],
    lambda f, out: ["rejudge", f, "--out-dir", out],
    lambda f, out: ["judge-eval", "--labels", f, "--cache-dir", out],
    lambda f, out: ["leaderboard", f.parent, "-o", out / "l.html"],
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_random_files_into_every_cli_verb_exit_2_without_traceback(tmp_path, capsys, data):
    from msafety_bench.cli import main

    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    path = folder / "x.json"
    path.write_bytes(data)
    for verb in VERBS:
        code = main([str(a) for a in verb(path, tmp_path / "out")])
        err = capsys.readouterr().err
        assert code in (0, 2) and "Traceback" not in err, (verb(path, tmp_path), err)


def test_random_bytes_through_the_real_console_command(tmp_path):
    path = tmp_path / "junk.json"
    path.write_bytes(os.urandom(256))
    for verb in VERBS:
        proc = subprocess.run([sys.executable, "-m", "msafety_bench.cli", *map(str, verb(path, tmp_path / "o"))],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- kill -9 while writing -----------------------------------------------------------------------------
WRITER = """
import sys
from pathlib import Path
from msafety_bench.safeio import atomic_write_text
from msafety_bench.results import write_results
folder = Path(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    i += 1
    write_results({"run_id": f"run-{i}", "samples": ["x" * 200] * 2000}, folder)
    atomic_write_text(folder / "baseline.json", '{"n": %d, "pad": "%s"}' % (i, "y" * 400000))
"""

ARTIFACT_WRITER = """
import sys, torch
from pathlib import Path
from msafety_bench.editing import EditorConfig, NullEdit, _save_artifact
folder = Path(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    i += 1
    _save_artifact(folder, {"w": torch.full((512, 512), float(i))}, NullEdit("e", EditorConfig(), f"fp{i}", {"i": i}))
"""


def _kill_while_running(script, folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(seconds)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("delay", [0.3, 0.77, 1.31])
def test_kill_9_while_writing_results_and_baselines_leaves_only_whole_files(tmp_path, delay):
    _kill_while_running(WRITER, tmp_path, delay)
    results = sorted(tmp_path.glob("run-*.json"))
    for path in results:
        assert len(json.loads(path.read_text())["samples"]) == 2000
    if (tmp_path / "baseline.json").exists():
        assert json.loads((tmp_path / "baseline.json").read_text())["n"] >= 1


@pytest.mark.parametrize("delay", [0.4, 0.93])
def test_kill_9_while_writing_an_edit_artifact_then_reading_it_back(tmp_path, delay):
    from msafety_bench.editing import _load_artifact

    _kill_while_running(ARTIFACT_WRITER, tmp_path, delay)
    if (tmp_path / "edit.json").exists():
        tensors, meta = _load_artifact(tmp_path)  # a whole card and whole tensors, never half of one
        assert tensors["w"].shape == (512, 512) and meta["fingerprint"].startswith("fp")


def _suite_args(tmp_path, cache, results, *extra):
    return ["--model", "tiny-qwen2", "--limit", "6", "--max-new-tokens", "6", "--batch-size", "1",
            "--results-dir", str(results), "--cache-dir", str(cache), "--no-progress", "-p", "no:cacheprovider",
            *extra]


def _rows(db):
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_kill_9_during_generation_then_rerun_gives_the_uninterrupted_results(suites, tmp_path):
    args = _suite_args(tmp_path, tmp_path / "cache", tmp_path / "results", "--languages", "en,bn")
    popen = suites.popen([sys.executable, "-m", "pytest", "-p", "pytester", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _rows(tmp_path / "cache" / "responses.sqlite") < 2 and time.time() < deadline and popen.poll() is None:
        time.sleep(0.05)
    os.kill(popen.pid, signal.SIGKILL)
    popen.wait()
    cached = _rows(tmp_path / "cache" / "responses.sqlite")
    assert 2 <= cached < 24, "the kill must land after some batches and before the last"
    assert not list((tmp_path / "results").glob("*.json"))
    rerun = suites.runpytest_inprocess(*args)
    rerun.assert_outcomes(passed=4)
    rerun.stdout.fnmatch_lines([f"generation: 24 prompts, {cached} from cache, {24 - cached} generated"])
    clean = suites.runpytest_inprocess(*_suite_args(tmp_path, tmp_path / "fresh", tmp_path / "fresh-results",
                                                     "--languages", "en,bn"))
    clean.assert_outcomes(passed=4)

    def samples(folder):
        data = json.loads(next(folder.glob("*.json")).read_text())
        return [(s["id"], s["lang"], s["response"], s["verdict"]) for s in data["samples"]]

    assert samples(tmp_path / "results") == samples(tmp_path / "fresh-results")


def test_two_different_runs_at_once_on_one_cache_and_one_results_folder(suites, tmp_path):
    procs = [suites.popen([sys.executable, "-m", "pytest", "-p", "pytester",
                           *_suite_args(tmp_path, tmp_path / "cache", tmp_path / "results", "--languages", langs)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
             for langs in ("en", "bn")]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    files = sorted((tmp_path / "results").glob("*.json"))
    assert len(files) == 2
    assert sorted(json.loads(f.read_text())["dataset"]["languages"][0] for f in files) == ["bn", "en"]


# -- a server that fails ------------------------------------------------------------------------------
class FlakyServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint whose answer to the n-th request is ``plan(n)``: ok, 500,
    429 (with Retry-After: 1), drop (connection closed without an answer) or slow (3 s)."""

    plan = staticmethod(lambda n: "ok")
    lock = threading.Lock()
    count = 0
    in_flight = 0
    peak_after_429 = 0
    saw_429 = False

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cls = type(self)
        with cls.lock:
            cls.count += 1
            action = cls.plan(cls.count)
            cls.in_flight += 1
            if cls.saw_429:
                cls.peak_after_429 = max(cls.peak_after_429, cls.in_flight)
        try:
            self._answer(action)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
            pass
        finally:
            with cls.lock:
                cls.in_flight -= 1
                cls.saw_429 = cls.saw_429 or action == "429"

    def _answer(self, action):
        if action == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if action == "slow":
            time.sleep(3)
        time.sleep(0.1)  # so concurrent requests overlap and concurrency can be observed
        status = {"500": 500, "429": 429}.get(action, 200)
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "fine"}}]}
                          if status == 200 else {"error": {"message": action}}).encode()
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky():
    handler = type("Handler", (FlakyServer,), {"count": 0, "in_flight": 0, "peak_after_429": 0, "saw_429": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _ask(url, n, concurrency=1, timeout=10.0, retries=4):
    from msafety_bench.generation.cache import ResponseCache
    from msafety_bench.engines.openai import chat_many
    from msafety_bench.generation.remote import Endpoint

    endpoint = Endpoint(url, "m", concurrency=concurrency, timeout_s=timeout, max_retries=retries)
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(n)]
    return chat_many(endpoint, conversations, max_tokens=4, seed=0, cache=ResponseCache(None), cache_tag="t",
                     progress=False)


@pytest.mark.parametrize("failure", ["500", "drop"])
def test_server_failing_twice_then_answering_is_retried(flaky, failure):
    handler, url = flaky
    handler.plan = staticmethod(lambda n: failure if n <= 2 else "ok")
    assert _ask(url, 3) == ["fine"] * 3
    assert handler.count == 5


def test_429_with_retry_after_waits_and_lowers_the_concurrency(flaky):
    handler, url = flaky
    handler.plan = staticmethod(lambda n: "429" if n == 1 else "ok")
    started = time.time()
    assert _ask(url, 12, concurrency=4) == ["fine"] * 12
    assert time.time() - started >= 1.0  # Retry-After was honoured
    # Requests already in flight when the 429 is sent, or started before the client reads it, still
    # count here: under load up to 3 can overlap, never the full 4 again.
    assert handler.peak_after_429 <= 3


def test_a_429_halves_the_requests_in_flight_down_to_one():
    from msafety_bench.generation.remote import Throttle

    throttle = Throttle(4)
    throttle.lower()
    assert throttle.limit == 2
    entered, release = [], threading.Event()

    def hold():
        with throttle.slot():
            entered.append(1)
            release.wait(5)

    workers = [threading.Thread(target=hold) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    assert len(entered) == 2  # the third waits for a free slot
    release.set()
    for w in workers:
        w.join(5)
    assert len(entered) == 3
    throttle.lower()
    throttle.lower()
    assert throttle.limit == 1


def test_server_always_failing_is_one_line_after_bounded_retries(flaky):
    handler, url = flaky
    handler.plan = staticmethod(lambda n: "500")
    with pytest.raises(UsageError, match=r"request to http://127.0.0.1:\d+/v1 \(model 'm'\) failed after retries") as info:
        _ask(url, 1, retries=2)
    assert "\n" not in str(info.value) and handler.count == 3


def test_slow_server_times_out_with_bounded_retries(flaky):
    handler, url = flaky
    handler.plan = staticmethod(lambda n: "slow")
    started = time.time()
    with pytest.raises(UsageError, match="APITimeoutError"):
        _ask(url, 1, timeout=0.5, retries=1)
    assert handler.count == 2 and time.time() - started < 5


def test_failing_server_in_a_suite_run_exits_4_with_one_line(suites, flaky, tmp_path):
    handler, url = flaky
    handler.plan = staticmethod(lambda n: "500")
    result = suites.runpytest_inprocess("--backend", "openai", "--base-url", url, "--served-model", "m",
                                         "--languages", "en", "--limit", "1", "--results-dir", str(tmp_path / "r"),
                                         "--cache-dir", str(tmp_path / "c"), "--no-progress", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*msafety-bench: request to * failed after retries: InternalServerError*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
