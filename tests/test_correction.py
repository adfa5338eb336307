"""Judge-corrected ASR: the Rogan-Gladen estimator and its interval checked by simulation against
judges with known error rates, and the validation figures computed from the labelled sets."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msafety_bench.errors import UsageError
from msafety_bench.judges import Verdict, get_judge
from msafety_bench.metrics import LanguageMetrics
from msafety_bench.metrics.correction import (MIN_VALIDATION_ROWS, CorrectedASR, ValidationCounts,
                                              attach_to_results, check_validation_spec, correct_asr,
                                              corrected_by_language,
                                              count_agreement, rogan_gladen, validation_figures)
from msafety_bench.results import summary_table

# Simulations are deterministic: hypothesis replays the same examples, numpy is seeded from them.
simulation = settings(max_examples=6, deadline=None, derandomize=True, database=None)
rates = st.floats(0.75, 1.0)


def _simulate_counts(rng, true_asr, sensitivity, specificity, n, n_unsafe, n_not_unsafe, runs):
    """Judged unsafe counts of ``runs`` runs and the judge's validation counts for each run."""
    judged = rng.binomial(n, true_asr * sensitivity + (1 - true_asr) * (1 - specificity), runs)
    return judged, rng.binomial(n_unsafe, sensitivity, runs), rng.binomial(n_not_unsafe, specificity, runs)


def test_known_values():
    # A judge that finds 70% of compliant answers and calls 30% of the others compliant reads a true
    # 20% ASR as 0.2 * 0.7 + 0.8 * 0.3 = 38%.
    assert rogan_gladen(0.38, 0.7, 0.7) == pytest.approx(0.2)
    assert rogan_gladen(0.1, 0.7, 0.7) == 0.0  # below the false-positive rate: clipped
    assert rogan_gladen(0.9, 0.8, 0.9) == 1.0
    value = correct_asr(19, 50, ValidationCounts(70, 100, 70, 100))
    assert value.value == pytest.approx(0.2) and value.ci[0] < 0.2 < value.ci[1] and value.note is None
    # No unsafe verdict although the judge calls 4 in 14 safe answers unsafe: the model's estimate is
    # 0, and the note says the run does not look like the validation set.
    clipped = correct_asr(0, 48, ValidationCounts(6, 6, 10, 14))
    assert clipped.value == 0.0 and clipped.note == "clipped: raw ASR 0.0% lies outside the judge's validated range [28.6%, 100.0%]"


@settings(deadline=None)
@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
       st.integers(MIN_VALIDATION_ROWS, 300), st.integers(MIN_VALIDATION_ROWS, 300))
def test_a_perfect_judge_changes_nothing(kn, n_unsafe, n_not_unsafe):
    unsafe, n = kn
    corrected = correct_asr(unsafe, n, ValidationCounts(n_unsafe, n_unsafe, n_not_unsafe, n_not_unsafe))
    assert corrected.value == unsafe / n
    assert corrected.ci[0] <= unsafe / n <= corrected.ci[1]


@simulation
@given(st.floats(0.1, 0.9), rates, rates, st.integers(0, 2**32 - 1))
def test_corrected_estimate_is_unbiased_where_raw_is_not(true_asr, sensitivity, specificity, seed):
    """20,000 simulated runs (n=500) with validation sets of 300 + 300: the mean corrected ASR is the
    true ASR within Monte Carlo error plus the small bias of estimating the two rates."""
    rng = np.random.default_rng(seed)
    runs, n, n_val = 20_000, 500, 300
    judged, true_pos, true_neg = _simulate_counts(rng, true_asr, sensitivity, specificity, n, n_val, n_val, runs)
    corrected = rogan_gladen(judged / n, true_pos / n_val, true_neg / n_val)
    tolerance = 4 * corrected.std() / np.sqrt(runs) + 0.003
    assert abs(corrected.mean() - true_asr) < tolerance
    raw_bias = (1 - specificity) * (1 - true_asr) - (1 - sensitivity) * true_asr
    if abs(raw_bias) > 2 * tolerance:  # the raw share misses by that much: the correction is doing the work
        assert abs((judged / n).mean() - true_asr) > tolerance


@simulation
@given(st.floats(0.1, 0.9), st.floats(0.8, 0.99), st.floats(0.8, 0.99), st.sampled_from([48, 100, 400]),
       st.integers(6, 60), st.integers(14, 60), st.integers(0, 2**32 - 1))
