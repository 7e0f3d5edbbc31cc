"""pytest plugin of the GPU programme's tests stage (`-p bench.gpu.pytest_order`): the
hand-written CUDA first (tests/test_cupy.py), then Triton, then the shared correctness and
contract tests, and torch_compile's tests (cold compiles of tens of seconds each) last, so
a stage cut by its time limit has run the cheap, telling tests. Stable within each rank.
"""

from __future__ import annotations

import pytest

FIRST = ("tests/test_cupy.py", "tests/test_triton.py")
LAST = "torch_compile"


def rank(nodeid: str) -> int:
    if LAST in nodeid:
        return len(FIRST) + 1
    path = nodeid.split("::", 1)[0]
    return FIRST.index(path) if path in FIRST else len(FIRST)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: rank(item.nodeid))
