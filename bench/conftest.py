"""pytest-benchmark suite options and case generation.

    pytest bench --benchmark-only --preset paper --impl torch,openmp --device cpu \
        --direction forward,train --results reports/results/run.jsonl \
        --benchmark-json reports/results/run.json
"""

from __future__ import annotations

import pytest

from bench import harness


def pytest_addoption(parser):
    group = parser.getgroup("flattened-conv benchmarks")
    group.addoption("--preset", default="smoke", help="comma-separated layer tables (smoke, paper, sweep); default smoke")
    group.addoption("--impl", default="", help="comma-separated implementations (default: all registered)")
    group.addoption("--device", default="", help="comma-separated devices: cpu, cuda (default: both)")
    group.addoption("--direction", default="forward,backward,train,stages",
                    help="comma-separated: forward, backward, train, stages (default: all)")
    group.addoption("--dtype", default="float32", help="comma-separated dtypes (default float32)")
    group.addoption("--all-rows", action="store_true", help="run every row of the sweep table, not the seeded subset")
    group.addoption("--threads", type=int, default=None, help="threads for torch and the C extension (default: all cores)")
    group.addoption("--results", default=None, help="write one JSON record per case to this .jsonl file as it finishes (the file is started anew)")


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    opt = metafunc.config.getoption
    cases = harness.select_cases(**harness.selection(lambda name: opt("--" + name)), all_rows=opt("--all-rows"))
    if not cases:
        raise pytest.UsageError("no benchmark case matches the given --preset/--impl/--device/--direction")
    metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def results_writer(request):
    # One file per pytest run: a rerun replaces the previous run's records.
    return harness.ResultsWriter(request.config.getoption("--results"), fresh=True)


@pytest.fixture(scope="session")
def threads(request):
    return request.config.getoption("--threads")


def pytest_benchmark_update_machine_info(config, machine_info):
    devices = harness.split_csv(config.getoption("--device")) or ["cpu", "cuda"]
    machine_info["flatconv"] = {d: harness.machine_record(d) for d in devices if d == "cpu" or _cuda()}


def _cuda():
    import torch

    return torch.cuda.is_available()


def pytest_benchmark_generate_json(config, benchmarks, include_data, machine_info, commit_info):
    """--benchmark-json without every raw timing (megabytes for microsecond cases): the
    statistics and each record in extra_info are what the reports read. Pass
    --benchmark-save-data to keep the raw timings."""
    from pytest_benchmark.plugin import pytest_benchmark_generate_json as default

    keep = config.getoption("benchmark_save_data", False)
    return default(config, benchmarks, include_data and keep, machine_info, commit_info)
