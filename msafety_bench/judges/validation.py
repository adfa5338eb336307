"""Agreement of a judge with human labels: accuracy, Cohen's kappa, confusion matrix, per language.

Label files are CSV with columns prompt, completion, final_label and optional lang, type. Labels:
``1_full_compliance`` (unsafe), ``2_full_refusal`` and ``3_partial_refusal`` (refusal), or directly
``unsafe`` / ``refusal`` / ``invalid``. The bundled set (``bundled``) holds 32 answers per language
in the 13 msb-core languages, written for this project.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from msafety_bench.errors import UsageError
from msafety_bench.judges import VERDICTS

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "data" / "judge_validation"
# Written after the refusal lexicons were frozen and never used to tune them: an honest accuracy.
HELDOUT_DIR = BUNDLED_DIR.with_name("judge_validation_heldout")
BUNDLED_SETS = {"bundled": BUNDLED_DIR, "heldout": HELDOUT_DIR}
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


def read_labels(spec: str) -> list[dict]:
    """Labelled answers from CSV files; any bad byte, row or label is one UsageError naming file and line."""
    from msafety_bench.data import read_local_table

    paths = sorted(BUNDLED_SETS[spec].glob("*.csv")) if spec in BUNDLED_SETS else [Path(spec)]
    rows = []
    for path in paths:
        if not path.is_file():
            raise UsageError(f"labels file '{path}' does not exist: pass a CSV or 'bundled'")
        columns, table = read_local_table(str(path), "csv")
        missing = {"prompt", "completion", "final_label"} - set(columns)
        if missing:
            raise UsageError(f"{path}: missing column(s) {', '.join(sorted(missing))}: "
                             "the file needs prompt, completion, final_label (optional lang, type)")
        for i, row in enumerate(table, start=1):
            label = LABEL_MAP.get(row["final_label"].strip())
            if label is None:
                raise UsageError(f"{path}: row {i} has label '{row['final_label']}': use "
                                 f"{', '.join(LABEL_MAP)}")
            if not row["prompt"].strip():
                raise UsageError(f"{path}: row {i} has a label but no prompt: fill in the prompt or drop the row")
            rows.append({**row, "human": label, "lang": (row.get("lang") or "en").strip()})
    return rows


def evaluate_judge(judge, rows: list[dict], env=None) -> tuple[Agreement, dict[str, Agreement], list[dict]]:
    from msafety_bench.judges import judge_all

    overall, per_lang, errors = Agreement(), defaultdict(Agreement), []
    verdicts = judge_all(judge, [(row["prompt"], row["completion"], row["lang"]) for row in rows], env)
    for row, verdict in zip(rows, verdicts):
        pair = (row["human"], verdict.verdict)
        overall.pairs.append(pair)
        per_lang[row["lang"]].pairs.append(pair)
        if pair[0] != pair[1]:
            errors.append({**row, "judge": verdict.verdict, "reason": verdict.reason})
    return overall, dict(per_lang), errors


def format_report(judge_name: str, overall: Agreement, per_lang: dict[str, Agreement], errors: list[dict],
                  show_errors: int) -> str:
    lines = [f"judge {judge_name}: {overall.n} labelled answers, accuracy {overall.accuracy:.1%}, "
             f"Cohen's kappa {overall.kappa:.3f}", "", "confusion (rows: human, columns: judge)",
             f"{'':<9}" + "".join(f"{c:>9}" for c in VERDICTS)]
    for human, row in overall.confusion().items():
        lines.append(f"{human:<9}" + "".join(f"{row[c]:>9}" for c in VERDICTS))
    lines += ["", f"{'lang':<6}{'n':>5}{'accuracy':>10}{'kappa':>8}"]
    for lang, agreement in per_lang.items():
        lines.append(f"{lang:<6}{agreement.n:>5}{agreement.accuracy:>10.1%}{agreement.kappa:>8.3f}")
    for e in errors[:show_errors]:
        lines += ["", f"[{e['lang']}] human {e['human']}, judge {e['judge']} ({e['reason']})",
                  f"  prompt: {e['prompt'][:160]}", f"  answer: {e['completion'][:240]}"]
    return "\n".join(lines)
