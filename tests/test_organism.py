"""Model organisms and suite presets: built from the project's own sft editor, cached, reproducible."""

import json
from types import SimpleNamespace

from msafety_bench.models import resolve_model
from msafety_bench.models.fingerprint import model_fingerprint
from msafety_bench.models.organism import ORGANISMS, Organism, organism_folder
from msafety_bench.results import summary_table

# The same recipe shape as smollm2-en-safe, shrunk to seconds on the random tiny model.
TINY_RECIPE = Organism(
    name="tiny-en-safe", base="tiny-qwen2", editor="sft",
    editor_opts=("languages=en", "harmless_languages=latin", "harmless_per_language=2", "steps=3",
                 "batch_size=2", "max_length=48", "answer_tokens=8", "rank=4", "seed=0"),
    description="test recipe")


def test_organism_build_is_cached_and_reproducible(tmp_path, tiny):
    first = organism_folder(TINY_RECIPE, tmp_path / "a", progress=False, device="cpu")
    card = json.loads((first / "organism.json").read_text())
    assert card["organism"]["name"] == "tiny-en-safe" and card["editor"]["name"] == "sft"
    assert card["base_model"]["fingerprint"] == model_fingerprint(tiny.model)
    assert card["merged_fingerprint"] != card["base_model"]["fingerprint"]  # the LoRA changed the weights
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert organism_folder(TINY_RECIPE, tmp_path / "a", progress=False, device="cpu") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # second use: no rebuild
    # A build from scratch in another cache (sft refitted, answers regenerated) gives the same weights.
    second = organism_folder(TINY_RECIPE, tmp_path / "b", progress=False, device="cpu")
    assert json.loads((second / "organism.json").read_text())["merged_fingerprint"] == card["merged_fingerprint"]
    other = Organism(**{**TINY_RECIPE.__dict__, "editor_opts": TINY_RECIPE.editor_opts[:-1] + ("seed=1",)})
    assert organism_folder(other, tmp_path / "a", progress=False, device="cpu") != first


def test_smollm2_en_safe_is_an_organism_alias():
    spec = resolve_model("smollm2-en-safe")
    assert spec.kind == "organism"
    recipe = ORGANISMS["smollm2-en-safe"]
    assert "languages=en" in recipe.editor_opts and "harmless_languages=latin" in recipe.editor_opts


def test_summary_marks_languages_where_the_model_gives_no_usable_answers():
    """Competence is measured, not declared: usable answers to harmless prompts, threshold one half."""
    from msafety_bench.metrics import LanguageMetrics

    metrics = {"en": LanguageMetrics("en", "hrl", n_harmful=4, unsafe=1, n_harmless=4, harmless_invalid=2),
               "zh": LanguageMetrics("zh", "hrl", n_harmful=4, harmful_invalid=4, n_harmless=4, harmless_invalid=3),
               "sw": LanguageMetrics("sw", "lrl", n_harmful=4, unsafe=4)}  # no harmless prompts: unknown
    assert [m.competent for m in metrics.values()] == [True, False, None]
    lines = summary_table(SimpleNamespace(metrics=metrics, meta={}))
    assert any(line.startswith("zh\u2020") for line in lines)
    assert any(line.startswith("en ") for line in lines) and any(line.startswith("sw ") for line in lines)
    assert " 25.0%" in next(line for line in lines if line.startswith("zh"))  # usable: 1 of 4
    assert "incompetence, not safety" in lines[-1]
    metrics["zh"].harmless_invalid = 2
    assert not any("\u2020" in line for line in summary_table(SimpleNamespace(metrics=metrics, meta={})))


def test_preset_fills_unset_options_and_rejects_unknown_names(suites, tmp_path):
    base = ["--preset", "smollm2-en-safe", "--model", "tiny-qwen2", "--languages", "en", "--max-new-tokens", "4",
            "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "-p", "no:cacheprovider", "-W", "always"]
    result = suites.runpytest_subprocess(*base)
    result.assert_outcomes(passed=2)
    data = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert data["preset"] == "smollm2-en-safe"
    assert data["model"]["name"] == "tiny-qwen2"  # the command line wins over the preset
    assert data["dataset"]["limit"] == 24 and data["dataset"]["n_samples"] == 48  # the preset's limit
    bad = suites.runpytest_subprocess("--preset", "nope", *base[2:])
    assert bad.ret == 4
    bad.stderr.fnmatch_lines(["*unknown preset 'nope': choose one of smollm2-en-safe*"])


def test_preset_warns_when_the_judge_differs(suites, tmp_path):
    result = suites.runpytest_subprocess("--preset", "smollm2-en-safe", "--judge", "llamaguard3", "--judge-model",
                                         "tiny-qwen2", "--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*preset smollm2-en-safe was measured with judge 'refusal', this run uses "
                                 "'llamaguard3': its numbers are not comparable*"])
