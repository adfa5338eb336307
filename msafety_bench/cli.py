"""The ``msafety-bench`` command: helpers around the pytest suites (which stay the main entry point).

    msafety-bench models              aliases and what they load
    msafety-bench languages           the language table with tiers
    msafety-bench summary FILE.json   the per-language table of a results file
"""

from __future__ import annotations

import argparse
import sys

from msafety_bench.errors import UsageError


def cmd_models(args) -> None:
    from msafety_bench.models import known_models

    for alias, target in known_models().items():
        print(f"{alias:<14} {target}")
    print("any other value: a hub id (org/name) or a local model folder")


def cmd_languages(args) -> None:
    from msafety_bench.data.languages import LANGUAGES

    for lang in LANGUAGES.values():
        print(f"{lang.code:<4} {lang.name:<12} {lang.tier:<4} {lang.script}")


def cmd_summary(args) -> None:
    from types import SimpleNamespace

    from msafety_bench.metrics import LanguageMetrics
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
        print("\n".join(summary_table(SimpleNamespace(metrics=metrics))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msafety-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list model aliases").set_defaults(func=cmd_models)
    sub.add_parser("languages", help="list languages and tiers").set_defaults(func=cmd_languages)
    p = sub.add_parser("summary", help="print the table of results files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_summary)
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
