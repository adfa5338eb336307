"""The ``msafety-bench`` command: helpers around the pytest suites (which stay the main entry point).

    msafety-bench models              aliases and what they load
    msafety-bench languages           the language table with tiers
    msafety-bench summary FILE.json   the per-language table of a results file
    msafety-bench export --model M --editor E --out DIR
                                      the edited model as a plain transformers folder + editor.json
    msafety-bench organism build [smollm2-en-safe]
                                      build a model organism into the cache (else built on first use)
    msafety-bench rejudge RESULTS.json... --out-dir DIR [--judge NAME]
                                      judge the kept answers again, e.g. after the judge improved
    msafety-bench report RESULTS.json... -o report.html
                                      compare runs side by side in one self-contained HTML file
    msafety-bench leaderboard RESULTS_DIR -o leaderboard.html [--md F] [--csv F] [--asr raw|corrected]
    msafety-bench judge-eval [--labels FILE.csv|bundled|heldout] [--judge NAME] [--errors N]
                                      agreement of a judge with human labels, per language
"""

from __future__ import annotations

import argparse
import sys

from msafety_bench.errors import UsageError


def cmd_models(args) -> None:
    from msafety_bench.models import known_models

    for alias, target in known_models().items():
        print(f"{alias:<16} {target}")
    print("any other value: a hub id (org/name) or a local model folder")


def cmd_languages(args) -> None:
    from msafety_bench.data.languages import LANGUAGES

    for lang in LANGUAGES.values():
        print(f"{lang.code:<4} {lang.name:<12} {lang.tier:<4} {lang.script}")


