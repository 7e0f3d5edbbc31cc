"""The measurement harness shared by asv, pytest-benchmark and `python -m bench`.

A case is (implementation, device, table row, dtype, direction). `setup_case` builds its
seeded inputs, checks the implementation against the float64 oracle (the correctness
gate), and returns a `Bench` holding the callable to time, already warmed up to steady
state. The timers, the peak-memory probe and the record format (see bench/README.md)
live here too, so every entry point measures the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

import impls
from impls import reference, verify

from . import machine
from .shapes import Row, batch, rows

DIRECTIONS = ("forward", "backward", "train")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
TIMER = {"cpu": "perf_counter", "cuda": "cuda_event"}


class Unavailable(Exception):
    """The case cannot run here (missing implementation, device, dtype, dependency)."""


class GateFailed(Exception):
    """The implementation's result disagrees with the float64 oracle: never timed."""


# --------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    impl: str
    device: str
    table: str
    row: Row
    dtype: str = "float32"
    direction: str = "forward"  # forward | backward | train | stage:<name>

    @property
    def id(self) -> str:
        return f"{self.impl}/{self.device}/{self.table}:{self.row.name}/{self.dtype}/{self.direction}"

    @property
    def group(self) -> str:
        return f"{self.table}:{self.row.name}/{self.device}/{self.dtype}/{self.direction}"

    @property
    def shape(self) -> impls.LayerShape:
        return self.row.shape(batch(self.table, self.device))

    def describe(self) -> dict:
        """The record fields that depend on the case alone: the layer, its parameter
        count, its FLOPs and minimum bytes (see impls/shapes.py)."""
        shape = self.shape
        itemsize = torch.empty((), dtype=DTYPES[self.dtype]).element_size()
        kind = "dense" if self.impl == "dense" else "flat"
        if self.direction.startswith("stage:"):
            stage_list = self.direction.split(":", 1)[1].split("+")
            known = all(s in ("lateral", "vertical", "horizontal") for s in stage_list)
            flops = sum(shape.stage_flops(s) for s in stage_list) if known else None
            nbytes = _fused_stage_bytes(shape, stage_list, itemsize) if known else None
        else:
            flops = shape.flops(self.direction, kind)
            nbytes = shape.min_bytes(self.direction, kind, itemsize)
        return {"impl": self.impl, "device": self.device, "table": self.table, "shape": self.row.name,
                **shape.as_dict(), "dtype": self.dtype, "direction": self.direction, "params": shape.params(kind),
                "flops": flops, "bytes": nbytes}


@functools.lru_cache(maxsize=None)
def stage_names(impl_name: str, device: str) -> tuple[str, ...]:
    """The stages an implementation can time alone, found by asking it on a tiny layer."""
    impl = impls.get(impl_name)
    if impl.unavailable_reason(device) is not None:
        return ()
    params = impls.FlatParams.random(2, 2, 3, device=device)
    return tuple(impl.stages(torch.randn(1, 2, 4, 4, device=device), impl.prepare(params), 1))


def select_cases(tables, *, impl_names=None, devices=None, directions=("forward", "backward", "train"),
                 dtypes=("float32",), all_rows=False) -> list[Case]:
    """Every case of the given tables, filtered by implementation, device, direction and
    dtype. The direction "stages" expands to each implementation's stage:<name> cases.
    Unavailable combinations are kept: they are recorded as skipped with their reason."""
    names = impls.names() if not impl_names else list(impl_names)
    unknown = [n for n in names if n not in impls.names()]
    if unknown:
        raise ValueError(f"impl: unknown {unknown}; known: {', '.join(impls.names())}")
    wanted_devices = devices or ("cpu", "cuda")
    out = []
    for table in tables:
        for row in rows(table, all_rows):
            for device in wanted_devices:
                for name in names:
                    if device not in impls.get(name).devices:
                        continue
                    for dtype in dtypes:
                        for direction in directions:
                            if direction == "stages":
                                for stage in stage_names(name, device):
                                    out.append(Case(name, device, table, row, dtype, f"stage:{stage}"))
                            elif direction in DIRECTIONS:
                                out.append(Case(name, device, table, row, dtype, direction))
                            else:
                                raise ValueError(f"direction: expected one of {DIRECTIONS + ('stages',)}, got {direction!r}")
    return out


