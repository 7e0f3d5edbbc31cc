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


def pytest_generate_tests(metafunc):
    if "model_case" not in metafunc.fixturenames:
        return
    chosen = harness.selection(lambda name: metafunc.config.getoption("--" + name))
    cases = models.select_model_cases(chosen.pop("tables"), **chosen)
    # No model case for these options (e.g. --preset sweep, --direction backward) leaves
    # this test skipped as "got empty parameter set", not a collection error.
    metafunc.parametrize("model_case", cases, ids=[c.id for c in cases])


def test_model(benchmark, model_case, results_writer, threads):
    harness.run_pytest_benchmark(
        benchmark, model_case, results_writer, setup=models.setup_model_case, make_record=models.model_record,
        threads=threads, graph=model_case.direction == "forward",
    )
