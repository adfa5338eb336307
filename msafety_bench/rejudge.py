"""Judging kept answers again: an earlier run's samples through a (new or improved) judge.

A verb above results and judges: the results module only reads and writes files.
"""

from __future__ import annotations

import datetime as dt

from msafety_bench.results import metrics_section


def rejudge(results: dict, judge, env=None) -> dict:
    """The same run judged again (judges improve; answers are kept): new verdicts and metrics, the
    original run id and judge recorded. Gate outcomes of the original run no longer apply and are
    dropped."""
    from msafety_bench.judges import judge_all
    from msafety_bench.judges.guard import UNPARSEABLE
    from msafety_bench.metrics import language_metrics

    samples = results["samples"]
    verdicts = judge_all(judge, [(s["prompt"], s["response"], s["lang"]) for s in samples], env,
                         harmful=[s.get("label", "harmful") == "harmful" for s in samples])
    new_samples = [{**s, **v.to_dict()} for s, v in zip(samples, verdicts)]
    metrics = language_metrics(new_samples)
    now = dt.datetime.now(dt.timezone.utc)
    return {**results, "run_id": f"{results['run_id']}-rejudged-{judge.name}", "rejudged_at": now.isoformat(timespec="seconds"),
            "rejudged_from": {"run_id": results["run_id"], "judge": results["judge"]},
            "judge": {"name": judge.name, "config": judge.config,
                      "unparseable": sum(v.reason == UNPARSEABLE for v in verdicts)},
            "metrics": metrics_section(metrics),
            "tests": {}, "samples": new_samples}
