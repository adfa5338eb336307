"""The pytest plugin: options, per-language parametrisation, the shared run, summary and results file.

Import-light on purpose: it is loaded by every pytest run in the environment, so torch and
transformers are imported only when a suite asks for the ``msb`` fixture.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest

from msafety_bench.errors import UsageError

RUN_KEY = pytest.StashKey["MsbSession"]()


class MsbWarning(UserWarning):
    """Something about the measurement a reader must know (e.g. most answers were invalid)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("msafety-bench", "multilingual safety benchmark")
    g.addoption("--model", default="smollm2", help="model alias, hub id or local folder (default smollm2)")
    g.addoption("--editor", default="none", help="editor name, or a+b to compose (default none)")
    g.addoption("--editor-opt", action="append", default=[], metavar="KEY=VALUE",
                help="editor option, repeatable; editor.key=value when composing")
    g.addoption("--editor-config", default=None, metavar="FILE.yaml", help="editor options from YAML")
    g.addoption("--dataset", default="msb-core",
                help="msb-core, multijail[:FILE], strongreject[:FILE], csv:FILE or jsonl:FILE")
    g.addoption("--languages", default=None, help="comma list of language codes and/or tiers hrl,mrl,lrl")
    g.addoption("--limit", type=int, default=None, help="prompts per language and label")
    g.addoption("--judge", default="refusal", help="judge name (default refusal)")
    g.addoption("--max-new-tokens", type=int, default=96)
    g.addoption("--batch-size", type=int, default=64, help="prompts per generation batch (default 64)")
    g.addoption("--seed", type=int, default=0)
    g.addoption("--system-prompt", default=None, help="system message (default: the chat template's own)")
    g.addoption("--results-dir", default="results", help="where <run-id>.json is written")
    g.addoption("--cache-dir", default=None, help="cache folder (default $MSB_CACHE_DIR or ~/.cache/msafety-bench)")
    g.addoption("--no-cache", action="store_true", help="neither read nor write the response cache")
    g.addoption("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.addoption("--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    g.addoption("--trust-remote-code", action="store_true", help="allow model code from the hub")
    g.addoption("--max-asr", type=float, default=None, help="fail a language whose ASR exceeds this (0-1)")
    g.addoption("--max-over-refusal", type=float, default=None,
                help="fail a language whose over-refusal exceeds this (0-1)")
    g.addoption("--no-progress", action="store_true", help="hide progress bars")


class MsbSession:
    """The run shared by all suite tests of a pytest session, created lazily on first use."""

    def __init__(self, config: pytest.Config):
        from msafety_bench.pipeline import RunOptions

        opt = config.getoption
        self.options = RunOptions(
            model=opt("model"), editor=opt("editor"), editor_opts=list(opt("editor_opt")),
            editor_config=opt("editor_config"), dataset=opt("dataset"), languages=opt("languages"),
            limit=opt("limit"), judge=opt("judge"), max_new_tokens=opt("max_new_tokens"),
            batch_size=opt("batch_size"), seed=opt("seed"), system_prompt=opt("system_prompt"),
            results_dir=opt("results_dir"), cache_dir=opt("cache_dir"), no_cache=opt("no_cache"),
            device=opt("device"), dtype=opt("dtype"), trust_remote_code=opt("trust_remote_code"),
            progress=not opt("no_progress"),
        )
        self.max_asr = opt("max_asr")
        self.max_over_refusal = opt("max_over_refusal")
        for name, value in (("--max-asr", self.max_asr), ("--max-over-refusal", self.max_over_refusal)):
            if value is not None and not 0 <= value <= 1:
                raise UsageError(f"{name} must be a share between 0 and 1, got {value}")
        self.options.check()
        self._run = None
        self.outcomes: dict[str, str] = {}
        self.collection_error: UsageError | None = None
        self.results_path = None

    @property
    def run(self):
        if self._run is None:
            from msafety_bench.pipeline import BenchRun

            self._run = BenchRun(self.options)
        return self._run

    @property
    def executed(self) -> bool:
        return self._run is not None and self._run.executed

    # -- hooks: this object is registered as a plugin, so pytest calls them on it ------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome

    def pytest_sessionfinish(self) -> None:
        """Write the results file whatever the tests' outcome: a failed gate still leaves its evidence."""
        if not self.executed:
            return
        from msafety_bench.results import build_results, write_results

        self.results_path = write_results(build_results(self.run, self.outcomes), self.options.results_dir)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.executed:
            return
        from msafety_bench.results import summary_table

        run, tr = self.run, terminalreporter
        tr.section(f"msafety-bench: {run.options.model} / editor {run.options.editor} / judge {run.options.judge}")
        for line in summary_table(run):
            tr.write_line(line)
        stats = run.stats
        tr.write_line(f"generation: {stats.requested} prompts, {stats.cached} from cache, "
                      f"{stats.generated} generated")
        if self.results_path:
            tr.write_line(f"results: {self.results_path}")


def pytest_configure(config: pytest.Config) -> None:
    try:
        session = MsbSession(config)
    except UsageError as exc:
        raise pytest.UsageError(f"msafety-bench: {exc}") from None
    config.stash[RUN_KEY] = session
    config.pluginmanager.register(session, "msafety-bench-session")


def _usage_exit(exc: UsageError):
    pytest.exit(f"msafety-bench: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``msb_lang``: every chosen language; ``msb_harmless_lang``: those with harmless eval prompts
    (harmful-only datasets such as MultiJail get no over-refusal tests, shown as an empty set)."""
    for name in ("msb_lang", "msb_harmless_lang"):
        if name in metafunc.fixturenames:
            session = metafunc.config.stash[RUN_KEY]
            try:
                langs = session.run.languages if name == "msb_lang" else session.run.languages_with("harmless")
            except UsageError as exc:
                session.collection_error = exc  # reported as a usage error once collection ends
                langs = []
            metafunc.parametrize(name, langs, ids=langs)


def pytest_collection_modifyitems(config: pytest.Config) -> None:
    error = config.stash[RUN_KEY].collection_error
    if error is not None:
        raise pytest.UsageError(f"msafety-bench: {error}")


@pytest.fixture(scope="session")
def msb(pytestconfig: pytest.Config):
    """The executed run: model loaded, edit applied, every language generated and judged once."""
    session = pytestconfig.stash[RUN_KEY]
    run = session.run
    if not session.executed:
        # Output capture is suspended so the progress bars reach the terminal.
        capture = pytestconfig.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            try:
                run.execute()
            except UsageError as exc:
                _usage_exit(exc)
    return session


def warn_if_mostly_invalid(lang: str, invalid: int, n: int) -> None:
    if n and invalid / n > 0.5:
        warnings.warn(MsbWarning(
            f"{lang}: {invalid}/{n} answers were invalid (empty, echo or repetition): the model does not "
            f"produce usable text in this language, so its ASR says little about safety"))


