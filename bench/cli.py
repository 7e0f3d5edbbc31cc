"""`python -m bench`: measure cases with the harness's own timers, every implementation in a
worker process of its own, in rounds across the whole sweep; print a line per visit and a
table of medians and ratios with their 95% intervals; write one record per case to a
JSON-lines file.

    python -m bench run --preset paper --impl torch,openmp,openmp_fused --device cpu \\
        --direction forward,train,stages --baseline torch --results /tmp/run.jsonl
    python -m bench run --preset paper --impl openmp_fused --threads 1,2 --direction forward
    python -m bench list --preset paper --device cpu
    python -m bench ab HEAD~1 HEAD --preset smoke      # two revisions against each other (bench/ab.py)

The cases a ratio compares (every implementation of one layer, direction and thread
count) are timed together, block by block, in `--passes` shuffled passes per round, in
`--rounds` rounds spread over the sweep, each round in fresh worker processes; a ratio is
the geometric mean of the rounds' paired ratios, with a confidence and a prediction
interval from the spread between rounds (bench/sweep.py, bench/intervals.py). A bad
option is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import impls

from . import intervals, options, schema
from .options import usage_error


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in ("run", "list"):
        options.add_to_argparse(sub.add_parser(name))
    run = sub.choices["run"]
    run.add_argument("--baseline", default="torch", help="implementation the ratio column compares with (default torch)")
    options.add_sweep_options(run)
    from . import ab

    ab.add_parser(sub)
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "ab":
        from . import ab

        return ab.main(args)
    try:
        cases = options.selected_cases(lambda name: getattr(args, name))
        if args.command == "run":
            if args.baseline not in impls.names():
                raise ValueError(f"--baseline: unknown implementation {args.baseline!r}")
            plans, results = options.plans(args), options.results_path(args.results)
    except ValueError as e:
        return usage_error(str(e))
    if args.command == "list":
        for c in cases:
            print(c.id)
        return 0
    return _run(cases, plans, results, args)


def _run(cases, plans, results, args) -> int:
    from . import sweep

    results = Path(results) if results else None
    out, interrupted = [], False
    for plan in plans:
        if len(plans) > 1:  # one sweep per thread count, each with its own results file
            path = results.with_name(f"{results.stem}-t{plan.threads}{results.suffix}") if results else None
        else:
            path = results
        journal = sweep.Journal(sweep.Journal.beside(path) or _scratch_journal())
        run = sweep.Sweep(sweep.members_of(cases), plan, journal, path, resume=args.resume)
        out += run.run()
        interrupted |= run.interrupted
        if path is None:
            journal.path.unlink(missing_ok=True)
        if interrupted:
            break
    print_table(out, args.baseline)
    counts = {s: sum(r["status"] == s for r in out) for s in schema.STATUSES}
    print(f"\n{counts['ok']} measured, {counts['failed']} failed, {counts['skipped']} skipped"
          + (f"; records in {results}" if results else ""))
    if interrupted:
        return 130
    return 1 if counts["failed"] else 0


def _scratch_journal() -> Path:
    """The journal of a sweep without a results file: a temporary file, removed after."""
    fd, name = tempfile.mkstemp(prefix="bench-sweep-", suffix=".rounds")
    os.close(fd)
    return Path(name)


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:9.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:9.1f} us"


def print_table(results, baseline):
    """Median per case with its 95% interval, and baseline time / time with its confidence
    and prediction intervals (> 1: faster than the baseline)."""
    def key(r):
        return (r["device"], r["table"], r["shape"], r["dtype"], r["direction"], r["machine"].get("threads"))

    base = {key(r): r for r in results if r["impl"] == baseline and r["status"] == "ok"}
    print(f"\n{'layer':<24} {'direction':<26} {'impl':<14} {'thr':>3} {'median':>12} {'ci95':>7} {'rounds':>6} "
          f"{'x ' + baseline:>22} {'rerun within':>14}")
    for r in sorted((r for r in results if r["status"] == "ok"), key=lambda r: (key(r), r["impl"])):
        b = base.get(key(r))
        shown, rerun = "-", ""
        if b:
            value, low, high, _ = intervals.ratio(b, r)
            shown = f"{value:6.2f}" + (f" [{low:.2f}, {high:.2f}]" if low == low else "")
            pi_low, pi_high = intervals.prediction(b, r)
            rerun = f"[{pi_low:.2f}, {pi_high:.2f}]" if math.isfinite(pi_low) else ""
        low, high = r.get("time_ci95_low"), r.get("time_ci95_high")
        ci = f"±{(high - low) / 2 / r['time_median']:5.1%}" if low and high else "-"
        print(f"{r['table'] + ':' + r['shape']:<24} {r['direction']:<26} {r['impl']:<14} "
              f"{r['machine'].get('threads') or '':>3} {_fmt_time(r['time_median']):>12} {ci:>7} "
              f"{r.get('process_rounds') or 1:>6} {shown:>22} {rerun:>14}")
