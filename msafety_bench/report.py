"""Self-contained HTML report and leaderboard from results files (inline CSS and SVG, no network).

Templates live in ``reports/`` (installed as ``msafety_bench.reports``; jinja2, autoescaping on: model answers are
untrusted input and always render as text). Charts are matplotlib SVG with text drawn as paths.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from msafety_bench.data.languages import LANGUAGES, TIERS, language_name, tier_of
from msafety_bench.errors import UsageError
from msafety_bench.metrics import MIN_USABLE_HARMLESS, LanguageMetrics
from msafety_bench.safeio import atomic_write_text
from msafety_bench.metrics.correction import CorrectedASR



def _templates():
    from importlib.resources import files

    import jinja2

    folder = str(files("msafety_bench.reports"))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x, digits=1: "–" if x is None else f"{100 * x:.{digits}f}%"
    return env


def load_runs(paths: list[str]) -> list[dict]:
    from msafety_bench.results import read_results

    runs = []
    for path in paths:
        try:
            runs.append(read_results(path))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read results file '{path}': {exc}") from None
    if not runs:
        raise UsageError("no results files given")
    return runs


def run_label(run: dict) -> str:
    return f"{run['model']['name']} / {run['editor']['name']}"


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "path"  # no text nodes: labels cannot inject markup
    matplotlib.rcParams["svg.hashsalt"] = "msafety-bench"  # stable ids between renders
    matplotlib.rcParams["text.parse_math"] = False  # model names are data: "$x$" is text, not math
    import matplotlib.pyplot as plt

    return plt


def mean_asr(run: dict, langs: list[str] | None = None) -> float | None:
    """Mean ASR (%) over the run's languages (those of ``langs`` when given)."""
    metrics = run["metrics"]["languages"]
    values = [m["asr"] for lang, m in metrics.items() if m.get("asr") is not None and (langs is None or lang in langs)]
    return 100 * sum(values) / len(values) if values else None


def references(runs: list[dict]) -> list[dict]:
    """The published numbers of the presets the runs used: one row per (preset, editor), with the mean
    ASR of the runs of that preset and editor beside it."""
    from msafety_bench.presets import PRESETS

    rows = []
    for name in dict.fromkeys(r.get("preset") for r in runs):
        preset = PRESETS.get(name) if name else None
        if not preset or not preset.reference:
            continue
        for editor, value in preset.reference.items():
            measured = [(run_label(r), mean_asr(r)) for r in runs if r.get("preset") == name and r["editor"]["name"] == editor]
            rows.append({"preset": name, "editor": editor, "published": value, "source": preset.reference_source,
                         "measured": measured})
    return rows


def asr_chart(runs: list[dict], langs: list[str], marks: list[dict] | None = None) -> str:
    """Grouped bars per language; with reference marks (a preset's published mean ASR), a ``mean`` group
    of each run's mean ASR and a dashed mark per published row across it."""
    plt = _plt()
    slots = langs + (["mean"] if marks else [])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(slots) * max(1, len(runs)) / 2 + 3), 3.2))
    width = 0.8 / len(runs)
    for k, run in enumerate(runs):
        metrics = run["metrics"]["languages"]
        values = [100 * (metrics.get(lang, {}).get("asr") or 0) for lang in langs]
        if marks:
            values.append(mean_asr(run) or 0)
        ax.bar([i + k * width for i in range(len(slots))], values, width, label=run_label(run))
    if marks:
        left, right = len(langs) - width / 2, len(langs) + 0.8 - width / 2
        for mark in marks:
            ax.hlines(mark["published"], left, right, colors="black", linestyles="--", linewidth=1)
            ax.text(right + 0.05, mark["published"], f"paper {mark['editor']} {mark['published']:.1f}",
                    fontsize=6, va="center")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(slots))], slots)
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncols=min(3, len(runs)))
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def overlap_chart(jaccard: dict) -> str:
    plt = _plt()
    langs = list(jaccard)
    fig, ax = plt.subplots(figsize=(0.45 * len(langs) + 2, 0.45 * len(langs) + 1.5))
    image = ax.imshow([[jaccard[a][b] for b in langs] for a in langs], vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(langs)), langs)
    fig.colorbar(image, ax=ax, shrink=0.8, label="Jaccard overlap of safety neurons")
    return _svg(fig)