def asv_grid() -> tuple[list[str], list[str]]:
    """(devices, implementation names) for an asv parameter grid, fixed when asv discovers
    the benchmarks: only devices this machine has and implementations that run on one of
    them (asv spawns a process per combination, so impossible ones cost minutes of skips)."""
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return devices, [n for n in impls.names() if set(impls.get(n).devices) & set(devices)]


# --------------------------------------------------------------------------- threads
def set_threads(threads: int | None) -> int:
    """Fix the thread count of torch's runtime and of every implementation's own runtime
    (the C extension's OpenMP is a separate runtime). Returns the count in force."""
    if threads is None:
        threads = int(os.environ.get("BENCH_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    for name in impls.names():
        impls.get(name).set_num_threads(threads)
    return threads


# --------------------------------------------------------------------------- setup + gate
def _seed(case: Case) -> int:
    return sum(map(ord, case.row.name)) % 10_000


@functools.lru_cache(maxsize=2)
def _inputs(row: Row, table: str, device: str, seed: int):
    """Seeded float64 input, output gradient and parameters of a layer, on `device`."""
    shape = row.shape(batch(table, device))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.input_shape, generator=gen, dtype=torch.float64).to(device)
    gy = torch.randn(shape.output_shape, generator=gen, dtype=torch.float64).to(device)
    params = impls.FlatParams.random(row.in_channels, row.out_channels, row.kernel_size, seed=seed,
                                     dtype=torch.float64, device=device)
    return x, gy, params


@functools.lru_cache(maxsize=4)
def _oracle(row: Row, table: str, device: str, seed: int, gated_by: str | None):
    """The float64 oracle's output and gradients, shared by every implementation of a
    layer; `gated_by` names the implementation whose `gate` changed the parameters."""
    x, gy, params = _inputs(row, table, device, seed)
    if gated_by is not None:
        params = impls.get(gated_by).gate(params, row.padding)[0]
    return params, reference.forward(x, params, row.padding), reference.backward(x, params, row.padding, gy).tensors()


@dataclasses.dataclass
class Bench:
    """A case ready to time: `call` runs it once (synchronising on a GPU)."""

    case: Case
    call: Callable[[], object]
    raw_call: Callable[[], object]  # without the synchronisation, for CUDA events and graphs
    errors: dict[str, float]
    impl: impls.Implementation
    warmup_calls: int = 0
    threads: int | None = None


def setup_case(case: Case, threads: int | None = None, warmup: bool = True) -> Bench:
    """Build the case's inputs, run the correctness gate, and warm the callable up.
    Raises Unavailable (skip) or GateFailed (record as failed, never time)."""
    try:
        impl = impls.get(case.impl)
    except ValueError as e:
        raise Unavailable(f"implementation {case.impl!r} does not exist in this version") from e
    reason = impl.unavailable_reason(case.device)
    if reason is not None:
        raise Unavailable(reason)
    dtype = DTYPES[case.dtype]
    if not impl.supports_dtype(case.device, dtype):
        raise Unavailable(f"{case.impl} on {case.device} does not support {case.dtype}")
    threads = set_threads(threads)
    if case.device == "cuda":
        # Float32 means float32: the gate's tolerance has no room for TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    seed, p = _seed(case), case.row.padding
    x64, gy64, base = _inputs(case.row, case.table, case.device, seed)
    gated, fields = impl.gate(base, p)
    params64, ref_y, ref_grads = _oracle(case.row, case.table, case.device, seed,
                                         None if gated is base else case.impl)
    x, gy, params = x64.to(dtype), gy64.to(dtype), params64.to(dtype=dtype)
    prepared = impl.prepare(params)

    errors = {"output": verify.relative_error(impl.forward(x, prepared, padding=p), ref_y)}
    if case.direction in ("backward", "train"):
        y, saved = impl.forward_train(x, prepared, padding=p)
        errors["train_output"] = verify.relative_error(y, ref_y)
        grads = impl.backward(saved, gy).tensors()
        errors.update({f: verify.relative_error(grads[f], ref_grads[f]) for f in fields})
    tol = verify.tolerance(dtype)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        worst = max(bad, key=bad.get)
        raise GateFailed(f"{worst} differs from the float64 oracle: relative error {bad[worst]:.3g} > {tol:g}"
                         f" (all failing: {', '.join(sorted(bad))})")

    if case.direction == "forward":
        def raw():
            return impl.forward(x, prepared, padding=p)
    elif case.direction == "backward":
        def raw():
            return impl.backward(saved, gy)
    elif case.direction == "train":
        def raw():
            return impl.backward(impl.forward_train(x, prepared, padding=p)[1], gy)
    elif case.direction.startswith("stage:"):
        stages = impl.stages(x, prepared, p)
        name = case.direction.split(":", 1)[1]
        if name not in stages:
            raise Unavailable(f"{case.impl} has no stage {name!r} (it has {sorted(stages)})")
        raw = stages[name]
    else:
        raise ValueError(f"direction: unknown {case.direction!r}")

    if case.device == "cuda":
        def call():
            raw()
            torch.cuda.synchronize()
    else:
        call = raw
    bench = Bench(case, call, raw, errors, impl, threads=threads)
    if warmup:
        bench.warmup_calls = warm_up(call)
    return bench


# --------------------------------------------------------------------------- timing
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


def summarize(times: list[float]) -> dict:
    """Median, quartiles and spread of per-call seconds."""
    if not times:
        return {}
    qs = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return {
        "time_median": statistics.median(times),
        "time_q1": qs[0],
        "time_q3": qs[2],
        "time_iqr": qs[2] - qs[0],
        "time_mean": statistics.fmean(times),
        "time_min": min(times),
        "time_stddev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "rounds": len(times),
    }


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector off while timing (timeit's and asv's convention;
    pytest-benchmark's --benchmark-disable-gc): a collection landing in one call would
    time the interpreter, not the case."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
    with _gc_paused():
        for _ in range(40):
            t0 = time.perf_counter()
            torch.mm(a, a, out=out)
            times.append(time.perf_counter() - t0)
    return 2 * _PROBE_N ** 3 / statistics.median(times) / 1e9


def conditions(use: CpuUse, probes: list[float | None]) -> dict:
    """The record fields that say how the machine was while a case was timed: its CPU use,
    and the lower of the compute probes taken around it (None on a GPU)."""
    return {"cpu_utilization": use.utilization, "probe_gflops": None if None in probes else min(probes)}


def measure_time(bench: Bench, *, min_time: float = 0.3, min_rounds: int = 5, max_rounds: int = 1000) -> dict:
    """Per-call seconds over rounds, summarised (see call_times)."""
    return summarize(call_times(bench, min_time=min_time, min_rounds=min_rounds, max_rounds=max_rounds))


def call_times(bench: Bench, *, min_time: float = 0.3, min_rounds: int = 5, max_rounds: int = 1000) -> list[float]:
    """Per-call seconds for at least `min_rounds` calls and `min_time` seconds: perf_counter
    on the CPU, CUDA events on a GPU (one event pair per call, so the launch overhead of
    this call is included). The garbage collector is paused meanwhile."""
    with _gc_paused():
        return _call_times(bench, min_time, min_rounds, max_rounds)


def _call_times(bench: Bench, min_time: float, min_rounds: int, max_rounds: int) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    if bench.case.device == "cuda":
        events = []
        while len(events) < max_rounds and (len(events) < min_rounds or time.perf_counter() - start < min_time):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            bench.raw_call()
            e1.record()
            events.append((e0, e1))
            if len(events) % 50 == 0:
                e1.synchronize()
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) / 1e3 for a, b in events]
    else:
        call = bench.call
        while len(times) < max_rounds and (len(times) < min_rounds or time.perf_counter() - start < min_time):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    return times


