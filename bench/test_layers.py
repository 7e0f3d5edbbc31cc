"""The pytest-benchmark suite of the layer cases: one benchmark per (implementation,
device, layer, dtype, direction, thread count); see bench/conftest.py."""


def test_layer(measure_case, case, threads):
    measure_case(case, threads)