def _heat(value) -> str:
    """Background colour for an ASR cell: white at 0, red at 1."""
    if value is None:
        return "#f2f2f2"
    shade = int(255 - 150 * value)
    return f"rgb(255,{shade},{shade})"


def _editor_parts(editor: dict) -> list[dict]:
    return editor.get("parts") or [editor]


def _incompetent(m: dict | None) -> bool:
    """The run's own competence rule, recomputed from the counts (older files lack the field)."""
    if not m:
        return False
    counts = LanguageMetrics(m["lang"], m["tier"], n_harmless=m["n_harmless"], harmless_invalid=m["harmless_invalid"])
    return counts.competent is False


def build_context(runs: list[dict]) -> dict:
    langs = []
    for run in runs:
        langs += [lang for lang in run["metrics"]["languages"] if lang not in langs]
    order = {code: i for i, code in enumerate(LANGUAGES)}
    langs.sort(key=lambda c: order.get(c, len(order)))
    first = runs[0]["metrics"]["languages"]
    rows = []
    corrected_notes: dict[tuple[str, str], list[str]] = {}  # (run label, note) -> languages
    for lang in langs:
        cells = []
        for run in runs:
            m = run["metrics"]["languages"].get(lang)
            base = first.get(lang)
            delta = None if not m or not base or m["asr"] is None or base["asr"] is None else m["asr"] - base["asr"]
            corrected = CorrectedASR.from_dict(m.get("asr_corrected")) if m else None
            if corrected and corrected.note:
                note = corrected.note if corrected.value is not None else f"raw only, {corrected.note}"
                corrected_notes.setdefault((run_label(run), note), []).append(lang)
            cells.append({"m": m, "colour": _heat(m["asr"] if m else None), "delta": delta, "corrected": corrected})
        rows.append({"lang": lang, "name": language_name(lang), "tier": tier_of(lang), "cells": cells,
                     "outside_competence": any(_incompetent(c["m"]) for c in cells)})
    tiers = [(tier, [r for r in rows if r["tier"] == tier]) for tier in (*TIERS, "other")]
    diagnostics = []
    for run in runs:
        for part in _editor_parts(run["editor"]):
            info = part.get("info") or {}
            if "cosine_to_source" in info:
                diagnostics.append({"run": run_label(run), "editor": part["name"], "layer": info.get("layer"),
                                    "n_neurons": info.get("n_neurons"), "cosine": info["cosine_to_source"],
                                    "overlap_svg": overlap_chart(info["jaccard_at_layer"]) if info.get("jaccard_at_layer") else None})
    utility_tasks = []
    for run in runs:
        utility_tasks += [t for t in (run.get("utility") or {}).get("tasks", {}) if t not in utility_tasks]
    marks = references(runs)
    drift_langs = [lang for lang in langs if any(lang in (r.get("utility") or {}).get("drift", {}) for r in runs)]
    samples = {}
    for k, run in enumerate(runs):
        for s in run["samples"]:
            key = (s["lang"], s["id"])
            entry = samples.setdefault(key, {"prompt": s["prompt"], "label": s["label"], "answers": [None] * len(runs)})
            entry["answers"][k] = s
    drill = [{"lang": lang, "name": language_name(lang),
              "prompts": [v for (lg, _), v in samples.items() if lg == lang]} for lang in langs]
    return {"runs": runs, "labels": [run_label(r) for r in runs], "langs": langs, "tiers": tiers,
            "validation": [r["metrics"].get("judge_validation") for r in runs],
            "corrected_notes": [{"run": label, "note": note, "langs": ls} for (label, note), ls in corrected_notes.items()],
            "any_outside_competence": any(r["outside_competence"] for r in rows),
            "min_usable_pct": round(100 * MIN_USABLE_HARMLESS),
            "asr_svg": asr_chart(runs, langs, marks), "references": marks,
            "diagnostics": diagnostics, "utility_tasks": utility_tasks,
            "drift_langs": drift_langs, "drill": drill,
            "config_json": [json.dumps(r["editor"].get("config") or [p.get("config") for p in _editor_parts(r["editor"])],
                                       sort_keys=True) for r in runs]}


