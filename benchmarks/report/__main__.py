"""`python -m benchmarks.report`: regenerate a results folder's summary, publish it as its CPU
class's report, and README.md's benchmark block (see benchmarks/report/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.report.classes import publish, sync_readme
from benchmarks.report.document import generate


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                     description="Regenerate summary.md and plots from a "
                                                 "benchmarks/results/<timestamp> folder.")
    parser.add_argument("folder", type=Path, nargs="?", default=None,
                        help="benchmarks/results/<timestamp>")
    parser.add_argument("--publish", action="store_true",
                        help="also make this run its CPU class's report: copy its JSON to "
                             "benchmarks/latest-run/<class>/ and write "
                             "benchmarks/LATEST.<class>.md (other classes are kept)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="rewrite this README's benchmark block from every "
                             "benchmarks/LATEST.<class>.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        if args.folder is None:
            if args.readme is None or args.publish:
                parser.error("give a results folder (to --publish it), or --readme alone to "
                             "rewrite README.md's block from the committed reports")
            sync_readme(args.readme)
            print(args.readme)
            return 0
        print(generate(args.folder))
        if args.publish:
            print(publish(args.folder, args.readme))
        elif args.readme is not None:
            parser.error("--readme with a results folder needs --publish: README.md's block "
                         "quotes the published reports")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
