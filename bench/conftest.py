"""The pytest-benchmark suite's options, cases and the body every benchmark shares.

    pytest bench --benchmark-only --preset paper --impl torch,openmp --device cpu \
        --direction forward,train --results reports/results/run.jsonl \
        --benchmark-json reports/results/run.json

The options shared with `python -m bench` (bench/options.py) have the same names and
defaults there. Timing is pytest-benchmark's; everything else (the gate, the order of
measurements, failure handling, the record) is the harness driver's (bench/driver.py).
"""

from __future__ import annotations

import pytest

from bench import driver, options, records, timing
from bench.cases import select_cases


def pytest_addoption(parser):
    options.add_to_pytest(parser.getgroup("flattened-conv benchmarks"))


def pytest_configure(config):
    """Check the options once, before collection: a mistake is pytest's one-line usage
    error (exit status 4), not a collection error with a traceback."""
    if not hasattr(config.option, "preset"):
        return
    try:
        config.flatconv_selection = options.selection(lambda name: config.getoption(name))
        config.flatconv_threads = options.thread_counts(config.getoption("threads"))
        config.flatconv_results = options.results_path(config.getoption("results"))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def selected(config, select=select_cases) -> list:
    """The cases the options ask for."""
    return select(**config.flatconv_selection)


def parametrize(metafunc, name: str, cases: list) -> None:
    """One benchmark per case and thread count."""
    counts = metafunc.config.flatconv_threads
    params = [pytest.param(c, t, id=c.id + (f"/threads={t}" if t else "")) for c in cases for t in counts]
    metafunc.parametrize(f"{name},threads", params)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = selected(metafunc.config)
        if not cases:
            raise pytest.UsageError("no benchmark case matches the given --preset/--impl/--device/--direction")
        parametrize(metafunc, "case", cases)


@pytest.fixture(scope="session")
def results_writer(request):
    return records.ResultsWriter(request.config.flatconv_results, resume=request.config.getoption("resume"))


def stats_from_benchmark(benchmark) -> dict:
    """pytest-benchmark's per-call times of a finished benchmark, in the record's terms."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    data = list(getattr(stats, "data", None) or [])
    return {**timing.summarize(data), "stop_rule": "pytest-benchmark (--benchmark-min-rounds, --benchmark-max-time)"}


@pytest.fixture
def measure_case(benchmark, results_writer):
    """measure_case(case, threads): the body of a benchmark. A case the resumed results file
    holds is skipped; an unavailable one is recorded and skipped with its reason; a failed
    one is recorded and fails the test; the record goes to extra_info and the file."""

    def run(case, threads):
        benchmark.group = case.group
        if case.id in results_writer.done:
            pytest.skip(f"already measured in {results_writer.path} (--resume)")
        d = driver.Driver(driver.Settings(threads=threads))
        if benchmark.disabled:  # the suite's smoke pass in `tox -e test`: it runs, nothing is recorded
            bench, _, rec = d.set_up(case, warmup=False)
            if rec is None:
                benchmark(bench.call)
                return None
        else:
            def with_benchmark(bench):
                benchmark(bench.call)
                return stats_from_benchmark(benchmark)

            rec = d.measure_with(case, with_benchmark)
            results_writer.write(rec)
            benchmark.extra_info.update(rec)
        if rec["status"] == "skipped":
            pytest.skip(rec["reason"])
        if rec["status"] == "failed":
            pytest.fail(rec["reason"], pytrace=False)
        return rec

    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    from bench import machine

    devices = config.flatconv_selection["devices"]
    machine_info["flatconv"] = {d: machine.metadata() for d in devices if d == "cpu" or torch.cuda.is_available()}


def pytest_benchmark_generate_json(config, benchmarks, include_data, machine_info, commit_info):
    """--benchmark-json without pytest-benchmark's own copy of every raw timing (megabytes
    for microsecond cases): each record in extra_info keeps them compressed
    (time_samples). Pass --benchmark-save-data to keep pytest-benchmark's too."""
    from pytest_benchmark.plugin import pytest_benchmark_generate_json as default

    keep = config.getoption("benchmark_save_data", False)
    return default(config, benchmarks, include_data and keep, machine_info, commit_info)
