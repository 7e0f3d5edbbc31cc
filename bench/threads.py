"""One thread count for every runtime a case touches.

A process here holds several thread pools: torch's (OpenMP/oneDNN), the C extension's own
OpenMP runtime, ONNX Runtime's pool, inductor's generated code (torch's pool again). A case
measured with one pool at 2 threads and another at 16, or with a pool still spinning
after the previous case, measures the machine's scheduling, not the implementation. So
every case sets the same count in all of them (each implementation's `set_num_threads`
reaches the pools torch's setting does not), and the implementations whose pools spin
by default turn spinning off (docs/DESIGN.md, "Measured pitfalls").
"""

from __future__ import annotations

import os

import torch

import impls
from impls import base as impls_base


def default_threads() -> int:
    """BENCH_THREADS when set, else every core."""
    env = os.environ.get("BENCH_THREADS", "").strip()
    return parse_count(env, "BENCH_THREADS") if env else (os.cpu_count() or 1)


def parse_count(value, what: str = "threads") -> int:
    """A thread count >= 1 from an int or a decimal string; ValueError/TypeError naming
    `what`. The rule is the implementations' own (impls.base.thread_count)."""
    check = getattr(impls_base, "thread_count", None)
    if check is None:  # an old commit's impls, under asv: its runtimes check the count
        return int(value)
    return check(value, what, text=True)


def set_threads(threads: int | None) -> int:
    """Fix the thread count of torch's runtime and of every implementation's own runtime.
    Returns the count in force."""
    threads = default_threads() if threads is None else parse_count(threads)
    torch.set_num_threads(threads)
    for name in impls.names():
        impls.get(name).set_num_threads(threads)
    return threads