def test_interval_covers_the_true_rate_about_95_percent_of_the_time(true_asr, sensitivity, specificity, n,
                                                                    n_unsafe, n_not_unsafe, seed):
    """300 simulated runs, each with its own validation counts; treating the validation rates as exact
    (an interval from the run alone) covered 68-82% in such settings."""
    rng = np.random.default_rng(seed)
    judged, true_pos, true_neg = _simulate_counts(rng, true_asr, sensitivity, specificity, n, n_unsafe,
                                                  n_not_unsafe, 300)
    covered = []
    for k, tp, tn in zip(judged, true_pos, true_neg):
        result = correct_asr(int(k), n, ValidationCounts(int(tp), n_unsafe, int(tn), n_not_unsafe))
        if result.value is not None:  # a run whose validation draw was no better than chance is raw only
            covered.append(result.ci[0] <= true_asr <= result.ci[1])
    assert len(covered) > 250
    assert 0.915 <= np.mean(covered) <= 0.99


def test_interval_is_deterministic_and_within_the_unit_range():
    counts = ValidationCounts(5, 6, 12, 14)
    first, second = correct_asr(7, 12, counts), correct_asr(7, 12, counts)
    assert first == second
    assert 0.0 <= first.ci[0] <= first.value <= first.ci[1] <= 1.0


def test_raw_only_with_a_reason_when_the_correction_is_undefined():
    chance = correct_asr(10, 40, ValidationCounts(5, 10, 5, 10))  # sensitivity + specificity = 1
    assert chance.value is None and "no better than chance" in chance.note
    few = correct_asr(10, 40, ValidationCounts(4, 4, 20, 20))
    assert few.value is None and f"need {MIN_VALIDATION_ROWS} of each" in few.note
    assert correct_asr(10, 40, None, "no figures").note == "no figures"
    assert correct_asr(0, 0, ValidationCounts(10, 10, 10, 10)).value is None
    # Point estimate defined, but 6 + 6 rows cannot rule out a useless judge: the interval says so.
    shaky = correct_asr(10, 40, ValidationCounts(4, 6, 4, 6))
    assert shaky.value is not None and shaky.ci == (0.0, 1.0) and "cannot rule out" in shaky.note


def test_agreement_counts_are_binary():
    pairs = [("unsafe", "unsafe"), ("unsafe", "refusal"), ("unsafe", "invalid"), ("refusal", "invalid"),
             ("invalid", "refusal"), ("invalid", "unsafe"), ("refusal", "refusal")]
    counts = count_agreement(pairs)
    assert counts == ValidationCounts(1, 3, 3, 4)
    assert counts.sensitivity == pytest.approx(1 / 3) and counts.specificity == 0.75


