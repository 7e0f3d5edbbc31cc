"""The one driver core that `python -m bench`, pytest-benchmark and asv all call.

For every case, in this order and written once: set up and gate (bench/gate.py), read
the machine's state, time (the harness's own timer, shuffled interleaved passes, or a
caller's timer such as pytest-benchmark's), read the state again, then the kernel-only
and cold GPU times, peak memory and the kernels that ran, and the record. A case that
cannot run becomes a `skipped` record, one that fails the gate or raises a `failed`
record (on a GPU the device is synchronised and its cache emptied after an error), and
the sweep goes on. `Driver.run` streams each record to the results file as its case ends,
skips what a resumed file already holds, re-measures flagged cases at the end, and with
`isolate` runs each group of cases in a fresh process so that a crash is recorded too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from . import gate, gpu_state, machine, memory, probes, profiling, records, schema, timing
from .cases import known_impl


@dataclasses.dataclass(frozen=True)
class Settings:
    """How cases are measured; the CLI's and the pytest suite's options map onto this."""

    threads: int | None = None
    rule: timing.StopRule = timing.StopRule()
    interleave: int = 1  # passes; > 1 measures the implementations of a layer together
    remeasure: bool = False  # measure flagged cases once more at the end of the run
    # ... worst first, for at most this share of the first pass's time: on a machine that
    # was slow throughout, everything is flagged, and measuring it all twice buys little.
    remeasure_budget: float = 0.3
    isolate: bool = False  # each group of cases in a fresh subprocess
    graph: bool = True  # GPU: kernel-only time by CUDA-graph replay
    seed: int = 0  # of the pass order


# Seconds of one case in one interleaved pass: short, so that the passes of a group sample
# the machine's fast and slow stretches alike for every case (measure_interleaved).
PASS_TIME = 0.02


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


class Driver:
    def __init__(self, settings: Settings = Settings(), writer: records.ResultsWriter | None = None,
                 ceiling_log: machine.CeilingLog | None = None):
        self.settings = settings
        self.writer = writer or records.ResultsWriter(None)
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
            extra: dict = {}
            if case.device == "cuda":
                graph, note = timing.graph_time(bench) if self.settings.graph else (None, None)
                extra.update(time_graph_median=graph, graph_note=note, time_cold_median=timing.cold_median(bench),
                             tf32=gpu_state.tf32_flags())
            extra["peak_bytes"], extra["peak_method"] = memory.peak_bytes(bench)
            said: list[str] = []
            extra["kernels"] = profiling.kernels_ran(bench, log=said)
            extra["profiler_log"] = said or None
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

    def measure_interleaved(self, cases: list) -> list[dict]:
        """Cases compared with each other (the implementations of one layer and direction)
        in many short shuffled passes: Google Benchmark's random interleaving. Each pass
        times every active case for PASS_TIME (one call at least); a case stays active
        for `interleave` passes, and min_time / PASS_TIME within its time cap, then until the 95%
        interval of its median (over all its calls) is within the rule's target or its
        time cap is spent, and never comes back: each case's passes are a prefix of the
        group's, so pass i of two records is the same round (`interleave_group` names the
        measurement). On the shared machines this suite meets, the ratio of two
        implementations moves by about 10% from one 10 ms stretch to the next; the
        median of their per-pass ratios (bench.intervals.paired_ratio) then repeats,
        where a ratio of pooled medians over a few long passes did not (see
        docs/DESIGN.md, "How a number is measured"). time_repeat_median is the median of
        the later half of the passes."""
        rule = self.settings.rule
        asked, min_passes = self.settings.interleave, math.ceil(rule.min_time / PASS_TIME - 1e-9)
        out: dict[int, dict] = {}
        benches, compile_marks = {}, {}
        for i, case in enumerate(cases):
            bench, before, rec = self.set_up(case)
            if rec is not None:
                out[i] = rec
            else:
                benches[i] = bench
                compile_marks[i] = (before, _compile_stats(bench.impl))
        runs = {i: [] for i in benches}
        spent = {i: 0.0 for i in benches}
        use = {i: probes.CpuUse() for i in benches}
        states = {}
        rng = random.Random(self.settings.seed)
        device = cases[0].device if cases else "cpu"
        probe = [probes.compute_probe(device)]
        if device == "cuda":
            states["before"] = self._gpu().read()
        one_pass = timing.StopRule(min_time=PASS_TIME, max_time=PASS_TIME, rel_ci=None, min_rounds=1)
        active = list(runs)
        while active:
            rng.shuffle(active)
            for i in active:
                try:
                    with use[i]:
                        times, _ = timing.call_times(benches[i], one_pass)
                    runs[i].append(times)
                    spent[i] += sum(times)
                except Exception as e:  # noqa: BLE001
                    out[i] = self.failed(cases[i], e, benches[i])
            active = sorted(i for i in active if i not in out and self._wants_more(runs[i], spent[i], asked, min_passes, rule))
        probe.append(probes.compute_probe(device))
        if device == "cuda":
            states["after"] = self._gpu().read()
        group_id = uuid.uuid4().hex[:12]
        for i, passes_of in runs.items():
            if i in out:
                continue
            pooled = [t for run in passes_of for t in run]
            stats = timing.summarize(pooled)
            stats["time_repeat_median"] = statistics.median([t for run in passes_of[len(passes_of) // 2:] for t in run])
            stats["interleave_passes"] = len(passes_of)
            stats["interleave_group"] = group_id
            stats["time_pass_medians"] = [statistics.median(run) for run in passes_of]
            stats["stop_rule"] = self._why_stopped(pooled, spent[i], rule)
            stats.update(probes.conditions(use[i], probe))
            if device == "cuda":
                stats.update(gpu_state.case_fields(self._gpu(), states["before"], states["after"], len(pooled)))
            out[i] = self.done(cases[i], benches[i], stats, *compile_marks[i])
        return [out[i] for i in range(len(cases))]

    @staticmethod
    def _wants_more(runs: list, spent: float, asked: int, min_passes: int, rule: timing.StopRule) -> bool:
        """`asked` passes (--interleave) whatever they cost; min_passes (min_time's worth)
        and the interval target within the time cap."""
        if len(runs) < asked:
            return True
        if spent >= rule.max_time:
            return False
        if len(runs) < min_passes:
            return True
        if rule.rel_ci is None:
            return False
        return timing.relative_halfwidth([t for run in runs for t in run]) > rule.rel_ci

    @staticmethod
    def _why_stopped(pooled: list[float], spent: float, rule: timing.StopRule) -> str:
        if rule.rel_ci is None:
            return f"min time ({rule.min_time:g} s)"
        width = timing.relative_halfwidth(pooled)
        if width <= rule.rel_ci:
            return f"ci95 within {width:.1%} (target {rule.rel_ci:.0%})"
        return f"time cap ({rule.max_time:g} s), ci95 within {width:.1%}"

    # ------------------------------------------------------------------ a sweep
    def run(self, cases: Iterable) -> Iterator[dict]:
        """Measure `cases`, writing and yielding each record as its case (or interleaved
        group) ends. Cases the results file already holds as ok (resume) are left out. With
        `remeasure`, the groups with a flagged case are measured once more at the end,
        worst first, within `remeasure_budget` of the first pass's time."""
        todo = [c for c in cases if c.id not in self.writer.done]
        first = {}
        start = time.perf_counter()
        for group in groups(todo, self.settings.interleave > 1):
            for rec in self._measure_group(group):
                rec["attempt"] = 1
                first[rec["case"]] = rec
                self.writer.write(rec)
                yield rec
        if not self.settings.remeasure:
            return
        deadline = time.perf_counter() + self.settings.remeasure_budget * (time.perf_counter() - start)
        best = best_probes(first.values())

        def worst_flag(case) -> float:
            rec = first.get(case.id, {})
            flags = schema.quality_flags(rec, best.get((rec.get("machine") or {}).get("threads")))
            return max((size for _, size in flags), default=0.0)

        # A flagged case is measured again with the cases it is compared with (its group),
        # so that its ratios still come from one interleaved measurement; worst groups first.
        flagged = [(max(map(worst_flag, g)), g) for g in groups(todo, self.settings.interleave > 1)]
        for worst, group in sorted(flagged, key=lambda wg: -wg[0]):
            if worst == 0.0 or time.perf_counter() > deadline:
                break
            group = [c for c in group if first.get(c.id, {}).get("status") == "ok"]
            for rec in self._measure_group(group):
                earlier = first[rec["case"]]
                rec["attempt"] = (earlier.get("attempt") or 1) + 1
                rec["earlier_attempts"] = [{k: earlier.get(k) for k in schema.ATTEMPT_FIELDS}]
                self.writer.write(rec)
                yield rec

    def _measure_group(self, group: list) -> list[dict]:
        if self.settings.isolate:
            return self._isolated(group)
        if len(group) == 1 and self.settings.interleave <= 1:
            return [self.measure(group[0])]
        return self.measure_interleaved(group)

    # ------------------------------------------------------------------ --isolate
    def _isolated(self, group: list) -> list[dict]:
        """The group measured by a fresh `python -m bench child` process. If that process
        dies (a segfault, the kernel's out-of-memory killer), each case of the group is
        measured alone in its own process, so the one that crashes is found and recorded
        as failed with its signal while the others keep their results."""
        recs, died = _run_child(group, self.settings)
        if died is None:
            return recs
        if len(group) == 1:
            rec = self.record(group[0], status="failed", reason=f"the case's process ended by {died}")
            rec["exit_signal"] = died
            return [rec]
        return [r for case in group for r in self._isolated([case])]


# A child that hangs is killed: generous, since a case's gate and warm-up may compile.
CHILD_SECONDS_BASE, CHILD_SECONDS_PER_CASE = 300, 120


def _run_child(group: list, settings: Settings) -> tuple[list[dict], str | None]:
    """(records, None) from a child process measuring `group`, or ([], how it died)."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        out = Path(tmp) / "records.jsonl"
        spec = {"cases": [c.id for c in group], "results": str(out), "settings": settings_to_json(settings)}
        env = {**os.environ, "BENCH_RUN_ID": records.run_id()}
        try:
            proc = subprocess.run([sys.executable, "-m", "bench", "child", json.dumps(spec)], env=env,
                                  cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                                  timeout=CHILD_SECONDS_BASE + CHILD_SECONDS_PER_CASE * len(group))
        except subprocess.TimeoutExpired as e:
            return [], f"a timeout after {e.timeout:.0f} s"
        got = records.read_records(out) if out.exists() else []
        if proc.returncode < 0:
            return got, signal.Signals(-proc.returncode).name
        if proc.returncode != 0 or len(got) != len(group):
            return got, f"exit status {proc.returncode}"
        return got, None


def settings_to_json(settings: Settings) -> dict:
    d = dataclasses.asdict(settings)
    d["isolate"] = False  # the child measures in its own process
    return d


def settings_from_json(d: dict) -> Settings:
    return Settings(**{**d, "rule": timing.StopRule(**d["rule"])})


def groups(cases: list, together: bool) -> list[list]:
    """Cases to measure at once: one each, or (together) every implementation of one
    layer, dtype and direction."""
    if not together:
        return [[c] for c in cases]
    out: dict = {}
    for c in cases:
        out.setdefault(c.group, []).append(c)
    return list(out.values())


def best_probes(recs: Iterable[dict]) -> dict:
    """The best compute probe of a run per thread count."""
    best: dict = {}
    for r in recs:
        p, threads = r.get("probe_gflops"), (r.get("machine") or {}).get("threads")
        if p:
            best[threads] = max(best.get(threads, 0.0), p)
    return best