def cmd_summary(args) -> None:
    from types import SimpleNamespace

    from msafety_bench.metrics import LanguageMetrics
    from msafety_bench.metrics.correction import CorrectedASR
    from msafety_bench.results import read_results, summary_table

    for path in args.files:
        try:
            data = read_results(path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read results file '{path}': {exc}") from None
        fields = set(LanguageMetrics.__dataclass_fields__)
        metrics = {lang: LanguageMetrics(**{k: v for k, v in m.items() if k in fields})
                   for lang, m in data["metrics"]["languages"].items()}
        print(f"{path}: model {data['model']['name']}, editor {data['editor']['name']}, judge {data['judge']['name']}")
        corrected = {lang: CorrectedASR.from_dict(m.get("asr_corrected")) for lang, m in data["metrics"]["languages"].items()}
        print("\n".join(summary_table(SimpleNamespace(metrics=metrics, meta={"model": data["model"]}), corrected)))


def cmd_rejudge(args) -> None:
    from pathlib import Path

    from msafety_bench.judges import JudgeEnv, get_judge, judge_options
    from msafety_bench.paths import default_cache_dir
    from msafety_bench.results import read_results, rejudge, write_results

    judge = get_judge(args.judge, **judge_options(args.judge, args.judge_model, args.judge_url, args.judge_opt))
    env = JudgeEnv(Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(), args.device)
    for path in args.files:
        try:
            data = read_results(path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read results file '{path}': {exc}") from None
        out = write_results(rejudge(data, judge, env), args.out_dir)
        print(f"{path} -> {out}")


def cmd_export(args) -> None:
    from pathlib import Path

    from msafety_bench.export import export_edited
    from msafety_bench.pipeline import BenchRun, RunOptions

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out '{out}' exists and is not empty: choose a new folder")
    run = BenchRun(RunOptions(model=args.model, editor=args.editor, editor_opts=args.editor_opt,
                              editor_config=args.editor_config, cache_dir=args.cache_dir, device=args.device,
                              dtype=args.dtype, trust_remote_code=args.trust_remote_code))
    card = export_edited(run, out)
    print(f"wrote {out} (editor {args.editor}, fingerprint {card['merged_fingerprint']})")


def cmd_organism_build(args) -> None:
    import json

    from msafety_bench.models.organism import ORGANISMS, organism_folder
    from msafety_bench.paths import default_cache_dir
    from pathlib import Path

    if args.name not in ORGANISMS:
        raise UsageError(f"unknown organism '{args.name}': choose one of {', '.join(ORGANISMS)}")
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    folder = organism_folder(ORGANISMS[args.name], cache, device=args.device)
    card = json.loads((folder / "organism.json").read_text())
    print(f"{args.name}: {folder} (fingerprint {card['merged_fingerprint']}, "
          f"built in {card['organism']['build_seconds']} s)")


def cmd_report(args) -> None:
    from msafety_bench.report import render_report

    path = render_report(args.files, args.output)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def cmd_leaderboard(args) -> None:
    from msafety_bench.report import render_leaderboard

    path = render_leaderboard(args.results_dir, args.output, args.md, args.csv, args.max_utility_drop, args.asr)
    print(f"wrote {path}" + "".join(f", {x}" for x in (args.md, args.csv) if x))


def cmd_judge_eval(args) -> None:
    from pathlib import Path

    from msafety_bench.judges import JudgeEnv, get_judge, judge_options
    from msafety_bench.judges.validation import evaluate_judge, format_report, read_labels
    from msafety_bench.paths import default_cache_dir

    judge = get_judge(args.judge, **judge_options(args.judge, args.judge_model, args.judge_url, args.judge_opt))
    rows = read_labels(args.labels)
    env = JudgeEnv(Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(), args.device)
    overall, per_lang, errors = evaluate_judge(judge, rows, env)
    print(format_report(args.judge, overall, per_lang, errors, args.errors))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msafety-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list model aliases").set_defaults(func=cmd_models)
    sub.add_parser("languages", help="list languages and tiers").set_defaults(func=cmd_languages)
    p = sub.add_parser("summary", help="print the table of results files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("rejudge", help="judge the answers of results files again (e.g. with an improved judge)")
    p.add_argument("files", nargs="+")
    p.add_argument("--out-dir", required=True, help="where the rejudged results files go")
    p.add_argument("--judge", default="refusal")
    p.add_argument("--judge-model", default=None)
    p.add_argument("--judge-url", default=None)
    p.add_argument("--judge-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_rejudge)
    p = sub.add_parser("export", help="write the edited model as a transformers folder")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--editor", required=True)
    p.add_argument("--editor-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--editor-config", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("organism", help="model organisms (offline models with a known safety gap)")
    org = p.add_subparsers(dest="organism_command", required=True)
    p = org.add_parser("build", help="build an organism into the cache (done on first use otherwise)")
    p.add_argument("name", nargs="?", default="smollm2-en-safe")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_organism_build)
    p = sub.add_parser("report", help="HTML comparison of results files")
    p.add_argument("files", nargs="+")
    p.add_argument("-o", "--output", default="report.html")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("leaderboard", help="leaderboard over a results folder")
    p.add_argument("results_dir")
    p.add_argument("-o", "--output", default="leaderboard.html")
    p.add_argument("--md", default=None, help="also write Markdown here")
    p.add_argument("--csv", default=None, help="also write CSV here")
    p.add_argument("--max-utility-drop", type=float, default=2.0)
    p.add_argument("--asr", choices=("raw", "corrected"), default="raw", help="rank by raw or judge-corrected LRL ASR")
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("judge-eval", help="agreement of a judge with human labels")
    p.add_argument("--labels", default="bundled",
                   help="CSV with prompt, completion, final_label[, lang, type]; or bundled / heldout")
    p.add_argument("--judge", default="refusal")
    p.add_argument("--judge-model", default=None, help="model judges: size alias, hub id or folder")
    p.add_argument("--judge-url", default=None, help="llm-rubric: OpenAI-compatible base URL")
    p.add_argument("--judge-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--errors", type=int, default=0, help="list this many disagreements")
    p.set_defaults(func=cmd_judge_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UsageError as exc:
        print(f"msafety-bench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
