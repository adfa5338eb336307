"""Utility tasks through the real lm-eval on tiny-qwen2, the offline task data, and drift."""

import json
from pathlib import Path

import lm_eval
import pytest

from msafety_bench.data import load_msb_core
from msafety_bench.utility import (CUES, arith_problems, default_tasks, evaluate, mc_questions, offline_languages,
                                   passages, write_offline_tasks)
from msafety_bench.utility.runner import drift, run_lm_eval

LANGS = ("en", "zh", "it", "vi", "ja", "ar", "ko", "th", "id", "he", "bn", "sw", "jv")


def test_offline_task_data_is_parallel_in_13_languages():
    assert offline_languages() == sorted(LANGS) and set(CUES) == set(LANGS)
    en_arith, en_mc = arith_problems("en"), mc_questions("en")
    assert len(en_arith) >= 50 and len(en_mc) >= 40
    for lang in LANGS:
        arith = arith_problems(lang)
        assert [p["answer"] for p in arith] == [p["answer"] for p in en_arith]
        assert all("{" not in p["question"] for p in arith)
        mc = mc_questions(lang)
        assert [(q["id"], q["answer"]) for q in mc] == [(q["id"], q["answer"]) for q in en_mc]
        assert all(len(set(q["choices"])) == 4 for q in mc)
        assert len(passages(lang)) >= 5


def test_expression_evaluator_is_not_eval():
    assert evaluate("a + b - c", {"a": 5, "b": 3, "c": 2}) == 6
    with pytest.raises(ValueError):
        evaluate("__import__('os')", {})


def test_offline_tasks_run_in_lm_eval(tiny, tmp_path):
    include = write_offline_tasks(tmp_path / "tasks")
    scores = run_lm_eval(tiny, ["msb_mc_bn", "msb_arith_sw"], limit=4, include_path=include)
    assert scores["msb_mc_bn"]["metric"].startswith("acc,") and scores["msb_mc_bn"]["n"] == 4
    assert scores["msb_arith_sw"]["metric"].startswith("exact_match,")
    assert all(0.0 <= s["score"] <= 1.0 for s in scores.values())


def test_lm_evals_own_mgsm_template_on_a_local_tsv(tiny, tmp_path):
    """lm-eval's real `mgsm/direct` Bengali config, with only its data source pointed at a local TSV."""
    template = Path(lm_eval.__file__).parent / "tasks" / "mgsm" / "direct" / "mgsm_direct_bn.yaml"
    tsv = tmp_path / "mgsm_bn.tsv"
    rows = [(p["question"], p["answer"]) for p in arith_problems("bn")[:3]]
    tsv.write_text("".join(f"{q}\t{a}\n" for q, a in rows), encoding="utf-8")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mgsm_local.yaml").write_text(json.dumps({
        "include": str(template), "task": "mgsm_direct_bn_local", "dataset_path": "csv", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(tsv)}, "delimiter": "\t",
                           "column_names": ["question", "answer_number"]},
        "training_split": None,
    }))
    scores = run_lm_eval(tiny, ["mgsm_direct_bn_local"], limit=None, include_path=tmp_path / "tasks")
    assert scores["mgsm_direct_bn_local"]["n"] == 3
    assert scores["mgsm_direct_bn_local"]["metric"].startswith("exact_match,")


def test_unknown_task_is_a_usage_error(tiny, tmp_path):
    from msafety_bench.errors import UsageError

    with pytest.raises(UsageError, match="unknown lm-eval task.*no_such_task"):
        run_lm_eval(tiny, ["no_such_task"], limit=1, include_path=write_offline_tasks(tmp_path))


def test_drift_is_exactly_zero_without_an_edit_and_positive_with_one(tiny, tmp_path):
    from msafety_bench.editing import FitContext, NullEdit, build_edit, EditorConfig
    from msafety_bench.models.fingerprint import model_fingerprint

    texts = {"en": passages("en")[:3], "bn": passages("bn")[:3]}
    none = drift(tiny, NullEdit("none", EditorConfig(), "none"), texts)
    assert all(d["kl"] == 0.0 and d["ppl_ratio"] == 1.0 for d in none.values())
    calibration = [r for r in load_msb_core() if r.split == "calibration" and r.lang in ("en", "bn")]
    edit = build_edit(tiny, "steering", ["alpha=4"], None, calibration,
                      FitContext(model_fingerprint(tiny.model), tmp_path, progress=False))
    moved = drift(tiny, edit, texts)
    assert all(d["kl"] > 0 and d["tokens"] > 10 for d in moved.values())


def test_default_tasks_follow_the_languages():
    assert default_tasks(["en", "bn"]) == ["msb_arith_en", "msb_mc_en", "msb_arith_bn", "msb_mc_bn"]


def test_local_tasks_are_indexed_without_lm_evals_built_ins(tmp_path):
    """Indexing lm-eval's built-in configs costs seconds per run: the project's own tasks (and local
    files) need only their folder. Catches: built-ins always indexed; built-ins never indexed (an
    lm-eval task by name would then be 'unknown')."""
    from msafety_bench.utility.runner import task_manager

    include = write_offline_tasks(tmp_path / "tasks")
    local = task_manager(["msb_mc_en", "msb_arith_bn"], include)
    assert "msb_mc_en" in local.all_tasks and "mgsm_direct_en" not in local.all_tasks
    both = task_manager(["msb_mc_en", "mgsm_direct_en"], include)
    assert {"msb_mc_en", "mgsm_direct_en"} <= set(both.all_tasks)