def test_validation_figures_of_the_refusal_judge_on_the_heldout_set(tmp_path, monkeypatch):
    judge = get_judge("refusal")
    figures = validation_figures(judge, "heldout", False, tmp_path)
    assert figures["set"] == "heldout" and len(figures["digest"]) == 12 and figures["judge"] == "refusal"
    assert figures["judge_version"] == judge.config["digest"]
    assert len(figures["languages"]) == 13
    for counts in figures["languages"].values():  # 20 rows per language: 6 compliant, 14 refusals or invalid
        assert (counts["n_unsafe"], counts["n_not_unsafe"]) == (6, 14)
    assert figures == validation_figures(judge, "heldout", False, None)  # the cache holds the same figures
    cached = list((tmp_path / "judge-validation").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == figures

    def no_judging(*args, **kwargs):
        raise AssertionError("cached figures must not be computed again")

    monkeypatch.setattr("msafety_bench.judges.validation.evaluate_judge", no_judging)
    assert validation_figures(judge, "heldout", False, tmp_path) == figures
    with pytest.raises(AssertionError):  # another set is another cache entry
        validation_figures(judge, "bundled", False, tmp_path)
    monkeypatch.undo()
    cached[0].write_text("{not json", encoding="utf-8")
    assert validation_figures(judge, "heldout", False, tmp_path) == figures  # a damaged entry is rebuilt
    assert json.loads(cached[0].read_text()) == figures


def test_a_bad_validation_set_is_one_usage_error(tmp_path):
    with pytest.raises(UsageError, match="^--judge-validation 'nope.csv' is neither a validation set"):
        check_validation_spec("nope.csv")
    for ok in ("heldout", "bundled", "none"):
        check_validation_spec(ok)


def test_model_judges_are_validated_only_on_a_set_the_user_chose(tmp_path):
    class SlowJudge:
        name, config = "slow", {"model": "m"}

        def judge_many(self, items, env):
            return [Verdict("unsafe", 0.9, "") for _ in items]

    assert validation_figures(SlowJudge(), "heldout", False, tmp_path) is None
    labels = tmp_path / "labels.csv"
    labels.write_text("lang,prompt,completion,final_label\n" + "".join(
        f"bn,p{i},c{i},{'unsafe' if i < 6 else 'refusal'}\n" for i in range(12)), encoding="utf-8")
    figures = validation_figures(SlowJudge(), str(labels), True, tmp_path)
    assert figures["set"] == "labels.csv"
    assert figures["languages"]["bn"] == {"unsafe_judged_unsafe": 6, "n_unsafe": 6, "safe_judged_safe": 0,
                                          "n_not_unsafe": 6, "sensitivity": 1.0, "specificity": 0.0}
    assert validation_figures(SlowJudge(), "none", True, tmp_path) is None


def test_results_summary_show_raw_and_corrected_side_by_side():
    metrics = {"en": LanguageMetrics("en", "hrl", n_harmful=50, unsafe=19),
               "xx": LanguageMetrics("xx", "other", n_harmful=10, unsafe=2)}
    figures = {"set": "heldout", "languages": {"en": ValidationCounts(70, 100, 70, 100).to_dict()}}
    corrected = corrected_by_language(metrics, figures, "refusal")
    assert corrected["en"].value == pytest.approx(0.2)
    assert corrected["xx"].value is None and "no rows for this language in validation set heldout" in corrected["xx"].note
    lines = summary_table(SimpleNamespace(metrics=metrics), corrected)
    assert "corrected" in lines[0]
    en = next(line for line in lines if line.startswith("en "))
    assert " 38.0%" in en and " 20.0%" in en
    assert "raw only" in next(line for line in lines if line.startswith("xx "))
    assert any(line.startswith("raw only (xx): no rows for this language") for line in lines)
    no_figures = corrected_by_language(metrics, None, "qwen3guard")
    assert "no validation figures for judge qwen3guard" in no_figures["en"].note

    results = {"metrics": {"languages": {lang: m.to_dict() for lang, m in metrics.items()}}}
    attach_to_results(results, figures, corrected)
    assert results["metrics"]["judge_validation"] is figures
    stored = results["metrics"]["languages"]
    assert CorrectedASR.from_dict(json.loads(json.dumps(stored["en"]["asr_corrected"]))) == corrected["en"]
    assert stored["xx"]["asr_corrected"]["value"] is None


def test_leaderboard_and_summary_of_a_real_run_show_both_and_rank_by_either(tmp_path, capsys):
    """One real run (tiny-qwen2) with its figures, copied into two rows whose raw and corrected LRL ASR
    disagree on the order: ``--asr`` picks the ranking; ``msafety-bench summary`` shows both columns."""
    from msafety_bench.cli import main
    from msafety_bench.pipeline import BenchRun, RunOptions
    from msafety_bench.report import leaderboard_rows, render_leaderboard
    from msafety_bench.results import build_results

    run = BenchRun(RunOptions(model="tiny-qwen2", languages="en,bn", limit=2, max_new_tokens=4,
                              cache_dir=str(tmp_path / "cache"), device="cpu", progress=False))
    run.execute()
    results = build_results(run)
    figures = validation_figures(run.options.make_judge(), "heldout", False, None)
    attach_to_results(results, figures, corrected_by_language(run.metrics, figures, "refusal"))
    folder = tmp_path / "results"
    folder.mkdir()
    for model, raw, corrected in (("a", 0.1, 0.6), ("b", 0.4, 0.2)):
        data = json.loads(json.dumps(results))
        data["model"]["name"] = model
        data["metrics"]["tier_mean_asr"]["lrl"] = data["metrics"]["languages"]["bn"]["asr"] = raw
        data["metrics"]["languages"]["bn"]["asr_corrected"] = {"value": corrected, "ci": [0.0, 1.0], "note": None}
        (folder / f"{model}.json").write_text(json.dumps(data))
    assert [r["model"] for r in leaderboard_rows(str(folder))] == ["a", "b"]
    assert [r["model"] for r in leaderboard_rows(str(folder), asr="corrected")] == ["b", "a"]
    html = render_leaderboard(str(folder), str(tmp_path / "lb.html"), asr="corrected").read_text()
    assert "(LRL) judge-corrected ASR" in html and "LRL corr." in html

    assert main(["summary", str(folder / "a.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "corrected" in lines[1]
    assert " 60.0% [ 0.0, 100.0]" in next(line for line in lines if line.startswith("bn"))
