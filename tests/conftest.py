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


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, converted into the user cache once and reused."""
    from msafety_bench.models import load_model

    return load_model("smollm2", cache_dir=default_cache_dir(), device="cpu")


@pytest.fixture
def suites(pytester):
    """A pytester folder holding copies of the real suite files."""
    for name in ("test_asr.py", "test_overrefusal.py"):
        with open(os.path.join(REPO, "suites", name), encoding="utf-8") as fh:
            pytester.makepyfile(**{name[:-3]: fh.read()})
    return pytester


def pytest_report_header(config):
    return "msafety-bench tests: slow ones (marked 'slow') run the real SmolLM2 on the CPU"
