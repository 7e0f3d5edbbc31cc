"""The driver core of one process: what pytest-benchmark, asv, the model level and every
worker process of a sweep (bench/workers.py) call to measure a case.

For every case, in this order and written once: set up and gate (bench/gate.py), read
the machine's state, time (the harness's own timer or a caller's, such as
pytest-benchmark's), read the state again, then the kernel-only and cold GPU times, peak
memory and the kernels that ran (`extras`), and the record. A case that cannot run
becomes a `skipped` record, one that fails the gate or raises a `failed` record (on a GPU
the device is synchronised and its cache emptied after an error). The sweep of
`python -m bench run`, with its worker processes, rounds and results file, is
bench/sweep.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch

from . import gate, gpu_state, machine, memory, probes, profiling, records, timing
from .cases import known_impl


@dataclasses.dataclass(frozen=True)
class Settings:
    """How one process measures cases; the pytest suite's options map onto this."""

    threads: int | None = None
    rule: timing.StopRule = timing.StopRule()
    graph: bool = True  # GPU: kernel-only time by CUDA-graph replay


def reset_after_error(device: str) -> None:
    if device == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def _compile_stats(impl) -> dict | None:
    """The implementation's cumulative compile counters, when it compiles (torch.compile,
    an ONNX export): {"compilations": int, "compile_seconds": float}."""
    stats = getattr(impl, "compile_stats", None)
    return stats() if callable(stats) else None


def compile_stats_of(impl_name: str) -> dict | None:
    """_compile_stats of the implementation called `impl_name` (None when it has none)."""
    impl = known_impl(impl_name)
    return _compile_stats(impl) if impl is not None else None


def gpu_views(bench, graph: bool = True) -> dict:
    """On a GPU, the kernel-only time (CUDA-graph replay) and the cold-cache time, in
    record fields; nothing on the CPU."""
    if bench.case.device != "cuda":
        return {}
    kernel_only, note = timing.graph_time(bench) if graph else (None, None)
    return {"time_graph_median": kernel_only, "graph_note": note, "time_cold_median": timing.cold_median(bench),
            "tf32": gpu_state.tf32_flags()}


# Calls per peak figure in a sweep: the allocator's count repeats from call to call (the
# resident figure, beside it, is the median of these calls).
FOOTPRINT_CALLS = 1


def footprint(bench) -> dict:
    """Peak memory and the kernels one call ran, in record fields."""
    said: list[str] = []
    out = dict(memory.peak(bench, FOOTPRINT_CALLS))
    out["kernels"] = profiling.kernels_ran(bench, log=said)
    out["profiler_log"] = said or None
    return out


def extras(bench, graph: bool = True) -> dict:
    """What is measured of a case after its timing, once: gpu_views, then footprint."""
    return {**gpu_views(bench, graph), **footprint(bench)}


class Driver:
    def __init__(self, settings: Settings = Settings(), ceiling_log: machine.CeilingLog | None = None):
        self.settings = settings
        self.ceilings = ceiling_log or machine.CeilingLog()
        self._nvml: gpu_state.Nvml | None = None

    # ------------------------------------------------------------------ one case, in parts
    def record(self, case, **fields) -> dict:
        return records.make_record(case, ceiling_log=self.ceilings, **fields)

    def failed(self, case, error: BaseException, bench=None) -> dict:
        reset_after_error(case.device)
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        return self.record(case, status="failed", reason=reason, bench=bench)

    def set_up(self, case, warmup: bool = True):
        """(bench, compile stats before, None), or (None, None, the skipped/failed record)."""
        before = _compile_stats(known_impl(case.impl))
        try:
            bench = case.set_up(self.settings.threads, warmup)
        except gate.Unavailable as e:
            return None, None, self.record(case, status="skipped", reason=str(e))
        except gate.GateFailed as e:
            return None, None, self.record(case, status="failed", reason=str(e))
        except Exception as e:  # noqa: BLE001 - a crash of one implementation must not end the sweep
            return None, None, self.failed(case, e)
        self.ceilings.update(case.device)
        return bench, before, None

    def _gpu(self) -> gpu_state.Nvml:
        if self._nvml is None:
            self._nvml = gpu_state.Nvml(torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return self._nvml

    def timed(self, case, bench, time_fn: Callable[[object], dict]) -> dict:
        """Time `bench` with `time_fn(bench) -> stats` between the machine-state readings;
        the stats, or (`status` in it) the failed record."""
        on_gpu = case.device == "cuda"
        try:
            # A pool that spins after its runs (ONNX Runtime's, the set-up's tuning, an
            # earlier case's) would take cores from this case's timing: wait until quiet.
            probes.quiet()
            use, probe = probes.CpuUse(), [probes.compute_probe(case.device)]
            state0 = self._gpu().read() if on_gpu else None
            with use:
                stats = time_fn(bench)
            state1 = self._gpu().read() if on_gpu else None
            probe.append(probes.compute_probe(case.device))
        except Exception as e:  # noqa: BLE001
            return self.failed(case, e, bench)
        stats.update(probes.conditions(use, probe))
        if on_gpu:
            stats.update(gpu_state.case_fields(self._gpu(), state0, state1, stats.get("rounds")))
        return stats

    def finish(self, case, bench, stats: dict) -> dict:
        """The record of a timed case, with its GPU views, peak memory and kernels."""
        try:
            extra = extras(bench, self.settings.graph)
        except Exception as e:  # noqa: BLE001 - out of memory, a kernel fault: record and go on
            return self.failed(case, e, bench)
        return self.record(case, status="ok", stats=stats, bench=bench, **extra)

    def done(self, case, bench, stats: dict, before: dict | None, after_setup: dict | None) -> dict:
        """The record of a case timed between the compile counters `after_setup` and now:
        failed when the implementation compiled while it was timed (the time would include
        the compiler), else finished, with compile_seconds of its set-up."""
        now = _compile_stats(bench.impl)
        if now is not None and after_setup is not None and now["compilations"] > after_setup["compilations"]:
            return self.record(case, status="failed", bench=bench,
                               reason=f"{case.impl} compiled {now['compilations'] - after_setup['compilations']} "
                                      "time(s) while timed: the time would include the compiler")
        rec = self.finish(case, bench, stats)
        if after_setup is not None and rec["status"] == "ok":
            rec["compile_seconds"] = after_setup["compile_seconds"] - (before or {"compile_seconds": 0.0})["compile_seconds"]
        return rec

    # ------------------------------------------------------------------ measuring
    def measure_with(self, case, time_fn: Callable[[object], dict], warmup: bool = True) -> dict:
        """One case timed by `time_fn(bench) -> stats` (pytest-benchmark's timer, say)."""
        bench, before, rec = self.set_up(case, warmup)
        if rec is not None:
            return rec
        after_setup = _compile_stats(bench.impl)
        stats = self.timed(case, bench, time_fn)
        return stats if "status" in stats else self.done(case, bench, stats, before, after_setup)

    def measure(self, case) -> dict:
        """One case with the harness's timer, then a shorter second timing that shows
        whether the number repeats (time_repeat_median)."""
        rule = self.settings.rule

        def own(bench):
            stats = timing.measure(bench, rule)
            stats["time_repeat_median"] = timing.measure(bench, rule.scaled(1 / 3))["time_median"]
            return stats

        return self.measure_with(case, own)

