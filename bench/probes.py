"""How the machine was while a case was timed.

A shared virtual machine changes speed for seconds to minutes, and the guest sees neither
steal time nor lost CPU. Two readings go into every CPU record: the process's CPU use
while timed, and a compute probe (a small in-cache matmul) taken just before and after the
case; a probe well below the run's best says the cores were slow then.
"""

from __future__ import annotations

import statistics
import time

import torch

from .timing import gc_paused


class CpuUse:
    """Process CPU seconds (all threads, user + system) against wall seconds over the
    blocks it measures: `with use: ...` adds one block."""

    def __init__(self):
        self.cpu_s = self.wall_s = 0.0

    def __enter__(self):
        self._c0, self._w0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu_s += time.process_time() - self._c0
        self.wall_s += time.perf_counter() - self._w0

    @property
    def utilization(self) -> float | None:
        """CPUs the process kept busy on average: about the thread count when every thread
        worked (or spun at a barrier, as OpenMP workers do) the whole time; less when the
        implementation left threads idle (small operators often run on one) or they did
        not get their cores."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else None


_PROBE_N = 256


def compute_probe(device: str) -> float | None:
    """GFLOP/s of a small float32 matmul that stays in cache (256^3, torch, the threads in
    force), median of 40 calls: about 10 ms. Taken around each CPU case, it shows when the
    cores themselves were slow (on a shared VM, for seconds to minutes): there it fell by
    5-10% while openmp_fused on (128,128,16,3) slowed by 20-30% (correlation -0.8 over 60
    processes). None on a GPU."""
    if device != "cpu":
        return None
    a = torch.randn(_PROBE_N, _PROBE_N)
    out = torch.empty_like(a)
    for _ in range(5):
        torch.mm(a, a, out=out)
    times = []
    with gc_paused():
        for _ in range(40):
            t0 = time.perf_counter()
            torch.mm(a, a, out=out)
            times.append(time.perf_counter() - t0)
    return 2 * _PROBE_N ** 3 / statistics.median(times) / 1e9


def conditions(use: CpuUse, probes: list[float | None]) -> dict:
    """The record fields that say how the machine was while a case was timed: its CPU use,
    and the lower of the compute probes taken around it (None on a GPU)."""
    return {"cpu_utilization": use.utilization, "probe_gflops": None if None in probes else min(probes)}


# Going quiet: the process's CPU time over a short window must fall below this share of
# one core (only its sleeping main thread is left), within QUIET_MAX.
QUIET_WINDOW, QUIET_SHARE, QUIET_MAX = 0.002, 0.1, 0.1


def quiet() -> float:
    """Wait until this process's threads are idle (its CPU time over QUIET_WINDOW below
    QUIET_SHARE of it), at most QUIET_MAX seconds; the seconds waited."""
    start = time.perf_counter()
    while True:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(QUIET_WINDOW)
        busy = (time.process_time() - c0) / (time.perf_counter() - w0)
        if busy < QUIET_SHARE or time.perf_counter() - start > QUIET_MAX:
            return time.perf_counter() - start
