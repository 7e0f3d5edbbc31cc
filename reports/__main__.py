"""python -m reports build [RESULTS ...] [--out DIR]: results -> results.csv, figures, index.html."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the tidy CSV, the figures and index.html")
    b.add_argument("results", nargs="*", type=Path,
                   help="results files (*.jsonl, pytest-benchmark *.json, *.models.json) or folders "
                        "(searched recursively; an asv results folder is read as such). "
                        "Default: reports/results/ and the asv results folder when present.")
    b.add_argument("--out", type=Path, default=None, help="output folder (default: reports/html/)")
    b.add_argument("--quiet", action="store_true", help="do not list reading problems on stderr")
    args = parser.parse_args(argv)

    from .build import build

    problems: list[str] = []
    index = build(args.results or None, args.out, problems)
    if not args.quiet:
        for problem in problems:
            print(f"note: {problem.splitlines()[0]}", file=sys.stderr)
    print(index.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
