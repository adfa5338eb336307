"""Agreement of a judge with human labels: accuracy, Cohen's kappa, confusion matrix, per language.

Label files are CSV with columns prompt, completion, final_label and optional lang and kind (older
files call it type). Labels: ``1_full_compliance`` (unsafe), ``2_full_refusal`` and
``3_partial_refusal`` (refusal), or directly ``unsafe`` / ``refusal`` / ``invalid``. Three sets ship
with the package, all of them development data by now (see DEVELOPERS.md): ``bundled``,
``heldout`` and ``dev2``; a comma list (``bundled,heldout,dev2``) reads several.

Besides 3-way agreement the report gives binary accuracy (unsafe vs not unsafe), the figure ASR
depends on: mistaking a refusal for an invalid answer changes no attack-success count.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from msafety_bench.errors import UsageError
from msafety_bench.judges import VERDICTS

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "data" / "judge_validation"
# Held out for judge v2 (written without seeing the lexicons), used to tune v3: development data now.
HELDOUT_DIR = BUNDLED_DIR.with_name("judge_validation_heldout")
# Written for the third judge version: the failure kinds measured on independent answers.
DEV2_DIR = BUNDLED_DIR.with_name("judge_validation_dev2")
# Written by hands that never saw the rules; measured once on judge v3, then development data for v4.
HELDOUT_V3_DIR = BUNDLED_DIR.with_name("judge_validation_heldout_v3")
# Written after judge v3 was frozen, by hands that saw neither it nor v3; judge v5 was trained on it.
HELDOUT_V4_DIR = BUNDLED_DIR.with_name("judge_validation_heldout_v4")
# Written for judge v5 as training data, with 150 real model answers labelled by reading them.
DEV3_DIR = BUNDLED_DIR.with_name("judge_validation_dev3")
# Written after judge v5 was frozen, by hands that saw neither it nor any earlier set. Do not tune on it.
HELDOUT_V5_DIR = BUNDLED_DIR.with_name("judge_validation_heldout_v5")
# SmolLM2's own English answers to msb-core's calibration prompts, labelled by reading: training data for v6.
DEV4_DIR = BUNDLED_DIR.with_name("judge_validation_dev4")
# SmolLM2's English answers to msb-core's eval prompts, labelled after judge v6 was frozen. Do not tune on it.
HELDOUT_V6_SMOLLM2_DIR = BUNDLED_DIR.with_name("judge_validation_heldout_v6_smollm2")
BUNDLED_SETS = {"bundled": BUNDLED_DIR, "heldout": HELDOUT_DIR, "dev2": DEV2_DIR, "heldout-v3": HELDOUT_V3_DIR,
                "heldout-v4": HELDOUT_V4_DIR, "dev3": DEV3_DIR, "heldout-v5": HELDOUT_V5_DIR, "dev4": DEV4_DIR,
                "heldout-v6-smollm2": HELDOUT_V6_SMOLLM2_DIR}
LABEL_MAP = {"1_full_compliance": "unsafe", "2_full_refusal": "refusal", "3_partial_refusal": "refusal",
             "unsafe": "unsafe", "refusal": "refusal", "invalid": "invalid"}


@dataclass
class Agreement:
    pairs: list = field(default_factory=list)  # (human, judge)

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def accuracy(self) -> float:
        return sum(h == j for h, j in self.pairs) / self.n if self.n else 0.0

    @property
    def binary_accuracy(self) -> float:
        """Agreement on unsafe vs not unsafe: what an attack-success rate counts."""
        return sum((h == "unsafe") == (j == "unsafe") for h, j in self.pairs) / self.n if self.n else 0.0

    @property
    def kappa(self) -> float:
        """Cohen's kappa: agreement beyond what the two label distributions give by chance."""
        if not self.n:
            return 0.0
        humans, judges = Counter(h for h, _ in self.pairs), Counter(j for _, j in self.pairs)
        expected = sum(humans[c] * judges[c] for c in VERDICTS) / self.n ** 2
        return 1.0 if expected == 1 else (self.accuracy - expected) / (1 - expected)

    def confusion(self) -> dict[str, dict[str, int]]:
        counts = Counter(self.pairs)
        return {h: {j: counts[(h, j)] for j in VERDICTS} for h in VERDICTS}


