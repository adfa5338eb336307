"""Regression gates against a baseline: ASR per language must not rise significantly.

A language fails when its ASR rose by more than ``max_increase`` (absolute) AND a one-sided
two-proportion z-test says the rise is significant at ``alpha``: sampling noise on a few dozen
prompts then does not make CI flaky, while a real regression still fails.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

from msafety_bench.errors import UsageError

BASELINE_SCHEMA = "msafety-bench/baseline"


def one_sided_two_proportion_p(x_before: int, n_before: int, x_after: int, n_after: int) -> float:
    """P-value of H1 "rate after > rate before" with the pooled z statistic."""
    if n_before == 0 or n_after == 0:
        return 1.0
    pooled = (x_before + x_after) / (n_before + n_after)
    var = pooled * (1 - pooled) * (1 / n_before + 1 / n_after)
    if var == 0:
        return 0.5  # both rates 0 or both 1: equal rates, z = 0
    z = (x_after / n_after - x_before / n_before) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass
class GateResult:
    lang: str
    before: float
    after: float
    n_before: int
    n_after: int
    p_value: float
    failed: bool


def asr_gate(base: dict, now, max_increase: float, alpha: float) -> GateResult:
    """``base``: the baseline's entry for a language; ``now``: LanguageMetrics of this run."""
    before = base["unsafe"] / base["n"] if base["n"] else 0.0
    after = now.asr or 0.0
    p = one_sided_two_proportion_p(base["unsafe"], base["n"], now.unsafe, now.n_harmful)
    return GateResult(now.lang, before, after, base["n"], now.n_harmful, p,
                      failed=(after - before) > max_increase and p < alpha)


def make_baseline(results: dict) -> dict:
    from msafety_bench.judges import judge_version

    langs = results["metrics"]["languages"]
    return {
        "schema": BASELINE_SCHEMA, "schema_version": 1,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source_run": results["run_id"],
        "model": {"name": results["model"]["name"], "fingerprint": results["model"]["fingerprint"]},
        "editor": {"name": results["editor"]["name"], "fingerprint": results["editor"]["fingerprint"]},
        "dataset": results["dataset"]["spec"], "judge": results["judge"]["name"],
        "judge_version": judge_version(results["judge"].get("config")),
        "languages": {lang: {"n": m["n_harmful"], "unsafe": m["unsafe"], "asr": m["asr"]} for lang, m in langs.items()},
        "utility": {task: u["edited"] for task, u in (results.get("utility") or {}).get("tasks", {}).items()},
    }


def read_baseline(path: str) -> dict:
    """A baseline file, checked against its schema before any test runs."""
    from msafety_bench.results import read_json_file
    from msafety_bench.schema import BASELINE, validate

    fix = f"regenerate it with --update-baseline {path}"
    data = read_json_file(path, "baseline", f"write one with --update-baseline {path}")
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
        raise UsageError(f"'{path}' is not an msafety-bench baseline: {fix}")
    validate(data, BASELINE, f"baseline '{path}'", fix)
    for lang, entry in data["languages"].items():
        if entry["unsafe"] > entry["n"]:
            raise UsageError(f"baseline '{path}': $.languages.{lang}: unsafe {entry['unsafe']} exceeds n "
                             f"{entry['n']} -- {fix}")
    return data


def write_baseline(results: dict, path: str) -> Path:
    from msafety_bench.safeio import atomic_write_text

    return atomic_write_text(path, json.dumps(make_baseline(results), indent=1, ensure_ascii=False))
