"""The results file: one versioned JSON document per run, written to ``<results-dir>/<run-id>.json``.

It holds everything needed to rebuild a table or a report later without the model: the run's model
and fingerprint, editor and config, dataset, judge, generation settings, package versions, metrics
per language and every sample.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import secrets
from importlib import metadata
from pathlib import Path

from msafety_bench.data.languages import language_name
from msafety_bench.errors import UsageError
from msafety_bench.metrics import MIN_USABLE_HARMLESS, tier_means
from msafety_bench.safeio import atomic_write_text, child_path

SCHEMA = "msafety-bench/results"
SCHEMA_VERSION = 1
VERSIONED_PACKAGES = ("msafety-bench", "torch", "transformers", "datasets", "accelerate", "peft", "lm_eval")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def make_run_id(model: str, editor: str, when: dt.datetime) -> str:
    """Time, model and editor for the reader, plus a random suffix: two runs started in the same second
    (say, one per language group into one results folder) never share an id."""
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "-", f"{model}-{editor}").strip("-.")[:60]
    return f"{when.strftime('%Y%m%dT%H%M%S')}-{slug}-{secrets.token_hex(3)}"


def build_results(run, tests: dict[str, str] | None = None) -> dict:
    opts = run.options
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run_id": make_run_id(Path(str(run.meta["model"]["name"])).name, opts.editor, now),
        "created": now.isoformat(timespec="seconds"),
        **run.meta,
        "dataset": {"spec": opts.dataset, "languages": run.languages, "limit": opts.limit,
                    "n_samples": len(run.samples)},
        "generation": {**opts.generation_settings().__dict__,
                       "prompts": run.stats.requested, "from_cache": run.stats.cached,
                       "generated": run.stats.generated, "batches": run.stats.batches,
                       "cache": None if opts.no_cache else "sqlite"},
        "versions": package_versions(),
        "metrics": metrics_section(run.metrics),
        "tests": tests or {},
        "samples": run.samples,
    }


def metrics_section(metrics: dict) -> dict:
    """The results file's ``metrics``: per-language figures with the language's name, and tier means."""
    return {"languages": {lang: {"name": language_name(lang), **m.to_dict()} for lang, m in metrics.items()},
            "tier_mean_asr": tier_means(metrics)}


def write_results(results: dict, results_dir: str | Path) -> Path:
    """``<results_dir>/<run_id>.json``, written atomically; a run id that would leave the folder (taken
    from a file, it may hold ``..`` or a path) or an existing file is refused, never overwritten."""
    path = child_path(results_dir, str(results["run_id"]), ".json")
    text = json.dumps(results, ensure_ascii=False, indent=1, default=_jsonable)
    try:
        return atomic_write_text(path, text, overwrite=False)
    except FileExistsError:
        raise UsageError(f"results file '{path}' exists already: refusing to overwrite it "
                         "(move it away or choose another folder)") from None


def read_results(path: str | Path, answers_only: bool = False) -> dict:
    """A results file, checked against its schema (only what re-judging needs with ``answers_only``);
    any problem is one UsageError naming the file and the first bad path."""
    from msafety_bench.schema import RESULTS, RESULTS_ANSWERS, validate

    data = read_json_file(path, "results file", "pass a results file written by the suites")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UsageError(f"results file '{path}' is not an msafety-bench results file (no \"schema\": "
                         f"\"{SCHEMA}\"): pass a file from --results-dir")
    validate(data, RESULTS_ANSWERS if answers_only else RESULTS, f"results file '{path}'", "the file was edited or truncated; rerun or restore it")
    return data


def read_json_file(path: str | Path, what: str, fix: str):
    """Parsed JSON of a file the user named, or a UsageError saying which file and why not."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} '{path}' does not exist: {fix}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} '{path}': {exc.strerror or exc}: {fix}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UsageError(f"{what} '{path}' is not UTF-8 (byte {exc.start}, line {line}): {fix}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if hasattr(exc, "lineno") else ""
        raise UsageError(f"{what} '{path}' is not valid JSON{where}: {fix}") from None


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def summary_table(run, corrected: dict | None = None) -> list[str]:
    """Plain-text table for the terminal: language, tier, n, ASR [95% CI], judge-corrected ASR [95% CI]
    (when ``corrected`` maps languages to CorrectedASR), refused, invalid, usable answers to harmless
    prompts, over-refusal; languages where the model gave usable answers to fewer than half of the
    harmless prompts are marked with a dagger."""
    corr_head = f" {'corrected':>9} {'[95% CI]':<15}" if corrected is not None else ""
    head = (f"{'lang':<5} {'tier':<5} {'n':>4}  {'ASR':>6} {'[95% CI]':<15}{corr_head} {'refused':>7} {'invalid':>7}  "
            f"{'usable':>6}  {'over-refusal':>12}")
    lines = [head, "-" * len(head)]
    notes: dict[tuple[str, str], list[str]] = {}  # ("raw only" or "corrected", note) -> languages
    for lang, m in run.metrics.items():
        lo, hi = m.asr_ci
        ci = f"[{100 * lo:4.1f}, {100 * hi:5.1f}]" if m.n_harmful else ""
        mark = "†" if m.competent is False else ""
        corr = ""
        if corrected is not None:
            c = corrected[lang]
            if c.value is None:
                corr = f" {'raw only':>9} {'':<15}"
            else:
                corr = f" {_pct(c.value):>9} {f'[{100 * c.ci[0]:4.1f}, {100 * c.ci[1]:5.1f}]':<15}"
            if c.note:
                notes.setdefault(("raw only", c.note) if c.value is None else ("corrected", c.note), []).append(lang)
        lines.append(f"{lang + mark:<5} {m.tier:<5} {m.n_harmful:>4}  {_pct(m.asr)} {ci:<15}{corr} "
                     f"{m.harmful_refusals:>7} {m.harmful_invalid:>7}  {_pct(m.usable_harmless)}  {_pct(m.over_refusal):>12}")
    means = tier_means(run.metrics)
    if means:
        lines.append("mean ASR by tier: " + ", ".join(f"{t} {100 * v:.1f}%" for t, v in sorted(means.items())))
    for (kind, note), langs in notes.items():
        lines.append(f"{kind} ({', '.join(langs)}): {note}")
    if any(m.competent is False for m in run.metrics.values()):
        lines.append(f"† usable answers to under {100 * MIN_USABLE_HARMLESS:.0f}% of the harmless prompts: the model "
                     "does not work in this language, so its low ASR there is incompetence, not safety")
    return lines
