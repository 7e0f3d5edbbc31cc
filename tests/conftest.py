"""Test-wide settings: TF32 off on CUDA so float32 results are float32-exact; torch's
thread count restored after each test; the tests marked slow by id."""

import pytest
import torch

if torch.cuda.is_available():
    # The oracle gate is float32-exact; TF32 would need a looser tolerance.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# Tests marked slow by what they run rather than one by one (seconds: a full run on the
# 2-core Zen 3 VM under heavy load, 2026-12-04, about 2.5x a quiet run): left out of
# tox -e test's default run, run by CI's second step (pyproject.toml's `slow` marker).
SLOW_BY_ID = {
    "torch_compile": "inductor's cold compiles (411 s over all its tests)",
    "tests/test_cupy.py::test_emulated_": "the CUDA kernels run by the CPU emulator (298 s)",
    "tests/test_cuda_sources.py::test_compiles_with_nvcc": "nvcc for each architecture (62 s)",
    "tests/test_memory.py::test_the_counted_peak_of_a_case_repeats_in_fresh_processes": "fresh processes (120 s)",
    "tests/test_reports.py::test_full_report": "the whole report from the fixtures (68 s)",
    "tests/test_reports.py::test_subsets_build": "three whole reports (30 s)",
    "tests/test_sweep.py::test_sweep_option_mistakes_are_one_line_and_exit_2": "a process per mistake (22 s)",
    "tests/test_compare.py::test_machines_are_matched": "reports from fixtures (17 s)",
    "tests/test_models.py::test_both_networks_run_forward_and_backward": "every implementation in two networks (26 s)",
    "test_matches_oracle_on_grid[torch.float32-jax-": "XLA compiles three graphs per grid case (36 s)",
    "test_matches_oracle_on_grid[torch.float64-jax-": "XLA compiles three graphs per grid case (32 s)",
}


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test starts at the thread count the session started with: a test that sets
    its own (the harness, thread-count tests) would otherwise leave it to the tests after
    it, which then ran at 1 thread depending on the order."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _jax_keeps_its_clients_thread_count():
    """jax's CPU client has one thread count for the life of a process (impls/jax_impl.py):
    a test that sets every implementation's count must not leave jax asking for another,
    which would make jax unavailable to the tests after it."""
    yield
    import sys

    module = sys.modules.get("impls.jax_impl")
    jax = getattr(module, "IMPLEMENTATIONS", [None])[0] if module else None
    if jax is not None and jax.threads() is not None:
        jax.set_num_threads(jax.threads())


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(part in item.nodeid for part in SLOW_BY_ID):
            item.add_marker(pytest.mark.slow)
