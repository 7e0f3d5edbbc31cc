"""Benchmarks of the flattened layer: one harness driven by asv and pytest-benchmark.
See bench/README.md."""