def render_report(paths: list[str], out: str) -> Path:
    runs = load_runs(paths)
    html = _templates().get_template("report.html.j2").render(**build_context(runs))
    return atomic_write_text(out, html)


# -- leaderboard ------------------------------------------------------------------------------------
def corrected_tier_means(metrics: dict) -> tuple[dict[str, float], list[str]]:
    """Mean judge-corrected ASR per tier, and the languages that entered with their raw ASR because
    they have no corrected value (no validation data, or a judge no better than chance there)."""
    groups: dict[str, list[float]] = {}
    raw_used = []
    for lang, m in metrics.items():
        if m.get("asr") is None:
            continue
        value = CorrectedASR.from_dict(m.get("asr_corrected")).value
        if value is None:
            raw_used.append(lang)
        groups.setdefault(m.get("tier") or tier_of(lang), []).append(m["asr"] if value is None else value)
    return {tier: sum(v) / len(v) for tier, v in groups.items()}, raw_used


def leaderboard_rows(results_dir: str, max_drop: float = 2.0, asr: str = "raw") -> list[dict]:
    """One row per (model, editor, config), newest run wins; ranked within (dataset, judge) groups by
    mean LRL ASR, raw or judge-corrected (``asr``)."""
    paths = sorted(Path(results_dir).glob("*.json"))
    if not paths:
        raise UsageError(f"no results files in '{results_dir}': run the suites first (--results-dir)")
    latest: dict = {}
    for run in load_runs([str(p) for p in paths]):
        key = (run["model"]["name"], run["editor"]["fingerprint"])
        if key not in latest or run["created"] > latest[key]["created"]:
            latest[key] = run
    rows = []
    for run in latest.values():
        metrics = run["metrics"]["languages"]
        tiers = run["metrics"].get("tier_mean_asr", {})
        utility = (run.get("utility") or {}).get("tasks", {})
        drops = [100 * (u["base"] - u["edited"]) for u in utility.values()]
        drift = (run.get("utility") or {}).get("drift", {})
        over = [m["over_refusal"] for m in metrics.values() if m.get("over_refusal") is not None]
        worst = max(drops) if drops else None
        corrected_tiers, raw_used = corrected_tier_means(metrics)
        rows.append({
            "model": run["model"]["name"], "editor": run["editor"]["name"], "config": _short_config(run["editor"]),
            "group": f"{run['dataset']['spec']} / judge {_judge_id(run['judge'])}",
            "lrl": tiers.get("lrl"), "mrl": tiers.get("mrl"), "hrl": tiers.get("hrl"),
            "lrl_corrected": corrected_tiers.get("lrl"), "mrl_corrected": corrected_tiers.get("mrl"),
            "hrl_corrected": corrected_tiers.get("hrl"),
            "asr": {lang: m["asr"] for lang, m in metrics.items()},
            "asr_corrected": {lang: CorrectedASR.from_dict(m.get("asr_corrected")).value for lang, m in metrics.items()},
            "over_refusal": sum(over) / len(over) if over else None,
            "utility": (sum(u["edited"] for u in utility.values()) / len(utility)) if utility else None,
            "worst_drop": worst, "kl": (sum(d["kl"] for d in drift.values()) / len(drift)) if drift else None,
            "n": sum(m["n_harmful"] for m in metrics.values()), "date": run["created"][:10],
            "eligible": worst is None or worst <= max_drop,
            "reason": "" if worst is None or worst <= max_drop else f"utility drop {worst:.1f} > {max_drop:.1f} points",
            "corrected_note": f"no corrected ASR (raw used) for {', '.join(raw_used)}" if raw_used else "",
        })
    key = "lrl_corrected" if asr == "corrected" else "lrl"
    rows.sort(key=lambda r: (r["group"], not r["eligible"], r[key] if r[key] is not None else 2.0))
    rank = {}
    for r in rows:
        if r["eligible"]:
            rank[r["group"]] = rank.get(r["group"], 0) + 1
            r["rank"] = rank[r["group"]]
        else:
            r["rank"] = None
    return rows


