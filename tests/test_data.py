"""The bundled msb-core suite and every --dataset loader, on real files through `datasets`."""

import csv
import json
from collections import Counter

import pytest

from msafety_bench.data import (MULTIJAIL_LANGUAGES, load_dataset_spec, load_msb_core, select_languages,
                                dataset_languages)
from msafety_bench.data.languages import LANGUAGES, MSB_CORE_LANGUAGES
from msafety_bench.errors import UsageError


@pytest.fixture(scope="module")
def core():
    return load_msb_core()


def test_msb_core_is_parallel_in_13_languages(core):
    assert MSB_CORE_LANGUAGES == ("en", "zh", "it", "vi", "ja", "ar", "ko", "th", "id", "he", "bn", "sw", "jv")
    ids_by_lang = {lang: {r.id for r in core if r.lang == lang} for lang in MSB_CORE_LANGUAGES}
    assert len({frozenset(ids) for ids in ids_by_lang.values()}) == 1
    english = {r.id: r.prompt for r in core if r.lang == "en"}
    for r in core:
        assert r.prompt.strip(), (r.id, r.lang)
        if r.lang != "en":
            assert r.prompt != english[r.id], f"{r.lang}/{r.id} is untranslated"


def test_msb_core_composition(core):
    en = [r for r in core if r.lang == "en"]
    harmful = [r for r in en if r.label == "harmful"]
    harmless = [r for r in en if r.label == "harmless"]
    assert len(harmful) >= 80 and len(harmless) >= 80
    assert len({r.category for r in harmful}) >= 8
    assert sum(r.category == "contrast" for r in harmless) * 4 == len(harmless)
    assert len({r.id for r in en}) == len(en)


def test_splits_are_fixed_disjoint_and_balanced(core):
    splits = {}
    for r in core:
        splits.setdefault(r.id, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values()), "a prompt changes split between languages"
    en = [r for r in core if r.lang == "en"]
    counts = Counter((r.label, r.split) for r in en)
    assert counts[("harmful", "calibration")] == counts[("harmful", "eval")] > 0
    assert counts[("harmless", "calibration")] == counts[("harmless", "eval")] > 0
    for category in {r.category for r in en}:
        assert {r.split for r in en if r.category == category} == {"calibration", "eval"}, category


def test_language_table_places_all_13():
    assert set(MSB_CORE_LANGUAGES) <= set(LANGUAGES)
    tiers = {code: LANGUAGES[code].tier for code in MSB_CORE_LANGUAGES}
    assert [c for c in tiers if tiers[c] == "lrl"] == ["bn", "sw", "jv"]
    assert {c for c in tiers if tiers[c] == "mrl"} >= {"ar", "ko", "th"}
    assert {c for c in tiers if tiers[c] == "hrl"} >= {"en", "zh", "it", "vi"}


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_multijail_csv(tmp_path):
    header = ["id", "source", "tags", "en", *MULTIJAIL_LANGUAGES[1:]]
    rows = [[i, "test", "violence,crime", f"english {i}", *[f"{lang} {i}" for lang in MULTIJAIL_LANGUAGES[1:]]]
            for i in range(3)]
    path = _write_csv(tmp_path / "mj.csv", header, rows)
    records = load_dataset_spec(f"multijail:{path}")
    assert len(records) == 3 * 10
    assert {r.label for r in records} == {"harmful"} and {r.split for r in records} == {"eval"}
    assert dataset_languages(records) == ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]
    assert {r.category for r in records} == {"violence"}
    bn = [r for r in records if r.lang == "bn"]
    assert [r.prompt for r in bn] == ["bn 0", "bn 1", "bn 2"]


def test_strongreject_csv(tmp_path):
    path = _write_csv(tmp_path / "sr.csv", ["category", "source", "forbidden_prompt"],
                      [["Violence", "x", "prompt one"], ["Fraud", "y", "prompt two"]])
    records = load_dataset_spec(f"strongreject:{path}")
    assert [(r.lang, r.category, r.prompt) for r in records] == [("en", "Violence", "prompt one"),
                                                                  ("en", "Fraud", "prompt two")]


def test_generic_csv_and_jsonl_agree(tmp_path):
    rows = [{"id": "a", "lang": "en", "prompt": "p1", "label": "harmful", "category": "c", "split": "eval"},
            {"id": "a", "lang": "bn", "prompt": "p2", "label": "harmful", "category": "c", "split": "eval"},
            {"id": "b", "lang": "en", "prompt": "p3", "label": "harmless", "category": "d", "split": "calibration"}]
    csv_path = _write_csv(tmp_path / "d.csv", list(rows[0]), [list(r.values()) for r in rows])
    jsonl_path = tmp_path / "d.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_csv = load_dataset_spec(f"csv:{csv_path}")
    from_jsonl = load_dataset_spec(f"jsonl:{jsonl_path}")
    assert from_csv == from_jsonl
    assert [r.to_dict() for r in from_csv] == rows


@pytest.mark.parametrize("content, message", [
    ("id,lang,label\n1,en,harmful\n", "missing column(s) prompt"),
    ("id,lang,prompt,label\n1,en,hi,bad\n", "label 'bad'"),
    ("id,lang,prompt,label,split\n1,en,hi,harmful,train\n", "split 'train'"),
    ("id,lang,prompt,label\n1,en,hi,harmful\n1,en,ho,harmful\n", "more than once"),
])
def test_malformed_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_dataset_spec(f"csv:{path}")
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_spec(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset_spec(f"multijail:{tmp_path / 'nope.csv'}")
    with pytest.raises(UsageError, match="unknown dataset 'harmbench'"):
        load_dataset_spec("harmbench")
    with pytest.raises(UsageError, match="missing column"):
        load_dataset_spec(f"multijail:{_write_csv(tmp_path / 'x.csv', ['id', 'en'], [[1, 'a']])}")


def test_hub_dataset_offline_points_to_a_local_file():
    # The hub is off in tests (conftest): the loader must say how to work offline.
    with pytest.raises(UsageError, match="multijail:FILE.csv"):
        load_dataset_spec("multijail")


def test_select_languages():
    available = list(MSB_CORE_LANGUAGES)
    assert select_languages(None, available, "d") == available
    assert select_languages("lrl", available, "d") == ["bn", "sw", "jv"]
    assert select_languages("en,lrl,bn", available, "d") == ["en", "bn", "sw", "jv"]
    assert select_languages("all", available, "d") == available
    with pytest.raises(UsageError, match="language 'xx' is not in dataset d"):
        select_languages("en,xx", available, "d")
