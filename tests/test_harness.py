"""The benchmark harness in one process: cases, the gate, timers, records, the driver's
failure paths, the results file, and the CLI's answers to mistakes (the sweep in worker
processes: tests/test_sweep.py)."""

import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import impls
from bench import cases, cli, driver, gate, intervals, machine, memory, options, probes, records, schema, tables, timing
from impls import registry

import broken_impls

REPO = Path(__file__).resolve().parents[1]
FAST = timing.StopRule(min_time=0.01, max_time=0.05, rel_ci=None, min_rounds=8)


@pytest.fixture
def broken(monkeypatch):
    """The registry with the misbehaving implementations of broken_impls.py added."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for impl in broken_impls.IMPLEMENTATIONS:
        impls.register(impl)


def _case(impl="torch", direction="forward", table="smoke", device="cpu"):
    return cases.Case(impl, device, table, tables.rows(table)[0], "float32", direction)


@functools.cache
def _ceilings():
    """One CeilingLog for every driver of this module: measuring the ceilings takes about
    1.5 s, and no test here needs them measured again (interval_s=inf: measured once per
    device and thread count, by the first case that needs them)."""
    return machine.CeilingLog(interval_s=math.inf)


def _driver(**settings):
    return driver.Driver(driver.Settings(**{"threads": 1, "rule": FAST, **settings}), ceiling_log=_ceilings())


def _expected_cpu_isa():
    """The widest vector instruction set in /proc/cpuinfo's flags, read here (the oracle of
    machine.cpu_isa)."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() in ("flags", "Features"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for flag, name in (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse"), ("asimd", "neon")):
        if flag in flags:
            return name
    return platform.machine()


# ---------------------------------------------------------------------------- records
REQUIRED_FIELDS = {"run_id", "case", "impl", "role", "baseline", "device", "shape", "dtype", "direction", "status",
                   "reason", "time_median", "time_iqr", "time_ci95_low", "time_ci95_high", "time_samples",
                   "peak_bytes", "flops", "bytes", "gflops", "gbps", "roofline_fraction", "max_rel_error", "machine",
                   "params", "batch", "in_channels", "out_channels", "height", "width", "kernel_size", "padding",
                   "kernels", "schema_version", "stop_rule"}


@pytest.mark.parametrize("direction", ["forward", "backward", "train", "stage:vertical"])
def test_measure_produces_a_full_record(direction, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (3.25, 2.5, 1.75))  # what the record must carry
    rec = _driver().measure(_case(direction=direction))
    assert rec["status"] == "ok", rec["reason"]
    assert REQUIRED_FIELDS <= set(rec) and set(rec) == set(schema.FIELDS)
    assert rec["schema_version"] == schema.SCHEMA_VERSION and rec["role"] == "peer" and rec["baseline"] is False
    assert rec["time_q1"] <= rec["time_median"] <= rec["time_q3"]
    assert rec["time_ci95_low"] <= rec["time_median"] <= rec["time_ci95_high"]
    samples = schema.decode_samples(rec["time_samples"])
    assert len(samples) == min(rec["rounds"], schema.MAX_SAMPLES) == rec["time_samples"]["kept"]
    assert min(samples) >= rec["time_min"] * (1 - 1e-9)
    assert statistics.median(samples) == pytest.approx(rec["time_median"], rel=0.05)
    assert rec["max_rel_error"] < 1e-4
    machine_ = rec["machine"]
    assert rec["flops"] > 0 and rec["bytes"] > 0
    assert rec["gflops"] == pytest.approx(rec["flops"] / rec["time_median"] / 1e9)
    # the copy of the case's working set: the largest measured copy not above the case's bytes
    # (the smallest level when the case moves less than all of them)
    levels = sorted(machine_["copy_levels"], key=lambda lv: lv["bytes"])
    assert [lv["bytes"] for lv in levels] == [*machine.COPY_LEVELS["cpu"], 2 * 4 * (1 << 24)]
    within = [lv["gbps"] for lv in levels if lv["bytes"] <= rec["bytes"]]
    copy = within[-1] if within else levels[0]["gbps"]
    assert rec["intensity"] == pytest.approx(rec["flops"] / rec["bytes"])
    roof = min(machine_["sgemm_gflops"], rec["flops"] / rec["bytes"] * copy)
    assert rec["roofline_fraction"] == pytest.approx(rec["gflops"] / roof)
    assert machine_["threads"] == 1 and machine_["cpu_isa"] == _expected_cpu_isa()
    assert machine_["ceilings"] and machine_["ceilings"][0]["threads"] == 1
    assert 0 < rec["cpu_utilization"] < 4 and machine_["load_avg_1min"] == 3.25
    json.dumps(rec)  # JSON-able as written


