"""The pytest-benchmark suite: one benchmark per case (implementation, device, layer,
dtype, direction). Timing is pytest-benchmark's; the gate, the callable (synchronised on
a GPU), the peak memory and the record are the harness's, stored in `extra_info` and,
with --results, appended to a JSON-lines file as each case finishes."""

from bench import harness


def test_layer(benchmark, case, results_writer, threads):
    harness.run_pytest_benchmark(benchmark, case, results_writer, threads=threads)
