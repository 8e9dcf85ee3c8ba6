"""`python -m benchmarks.report`: regenerate a results folder's summary, LATEST.md and
README.md's benchmark table (see benchmarks/report/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.report.document import generate
from benchmarks.report.readme import LATEST, sync_readme


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                     description="Regenerate summary.md and plots from a "
                                                 "benchmarks/results/<timestamp> folder.")
    parser.add_argument("folder", type=Path, nargs="?", default=None,
                        help="benchmarks/results/<timestamp>")
    parser.add_argument("--latest", type=Path, default=None,
                        help="also write the summary (without plots) here, e.g. "
                             "benchmarks/LATEST.md")
    parser.add_argument("--readme", type=Path, default=None,
                        help="copy the headline table of --latest (default "
                             "benchmarks/LATEST.md) into this README's generated block")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        if args.folder is None:
            if args.readme is None:
                parser.error("give a results folder, or --readme to sync README.md alone")
            sync_readme(args.readme, args.latest or LATEST)
            print(args.readme)
            return 0
        if args.readme is not None and args.latest is None:
            parser.error("--readme with a results folder needs --latest: README.md's table is "
                         "copied from the LATEST.md that this folder writes")
        print(generate(args.folder, args.latest, args.readme))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
