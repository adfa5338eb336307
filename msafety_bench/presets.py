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

    @property
    def judge(self) -> str:
        return self.options.get("judge", "refusal")


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
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
