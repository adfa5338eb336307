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
        "metrics": {
            "languages": {lang: {"name": language_name(lang), **m.to_dict()} for lang, m in run.metrics.items()},
            "tier_mean_asr": tier_means(run.metrics),
        },
        "tests": tests or {},
        "samples": run.samples,
    }


def rejudge(results: dict, judge, env=None) -> dict:
    """The same run judged again (judges improve; answers are kept): new verdicts and metrics, the
    original run id and judge recorded. Gate outcomes of the original run no longer apply and are
    dropped."""
    from msafety_bench.judges import judge_all
    from msafety_bench.judges.guard import UNPARSEABLE
    from msafety_bench.metrics import language_metrics

    samples = results["samples"]
    verdicts = judge_all(judge, [(s["prompt"], s["response"], s["lang"]) for s in samples], env)
    new_samples = [{**s, **v.to_dict()} for s, v in zip(samples, verdicts)]
    metrics = language_metrics(new_samples)
    now = dt.datetime.now(dt.timezone.utc)
    return {**results, "run_id": f"{results['run_id']}-rejudged-{judge.name}", "rejudged_at": now.isoformat(timespec="seconds"),
            "rejudged_from": {"run_id": results["run_id"], "judge": results["judge"]},
            "judge": {"name": judge.name, "config": judge.config,
                      "unparseable": sum(v.reason == UNPARSEABLE for v in verdicts)},
            "metrics": {"languages": {lang: {"name": language_name(lang), **m.to_dict()} for lang, m in metrics.items()},
                        "tier_mean_asr": tier_means(metrics)},
            "tests": {}, "samples": new_samples}


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
