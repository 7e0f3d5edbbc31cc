"""Timers: warm-up to steady state, per-call times with a noise-based stopping rule, the
95% interval of the median, and on a GPU the kernel-only (graph replay) and cold-cache
times.

CPU calls are timed with `time.perf_counter`; GPU calls with one CUDA event pair each,
around the call alone. Python's cyclic garbage collector is paused while timing (timeit's
and asv's convention), so a collection never lands inside a timed call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import math
import statistics
import time

import torch

from .intervals import median_ci
from .schema import encode_samples


# ---------------------------------------------------------------------------- warm-up
def warm_up(call, *, window: int = 5, tolerance: float = 0.05, max_calls: int = 200, max_seconds: float = 2.0) -> int:
    """Call until steady state: the median of the last `window` calls is within
    `tolerance` of the median of the window before (or a budget runs out). Covers
    compilation, autotuning and allocator growth. Returns the number of calls made."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 * window:
            last = statistics.median(times[-window:])
            before = statistics.median(times[-2 * window:-window])
            if abs(last - before) <= tolerance * before:
                break
    return len(times)


@contextlib.contextmanager
def gc_paused():
    """The cyclic garbage collector off while timing (pytest-benchmark: --benchmark-disable-gc)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------------------- statistics
def summarize(times: list[float]) -> dict:
    """Median, quartiles, spread and the 95% interval of the median of per-call seconds,
    plus the raw samples (compressed), in the record's field names."""
    if not times:
        return {}
    qs = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    low, high = median_ci(times)
    return {
        "time_median": statistics.median(times),
        "time_q1": qs[0],
        "time_q3": qs[2],
        "time_iqr": qs[2] - qs[0],
        "time_mean": statistics.fmean(times),
        "time_min": min(times),
        "time_stddev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "rounds": len(times),
        "time_ci95_low": low,
        "time_ci95_high": high,
        "time_samples": encode_samples(times),
    }


def relative_halfwidth(times: list[float]) -> float:
    """Half the 95% interval of the median over the median (inf when not yet defined)."""
    low, high = median_ci(times)
    if low is None:
        return math.inf
    return (high - low) / 2 / statistics.median(times)


# ---------------------------------------------------------------------------- sampling
@dataclasses.dataclass(frozen=True)
class StopRule:
    """When to stop timing a case: after at least `min_rounds` calls and `min_time`
    seconds, as soon as the 95% interval of the median is within `rel_ci` of it (nvbench's
    noise criterion, on the median rather than the mean: one slow stretch then moves the
    estimate less); in any case after `max_time` seconds or `max_rounds` calls. With
    `rel_ci` None, stop at `min_time`."""

    min_time: float = 0.3
    max_time: float = 0.3
    rel_ci: float | None = None
    min_rounds: int = 5
    max_rounds: int = 10_000

    def scaled(self, factor: float) -> "StopRule":
        """The same rule with its time budgets scaled (a pass of an interleaved measurement)."""
        return dataclasses.replace(self, min_time=self.min_time * factor, max_time=self.max_time * factor)


def call_times(bench, rule: StopRule) -> tuple[list[float], str]:
    """Per-call seconds of `bench` under `rule`, and why sampling stopped. CUDA events on
    a GPU (one pair per call, so this call's launch overhead is included), perf_counter
    on the CPU. The garbage collector is paused meanwhile."""
    with gc_paused():
        if bench.case.device == "cuda":
            return _cuda_times(bench.raw_call, rule)
        return _cpu_times(bench.call, rule)


def _verdict(times: list[float], elapsed: float, rule: StopRule) -> str | None:
    """Why to stop now, or None to go on."""
    n = len(times)
    if n >= rule.max_rounds:
        return f"round cap ({rule.max_rounds})"
    if n < rule.min_rounds or elapsed < rule.min_time:
        return None
    if rule.rel_ci is None:
        return f"min time ({rule.min_time:g} s)"
    width = relative_halfwidth(times)
    if width <= rule.rel_ci:
        return f"ci95 within {width:.1%} (target {rule.rel_ci:.0%})"
    if elapsed >= rule.max_time:
        return f"time cap ({rule.max_time:g} s), ci95 within {width:.1%}"
    return None