def label_paths(spec: str) -> list[Path]:
    """The CSV files of a comma list of bundled set names and/or CSV paths."""
    paths = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        paths += sorted(BUNDLED_SETS[part].glob("*.csv")) if part in BUNDLED_SETS else [Path(part)]
    return paths


def read_labels(spec: str) -> list[dict]:
    """Labelled answers from CSV files; any bad byte, row or label is one UsageError naming file and line."""
    from msafety_bench.data import read_local_table

    rows = []
    for path in label_paths(spec):
        if not path.is_file():
            raise UsageError(f"labels file '{path}' does not exist: pass a CSV or one of "
                             f"{', '.join(BUNDLED_SETS)}")
        columns, table = read_local_table(str(path), "csv")
        missing = {"prompt", "completion", "final_label"} - set(columns)
        if missing:
            raise UsageError(f"{path}: missing column(s) {', '.join(sorted(missing))}: "
                             "the file needs prompt, completion, final_label (optional lang, kind)")
        for i, row in enumerate(table, start=1):
            label = LABEL_MAP.get((row["final_label"] or "").strip())
            if label is None:
                raise UsageError(f"{path}: row {i} has label '{row['final_label']}': use "
                                 f"{', '.join(LABEL_MAP)}")
            if not (row["prompt"] or "").strip():
                raise UsageError(f"{path}: row {i} has a label but no prompt: fill in the prompt or drop the row")
            kind = (row.get("kind") or row.get("type") or "").strip()
            rows.append({**row, "human": label, "lang": (row.get("lang") or "en").strip(), "kind": kind})
    return rows


@dataclass
class Evaluation:
    overall: Agreement
    per_lang: dict[str, Agreement]
    per_kind: dict[str, Agreement]  # empty when the labels file has no kind (or type) column
    errors: list[dict]


def evaluate_judge(judge, rows: list[dict], env=None) -> Evaluation:
    from msafety_bench.judges import judge_all

    overall, per_lang, per_kind, errors = Agreement(), defaultdict(Agreement), defaultdict(Agreement), []
    verdicts = judge_all(judge, [(row["prompt"], row["completion"], row["lang"]) for row in rows], env)
    for row, verdict in zip(rows, verdicts):
        pair = (row["human"], verdict.verdict)
        overall.pairs.append(pair)
        per_lang[row["lang"]].pairs.append(pair)
        if row["kind"]:
            per_kind[row["kind"]].pairs.append(pair)
        if pair[0] != pair[1]:
            errors.append({**row, "judge": verdict.verdict, "reason": verdict.reason})
    return Evaluation(overall, dict(per_lang), dict(sorted(per_kind.items())), errors)


def format_report(judge_name: str, evaluation: Evaluation, show_errors: int) -> str:
    overall, errors = evaluation.overall, evaluation.errors
    lines = [f"judge {judge_name}: {overall.n} labelled answers, accuracy {overall.accuracy:.1%}, "
             f"binary accuracy (unsafe vs not) {overall.binary_accuracy:.1%}, Cohen's kappa {overall.kappa:.3f}",
             "", "confusion (rows: human, columns: judge)", f"{'':<9}" + "".join(f"{c:>9}" for c in VERDICTS)]
    for human, row in overall.confusion().items():
        lines.append(f"{human:<9}" + "".join(f"{row[c]:>9}" for c in VERDICTS))
    for title, groups in (("lang", evaluation.per_lang), ("kind", evaluation.per_kind)):
        if not groups:
            continue
        width = max(6, *(len(name) + 2 for name in groups))
        lines += ["", f"{title:<{width}}{'n':>5}{'accuracy':>10}{'binary':>8}{'kappa':>8}"]
        for name, agreement in groups.items():
            # kappa says nothing when every human label of the group is the same (a kind usually is)
            kappa = f"{agreement.kappa:>8.3f}" if len({h for h, _ in agreement.pairs}) > 1 else f"{'-':>8}"
            lines.append(f"{name:<{width}}{agreement.n:>5}{agreement.accuracy:>10.1%}"
                         f"{agreement.binary_accuracy:>8.1%}{kappa}")
    for e in errors[:show_errors]:
        kind = f" {e['kind']}" if e["kind"] else ""
        lines += ["", f"[{e['lang']}{kind}] human {e['human']}, judge {e['judge']} ({e['reason']})",
                  f"  prompt: {e['prompt'][:160]}", f"  answer: {e['completion'][:240]}"]
    return "\n".join(lines)
