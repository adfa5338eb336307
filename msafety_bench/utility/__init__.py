"""Utility checks on the model the safety suites ran on: lm-eval tasks in memory, and label-free drift.

Offline tasks written by this project (13 languages of msb-core), built as lm-eval task YAMLs with
local data files at run time:
- ``msb_arith_<lang>``: arithmetic word problems from templates with seeded numbers, exact match on
  the last number of the answer (like MGSM);
- ``msb_mc_<lang>``: four-way multiple-choice general knowledge, log-likelihood (like M-MMLU).
Groups ``msb_arith`` and ``msb_mc`` hold all languages. Users with the hub pass lm-eval's own task
names to ``--utility-tasks`` and get them unchanged; ``NAME:FILE.tsv`` runs a local file in MGSM's
layout (one problem a line: question, a tab, the numeric answer; no header) as task ``NAME``: with
lm-eval's own config of that MGSM task when lm-eval has one (``mgsm_direct_bn:mgsm_bn.tsv``), else
scored like ``msb_arith`` (exact match on the last number).
"""

from __future__ import annotations

import ast
import json
import operator
import random
from pathlib import Path

import yaml

DATA = Path(__file__).parent / "data"
ARITH_PER_TEMPLATE = 5  # 10 templates -> 50 problems per language
# "Question" / "Answer" cue words per language, written for these tasks.
CUES = {
    "en": ("Question", "Answer"), "zh": ("问题", "答案"), "it": ("Domanda", "Risposta"),
    "vi": ("Câu hỏi", "Trả lời"), "ja": ("質問", "答え"), "ar": ("السؤال", "الإجابة"),
    "ko": ("질문", "답"), "th": ("คำถาม", "คำตอบ"), "id": ("Pertanyaan", "Jawaban"),
    "he": ("שאלה", "תשובה"), "bn": ("প্রশ্ন", "উত্তর"), "sw": ("Swali", "Jibu"), "jv": ("Pitakon", "Wangsulan"),
}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def evaluate(expression: str, values: dict[str, int]) -> int:
    """Integer arithmetic over named values (+ - * //), without eval()."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"unsupported expression: {expression}")

    return walk(ast.parse(expression, mode="eval"))


def arith_problems(lang: str, seed: int = 0) -> list[dict]:
    """The same seeded numbers in every language, so the tasks are parallel."""
    templates = yaml.safe_load((DATA / "arith_templates.yaml").read_text(encoding="utf-8"))["templates"]
    rng = random.Random(seed)
    problems = []
    for template in templates:
        for k in range(ARITH_PER_TEMPLATE):
            values = {name: rng.randint(lo, hi) for name, (lo, hi) in template["ranges"].items()}
            values.update({name: evaluate(expr, values) for name, expr in (template.get("derived") or {}).items()})
            problems.append({"id": f"{template['id']}-{k}", "question": template["text"][lang].format(**values),
                             "answer": str(evaluate(template["answer"], values))})
    return problems


def mc_questions(lang: str) -> list[dict]:
    with open(DATA / "mc" / f"{lang}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def passages(lang: str) -> list[str]:
    """Short harmless passages written for drift measurement (empty for languages without any)."""
    path = DATA / "passages.yaml"
    if not path.is_file():
        return []
    return list(yaml.safe_load(path.read_text(encoding="utf-8")).get(lang) or [])


def offline_languages() -> list[str]:
    return sorted(p.stem for p in (DATA / "mc").glob("*.jsonl"))


def parse_task_specs(value: str | None) -> tuple[list[str], dict[str, str]]:
    """``--utility-tasks``: task names, and for ``NAME:FILE.tsv`` items the local file of each (checked now,
    before any model loads)."""
    from msafety_bench.errors import UsageError

    tasks, files = [], {}
    for item in (value or "").split(","):
        name, sep, path = (part.strip() for part in item.strip().partition(":"))
        if not name and not sep:
            continue
        if not name or (sep and not path):
            raise UsageError(f"--utility-tasks item '{item.strip()}' is not NAME or NAME:FILE.tsv")
        if sep:
            read_mgsm_tsv(path)
            files[name] = path
        tasks.append(name)
    return tasks, files


def read_mgsm_tsv(path: str) -> list[dict]:
    """Problems of a file in MGSM's layout: ``question<TAB>answer`` a line, the answer a number, no header."""
    from msafety_bench.errors import UsageError

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"utility task file '{path}' does not exist: check --utility-tasks NAME:FILE.tsv")
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: byte {exc.start} is not UTF-8: save the file as UTF-8") from None
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        answer = fields[-1].strip().replace(",", "")
        if len(fields) != 2 or not fields[0].strip() or not _is_number(answer):
            raise UsageError(f"{path}: line {number} is not 'question<TAB>number' (MGSM's layout, no header)")
        problems.append({"id": f"{file.stem}-{number}", "question": fields[0].strip(), "answer": answer})
    if not problems:
        raise UsageError(f"{path}: the file holds no problems: write one 'question<TAB>number' a line")
    return problems