def test_the_baseline_is_an_attribute_the_record_carries():
    rec = _driver().measure(_case("dense"))
    assert rec["baseline"] is True and rec["role"] == "baseline"
    flat = _case("torch")
    assert rec["params"] == flat.shape.params("dense") != flat.describe()["params"]


def test_a_record_field_that_is_not_in_the_schema_is_an_error():
    with pytest.raises(TypeError, match="unexpected keyword"):
        records.make_record(_case(), status="ok", time_medain=1.0)
    with pytest.raises(ValueError, match="status"):
        records.make_record(_case(), status="fine")


def test_roofline_note_explains_fractions_above_one():
    info = {"copy_gbps": 10.0, "sgemm_gflops": 100.0}
    assert records.roofline_note({"roofline_fraction": 0.9, "intensity": 1.0}, {}, info) is None
    memory_bound = records.roofline_note({"roofline_fraction": 1.4, "intensity": 1.0}, {"bytes": 2 ** 20}, info)
    assert "memory-bound" in memory_bound and "1.0 MiB" in memory_bound
    assert "Winograd" in records.roofline_note({"roofline_fraction": 1.4, "intensity": 50.0}, {"baseline": True}, info)
    assert "sgemm" in records.roofline_note({"roofline_fraction": 1.4, "intensity": 50.0}, {"baseline": False}, info)


# ---------------------------------------------------------------------------- failure paths
def test_gate_failure_is_recorded_and_never_timed(broken):
    rec = _driver().measure(_case("wrong_answer"))
    assert rec["status"] == "failed"
    assert "oracle" in rec["reason"] and "output" in rec["reason"]
    assert rec["time_median"] is None and rec["rounds"] is None


def test_an_exception_while_timed_is_recorded_by_the_driver():
    def explode(bench):
        raise MemoryError("out of memory in the timed call")

    rec = _driver().measure_with(_case(), explode)
    assert rec["status"] == "failed" and rec["reason"] == "MemoryError: out of memory in the timed call"
    assert 0 <= rec["max_rel_error"] < 1e-4  # the gate passed; the record says by how much
    assert rec["time_median"] is None


def test_unavailable_case_is_skipped_with_reason():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rec = _driver().measure(_case(device="cuda"))
    assert rec["status"] == "skipped" and rec["reason"].startswith("no CUDA device")
    rec = _driver().measure(_case("no_such_impl"))
    assert rec["status"] == "skipped" and "does not exist" in rec["reason"]


class _InferenceOnly(impls.get("torch").__class__):
    name = "inference_only"
    directions = ("forward",)


