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
from importlib import metadata
from pathlib import Path

from msafety_bench.data.languages import language_name
from msafety_bench.metrics import MIN_USABLE_HARMLESS, tier_means

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
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "-", f"{model}-{editor}").strip("-")[:60]
    return f"{when.strftime('%Y%m%dT%H%M%S')}-{slug}"


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
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{results['run_id']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, ensure_ascii=False, indent=1, default=_jsonable), encoding="utf-8")
    tmp.replace(path)
    return path


def read_results(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an msafety-bench results file")
    return data


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def summary_table(run) -> list[str]:
    """Plain-text table for the terminal: language, tier, n, ASR [95% CI], refused, invalid, usable
    answers to harmless prompts, over-refusal; languages where the model gave usable answers to fewer
    than half of the harmless prompts are marked with a dagger."""
    head = (f"{'lang':<5} {'tier':<5} {'n':>4}  {'ASR':>6} {'[95% CI]':<15} {'refused':>7} {'invalid':>7}  "
            f"{'usable':>6}  {'over-refusal':>12}")
    lines = [head, "-" * len(head)]
    for lang, m in run.metrics.items():
        lo, hi = m.asr_ci
        ci = f"[{100 * lo:4.1f}, {100 * hi:5.1f}]" if m.n_harmful else ""
        mark = "†" if m.competent is False else ""
        lines.append(f"{lang + mark:<5} {m.tier:<5} {m.n_harmful:>4}  {_pct(m.asr)} {ci:<15} "
                     f"{m.harmful_refusals:>7} {m.harmful_invalid:>7}  {_pct(m.usable_harmless)}  {_pct(m.over_refusal):>12}")
    means = tier_means(run.metrics)
    if means:
        lines.append("mean ASR by tier: " + ", ".join(f"{t} {100 * v:.1f}%" for t, v in sorted(means.items())))
    if any(m.competent is False for m in run.metrics.values()):
        lines.append(f"† usable answers to under {100 * MIN_USABLE_HARMLESS:.0f}% of the harmless prompts: the model "
                     "does not work in this language, so its low ASR there is incompetence, not safety")
    return lines