def measure_graph_time(bench: Bench, *, replays: int = 20, repeats: int = 7) -> tuple[float | None, str | None]:
    """Kernel-only seconds per call on a GPU: capture `replays` calls in one CUDA graph and
    time its replay with events, which removes the Python launch overhead. Returns
    (median seconds per call, None) or (None, why it could not be captured)."""
    if bench.case.device != "cuda":
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


# --------------------------------------------------------------------------- kernels
_BOOKKEEPING_OPS = {"aten::empty", "aten::empty_like", "aten::new_empty", "aten::empty_strided", "aten::view",
                    "aten::as_strided", "aten::resize_", "aten::unsqueeze", "aten::squeeze", "aten::t",
                    "aten::transpose", "aten::permute", "aten::expand", "aten::reshape", "aten::view_as",
                    "aten::_unsafe_view", "aten::detach", "aten::alias", "aten::contiguous", "aten::slice",
                    "aten::select", "aten::zeros", "aten::fill_", "aten::zero_", "aten::as_strided_",
                    "aten::_reshape_alias", "aten::resolve_conj", "aten::resolve_neg"}


def kernels_ran(bench: Bench, limit: int = 20) -> list[str] | None:
    """Names of what one call actually ran, by the PyTorch profiler: CUDA kernels on a
    GPU (CuPy's included), on the CPU the ATen operators by their own time (e.g.
    aten::mkldnn_convolution; C extensions are invisible to the profiler there). Sorted
    by time, at most `limit`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.case.device == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            bench.call()
    except Exception:  # noqa: BLE001 - the profiler is optional evidence, never a failure
        return None
    totals: dict[str, float] = {}
    for evt in prof.events():
        if bench.case.device == "cuda":
            if evt.device_type.name != "CUDA":
                continue
        elif not evt.name.startswith("aten::") or evt.name in _BOOKKEEPING_OPS:
            continue
        own = evt.device_time_total if bench.case.device == "cuda" else evt.self_cpu_time_total
        totals[evt.name] = totals.get(evt.name, 0.0) + own
    return sorted(totals, key=totals.get, reverse=True)[:limit]


# --------------------------------------------------------------------------- memory
_LIBC = None


def _malloc_trim() -> None:
    """Give glibc's free heap pages back to the OS, so the high-water mark that follows
    counts every page the call touches (a warm heap would hide them)."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_bytes(bench: Bench) -> tuple[int | None, str]:
    """Extra memory one call needs at its peak, and how it was measured.
    GPU: torch's peak allocated bytes since a reset (CuPy is routed through torch's
    allocator by the CuPy implementations). CPU: the rise of the process high-water mark
    (VmHWM, reset by writing 5 to /proc/self/clear_refs) over the resident size before
    the call, after trimming glibc's free heap."""
    if bench.case.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        bench.call()
        return torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None, "unavailable: /proc/self/clear_refs cannot be written"
    before = _proc_status_kb("VmRSS")
    bench.call()
    hwm = _proc_status_kb("VmHWM")
    if before is None or hwm is None:
        return None, "unavailable: no VmHWM in /proc/self/status"
    return max(0, hwm - before) * 1024, "VmHWM rise after clear_refs"


