"""The pytest-benchmark suite: one benchmark per case (implementation, device, layer,
dtype, direction). Timing is pytest-benchmark's; the gate, the callable (synchronised on
a GPU), the peak memory and the record are the harness's, stored in `extra_info` and,
with --results, appended to a JSON-lines file as each case finishes."""

from __future__ import annotations

import pytest

from bench import harness


def _stats(benchmark) -> dict:
    s = getattr(benchmark, "stats", None)
    s = getattr(s, "stats", None)
    if s is None or not getattr(s, "data", None):
        return {}
    return {
        "time_median": s.median, "time_q1": s.q1, "time_q3": s.q3, "time_iqr": s.iqr, "time_mean": s.mean,
        "time_min": s.min, "time_stddev": s.stddev, "rounds": s.rounds,
    }


def test_layer(benchmark, case, results_writer, threads):
    benchmark.group = case.group
    try:
        bench = harness.setup_case(case, threads, warmup=not benchmark.disabled)
    except harness.Unavailable as e:
        results_writer.write(harness.record(case, status="skipped", reason=str(e)))
        pytest.skip(str(e))
    except Exception as e:
        rec = harness.record(case, status="failed", reason=f"{type(e).__name__}: {e}".splitlines()[0][:500])
        results_writer.write(rec)
        benchmark.extra_info.update(rec)
        raise
    benchmark(bench.call)
    stats = _stats(benchmark)
    peak, method = harness.peak_bytes(bench) if not benchmark.disabled else (None, None)
    graph, note = harness.measure_graph_time(bench) if not benchmark.disabled else (None, None)
    kernels = harness.kernels_ran(bench) if not benchmark.disabled else None
    rec = harness.record(case, status="ok", stats=stats, bench=bench, peak=peak, peak_method=method,
                         graph_time=graph, graph_note=note, kernels=kernels)
    benchmark.extra_info.update(rec)
    if not benchmark.disabled:
        results_writer.write(rec)
