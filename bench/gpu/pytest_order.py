"""pytest plugin of the GPU programme's tests stage (`-p bench.gpu.pytest_order`): the
hand-written CUDA first (tests/test_cupy.py), then the shared correctness and contract
tests of the implementations that compile nothing, then Triton's (each new shape compiles
its kernels: tests/test_triton.py took 76 s of the first H200 pass's 119 s), and
torch_compile's (cold compiles of tens of seconds each) last, so a stage cut by its time
limit has run the cheap, telling tests. Stable within each rank.
"""

from __future__ import annotations

import pytest

FIRST = "tests/test_cupy.py"
COMPILING = ("triton", "torch_compile")  # in this order, after every other test


def rank(nodeid: str) -> int:
    for i, word in reversed(list(enumerate(COMPILING))):
        if word in nodeid:
            return 2 + i
    return 0 if nodeid.split("::", 1)[0] == FIRST else 1


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: rank(item.nodeid))
