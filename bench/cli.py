"""`python -m bench`: measure cases with the harness's own timers, side by side in one
process; print a line per case and a table of medians with their 95% intervals and the
ratio to a baseline implementation; stream every record to a JSON-lines file.

    python -m bench run --preset paper --impl torch,openmp,openmp_fused --device cpu \\
        --direction forward,train,stages --baseline torch --interleave 5 --results /tmp/run.jsonl
    python -m bench run --preset paper --impl openmp_fused --threads 1,2 --direction forward
    python -m bench list --preset paper --device cpu

With --interleave N the cases the ratio column compares (every implementation of one
layer, direction and thread count) are measured together in N shuffled passes and their
calls pooled: on a machine whose speed drifts, their ratios then compare the same
stretches of time. A bad option is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import impls

from . import driver, intervals, options, schema, timing
from .cases import select_cases


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
    run.add_argument("--min-time", default="0.3", help="seconds of timed calls per case at least (default 0.3)")
    run.add_argument("--max-time", default="1.5", help="seconds per case at most, while the interval is still wide "
                                                       "(default 1.5)")
    run.add_argument("--rel-ci", default="0.02", help="stop sampling once the 95%% interval of the median is within "
                                                      "this fraction of it (default 0.02; 'off': stop at --min-time)")
    run.add_argument("--interleave", default="1", metavar="N",
                     help="measure the implementations of each layer/direction together in N shuffled passes")
    run.add_argument("--remeasure", action="store_true", help="measure flagged cases once more at the end")
    run.add_argument("--isolate", action="store_true",
                     help="measure each case (each interleaved group) in a fresh process, so a crash is recorded")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["child"] and len(argv) == 2:  # the process --isolate starts (not for people)
        return _child(json.loads(argv[1]))
    args = _parser().parse_args(argv)
    try:
        chosen = options.selection(lambda name: getattr(args, name))
        cases = select_cases(**chosen)
        if args.command == "run":
            settings_list, results = _settings(args), options.results_path(args.results)
    except ValueError as e:
        return _usage_error(str(e))
    if not cases:
        return _usage_error("no case matches --preset/--impl/--device/--direction/--dtype")
    if args.command == "list":
        for c in cases:
            print(c.id)
        return 0
    return _run(cases, settings_list, results, args)


def _usage_error(message: str) -> int:
    print(f"python -m bench: error: {message}", file=sys.stderr)
    return 2


def _settings(args) -> list[driver.Settings]:
    """One Settings per thread count, checked; ValueError naming the option."""
    if args.baseline not in impls.names():
        raise ValueError(f"--baseline: unknown implementation {args.baseline!r}")
    min_time = options.positive_seconds("--min-time", args.min_time)
    max_time = options.positive_seconds("--max-time", args.max_time)
    if max_time < min_time:
        raise ValueError(f"--max-time: expected at least --min-time ({min_time:g} s), got {max_time:g}")
    rule = timing.StopRule(min_time=min_time, max_time=max_time, rel_ci=options.fraction("--rel-ci", args.rel_ci))
    interleave = options.count("--interleave", args.interleave)
    return [driver.Settings(threads=t, rule=rule, interleave=interleave, remeasure=args.remeasure,
                            isolate=args.isolate) for t in options.thread_counts(args.threads)]


def _run(cases, settings_list, results, args) -> int:
    from .records import ResultsWriter

    writer = ResultsWriter(results, resume=args.resume)
    if writer.done:
        print(f"resuming {results}: {len(writer.done)} cases already measured there are skipped")
    out, start, probes_of = [], time.perf_counter(), {}
    total = sum(c.id not in writer.done for c in cases) * len(settings_list)
    for settings in settings_list:
        for rec in driver.Driver(settings, writer).run(cases):
            out.append(rec)
            threads = rec["machine"].get("threads")
            if rec.get("probe_gflops"):
                probes_of.setdefault(threads, []).append(rec["probe_gflops"])
            note = _fmt_time(rec.get("time_median")) if rec["status"] == "ok" else f"{rec['status']}: {rec['reason']}"
            again = f" (attempt {rec['attempt']})" if (rec.get("attempt") or 1) > 1 else ""
            print(f"[{len(out)}/{total} {time.perf_counter() - start:6.1f}s] {rec['case']}"
                  f"{' threads=' + str(threads) if settings.threads else ''}{again}  {note}"
                  f"{_slow_period(rec, schema.reference_probe(probes_of.get(threads, [])))}", flush=True)
    latest = {}
    for rec in out:  # a re-measured case: its latest attempt
        latest[(rec["case"], rec["machine"].get("threads"))] = rec
    _print_table(list(latest.values()), args.baseline)
    final = list(latest.values())
    counts = {s: sum(r["status"] == s for r in final) for s in schema.STATUSES}
    print(f"\n{counts['ok']} measured, {counts['failed']} failed, {counts['skipped']} skipped"
          + (f"; records in {results}" if results else ""))
    return 1 if counts["failed"] else 0


def _child(spec: dict) -> int:
    """Measure the cases of `spec` in this process (the parent runs with --isolate)."""
    from .cases import from_id
    from .records import ResultsWriter

    settings = driver.settings_from_json(spec["settings"])
    writer = ResultsWriter(spec["results"])
    for _ in driver.Driver(settings, writer).run([from_id(i) for i in spec["cases"]]):
        pass
    return 0


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:9.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:9.1f} us"


def _slow_period(rec, reference=None) -> str:
    """A warning for a CPU case timed while the cores were slow: its compute probe ran
    more than schema.SLOW_PROBE below the run's reference so far."""
    probe = rec.get("probe_gflops")
    if rec.get("device") != "cpu" or not probe or not reference or probe >= (1 - schema.SLOW_PROBE) * reference:
        return ""
    return f"  [slow period: compute probe {1 - probe / reference:.0%} below the run's reference]"


def _print_table(results, baseline):
    """Median per case with its 95% interval, and baseline time / time with its interval
    (> 1: faster than the baseline)."""
    def key(r):
        return (r["device"], r["table"], r["shape"], r["dtype"], r["direction"], r["machine"].get("threads"))

    base = {key(r): r for r in results if r["impl"] == baseline and r["status"] == "ok"}
    print(f"\n{'layer':<24} {'direction':<26} {'impl':<14} {'thr':>3} {'median':>12} {'ci95':>7} {'repeat':>7} "
          f"{'x ' + baseline:>22}")
    for r in sorted((r for r in results if r["status"] == "ok"), key=lambda r: (key(r), r["impl"])):
        b = base.get(key(r))
        if b:
            value, low, high, _ = intervals.ratio(b, r)
            shown = f"{value:6.2f}" + (f" [{low:.2f}, {high:.2f}]" if low == low else "")
        else:
            shown = "-"
        rep = r.get("time_repeat_median")
        agree = f"{rep / r['time_median']:7.2f}" if rep else f"{'-':>7}"
        low, high = r.get("time_ci95_low"), r.get("time_ci95_high")
        ci = f"±{(high - low) / 2 / r['time_median']:5.1%}" if low and high else "-"
        print(f"{r['table'] + ':' + r['shape']:<24} {r['direction']:<26} {r['impl']:<14} "
              f"{r['machine'].get('threads') or '':>3} {_fmt_time(r['time_median']):>12} {ci:>7} "
              f"{agree} {shown:>22}")
