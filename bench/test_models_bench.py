"""The model table of the pytest-benchmark suite (issue 7): end-to-end forward and
training-step time of the baseline CNN and its flattened twin (bench/models.py), one
benchmark per (implementation, device, network config, dtype, direction).

It follows bench/test_layers.py and shares its options and fixtures (bench/conftest.py):
--preset picks the configs (smoke -> digits 1x8x8, paper -> cifar 3x32x32), --impl,
--device, --direction (forward, train; other directions have no model case), --dtype,
--threads, --results. The case named "dense" is the baseline network (nn.Conv2d); every
other implementation runs the flattened twin.

    pytest bench/test_models_bench.py --benchmark-only --preset paper --device cpu \
        --results reports/results/run.jsonl
"""

from __future__ import annotations

import pytest

from bench import harness, models


def _csv(value):
    return [v for v in (value or "").split(",") if v]


def pytest_generate_tests(metafunc):
    if "model_case" not in metafunc.fixturenames:
        return
    opt = metafunc.config.getoption
    cases = models.select_model_cases(
        _csv(opt("--preset")), impl_names=_csv(opt("--impl")), devices=_csv(opt("--device")),
        directions=_csv(opt("--direction")), dtypes=_csv(opt("--dtype")),
    )
    # No model case for these options (e.g. --preset sweep, --direction backward) leaves
    # this test skipped as "got empty parameter set", not a collection error.
    metafunc.parametrize("model_case", cases, ids=[c.id for c in cases])


def _stats(benchmark) -> dict:
    s = getattr(benchmark, "stats", None)
    s = getattr(s, "stats", None)
    if s is None or not getattr(s, "data", None):
        return {}
    return {
        "time_median": s.median, "time_q1": s.q1, "time_q3": s.q3, "time_iqr": s.iqr, "time_mean": s.mean,
        "time_min": s.min, "time_stddev": s.stddev, "rounds": s.rounds,
    }


def test_model(benchmark, model_case, results_writer, threads):
    case = model_case
    benchmark.group = case.group
    try:
        bench = models.setup_model_case(case, threads, warmup=not benchmark.disabled)
    except harness.Unavailable as e:
        results_writer.write(models.model_record(case, status="skipped", reason=str(e)))
        pytest.skip(str(e))
    except Exception as e:
        rec = models.model_record(case, status="failed", reason=f"{type(e).__name__}: {e}".splitlines()[0][:500])
        results_writer.write(rec)
        benchmark.extra_info.update(rec)
        raise
    benchmark(bench.call)
    stats = _stats(benchmark)
    peak, method = harness.peak_bytes(bench) if not benchmark.disabled else (None, None)
    graph, note = (harness.measure_graph_time(bench) if not benchmark.disabled and case.direction == "forward"
                   else (None, None))
    rec = models.model_record(case, status="ok", stats=stats, bench=bench, peak=peak, peak_method=method,
                              graph_time=graph, graph_note=note)
    benchmark.extra_info.update(rec)
    if not benchmark.disabled:
        results_writer.write(rec)