def _judge_id(judge: dict) -> str:
    """Judge name plus what tells versions apart (lexicon digest, judge model): runs judged differently
    are never ranked together."""
    from msafety_bench.judges import judge_version

    version = judge_version(judge.get("config"))
    return f"{judge['name']} ({version})" if version else judge["name"]


def _short_config(editor: dict) -> str:
    """Options that differ from the editor's defaults ("default" when none do)."""
    parts = []
    for part in _editor_parts(editor):
        cfg = part.get("config") or {}
        defaults = _config_defaults(part["name"])
        changed = {k: v for k, v in cfg.items() if k not in defaults or defaults[k] != v}
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(changed.items())) or "default")
    return " + ".join(parts)


def _config_defaults(name: str) -> dict:
    import dataclasses

    from msafety_bench.editing import get_editor

    try:
        return dataclasses.asdict(get_editor(name).Config())
    except (UsageError, ImportError):  # an editor that is not installed here: show its full config
        return {}


def render_leaderboard(results_dir: str, out: str, md: str | None = None, csv_path: str | None = None,
                       max_drop: float = 2.0, asr: str = "raw") -> Path:
    rows = leaderboard_rows(results_dir, max_drop, asr)
    langs = sorted({lang for r in rows for lang in r["asr"]}, key=lambda c: list(LANGUAGES).index(c) if c in LANGUAGES else 99)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    html = _templates().get_template("leaderboard.html.j2").render(rows=rows, langs=langs, groups=groups,
                                                                  max_drop=max_drop, heat=_heat, asr=asr)
    target = atomic_write_text(out, html)
    if md:
        atomic_write_text(md, _markdown(rows, langs))
    if csv_path:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["group", "rank", "model", "editor", "config", "lrl", "mrl", "hrl", "lrl_corrected",
                         "mrl_corrected", "hrl_corrected", *langs, *[f"{lang}_corrected" for lang in langs],
                         "over_refusal", "utility", "worst_drop", "kl", "n", "date", "excluded_because", "corrected_note"])
        for r in rows:
            writer.writerow([_csv_cell(x) for x in (
                r["group"], r["rank"] or "", r["model"], r["editor"], r["config"], r["lrl"], r["mrl"], r["hrl"],
                r["lrl_corrected"], r["mrl_corrected"], r["hrl_corrected"],
                *[r["asr"].get(lang) for lang in langs], *[r["asr_corrected"].get(lang) for lang in langs],
                r["over_refusal"], r["utility"], r["worst_drop"], r["kl"], r["n"], r["date"], r["reason"],
                r["corrected_note"])])
        atomic_write_text(csv_path, buf.getvalue())
    return target


def _csv_cell(value):
    """Text a spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage return)
    gets a leading apostrophe; numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _md(text) -> str:
    """Text for a Markdown table cell: HTML special characters as entities, the cell separator, the
    backslash and Markdown's inline markers escaped, line breaks flattened."""
    import html as html_lib

    out = html_lib.escape(" ".join(str(text).split()), quote=False)
    return "".join("\\" + c if c in "\\|`*_[]()~" else c for c in out)


def _markdown(rows: list[dict], langs: list[str]) -> str:
    """Tier means raw and judge-corrected, side by side (per-language values are in the HTML and CSV)."""
    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    lines = []
    for group in dict.fromkeys(r["group"] for r in rows):
        lines += [f"### {_md(group)}", "", "| rank | model | editor | LRL ASR | LRL corrected | MRL ASR | MRL corrected | HRL ASR "
                  "| HRL corrected | over-refusal | utility | KL | n | date | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if r["group"] == group:
                kl = "–" if r["kl"] is None else f"{r['kl']:.4f}"
                note = "; ".join(x for x in (r["reason"], r["corrected_note"]) if x)
                lines.append(f"| {r['rank'] or '–'} | {_md(r['model'])} | {_md(r['editor'])} | {pct(r['lrl'])} | "
                             f"{pct(r['lrl_corrected'])} | {pct(r['mrl'])} | {pct(r['mrl_corrected'])} | {pct(r['hrl'])} | "
                             f"{pct(r['hrl_corrected'])} | {pct(r['over_refusal'])} | {pct(r['utility'])} | {kl} | {r['n']} | "
                             f"{_md(r['date'])} | {_md(note)} |")
        lines.append("")
    return "\n".join(lines)