def test_a_direction_an_implementation_does_not_serve_is_skipped_not_failed(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    impls.register(_InferenceOnly())
    recs = {c.direction: _driver().measure(c) for c in
            cases.select_cases(["smoke"], impl_names=["inference_only"], devices=["cpu"],
                               directions=["forward", "backward", "train"])[:3]}
    assert recs["forward"]["status"] == "ok"
    for direction in ("backward", "train"):
        assert recs[direction]["status"] == "skipped"
        assert recs[direction]["reason"] == f"inference_only serves inference only (no {direction})"


class _Recompiles(impls.get("torch").__class__):
    """Counts a 'compilation' on every call after the first two, as a cache that misses
    on each call would."""

    name = "recompiles"

    def __init__(self):
        self.calls, self.compilations, self.seconds = 0, 0, 0.0

    def compile_stats(self):
        return {"compilations": self.compilations, "compile_seconds": self.seconds}

    def _forward_train(self, x, prepared, p):
        self.calls += 1
        if self.calls == 1 or self.calls > 40:
            self.compilations += 1
            self.seconds += 0.5
        return super()._forward_train(x, prepared, p)


def test_compile_time_is_recorded_and_a_recompile_while_timed_fails_the_case(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    impl = impls.register(_Recompiles())
    impl.calls = 0
    rec = _driver(rule=timing.StopRule(min_time=0.0, max_time=0.0, min_rounds=5, max_rounds=5)).measure(
        _case("recompiles"))
    assert rec["status"] == "ok" and rec["compile_seconds"] == 0.5  # the first call compiled, in the gate
    impl.calls = 0
    rec = _driver(rule=timing.StopRule(min_time=0.2, max_time=0.2)).measure(_case("recompiles"))
    assert rec["status"] == "failed" and "compiled" in rec["reason"] and "while timed" in rec["reason"]


# ---------------------------------------------------------------------------- timing
def test_paired_ratio_follows_the_passes_not_the_pooled_medians():
    # a and b in the same six rounds: a is twice b's time in every round, but the machine
    # was slow (x3) in the rounds b's pooled median falls in and a's does not
    slow = [1, 1, 3, 3, 3, 1]
    a = {"interleave_group": "g", "time_pass_medians": [2.0 * s for s in slow], "time_median": 2.0}
    b = {"interleave_group": "g", "time_pass_medians": json.dumps([1.0 * s for s in slow]), "time_median": 3.0}
    value, low, high, how = intervals.ratio(a, b)
    assert how == "paired" and value == 2.0 and low == high == 2.0
    # a case that stopped early is paired over the rounds both were timed in
    assert intervals.paired_ratio({**a, "time_pass_medians": a["time_pass_medians"] + [9.0]}, b)[0] == 2.0
    # different measurements, or too few passes: median / median
    assert intervals.ratio({**a, "interleave_group": "h"}, b)[0] == pytest.approx(2 / 3)
    assert intervals.paired_ratio({**a, "time_pass_medians": [2.0] * 5}, b) is None


def test_stopping_rule_stops_when_the_interval_is_narrow_or_at_the_cap():
    class Steady:
        case = _case()

        @staticmethod
        def call():
            sum(range(2000))

    times, why = timing.call_times(Steady, timing.StopRule(min_time=0.0, max_time=5.0, rel_ci=0.5, min_rounds=10))
    assert why.startswith("ci95 within") and len(times) < 1000
    calls = iter(range(10**9))

    class Noisy(Steady):
        @staticmethod
        def call():  # alternately fast and 50x slower: the interval cannot narrow to 0.1%
            if next(calls) % 2:
                sum(range(50_000))

    times, why = timing.call_times(Noisy, timing.StopRule(min_time=0.0, max_time=0.2, rel_ci=0.001))
    assert why.startswith("time cap (0.2 s)")
    times, why = timing.call_times(Noisy, timing.StopRule(min_time=0.0, max_time=5.0, rel_ci=0.001, max_rounds=7))
    assert why == "round cap (7)" and len(times) == 7


def test_median_interval_covers_the_median_at_about_95_percent():
    import random

    rng = random.Random(1)
    for n, j in ((6, 0), (10, 1), (100, 39), (1001, 468)):
        assert intervals._lower_rank(n, 0.025) == j  # tabulated ranks (binomial order statistics)
    assert timing.median_ci([1.0] * 5) == (None, None)
    covered = sum(lo <= 0.0 <= hi for lo, hi in (timing.median_ci([rng.gauss(0, 1) for _ in range(50)])
                                                 for _ in range(400)))
    assert 0.92 <= covered / 400 <= 0.99


def test_garbage_collector_is_paused_only_while_timing():
    import gc

    seen = []

    class Bench:
        case = _case()

        @staticmethod
        def call():
            seen.append(gc.isenabled())

    assert gc.isenabled()
    times, _ = timing.call_times(Bench, timing.StopRule(min_time=0.0, max_time=0.0, min_rounds=4))
    assert len(times) >= 4 and not any(seen) and gc.isenabled()


def test_cold_times_flush_before_every_call_outside_the_timed_region():
    log = []

    class Timer:
        def start(self):
            log.append("start")

        def stop(self):
            log.append("stop")

        def seconds(self):
            return [1e-3] * log.count("stop")

    out = timing.cold_times(lambda: log.append("call"), lambda: log.append("flush"), Timer(), rounds=3)
    assert out == [1e-3] * 3
    assert log == ["flush", "start", "call", "stop"] * 3


def _fake_clock(monkeypatch, module, durations):
    """`module`'s perf_counter as a clock that each call of the returned function advances
    by the next of `durations` (seconds): timings that do not depend on the machine."""
    now = [0.0]
    steps = iter(durations)
    monkeypatch.setattr(module.time, "perf_counter", lambda: now[0])

    def call():
        now[0] += next(steps)
    return call


def test_warm_up_reaches_steady_state(monkeypatch):
    # window 3: after 8, 7, 6, 5, 4, 3 s the calls take 1 s; the median of the last three
    # is first within 5% of the three before at the 11th call ([1, 1, 1] against [3, 1, 1])
    call = _fake_clock(monkeypatch, timing, [8, 7, 6, 5, 4, 3] + [1] * 100)
    assert timing.warm_up(call, window=3, max_calls=100, max_seconds=1000) == 11

    # Tolerance 0.25 and durations that binary floats hold exactly, so the boundary is exact.
    def calls(durations, **kw):
        call = _fake_clock(monkeypatch, timing, durations)
        return timing.warm_up(call, **{"window": 3, "tolerance": 0.25, "max_calls": 100, "max_seconds": 1e9, **kw})

    # the median moves by exactly the tolerance of the earlier window's (5 -> 3.75: 1.25 =
    # 0.25 * 5): steady at the 6th call. Were the bound strict, or a fraction of the later
    # window's median (0.25 * 3.75), it would wait until both windows held 3.75 (8th call).
    assert calls([5, 5, 5] + [3.75] * 20) == 6
    # just past it (5 -> 3.5: 1.5 > 1.25) it is not steady at the 6th call (a fall counts
    # like a rise: the distance is absolute)
    assert calls([5, 5, 5] + [3.5] * 20) == 8
    # each window exactly: [2, 4, 100] and [1, 4, 100] both have median 4, steady at the
    # 6th call, the first at which there are two windows; any slice one call longer or
    # shorter ([100, 1, 4, 100], [4, 100], [2, 4, 100, 1], ...) has a median not within
    # 25% of 4, and then 4 s calls make the windows agree at some later call
    assert calls([2, 4, 100, 1, 4, 100] + [4] * 20) == 6

    # the time budget: 8 + 7 + 6 s pass 20 s at the third call
    call = _fake_clock(monkeypatch, timing, [8, 7, 6, 5, 4, 3] + [1] * 100)
    assert timing.warm_up(call, window=3, max_calls=100, max_seconds=20) == 3
    # and reaching it exactly (8 + 7 + 5 = 20 s) is spending it: no fourth call
    assert calls([8, 7, 5] + [1] * 20, max_seconds=20) == 3
    assert calls([8, 7, 4.5] + [1] * 20, max_seconds=20) == 4  # 19.5 s: one more call, then 20.5 s
    # never steady (1 s and 10 s alternately): the call cap
    call = _fake_clock(monkeypatch, timing, [1, 10] * 100)
    assert timing.warm_up(call, window=3, max_calls=50, max_seconds=1e9) == 50


# ---------------------------------------------------------------------------- probes, memory, ceilings
def test_cpu_use_and_the_reference_probe(monkeypatch):
    import time

    use = probes.CpuUse()
    with use:
        time.sleep(0.2)  # a sleeping thread uses no CPU, however busy the machine is
    assert use.utilization < 0.5
    # the arithmetic over blocks, on given clocks: (0.75 + 0.5) CPU s over (1 + 1.5) wall s
    cpu, wall = iter([10.0, 10.75, 20.0, 20.5]), iter([5.0, 6.0, 7.0, 8.5])
    monkeypatch.setattr(probes.time, "process_time", lambda: next(cpu))
    monkeypatch.setattr(probes.time, "perf_counter", lambda: next(wall))
    use = probes.CpuUse()
    for _ in range(2):
        with use:
            pass
    assert (use.cpu_s, use.wall_s) == (1.25, 2.5) and use.utilization == 0.5
    monkeypatch.undo()
    # the reference is a high percentile of the run's readings: one lucky reading does not set it
    assert schema.reference_probe([150.0] * 19 + [300.0]) == pytest.approx(150.0)


def test_compute_probe_is_a_matmul_rate_of_this_machine(monkeypatch):
    # on a clock that says every 256^3 matmul took 1 ms: 2 * 256^3 FLOPs / 1e-3 s = 33.55 GFLOP/s
    now = [0.0]

    def clock():
        now[0] += 1e-3  # each read 1 ms after the last: a timed call is the gap between two
        return now[0]

    monkeypatch.setattr(probes.time, "perf_counter", clock)
    assert probes.compute_probe("cpu") == pytest.approx(2 * 256 ** 3 / 1e-3 / 1e9, rel=1e-9)
    monkeypatch.undo()
    torch.set_num_threads(1)
    probe = probes.compute_probe("cpu")
    _ceilings().update("cpu")
    sgemm = _ceilings().fields("cpu", 1)["sgemm_gflops"]
    # In cache at 256^3 it runs near the large matmul's rate: far from 1e9 (FLOP/s) or 1e-3 (seconds).
    assert 0.1 * sgemm < probe < 10 * sgemm
    assert probes.compute_probe("cuda") is None


def test_ceilings_are_measured_again_over_a_run_and_the_best_is_used():
    values = iter([{"copy_gbps": 8.0, "sgemm_gflops": 50.0}, {"copy_gbps": 10.0, "sgemm_gflops": 45.0}])
    log = machine.CeilingLog(interval_s=0.0, measure=lambda device: {**next(values), "threads": 1})
    torch.set_num_threads(1)
    log.update("cpu")
    assert log.fields("cpu", 1)["sgemm_gflops"] == 50.0
    log.update("cpu")  # the interval has passed: measured again
    fields = log.fields("cpu", 1)
    assert (fields["copy_gbps"], fields["sgemm_gflops"]) == (10.0, 50.0) and len(fields["ceilings"]) == 2
    assert log.fields("cpu", 2) == {}  # another thread count has its own ceilings


def test_cpu_peak_memory_sees_a_large_allocation():
    bench = gate.setup_layer_case(_case(), warmup=False)
    big = 64 << 20
    bench.call = lambda: torch.ones(big // 4)  # touches 64 MB
    peak, method = memory.peak_bytes(bench)
    if peak is None:
        pytest.skip(method)
    assert peak >= 0.9 * big, (peak, method)


def test_what_is_said_on_stderr_while_profiling_is_kept_but_for_kinetos_notes(capfd):
    from bench import profiling

    with profiling.quiet_stderr() as said:
        os.write(2, b"USDT:2026-12-01 20:07:50 1856:1856 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"warning: something worth keeping\n")
    assert said.lines == ["warning: something worth keeping"]
    assert capfd.readouterr().err == ""


def test_the_profiler_says_nothing_into_the_output(capfd):
    rec = _driver().measure(_case())
    assert rec["kernels"]  # the profiler ran
    captured = capfd.readouterr()
    assert "profiler_start" not in captured.err + captured.out
    assert "profiler_stop" not in captured.err + captured.out


# ---------------------------------------------------------------------------- results files
def test_samples_survive_their_compression_to_a_tenth_of_a_percent():
    import random

    rng = random.Random(3)
    times = [1e-5 * (1 + rng.random()) for _ in range(5000)]
    enc = schema.encode_samples(times)
    assert enc["n"] == 5000 and enc["kept"] == schema.MAX_SAMPLES and len(json.dumps(enc)) < 8000
    kept = [times[i] for i in sorted(random.Random(0).sample(range(5000), schema.MAX_SAMPLES))]
    assert all(abs(a / b - 1) <= schema.SAMPLE_STEP for a, b in zip(schema.decode_samples(enc), kept))
    assert schema.decode_samples([1.0, 2.0]) == [1.0, 2.0] and schema.decode_samples(None) is None
    with pytest.raises(ValueError, match="time_samples"):
        schema.decode_samples({"codec": "mp3"})


def test_writer_streams_each_record(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    writer = records.ResultsWriter(path)
    writer.write({"a": 1})
    assert path.read_text() == '{"a": 1}\n'  # on disk before the next case runs
    writer.write({"a": 2})
    assert len(path.read_text().splitlines()) == 2
    assert records.ResultsWriter(path).done == set() and path.read_text() == ""  # started anew


def test_resume_skips_what_is_done_and_cuts_a_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"case": "a", "status": "ok"}) + "\n" + json.dumps({"case": "b", "status": "failed"})
                    + "\n" + '{"case": "c", "sta')
    writer = records.ResultsWriter(path, resume=True)
    assert writer.done == {"a"}  # the failed case is measured again
    writer.write({"case": "b", "status": "ok"})
    assert [r["case"] for r in records.read_records(path)] == ["a", "b", "b"]


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ---------------------------------------------------------------------------- selection and tables
def test_case_selection_filters_and_names():
    found = cases.select_cases(["smoke"], impl_names=["torch"], devices=["cpu"], directions=["forward", "stages"])
    ids = [c.id for c in found]
    assert "torch/cpu/smoke:c4-n6-s9-k3/float32/forward" in ids
    assert "torch/cpu/smoke:c4-n6-s9-k3/float32/stage:lateral" in ids
    assert all(c.impl == "torch" and c.device == "cpu" for c in found)
    assert all(cases.from_id(c.id) == c for c in found)
    for kwargs, what in (({"impl_names": ["nope"]}, "impl"), ({"directions": ["sideways"]}, "direction"),
                         ({"dtypes": ["int8"]}, "dtype"), ({"devices": ["tpu"]}, "device")):
        with pytest.raises(ValueError, match=f"^{what}: unknown"):
            cases.select_cases(["smoke"], **kwargs)
    with pytest.raises(ValueError, match="table"):
        cases.select_cases(["nope"])


# Every table's rows, in order. APPEND-ONLY: a new row goes at the end of its table (and
# here); editing or reordering a row breaks the comparability of results across commits.
PINNED_ROWS = {
    "smoke": ["c4-n6-s9-k3", "c3-n8-s8-k5-p0"],
    "paper": ["c3-n64-s32-k3", "c64-n64-s32-k3", "c128-n128-s16-k3", "c256-n256-s8-k3", "c32-n32-s64-k5",
              "c3-n96-s32-k5", "c128-n128-s32-k3", "c256-n256-s16-k3", "c128-n128-s32-k5", "c512-n512-s8-k3"],
    "sweep": [f"c{c}-n{c}-s{s}-k{k}" for c in (32, 64, 128, 256, 512) for s in (8, 16, 32, 64) for k in (3, 5, 7)],
    "ci": ["c64-n64-s32-k3", "c128-n128-s16-k3"],
    "goals": ["c128-n128-s32-k3", "c256-n256-s16-k3", "c256-n256-s32-k3", "c128-n128-s32-k5"],
}
# The sweep's default subset (seeded): pinned too, since results name these rows.
PINNED_SWEEP_SUBSET = ["c32-n32-s8-k7", "c64-n64-s16-k5", "c64-n64-s32-k5", "c128-n128-s8-k3", "c128-n128-s8-k5",
                       "c128-n128-s8-k7", "c128-n128-s32-k3", "c128-n128-s32-k5", "c128-n128-s32-k7",
                       "c512-n512-s8-k3", "c512-n512-s32-k3", "c512-n512-s32-k7"]


def test_tables_are_append_only():
    assert set(PINNED_ROWS) <= set(tables.TABLES)
    for table, pinned in PINNED_ROWS.items():
        names = [r.name for r in tables.TABLES[table]]
        assert names[:len(pinned)] == pinned, f"{table}: a row was edited, removed or reordered"
    assert [r.name for r in tables.rows("sweep")] == PINNED_SWEEP_SUBSET


def test_tables_are_well_formed():
    for table, table_rows in tables.TABLES.items():
        names = [r.name for r in table_rows]
        assert len(names) == len(set(names)), table
        for r in table_rows:
            assert 0 <= r.padding <= r.kernel_size - 1 and r.size + 2 * r.padding >= r.kernel_size
            assert tables.find(table, r.name) == r
        for device in cases.DEVICES:
            assert tables.batch(table, device) >= 1


# ---------------------------------------------------------------------------- the CLI's answers
@pytest.mark.parametrize("args, message", [
    (["--dtype", "int8"], "--dtype: unknown 'int8'"),
    (["--threads", "0"], "--threads: expected a whole number >= 1, got 0"),
    (["--threads", "two"], "--threads: expected a whole number >= 1, got 'two'"),
    (["--impl", "nope"], "--impl: unknown 'nope'"),
    (["--preset", "nope"], "--preset: unknown 'nope'"),
    (["--device", "tpu"], "--device: unknown 'tpu'"),
    (["--direction", "sideways"], "--direction: unknown 'sideways'"),
    (["--block", "-1"], "--block: expected seconds > 0"),
    (["--block", "nan"], "--block: expected seconds > 0"),
    (["--rounds", "0"], "--rounds: expected a whole number >= 1, got 0"),
    (["--passes", "x"], "--passes: expected a whole number >= 1"),
    (["--rel-pi", "2"], "--rel-pi: expected a fraction in (0, 1)"),
    (["--baseline", "nope"], "--baseline: unknown implementation 'nope'"),
    (["--role", "fast"], "--role: unknown 'fast'"),
    (["--role", "simple", "--impl", "torch"], "--role: no implementation of --impl has role simple"),
    (["--results", "/proc/nowhere/r.jsonl"], "--results: /proc/nowhere/r.jsonl cannot be written"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_mistakes_are_one_line_and_exit_2(capsys, args, message):
    try:
        code = cli.main(["run", *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_role_selects_the_implementations_of_those_roles():
    chosen = options.selection({"preset": "smoke", "impl": "", "role": "baseline,handwritten", "device": "cpu",
                                "direction": "forward", "dtype": "float32", "all_rows": False}.get)
    assert chosen["impl_names"] == [n for n in impls.names() if impls.get(n).role in ("baseline", "handwritten")]
    assert "dense" in chosen["impl_names"] and "torch" not in chosen["impl_names"]
    every = options.selection({"preset": "smoke", "impl": "torch,naive", "role": "", "device": "cpu",
                               "direction": "forward", "dtype": "float32", "all_rows": False}.get)
    assert every["impl_names"] == ["torch", "naive"]


def test_cli_mistake_has_no_traceback_in_a_real_process():
    result = _cli("run", "--dtype", "int8")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_pytest_and_cli_share_the_options_and_their_defaults():
    import argparse

    parser = argparse.ArgumentParser()
    options.add_to_argparse(parser)
    defaults = vars(parser.parse_args([]))
    assert defaults == {opt.dest: opt.default for opt in options.SHARED}
    cli_run = cli._parser()._subparsers._group_actions[0].choices["run"]
    flags = {a.option_strings[0] for a in cli_run._actions if a.option_strings}
    assert {opt.flag for opt in options.SHARED} <= flags


def test_results_name_tells_machines_of_one_instruction_set_apart(tmp_path, monkeypatch):
    """{cpu} in --results names the instruction set, the vendor and the family-model, so an
    AVX-512 Zen 4 and an AVX-512 Xeon write different files; an unknown field is one line."""
    cpuinfo = {"zen4": "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu avx2 avx512f\n",
               "xeon": "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: fpu avx2 avx512f\n"}
    real_open = open
    names = {}
    for cpu, text in cpuinfo.items():
        (tmp_path / cpu).write_text(text)
        monkeypatch.setattr("builtins.open", lambda f, *a, _p=tmp_path / cpu, **k: real_open(
            _p if f == "/proc/cpuinfo" else f, *a, **k))
        machine.metadata.cache_clear()  # read this /proc/cpuinfo
        names[cpu] = options.results_path(str(tmp_path / "cpu-paper-{cpu}.jsonl"))
        monkeypatch.setattr("builtins.open", real_open)
    machine.metadata.cache_clear()  # the real machine's again for the tests after this one
    assert Path(names["zen4"]).name == "cpu-paper-avx512-amd-25-17.jsonl"
    assert Path(names["xeon"]).name == "cpu-paper-avx512-intel-6-143.jsonl"
    with pytest.raises(ValueError, match=r"may hold \{cpu\}, \{cpu_isa\} and \{host\} only"):
        options.results_path(str(tmp_path / "{gpu}.jsonl"))


# ---------------------------------------------------------------------------- thread hygiene
def _median_time(bench, seconds):
    return statistics.median(timing.call_times(bench, timing.StopRule(min_time=seconds, max_time=seconds))[0])


def _slowdown_after(d, ort_case, row):
    """Median time of openmp_fused right after 10 runs of `ort_case` and the wait for
    quiet that the driver and the workers make between cases, over its median before
    them, alternating 5 times (a slow stretch of the machine hits both alike)."""
    ort = d.set_up(ort_case)[0]
    fused = d.set_up(cases.Case("openmp_fused", "cpu", "paper", row))[0]
    before, after = [], []
    for _ in range(5):
        before.append(_median_time(fused, 0.1))
        for _ in range(10):
            ort.call()
        probes.quiet()
        after.append(_median_time(fused, 0.1))
    return statistics.median(after) / statistics.median(before)


@pytest.mark.slow  # times openmp_fused 10 x 0.2 s around 50 runs of ONNX Runtime: a speed ratio
def test_a_case_timed_after_onnxruntime_is_not_slowed_by_its_thread_pool(monkeypatch):
    """Even with both of ONNX Runtime's pools spinning, a case timed after its runs, once the
    process has gone quiet (as the driver and the workers wait between cases), runs as fast
    as alone, within noise; every runtime gets the case's thread count. (Timed with no
    wait, the spinning pools made it 1.54x on the 2-core machine.) A ratio of speeds on a
    shared machine: the bound leaves room for noise, still below 1.54."""
    reason = impls.get("onnxruntime").unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(impls.get("onnxruntime"), "spinning", True)
    row = tables.find("paper", "c64-n64-s32-k3")
    d = driver.Driver(driver.Settings(threads=2), ceiling_log=_ceilings())
    quiet = _slowdown_after(d, cases.Case("onnxruntime", "cpu", "paper", row), row)
    assert quiet < 1.35
