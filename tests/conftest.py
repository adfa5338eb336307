"""Shared fixtures. Nothing here reaches the network: the hub is switched off for every test."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

from msafety_bench.paths import default_cache_dir  # noqa: E402

pytest_plugins = ["pytester"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny():
    """The random tiny Qwen2 (real Qwen tokenizer), loaded once per session."""
    from msafety_bench.models import load_model

    return load_model("tiny-qwen2", device="cpu")


@pytest.fixture
def context(tiny, tmp_path):
    """An editor's fit context on tiny-qwen2, caching into the test's own folder."""
    from msafety_bench.editing import FitContext
    from msafety_bench.models.fingerprint import model_fingerprint

    return FitContext(model_fingerprint(tiny.model), tmp_path, seed=0, progress=False)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, converted into the user cache once and reused."""
    from msafety_bench.models import load_model

    return load_model("smollm2", cache_dir=default_cache_dir(), device="cpu")


from _pytest.pytester import SysModulesSnapshot as _SysModulesSnapshot  # noqa: E402


class _KeepLibraries:
    """pytester's module snapshot for in-process runs that keeps every library a run imported and
    drops only the run's own test modules: pytester drops all of them after each run, and torch
    cannot be imported a second time in one process (its operator registry stays)."""

    def __init__(self, preserve=None):
        self._snapshot = _SysModulesSnapshot(preserve=lambda name: not name.startswith(("test_", "conftest")))

    def restore(self) -> None:
        self._snapshot.restore()


@pytest.fixture
def inprocess(pytester, monkeypatch):
    """pytester whose ``runpytest_inprocess`` runs keep torch and transformers imported: seconds instead
    of the ~7 s a fresh interpreter spends importing them (tests of process-level behaviour keep
    subprocesses). Files it runs need names no module of tests/ has: both live in one process."""
    import _pytest.pytester

    monkeypatch.setattr(_pytest.pytester, "SysModulesSnapshot", _KeepLibraries)  # taken around each run
    pytester._sys_modules_snapshot = _KeepLibraries()  # restored when the test ends
    return pytester


@pytest.fixture
def suites(inprocess):
    """A pytester folder holding copies of the real suite files (see ``inprocess``)."""
    for name in ("test_asr.py", "test_overrefusal.py"):
        with open(os.path.join(REPO, "suites", name), encoding="utf-8") as fh:
            inprocess.makepyfile(**{name[:-3]: fh.read()})
    return inprocess


def pytest_addoption(parser):
    parser.addoption("--bench-full", action="store_true",
                     help="run the benchmark-style SmolLM2 tests at full size (make bench-sparse); "
                          "without it they run the reduced form CI keeps")


@pytest.fixture(scope="session")
def bench_full(pytestconfig) -> bool:
    return pytestconfig.getoption("bench_full")


def pytest_report_header(config):
    return "msafety-bench tests: slow ones (marked 'slow') run the real SmolLM2 on the CPU"


@pytest.fixture(scope="session")
def served_smollm2(smollm2):
    """SmolLM2 behind a real OpenAI-compatible server (`transformers serve`) on 127.0.0.1, started once
    and stopped by process id at the end, also when a test fails. Yields (base_url, served model name)."""
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    import urllib.request

    from msafety_bench.models.builtin import smollm2_folder

    folder = str(smollm2_folder(default_cache_dir()))
    # The `transformers` console script through this interpreter: the venv need not be on PATH.
    serve = [sys.executable, "-m", "transformers.cli.transformers", "serve"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(tempfile.gettempdir(), f"msb-serve-{port}.log"), "w")
    proc = subprocess.Popen([*serve, folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT,
                            # Some transformers releases list /v1/models from the hub cache and fail when
                            # that folder does not exist: give the server an empty one.
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": tempfile.mkdtemp(prefix="msb-hub-")},
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"transformers serve did not come up (exit code {proc.poll()}), see {log.name}")
                time.sleep(1)
        yield base, folder
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
