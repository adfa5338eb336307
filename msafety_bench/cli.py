"""The ``msafety-bench`` command: helpers around the pytest suites (which stay the main entry point).

    msafety-bench run [PYTEST ARGS]   the installed suites: pytest --pyargs msafety_bench.suites ...
    msafety-bench models              aliases and what they load
    msafety-bench languages           the language table with tiers
    msafety-bench presets             named set-ups (--preset), with the paper's published numbers
    msafety-bench summary FILE.json   the per-language table of a results file
    msafety-bench export --model M --editor E --out DIR
                                      the edited model as a plain transformers folder + editor.json
    msafety-bench organism build [smollm2-en-safe]
                                      refit an organism's shipped adapter from its recipe (~20 min)
    msafety-bench rejudge RESULTS.json... --out-dir DIR [--judge NAME]
                                      judge the kept answers again, e.g. after the judge improved
    msafety-bench report RESULTS.json... -o report.html
                                      compare runs side by side in one self-contained HTML file
    msafety-bench leaderboard RESULTS_DIR -o leaderboard.html [--md F] [--csv F] [--asr raw|corrected]
    msafety-bench judge-eval [--labels FILE.csv|bundled|heldout|dev2|heldout-v3[,...]] [--judge NAME] [--errors N]
                                      agreement of a judge with human labels, per language and kind
    msafety-bench cache verify|clear [--cache-dir DIR]
                                      check every cache entry / remove responses, edits and utility scores

Exit status: 0 done, 2 bad usage or input (one line on stderr), 3 internal error (a bug: traceback).
"""

from __future__ import annotations

import argparse
import sys

from msafety_bench.errors import UsageError

EXIT_USAGE = 2  # argparse's own code for bad usage; also bad input files and damaged caches
EXIT_INTERNAL = 3  # pytest's code for an internal error


def cmd_run(args) -> int:
    """The suites as installed with the package, wherever the command runs (no checkout needed)."""
    import pytest

    return int(pytest.main(["--pyargs", "msafety_bench.suites", *args.pytest_args]))


def cmd_models(args) -> None:
    from msafety_bench.models import known_models

    for alias, target in known_models().items():
        print(f"{alias:<16} {target}")
    print("any other value: a hub id (org/name) or a local model folder")


def cmd_languages(args) -> None:
    from msafety_bench.data.languages import LANGUAGES

    for lang in LANGUAGES.values():
        print(f"{lang.code:<4} {lang.name:<12} {lang.tier:<4} {lang.script}")


def cmd_presets(args) -> None:
    from msafety_bench.presets import PRESETS

    for preset in PRESETS.values():
        print(f"{preset.name}: {preset.description}")
        for key, value in preset.options.items():
            print(f"    --{key.replace('_', '-'):<16} {value}")
        for editor, options in preset.editor_options.items():
            print(f"    {editor + ' options':<18} " + " ".join(f"{k}={v}" for k, v in options.items()))
        if preset.reference:
            print(f"    published ({preset.reference_source}):")
            for editor, value in preset.reference.items():
                print(f"      --editor {editor:<12} mean ASR {value:.1f}%")
        print()


def cmd_summary(args) -> None:
    from types import SimpleNamespace

    from msafety_bench.metrics import LanguageMetrics
    from msafety_bench.metrics.correction import CorrectedASR
    from msafety_bench.presets import reference_line
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
        reference = reference_line(data.get("preset"), data["editor"]["name"], [m.asr for m in metrics.values()])
        if reference:
            print(reference)


def cmd_rejudge(args) -> None:
    from pathlib import Path

    from msafety_bench.judges import JudgeEnv, get_judge, judge_options
    from msafety_bench.paths import default_cache_dir
    from msafety_bench.rejudge import rejudge
    from msafety_bench.results import read_results, write_results

    judge = get_judge(args.judge, **judge_options(args.judge, args.judge_model, args.judge_url, args.judge_opt))
    env = JudgeEnv(Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(), args.device)
    for path in args.files:
        try:
            data = read_results(path, answers_only=True)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read results file '{path}': {exc}") from None
        out = write_results(rejudge(data, judge, env), args.out_dir)
        print(f"{path} -> {out}")


