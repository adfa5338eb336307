"""Prompt datasets behind one ``--dataset`` spec, all loaded into ``PromptRecord`` lists.

Specs: ``msb-core`` (bundled, default), ``multijail[:PATH]``, ``strongreject[:PATH]``, ``csv:PATH``,
``jsonl:PATH``. Without a PATH, multijail and strongreject come from the Hugging Face hub.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from msafety_bench.data.languages import LANGUAGES, MSB_CORE_LANGUAGES, TIERS
from msafety_bench.errors import UsageError
from msafety_bench.registry import Registry

MSB_CORE_DIR = Path(__file__).parent / "msb_core"
LABELS = ("harmful", "harmless")
SPLITS = ("calibration", "eval")
MULTIJAIL_HUB_ID = "DAMO-NLP-SG/MultiJail"
MULTIJAIL_LANGUAGES = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
STRONGREJECT_HUB_ID = "walledai/StrongREJECT"
GENERIC_COLUMNS = ("id", "lang", "prompt", "label")
DATASET_HELP = "use msb-core, multijail[:FILE.csv], strongreject[:FILE.csv], csv:FILE or jsonl:FILE"


@dataclass(frozen=True)
class PromptRecord:
    id: str
    lang: str
    prompt: str
    label: str  # harmful | harmless
    category: str
    split: str  # calibration | eval

    def to_dict(self) -> dict:
        return asdict(self)


DATASETS = Registry("dataset", "msafety_bench.datasets", {
    "msb-core": "msafety_bench.data:load_msb_core_spec",
    "multijail": "msafety_bench.data:load_multijail",
    "strongreject": "msafety_bench.data:load_strongreject",
    "csv": "msafety_bench.data:load_csv",
    "jsonl": "msafety_bench.data:load_jsonl",
})


def load_dataset_spec(spec: str) -> list[PromptRecord]:
    """Load every record a ``--dataset NAME[:FILE]`` spec names; raise UsageError with the fix on bad input.

    A loader takes the FILE part (or None) and returns PromptRecords; third parties register theirs in
    the ``msafety_bench.datasets`` entry-point group.
    """
    kind, _, path = spec.partition(":")
    if kind not in DATASETS.names():
        raise UsageError(f"unknown dataset '{spec}': {DATASET_HELP}")
    return DATASETS.get(kind)(path or None)


def load_msb_core_spec(path: str | None) -> list[PromptRecord]:
    if path:
        raise UsageError(f"dataset msb-core is bundled and takes no file ('msb-core:{path}'): {DATASET_HELP}")
    return load_msb_core()


def load_msb_core(root: Path = MSB_CORE_DIR) -> list[PromptRecord]:
    """The bundled suite: en.jsonl holds the metadata, <lang>.jsonl the parallel prompts (id, prompt)."""
    meta = _read_jsonl(root / "en.jsonl")
    records = []
    for lang in MSB_CORE_LANGUAGES:
        rows = {row["id"]: row["prompt"] for row in _read_jsonl(root / f"{lang}.jsonl")}
        missing = [m["id"] for m in meta if m["id"] not in rows]
        if missing:
            raise UsageError(f"msb-core/{lang}.jsonl lacks prompts {missing[:3]}: the bundled data is incomplete")
        records += [
            PromptRecord(m["id"], lang, rows[m["id"]], m["label"], m["category"], m["split"]) for m in meta
        ]
    return records


def load_multijail(path: str | None) -> list[PromptRecord]:
    """MultiJail: one row per prompt, a column per language, all harmful, all used for evaluation."""
    rows = _load_table(path, "csv", MULTIJAIL_HUB_ID, ("id", *MULTIJAIL_LANGUAGES), "multijail")
    records = []
    for row in rows:
        category = str(row.get("tags") or "uncategorized").split(",")[0].strip() or "uncategorized"
        for lang in MULTIJAIL_LANGUAGES:
            text = row.get(lang)
            if text and str(text).strip():
                records.append(PromptRecord(f"mj-{row['id']}", lang, str(text).strip(), "harmful", category, "eval"))
    return records


def load_strongreject(path: str | None) -> list[PromptRecord]:
    """StrongREJECT: forbidden prompts with a category, all harmful, all used for evaluation.

    English (the hub's layout): columns ``category, forbidden_prompt``. Multilingual, a translated file:
    either long, one row per prompt and language with a ``lang`` column (and optionally ``id``: rows
    sharing it are parallel; without it the n-th row of each language is), or wide, one row per prompt
    with ``forbidden_prompt`` (English) and ``forbidden_prompt_<lang>`` columns.
    """
    rows = _load_table(path, "csv", STRONGREJECT_HUB_ID, ("category", "forbidden_prompt"), "strongreject")
    records: list[PromptRecord] = []
    seen: Counter = Counter()
    for row in rows:
        category = str(row.get("category") or "uncategorized").strip() or "uncategorized"
        if "lang" in row:
            lang = str(row["lang"] or "").strip().lower()
            if not lang:
                raise UsageError(f"strongreject:{path}: a row has an empty lang: give every row a language code")
            key = str(row["id"]).strip() if row.get("id") not in (None, "") else f"{seen[lang]:04d}"
            seen[lang] += 1
            texts = {lang: row["forbidden_prompt"]}
        else:
            key = f"{seen['']:04d}"
            seen[""] += 1
            texts = {"en": row["forbidden_prompt"]}
            texts.update({c[len("forbidden_prompt_"):].lower(): v for c, v in row.items()
                          if c.startswith("forbidden_prompt_")})
        for lang, text in texts.items():
            if text and str(text).strip():
                records.append(PromptRecord(f"sr-{key}", lang, str(text).strip(), "harmful", category, "eval"))
    duplicates = [k for k, n in Counter((r.id, r.lang) for r in records).items() if n > 1]
    if duplicates:
        raise UsageError(f"strongreject:{path}: (id, lang) {duplicates[0]} occurs more than once: ids must be "
                         "unique per language")
    return records


def load_csv(path: str | None) -> list[PromptRecord]:
    return load_generic(path, "csv")


def load_jsonl(path: str | None) -> list[PromptRecord]:
    return load_generic(path, "jsonl")


def load_generic(path: str | None, fmt: str) -> list[PromptRecord]:
    """A user's own file with columns id, lang, prompt, label and optional category, split."""
    if not path:
        raise UsageError(f"dataset {fmt} needs a file: --dataset {fmt}:FILE")
    rows = _load_table(path, fmt, None, GENERIC_COLUMNS, f"{fmt}:{path}")
    records = []
    for i, row in enumerate(rows, start=1):
        label = str(row["label"]).strip().lower()
        split = str(row.get("split") or "eval").strip().lower()
        if label not in LABELS:
            raise UsageError(f"{path}: row {i} has label {str(row['label'])!r}: labels must be harmful or harmless")
        if split not in SPLITS:
            raise UsageError(f"{path}: row {i} has split {str(row.get('split'))!r}: splits are calibration or eval")
        if row["prompt"] is not None and not isinstance(row["prompt"], str):
            raise UsageError(f"{path}: row {i} has a prompt that is not text: write the prompt as a string")
        if not str(row["prompt"] or "").strip():
            raise UsageError(f"{path}: row {i} has an empty prompt: fill it or remove the row")
        records.append(PromptRecord(str(row["id"]), str(row["lang"]).strip(), str(row["prompt"]).strip(),
                                    label, str(row.get("category") or "uncategorized"), split))
    duplicates = [key for key, n in Counter((r.id, r.lang) for r in records).items() if n > 1]
    if duplicates:
        raise UsageError(f"{path}: (id, lang) {duplicates[0]} occurs more than once: ids must be unique per language")
    return records


def _load_table(path: str | None, fmt: str, hub_id: str | None, required: tuple, name: str) -> list[dict]:
    """Rows of a local CSV/JSONL file (read here, so every error names the file and line) or of a hub
    dataset (through ``datasets``)."""
    if path is None:
        import datasets

        datasets.disable_progress_bars()
        try:
            table = datasets.load_dataset(hub_id, split="train")
        except Exception as exc:  # datasets raises many types for unreachable hubs
            raise UsageError(f"could not load {name} from hub dataset {hub_id}: {type(exc).__name__}: "
                             f"{_first_line(exc)} -- offline, download it and pass {name}:FILE.csv") from None
        columns, rows = table.column_names, table.to_list()
    else:
        columns, rows = read_local_table(path, fmt)
    missing = [c for c in required if c not in columns]
    if missing:
        raise UsageError(
            f"{name}: missing column(s) {', '.join(missing)} (found {', '.join(map(str, columns))}): "
            f"the file needs columns {', '.join(required)}"
        )
    return rows


def read_local_table(path: str, fmt: str) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a UTF-8 CSV file with a header row, or of a JSONL file of objects (a key a row
    lacks is None there). Errors name the file, the line and, for bad bytes, the encoding expected."""
    import csv
    import io
    import sys

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"dataset file '{path}' does not exist: check the path given to --dataset")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UsageError(f"{path}: line {line} is not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}): "
                         "save the file as UTF-8") from None
    if fmt == "jsonl":
        rows, columns = [], {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{path}: line {number} is not valid JSON ({str(exc).split(':')[0]}): "
                                 "write one JSON object per line") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}: line {number} is a JSON {type(row).__name__}, not an object: "
                                 'write one {"id": ..., "lang": ..., "prompt": ..., "label": ...} per line')
            columns.update(dict.fromkeys(row))
            rows.append(row)
        return list(columns), [{c: row.get(c) for c in columns} for row in rows]
    csv.field_size_limit(sys.maxsize)  # long prompts are bounded by --max-prompt-tokens, not here
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise UsageError(f"{path}: the file is empty: write a header row (e.g. id,lang,prompt,label) and rows")
        header = [h.strip() for h in header]
        rows = []
        for fields in reader:
            if not fields or fields == [""]:
                continue
            if len(fields) != len(header):
                raise UsageError(f"{path}: line {reader.line_num} has {len(fields)} fields, the header has "
                                 f"{len(header)}: quote fields holding commas or newlines")
            rows.append(dict(zip(header, fields)))
    except csv.Error as exc:
        raise UsageError(f"{path}: line {reader.line_num} is not valid CSV ({exc})") from None
    return header, rows


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def dataset_languages(records: list[PromptRecord]) -> list[str]:
    """Languages of a dataset in table order, then any others alphabetically."""
    present = {r.lang for r in records}
    return [code for code in LANGUAGES if code in present] + sorted(present - set(LANGUAGES))


def select_languages(spec: str | None, available: list[str], dataset: str) -> list[str]:
    """``--languages``: a comma list of codes, tier names (hrl, mrl, lrl), ``latin`` (Latin-script) or ``all``."""
    if not spec:
        return list(available)
    chosen: list[str] = []
    for item in (part.strip().lower() for part in spec.split(",")):
        if not item:
            continue
        if item == "all":
            chosen += available
        elif item in TIERS:
            chosen += [c for c in available if c in LANGUAGES and LANGUAGES[c].tier == item]
        elif item == "latin":
            chosen += [c for c in available if c in LANGUAGES and LANGUAGES[c].script == "Latin"]
        elif item in available:
            chosen.append(item)
        else:
            hint = (" (the hub's StrongREJECT is English only: pass your translated file as --dataset "
                    "strongreject:FILE.csv with a lang column or forbidden_prompt_<lang> columns)"
                    if dataset == "strongreject" else "")
            raise UsageError(
                f"language '{item}' is not in dataset {dataset}: choose from {', '.join(available)} "
                f"or a tier ({', '.join(TIERS)}), latin or all{hint}"
            )
    unique = list(dict.fromkeys(chosen))
    if not unique:
        raise UsageError(f"--languages '{spec}' selects no language of dataset {dataset}")
    return unique


def check_language_spec(spec: str | None) -> None:
    """A ``--languages``-style spec names only known codes, tiers, ``latin`` or ``all``; checked without a
    dataset, so an option typo fails before any model loads. Raises ValueError with the choices."""
    for item in (part.strip().lower() for part in (spec or "").split(",")):
        if item and item not in LANGUAGES and item not in TIERS and item not in ("latin", "all"):
            raise ValueError(f"unknown language '{item}': use codes ({', '.join(LANGUAGES)}), a tier "
                             f"({', '.join(TIERS)}), latin or all")