def _checkpoints(n: int) -> bool:
    """Check the stopping rule at a cost that stays small beside the calls: every call at
    first, then every tenth of the calls so far."""
    return n < 50 or n % max(1, n // 10) == 0


def _cpu_times(call, rule: StopRule) -> tuple[list[float], str]:
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if _checkpoints(len(times)):
            why = _verdict(times, t1 - start, rule)
            if why:
                return times, why


def _cuda_times(raw_call, rule: StopRule) -> tuple[list[float], str]:
    events = []
    start = time.perf_counter()
    while True:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        raw_call()
        e1.record()
        events.append((e0, e1))
        if len(events) % 50 == 0 or len(events) < 50:
            e1.synchronize()  # also keeps the queue of launches short
            times = [a.elapsed_time(b) / 1e3 for a, b in events]
            why = _verdict(times, time.perf_counter() - start, rule)
            if why:
                return times, why


def measure(bench, rule: StopRule) -> dict:
    """The summary of one timing of `bench` under `rule` (record fields)."""
    times, why = call_times(bench, rule)
    return {**summarize(times), "stop_rule": why}


# ---------------------------------------------------------------------------- GPU views
def graph_time(bench, *, replays: int = 20, repeats: int = 7) -> tuple[float | None, str | None]:
    """Kernel-only seconds per call on a GPU: capture `replays` calls in one CUDA graph and
    time its replay with events, which removes the Python launch overhead. Returns
    (median seconds per call, None) or (None, why it could not be captured)."""
    if bench.case.device != "cuda" or not bench.graphable:
        return None, None
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                bench.raw_call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(replays):
                bench.raw_call()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            graph.replay()
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) / 1e3 / replays)
        return statistics.median(times), None
    except Exception as e:  # noqa: BLE001 - a capture failure is recorded, not fatal
        torch.cuda.synchronize()
        return None, f"CUDA graph capture failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


class CudaEventTimer:
    """start()/stop() around one call with a CUDA event pair; seconds() after a sync."""

    def __init__(self):
        self.pairs = []

    def start(self):
        self._e0 = torch.cuda.Event(enable_timing=True)
        self._e0.record()

    def stop(self):
        e1 = torch.cuda.Event(enable_timing=True)
        e1.record()
        self.pairs.append((self._e0, e1))

    def seconds(self) -> list[float]:
        torch.cuda.synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in self.pairs]


def cold_times(raw_call, flush, timer, rounds: int) -> list[float]:
    """Per-call seconds with a cold cache: `flush()` (overwrite a buffer at least the size
    of the L2 cache, as nvbench and Triton's do_bench do) runs before every call, outside
    the timed region; only the call itself is between `timer.start()` and `timer.stop()`."""
    with gc_paused():
        for _ in range(rounds):
            flush()
            timer.start()
            raw_call()
            timer.stop()
    return timer.seconds()


def l2_flusher(device_index: int | None = None):
    """A callable that overwrites twice the GPU's L2 cache (at least 8 MiB), and its size."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device() if device_index is None else device_index)
    size = max(2 * int(getattr(props, "L2_cache_size", 0) or 0), 8 << 20)
    buffer = torch.empty(size, dtype=torch.uint8, device="cuda")
    return buffer.zero_, size


def cold_median(bench, rounds: int = 30) -> float | None:
    """Median seconds per call with the L2 cache flushed before each call (GPU only)."""
    if bench.case.device != "cuda":
        return None
    flush, _ = l2_flusher()
    return statistics.median(cold_times(bench.raw_call, flush, CudaEventTimer(), rounds))


@functools.lru_cache(maxsize=None)
def timer_overhead(device: str) -> float | None:
    """Seconds the timing loop itself adds per call (an empty callable timed the same way)."""
    if device == "cuda":
        return None
    times = []
    for _ in range(1000):
        t0 = time.perf_counter()
        (lambda: None)()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