# --------------------------------------------------------------------------- records
@functools.lru_cache(maxsize=None)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=None)
def run_id() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{machine.metadata()['host']}-{os.getpid()}"


@functools.lru_cache(maxsize=None)
def timer_overhead(device: str) -> float:
    """Seconds the timing loop itself adds per call (an empty callable timed the same way)."""
    if device == "cuda":
        return float("nan")
    times = []
    for _ in range(1000):
        t0 = time.perf_counter()
        (lambda: None)()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_record(device: str, threads: int | None = None) -> dict:
    info = dict(machine.metadata())
    if device == "cpu" or torch.cuda.is_available():
        info.update({k: v for k, v in machine.ceilings(device).items() if k != "device"})
    info["torch_threads"] = torch.get_num_threads()
    info["threads"] = threads
    info["timer_overhead_s"] = timer_overhead(device)
    info["load_avg_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return info


def record(case: Case, *, status: str, reason: str | None = None, stats: dict | None = None,
           bench: Bench | None = None, peak: int | None = None, peak_method: str | None = None,
           graph_time: float | None = None, graph_note: str | None = None, kernels: list[str] | None = None,
           extra: dict | None = None) -> dict:
    """One result in the documented schema (bench/README.md). `case` is any object with
    `id`, `device` and `describe()` (a layer Case, or a model case of bench/models.py)."""
    info = case.describe()
    flops, nbytes = info.get("flops"), info.get("bytes")
    rec = {
        "run_id": run_id(),
        "case": case.id,
        **info,
        "status": status,
        "reason": reason,
        "timer": TIMER[case.device],
        "intensity": flops / nbytes if flops and nbytes else None,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
    }
    if bench is not None:
        rec["max_rel_error"] = max(bench.errors.values())
        rec["errors"] = bench.errors
        rec["warmup_calls"] = bench.warmup_calls
        rec["runtime"] = bench.impl.runtime_info()
    if stats:
        rec.update(stats)
        med = stats.get("time_median")
        if med and flops:
            rec["gflops"] = flops / med / 1e9
        if med and nbytes:
            rec["gbps"] = nbytes / med / 1e9
    rec["peak_bytes"] = peak
    rec["peak_method"] = peak_method
    rec["time_graph_median"] = graph_time
    rec["kernels"] = kernels
    if graph_note:
        rec["graph_note"] = graph_note
    rec["machine"] = machine_record(case.device, bench.threads if bench else None)
    if rec.get("time_median") and flops and nbytes and "copy_gbps" in rec["machine"]:
        ceil = rec["machine"]
        roof = min(ceil["sgemm_gflops"] * 1e9, rec["intensity"] * ceil["copy_gbps"] * 1e9)
        rec["roofline_fraction"] = (flops / rec["time_median"]) / roof
    if extra:
        rec.update(extra)
    return _jsonable(rec)


def _fused_stage_bytes(shape, stage_list, itemsize) -> int:
    """Minimum bytes of one stage or a fused group of consecutive stages."""
    if len(stage_list) == 1:
        return shape.stage_bytes(stage_list[0], itemsize)
    first = shape.stage_bytes(stage_list[0], itemsize)
    last = shape.stage_bytes(stage_list[-1], itemsize)
    # first stage's input + weights, last stage's output + weights; the tensors between
    # them never leave the chip in an ideal fused kernel.
    inner = {("vertical", "horizontal"): shape.batch * shape.out_channels * shape.out_height * shape.width,
             ("lateral", "vertical"): shape.batch * shape.out_channels * shape.height * shape.width}
    between = inner.get((stage_list[0], stage_list[-1]))
    if between is None:
        return first + last
    return first + last - 2 * between * itemsize


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return value


class ResultsWriter:
    """Appends one JSON record per line and flushes it at once, so an interrupted sweep
    keeps every case it finished. `fresh=True` starts the file anew (one file, one run)."""

    def __init__(self, path: str | os.PathLike | None, fresh: bool = False):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if fresh:
                self.path.write_text("")

    def write(self, rec: dict) -> None:
        if not self.path:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _set_up(case, threads, setup, make_record):
    """(bench, None), or (None, the skipped/failed record saying why not)."""
    try:
        return setup(case, threads), None
    except Unavailable as e:
        return None, make_record(case, status="skipped", reason=str(e))
    except GateFailed as e:
        return None, make_record(case, status="failed", reason=str(e))
    except Exception as e:  # noqa: BLE001 - a crash of one implementation must not end the sweep
        return None, _failed(case, e, None, make_record)


def _failed(case, e, bench, make_record):
    _reset_after_error(case.device)
    return make_record(case, status="failed", reason=f"{type(e).__name__}: {e}".splitlines()[0][:500], bench=bench)


def _finish(case, bench, stats, make_record, graph):
    """The record of a timed case, with graph replay time, peak memory and kernels."""
    try:
        graph_time, note = measure_graph_time(bench) if graph else (None, None)
        peak, method = peak_bytes(bench)
        kernels = kernels_ran(bench)
    except Exception as e:  # noqa: BLE001 - out of memory, a kernel fault: record and go on
        return _failed(case, e, bench, make_record)
    return make_record(case, status="ok", stats=stats, bench=bench, peak=peak, peak_method=method,
                       graph_time=graph_time, graph_note=note, kernels=kernels)


def measure(case: Case, *, threads: int | None = None, min_time: float = 0.3, graph: bool = True,
            setup=None, make_record=None) -> dict:
    """Set up, gate, time and measure one case with the harness's own timers and return
    its record; a case that cannot run or fails returns a skipped/failed record instead
    of raising, so a sweep always goes on. `setup` and `make_record` default to the layer
    case's (setup_case, record); the model table passes its own."""
    setup, make_record = setup or setup_case, make_record or record
    bench, rec = _set_up(case, threads, setup, make_record)
    if rec is not None:
        return rec
    use = CpuUse()
    try:
        probes = [compute_probe(case.device)]
        with use:
            stats = measure_time(bench, min_time=min_time)
        stats["time_repeat_median"] = measure_time(bench, min_time=min_time / 3)["time_median"]
        probes.append(compute_probe(case.device))
    except Exception as e:  # noqa: BLE001
        return _failed(case, e, bench, make_record)
    stats.update(conditions(use, probes))
    return _finish(case, bench, stats, make_record, graph)


def measure_interleaved(cases, *, passes: int, threads: int | None = None, min_time: float = 0.3,
                        graph: bool = True, seed: int = 0, setup=None, make_record=None) -> list[dict]:
    """Measure cases that are compared with each other (the implementations of one layer
    and direction) in `passes` passes, each pass timing every case for min_time / passes
    seconds in a freshly shuffled order, and pool the calls: Google Benchmark's random
    interleaving. A machine that slows down for a while (a shared or virtual machine does)
    then slows every case of the group alike instead of whichever ran at that moment, so
    their ratios hold. Returns one record per case, in order; the records carry
    `interleave_passes` and `time_pass_medians`, and `time_repeat_median` is the median
    of the second half of the passes."""
    setup, make_record = setup or setup_case, make_record or record
    records, benches = {}, {}
    for i, case in enumerate(cases):
        benches[i], rec = _set_up(case, threads, setup, make_record)
        if rec is not None:
            records[i] = rec
    per_pass = {i: [] for i in benches if i not in records}
    use = {i: CpuUse() for i in per_pass}
    rng = random.Random(seed)
    probes = [compute_probe(cases[0].device)] if cases else []
    for _ in range(passes):
        order = [i for i in per_pass if i not in records]
        rng.shuffle(order)
        for i in order:
            try:
                with use[i]:
                    per_pass[i].append(call_times(benches[i], min_time=min_time / passes, min_rounds=3))
            except Exception as e:  # noqa: BLE001
                records[i] = _failed(cases[i], e, benches[i], make_record)
    if cases:
        probes.append(compute_probe(cases[0].device))
    for i, runs in per_pass.items():
        if i in records:
            continue
        stats = summarize([t for run in runs for t in run])
        stats["time_repeat_median"] = statistics.median([t for run in runs[len(runs) // 2:] for t in run])
        stats["interleave_passes"] = passes
        stats["time_pass_medians"] = [statistics.median(run) for run in runs]
        stats.update(conditions(use[i], probes))
        records[i] = _finish(cases[i], benches[i], stats, make_record, graph)
    return [records[i] for i in range(len(cases))]


def split_csv(value: str | None) -> list[str]:
    """"a,b,,c" -> ["a", "b", "c"]: the form of every list option of the entry points."""
    return [v for v in (value or "").split(",") if v]


def selection(get) -> dict:
    """The case filters every entry point shares, from its comma-separated options:
    `get(name)` returns the option's value for "preset", "impl", "device", "direction",
    "dtype". The result is select_cases's keyword arguments (bench.models.select_model_cases
    takes the same, with `tables` as its first argument)."""
    return {"tables": split_csv(get("preset")), "impl_names": split_csv(get("impl")),
            "devices": split_csv(get("device")), "directions": split_csv(get("direction")),
            "dtypes": split_csv(get("dtype"))}


def stats_from_benchmark(benchmark) -> dict:
    """pytest-benchmark's statistics of a finished benchmark, in the record's names."""
    s = getattr(getattr(benchmark, "stats", None), "stats", None)
    if s is None or not getattr(s, "data", None):
        return {}
    return {
        "time_median": s.median, "time_q1": s.q1, "time_q3": s.q3, "time_iqr": s.iqr, "time_mean": s.mean,
        "time_min": s.min, "time_stddev": s.stddev, "rounds": s.rounds,
    }


def run_pytest_benchmark(benchmark, case, writer: ResultsWriter, *, setup=None, make_record=None,
                         threads: int | None = None, graph: bool = True) -> dict | None:
    """The body of a pytest-benchmark test: set up and gate the case (`setup`, default
    setup_case), time it with the `benchmark` fixture, measure memory, graph time and
    kernels, store the record in `extra_info` and stream it to `writer`. Unavailable cases
    are recorded and skipped; failures are recorded and re-raised (the test fails)."""
    import pytest

    setup = setup or setup_case
    make_record = make_record or record
    benchmark.group = case.group
    try:
        bench = setup(case, threads, warmup=not benchmark.disabled)
    except Unavailable as e:
        writer.write(make_record(case, status="skipped", reason=str(e)))
        pytest.skip(str(e))
    except Exception as e:
        rec = make_record(case, status="failed", reason=f"{type(e).__name__}: {e}".splitlines()[0][:500])
        writer.write(rec)
        benchmark.extra_info.update(rec)
        raise
    if benchmark.disabled:  # the suite's smoke pass in `tox -e test`: it runs, nothing to record
        benchmark(bench.call)
        return None
    use, probes = CpuUse(), [compute_probe(case.device)]
    with use:
        benchmark(bench.call)
    probes.append(compute_probe(case.device))
    stats = {**stats_from_benchmark(benchmark), **conditions(use, probes)}
    peak, method = peak_bytes(bench)
    graph_time, note = measure_graph_time(bench) if graph else (None, None)
    rec = make_record(case, status="ok", stats=stats, bench=bench, peak=peak,
                      peak_method=method, graph_time=graph_time, graph_note=note, kernels=kernels_ran(bench))
    benchmark.extra_info.update(rec)
    writer.write(rec)
    return rec


def _reset_after_error(device: str) -> None:
    if device == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