def cmd_export(args) -> None:
    import os
    import shutil
    from pathlib import Path

    from msafety_bench.export import export_edited
    from msafety_bench.pipeline import BenchRun, RunOptions

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file: name a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out '{out}' exists and is not empty: choose a new folder")
    run = BenchRun(RunOptions(model=args.model, editor=args.editor, editor_opts=args.editor_opt,
                              editor_config=args.editor_config, cache_dir=args.cache_dir, device=args.device,
                              dtype=args.dtype, trust_remote_code=args.trust_remote_code))
    # Written beside the target and renamed at the end: an interrupted export leaves no half a model.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        card = export_edited(run, tmp)
        if out.is_dir():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out} (editor {args.editor}, fingerprint {card['merged_fingerprint']})")


def cmd_organism_build(args) -> None:
    from pathlib import Path

    from msafety_bench.models.organism import ORGANISMS, organism_folder
    from msafety_bench.organisms import build_adapter
    from msafety_bench.paths import default_cache_dir

    if args.name not in ORGANISMS:
        raise UsageError(f"unknown organism '{args.name}': choose one of {', '.join(ORGANISMS)}")
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    organism = ORGANISMS[args.name]
    card = build_adapter(organism, cache, device=args.device)
    folder = organism_folder(organism, cache)
    print(f"{args.name}: adapter {organism.adapter_folder} (recipe {card['recipe_digest']}, fitted in "
          f"{card['build_seconds']} s), merged model {folder}")


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
    print(format_report(args.judge, evaluate_judge(judge, rows, env), args.errors))


def cmd_cache(args) -> None:
    from pathlib import Path

    from msafety_bench.cache_admin import clear_cache, verify_cache
    from msafety_bench.paths import default_cache_dir

    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.cache_command == "clear":
        for line in clear_cache(cache, models=args.models):
            print(line)
        return
    lines, damaged = verify_cache(cache)
    for line in lines:
        print(line)
    if damaged:
        raise UsageError(f"{damaged} damaged cache entr{'y' if damaged == 1 else 'ies'} in '{cache}': "
                         f"`msafety-bench cache clear --cache-dir {cache}` removes them (they are rebuilt on use)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msafety-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the installed suites (pytest --pyargs msafety_bench.suites ARGS)")
    p.add_argument("pytest_args", nargs="*", help="pytest and suite options, e.g. --model smollm2")
    p.set_defaults(func=cmd_run)
    sub.add_parser("models", help="list model aliases").set_defaults(func=cmd_models)
    sub.add_parser("languages", help="list languages and tiers").set_defaults(func=cmd_languages)
    sub.add_parser("presets", help="list presets and the published numbers they reproduce").set_defaults(func=cmd_presets)
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
    p = org.add_parser("build", help="refit the organism's adapter from its recipe (the shipped one is merged on first use)")
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
                   help="CSV with prompt, completion, final_label[, lang, kind]; or bundled / heldout / dev2; "
                        "a comma list reads several")
    p.add_argument("--judge", default="refusal")
    p.add_argument("--judge-model", default=None, help="model judges: size alias, hub id or folder")
    p.add_argument("--judge-url", default=None, help="llm-rubric: OpenAI-compatible base URL")
    p.add_argument("--judge-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--errors", type=int, default=0, help="list this many disagreements")
    p.set_defaults(func=cmd_judge_eval)
    p = sub.add_parser("cache", help="check or empty the cache folder")
    cache = p.add_subparsers(dest="cache_command", required=True)
    for name, text in (("verify", "check the response database, edit artifacts and utility scores"),
                       ("clear", "remove responses, edit artifacts and utility scores (rebuilt on use)")):
        p = cache.add_parser(name, help=text)
        p.add_argument("--cache-dir", default=None, help="default $MSB_CACHE_DIR or ~/.cache/msafety-bench")
        if name == "clear":
            p.add_argument("--models", action="store_true", help="also remove converted models and organisms")
        p.set_defaults(func=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "run":  # every argument after `run` belongs to pytest, options included
        args.pytest_args = argv[argv.index("run") + 1:]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args) or 0
    except UsageError as exc:
        print(f"msafety-bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # a bug, not bad input: keep the traceback and say so
        import traceback

        traceback.print_exc()
        print("msafety-bench: internal error: the traceback above is a bug in msafety-bench, please report it",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
