"""python -m reports build [RESULTS ...] [--out DIR]: results -> results.csv, figures, index.html.
python -m reports compare OLD NEW [--threshold F] [--alpha P] [--format F]: did NEW get slower?
python -m reports agree A B [--within F] [--json]: do two sweeps of one machine repeat each other?

Exit status of build: 0 built; 1 nothing could be read from the inputs, or the build
failed; 2 bad arguments or a results path that does not exist. Of compare: 0 no case
slower; 1 some case slower than the threshold; 2 bad arguments or nothing to compare.
Of agree: 0 printed; 2 bad arguments or nothing to compare. Errors are one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block; exit status 2 as argparse's own
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m reports", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    b = sub.add_parser("build", help="build the tidy CSV, the figures and index.html")
    b.add_argument("results", nargs="*", type=Path,
                   help="results files (*.jsonl, pytest-benchmark *.json, *.models.json) or folders "
                        "(searched recursively; an asv results folder is read as such). "
                        "Default: reports/results/ (the committed references), reports/runs/ (your own "
                        "sweeps) and the asv results folder when present.")
    b.add_argument("--out", type=Path, default=None, help="output folder (default: reports/html/)")
    b.add_argument("--quiet", action="store_true", help="do not list reading problems on stderr")
    c = sub.add_parser("compare", help="compare two sets of results case by case; exit 1 when NEW is slower",
                       description="Per case measured in both: NEW/OLD of the median times with its 95%% "
                                   "interval and a Mann-Whitney p-value. Exit 0: nothing slower; 1: a case "
                                   "slower than the threshold; 2: bad arguments or nothing to compare.")
    c.add_argument("old", type=Path, help="results file, folder or asv results folder: the reference")
    c.add_argument("new", type=Path, help="the same for the results under test")
    c.add_argument("--threshold", type=float, default=0.10,
                   help="slower means NEW/OLD above 1 + THRESHOLD (default 0.10)")
    c.add_argument("--alpha", type=float, default=0.01,
                   help="and the Mann-Whitney p-value below ALPHA where both sides kept raw times "
                        "(default 0.01)")
    c.add_argument("--format", choices=["terminal", "markdown", "csv"], default="terminal",
                   help="the table as aligned text (default), markdown, or CSV (the verdict lines then go "
                        "to stderr)")
    a = sub.add_parser("agree", help="how well two sweeps of one machine agree (speedups, flagged cases)")
    a.add_argument("a", type=Path, help="one sweep's results file or folder")
    a.add_argument("b", type=Path, help="the other's")
    a.add_argument("--within", type=float, default=0.10, help="speedups agree when they differ by at most this "
                                                               "(default 0.10)")
    a.add_argument("--json", action="store_true", help="print one JSON object (the counts and per_pair) instead")
    return parser


def _agree(args) -> int:
    from .agree import AgreeError, agree, render, to_json

    try:
        summary, pairs = agree(args.a, args.b, args.within)
    except AgreeError as exc:
        print(f"python -m reports agree: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(to_json(summary, pairs) if args.json else render(summary, pairs))
    return 0


def _build(args) -> int:
    from .build import build
    from .load import default_inputs, load

    missing = [p for p in args.results if not p.exists()]
    if missing:
        print(f"python -m reports build: error: no such results file or folder: {missing[0]}", file=sys.stderr)
        return 2
    inputs = args.results or default_inputs()
    data = load(inputs)
    if not data.sources:
        why = f" ({data.problems[0]})" if data.problems else ""
        print(f"python -m reports build: error: nothing could be read from {', '.join(map(str, inputs))}: "
              f"no record, asv result or models file{why}", file=sys.stderr)
        return 1
    problems: list[str] = []
    index = build(out=args.out, problems=problems, data=data)
    if not args.quiet:
        for problem in problems:
            print(f"note: {problem.splitlines()[0]}", file=sys.stderr)
    print(index.resolve())
    return 0


def _compare(args) -> int:
    from .compare import CompareError, compare

    try:
        status, table, lines = compare(args.old, args.new, args.threshold, args.alpha, args.format)
    except CompareError as exc:
        print(f"python -m reports compare: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(table)
    out = sys.stderr if args.format == "csv" else sys.stdout  # keep a CSV on stdout parseable
    if args.format == "markdown":
        lines = [""] + lines
    for line in lines:
        print(line, file=out)
    return status


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    run = {"build": _build, "compare": _compare, "agree": _agree}[args.command]
    try:
        return run(args)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback; compare's 1 means "slower"
        print(f"python -m reports {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1 if args.command == "build" else 2


if __name__ == "__main__":
    sys.exit(main())