def _lm_eval_task_file(name: str) -> Path | None:
    """The installed lm-eval's YAML of an MGSM task of that name (``mgsm_direct_bn`` ...), if any."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if not spec or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        found = sorted((Path(root) / "tasks" / "mgsm").glob(f"*/{name}.yaml"))
        if found:
            return found[0]
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _arith_task(name: str, lang: str, data: Path) -> dict:
    """A generate-until task scored by exact match on the last number of the answer."""
    q, a = CUES.get(lang, CUES["en"])
    return {
        "dataset_path": "json", "test_split": "test", "metadata": {"version": 1.0},
        "task": name, "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "generate_until",
        "doc_to_text": f"{q}: {{{{question}}}}\n{a}:", "doc_to_target": "{{answer}}", "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n\n", f"{q}:"], "do_sample": False, "max_gen_toks": 48},
        "filter_list": [{"name": "last-number", "filter": [
            {"function": "regex", "regex_pattern": r"(-?[0-9]+)", "group_select": -1},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }


def write_offline_tasks(folder: Path, local: dict[str, str] | None = None) -> Path:
    """Write task YAMLs and their data files into ``folder`` (for ``TaskManager(include_path=...)``);
    ``local`` maps task names to MGSM-layout files run under that name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in (local or {}).items():
        data = folder / f"local-{name}.jsonl"
        problems = read_mgsm_tsv(path)
        template = _lm_eval_task_file(name)
        if template:  # lm-eval's own config of that task (prompt, scoring), its data source pointed here
            data.write_text("".join(json.dumps({"question": p["question"], "answer": None,
                                                "answer_number": p["answer"]}, ensure_ascii=False) + "\n"
                                    for p in problems), encoding="utf-8")
            _write_yaml(folder / f"local-{name}.yaml", {
                "include": str(template), "task": name, "dataset_path": "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": {"test": str(data)}}, "training_split": None,
                "test_split": "test"})
        else:
            data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems), encoding="utf-8")
            _write_yaml(folder / f"local-{name}.yaml", _arith_task(name, name.rsplit("_", 1)[-1], data))
    langs = offline_languages()
    for lang in langs:
        q, a = CUES[lang]
        arith = folder / f"msb_arith_{lang}.jsonl"
        arith.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in arith_problems(lang)), encoding="utf-8")
        mc = folder / f"msb_mc_{lang}.jsonl"
        mc.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in mc_questions(lang)), encoding="utf-8")
        common = {"dataset_path": "json", "test_split": "test", "metadata": {"version": 1.0}}
        _write_yaml(folder / f"msb_arith_{lang}.yaml", _arith_task(f"msb_arith_{lang}", lang, arith))
        _write_yaml(folder / f"msb_mc_{lang}.yaml", {
            **common, "task": f"msb_mc_{lang}", "dataset_kwargs": {"data_files": {"test": str(mc)}},
            "output_type": "multiple_choice",
            "doc_to_text": f"{q}: {{{{question}}}}\n{a}:", "doc_to_choice": "{{choices}}", "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        })
    for family in ("arith", "mc"):
        _write_yaml(folder / f"msb_{family}.yaml", {"group": f"msb_{family}",
                                                     "task": [f"msb_{family}_{lang}" for lang in langs]})
    return folder


def default_tasks(languages: list[str]) -> list[str]:
    available = set(offline_languages())
    return [f"msb_{family}_{lang}" for lang in languages if lang in available for family in ("arith", "mc")]


def _write_yaml(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
