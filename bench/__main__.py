"""`python -m bench run`: measure cases with the harness's own timers, side by side in one
process, print a progress line per case and a table of medians with the ratio to a
baseline implementation, and append every record to a JSON-lines file.

    python -m bench run --preset paper --impl torch,openmp,openmp_fused --device cpu \
        --direction forward,train,stages --baseline torch --results /tmp/run.jsonl
    python -m bench run --preset paper --impl openmp_fused --threads 1,2 --direction forward
    python -m bench run --preset paper --impl openmp,openmp_fused --direction forward --interleave 5
    python -m bench list --preset paper --device cpu

With --interleave N, the cases that the ratio column compares (every implementation of
one layer, direction and thread count) are measured together in N passes, in a shuffled
order each pass, and their calls pooled (harness.measure_interleaved): on a machine whose
speed drifts, their ratios then compare the same stretches of time.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import harness


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("run", "list"):
        p = sub.add_parser(name)
        p.add_argument("--preset", default="smoke", help="comma-separated tables: smoke, paper, sweep")
        p.add_argument("--impl", default="", help="comma-separated implementations (default: all)")
        p.add_argument("--device", default="cpu", help="comma-separated devices (default cpu)")
        p.add_argument("--direction", default="forward,backward,train", help="forward, backward, train, stages")
        p.add_argument("--dtype", default="float32")
        p.add_argument("--all-rows", action="store_true", help="every row of the sweep table")
    run = sub.choices["run"]
    run.add_argument("--threads", default="", help="comma-separated thread counts; each case runs at each")
    run.add_argument("--results", default=None, help="append records to this .jsonl file")
    run.add_argument("--baseline", default="torch", help="implementation the ratio column compares with")
    run.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per case")
    run.add_argument("--interleave", type=int, default=1, metavar="N",
                     help="measure the implementations of each layer/direction together in N shuffled passes")
    return ap


def _fmt_time(seconds):
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:9.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:9.1f} us"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    cases = harness.select_cases(**harness.selection(lambda name: getattr(args, name)), all_rows=args.all_rows)
    if not cases:
        print("no case matches: check --preset/--impl/--device/--direction", file=sys.stderr)
        return 2
    if args.command == "list":
        for c in cases:
            print(c.id)
        return 0
    if args.interleave < 1:
        print("--interleave: expected a count >= 1", file=sys.stderr)
        return 2
    threads_list = [int(t) for t in harness.split_csv(args.threads)] or [None]
    writer = harness.ResultsWriter(args.results)
    results = []
    total = len(cases) * len(threads_list)
    start = time.perf_counter()
    best_probe = {}  # per thread count
    for group, threads in _groups(cases, threads_list, args.interleave > 1):
        if args.interleave > 1:
            recs = harness.measure_interleaved(group, passes=args.interleave, threads=threads, min_time=args.min_time)
        else:
            recs = [harness.measure(group[0], threads=threads, min_time=args.min_time)]
        for case, rec in zip(group, recs):
            writer.write(rec)
            results.append(rec)
            shown = rec.get("time_median")
            note = _fmt_time(shown) if rec["status"] == "ok" else f"{rec['status']}: {rec['reason']}"
            thr = f" threads={rec['machine'].get('threads')}" if threads else ""
            probe = rec.get("probe_gflops")
            if probe:
                best_probe[threads] = max(best_probe.get(threads, 0.0), probe)
            print(f"[{len(results)}/{total} {time.perf_counter() - start:6.1f}s] {case.id}{thr}  {note}"
                  f"{_slow_period(rec, best_probe.get(threads))}", flush=True)
    _print_table(results, args.baseline)
    ok = sum(r["status"] == "ok" for r in results)
    print(f"\n{ok} measured, {sum(r['status'] == 'failed' for r in results)} failed, "
          f"{sum(r['status'] == 'skipped' for r in results)} skipped" + (f"; records in {args.results}" if args.results else ""))
    return 0 if all(r["status"] != "failed" for r in results) else 1


def _slow_period(rec, best_probe=None) -> str:
    """A warning for a CPU case timed while the cores were slow: the compute probe taken
    around it ran 8% or more below the best of the run so far."""
    probe = rec.get("probe_gflops")
    if rec.get("device") != "cpu" or not probe or not best_probe or probe >= 0.92 * best_probe:
        return ""
    return f"  [slow period: compute probe {1 - probe / best_probe:.0%} below the run's best]"


def _groups(cases, threads_list, together):
    """(cases, threads) to measure at once: one case each, or (together) every
    implementation of one layer, dtype and direction, at one thread count."""
    if not together:
        return [([c], t) for c in cases for t in threads_list]
    groups: dict = {}
    for c in cases:
        groups.setdefault(c.group, []).append(c)
    return [(g, t) for g in groups.values() for t in threads_list]


def _print_table(results, baseline):
    """Median per case, with the ratio baseline_time / time (> 1: faster than baseline)."""
    def key(r):
        return (r["device"], r["table"], r["shape"], r["dtype"], r["direction"], r["machine"].get("threads"))

    base = {key(r): r["time_median"] for r in results if r["impl"] == baseline and r["status"] == "ok"}
    print(f"\n{'layer':<24} {'direction':<26} {'impl':<14} {'thr':>3} {'median':>12} {'IQR':>10} {'repeat':>7} "
          f"{'x ' + baseline:>10}")
    for r in sorted((r for r in results if r["status"] == "ok"), key=lambda r: (key(r), r["impl"])):
        b = base.get(key(r))
        ratio = f"{b / r['time_median']:10.2f}" if b else f"{'-':>10}"
        rep = r.get("time_repeat_median")
        agree = f"{rep / r['time_median']:7.2f}" if rep else f"{'-':>7}"
        print(f"{r['table'] + ':' + r['shape']:<24} {r['direction']:<26} {r['impl']:<14} "
              f"{r['machine'].get('threads') or '':>3} {_fmt_time(r['time_median']):>12} "
              f"{_fmt_time(r.get('time_iqr')):>10} {agree} {ratio}")


if __name__ == "__main__":
    sys.exit(main())
