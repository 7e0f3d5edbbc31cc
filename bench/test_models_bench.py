"""The model table of the pytest-benchmark suite: end-to-end forward and training-step time
of the baseline CNN and its flattened twin (bench/models), one benchmark per
(implementation, device, network config, dtype, direction, thread count). --preset picks
the configs (smoke -> digits 1x8x8, paper -> cifar 3x32x32); the baseline implementation
stands for the baseline network (nn.Conv2d), every other one runs the flattened twin.

    pytest bench/test_models_bench.py --benchmark-only --preset paper --device cpu \
        --results reports/results/run.jsonl
"""

from bench.conftest import parametrize, selected
from bench.models import select_model_cases


def pytest_generate_tests(metafunc):
    if "model_case" in metafunc.fixturenames:
        # No model case for these options (--preset sweep, --direction backward) leaves this
        # test skipped as "got empty parameter set", not a collection error.
        parametrize(metafunc, "model_case", selected(metafunc.config, select_model_cases))


def test_model(measure_case, model_case, threads):
    measure_case(model_case, threads)
