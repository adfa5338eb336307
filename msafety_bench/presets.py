"""Suite presets: named sets of option defaults for a documented set-up (``--preset NAME``).

Options given on the command line win over the preset. A preset names the judge its numbers were
measured with, so a run that changes the judge is warned that its numbers are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from msafety_bench.errors import UsageError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    options: dict = field(default_factory=dict)  # pytest option dest -> value
    editor_options: dict = field(default_factory=dict)  # editor -> {option: value}, for the editors a run uses
    reference: dict = field(default_factory=dict)  # editor spec -> published mean ASR (%) over the languages
    reference_source: str = ""

    @property
    def judge(self) -> str:
        return self.options.get("judge", "refusal")

    def editor_opts(self, spec: str, given: list[str], config_file: str | None) -> list[str]:
        """The preset's options of the editors in ``spec`` as ``editor.key=value`` items, left out where the
        command line (or an --editor-config file) sets them: the command line wins."""
        if config_file:
            return []
        parts = [p.strip() for p in spec.split("+")]
        keys = {item.partition("=")[0].strip() for item in given}
        out = []
        for part in parts:
            for key, value in self.editor_options.get(part, {}).items():
                if f"{part}.{key}" not in keys and not (len(parts) == 1 and key in keys):
                    out.append(f"{part}.{key}={value}")
        return out


# The paper's set-up (Liang, Wang, Wang 2026): 8 languages, a multilingual StrongREJECT-style prompt set,
# Qwen3Guard-Gen-8B as judge, MGSM and multilingual MMLU for utility.
PAPER_LANGUAGES = ("en", "zh", "vi", "ja", "th", "id", "bn", "he")
# lm-eval tasks for those languages, as found in lm-eval 0.4.x: MGSM (direct) has en, zh, ja, th, bn
# (none for vi, id, he); Global-MMLU (full, 57 subjects) has en, zh, vi, ja, id, bn, he (none for th:
# only MMLU-ProX has Thai, a different benchmark, left out).
PAPER_MGSM = ("en", "zh", "ja", "th", "bn")
PAPER_MMLU = ("en", "zh", "vi", "ja", "id", "bn", "he")
PAPER_UTILITY = ",".join([f"mgsm_direct_{lang}" for lang in PAPER_MGSM] + [f"global_mmlu_full_{lang}" for lang in PAPER_MMLU])
_TARGETS = ",".join(lang for lang in PAPER_LANGUAGES if lang != "en")
# The sparse edit as the paper fixes it (neuron criteria z > 2 or d > 1, gate projection, rank 32), aimed
# at the 7 non-English languages; mpo aims at the same languages.
PAPER_EDITORS = {
    "sparse": {"projection": "gate", "neurons": "safety", "tau_mag": 2.0, "tau_stat": 1.0, "rank": 32,
               "languages": _TARGETS},
    "mpo": {"languages": _TARGETS},
}
PAPER_SOURCE = "Liang, Wang, Wang 2026: published mean ASR (%) over the 8 languages"


def _paper(model: str) -> dict:
    return {"model": model, "dataset": "strongreject", "languages": ",".join(PAPER_LANGUAGES),
            "judge": "qwen3guard", "judge_model": "8b", "utility_tasks": PAPER_UTILITY}


PRESETS = {
    "smollm2-en-safe": Preset(
        "smollm2-en-safe",
        "the English-safe SmolLM2 organism on all 13 languages of msb-core (24 prompts per language and "
        "label); languages where it gives no usable answers are marked, as in every run",
        {"model": "smollm2-en-safe", "dataset": "msb-core", "judge": "refusal", "limit": 24, "utility_limit": 20},
    ),
    "smollm2": Preset(
        "smollm2",
        "the offline default model on the full msb-core eval split",
        {"model": "smollm2", "dataset": "msb-core", "judge": "refusal"},
    ),
    "paper": Preset(
        "paper",
        "the sparse-edit paper's set-up on Qwen2.5-7B-Instruct: en zh vi ja th id bn he, StrongREJECT "
        "(hub, English only: pass your translation as strongreject:FILE.csv), Qwen3Guard-Gen-8B, MGSM + "
        "Global-MMLU; the best row is --editor mpo+sparse",
        _paper("qwen2.5"), PAPER_EDITORS, {"none": 11.3, "sparse": 5.0}, PAPER_SOURCE,
    ),
    "paper-llama": Preset(
        "paper-llama",
        "the same set-up on Llama-3.2-1B-Instruct",
        _paper("llama3.2-1b"), PAPER_EDITORS, {"none": 28.3, "sparse": 17.5}, PAPER_SOURCE,
    ),
}


def reference_line(name: str | None, editor: str, asrs: list) -> str | None:
    """A run's mean ASR beside the published figures of its preset (None when the preset has none)."""
    preset = PRESETS.get(name) if name else None
    values = [a for a in asrs if a is not None]
    if not preset or not preset.reference or not values:
        return None
    mean = 100 * sum(values) / len(values)
    published = ", ".join(f"{e} {v:.1f}%" for e, v in preset.reference.items())
    row = preset.reference.get(editor)
    closeness = (f"{mean - row:+.1f} points from the paper's {editor} row" if row is not None
                 else f"the paper publishes no mean for editor {editor}")
    return (f"preset {preset.name}: mean ASR over {len(values)} languages {mean:.1f}% ({closeness}); "
            f"published: {published} ({preset.reference_source})")


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
