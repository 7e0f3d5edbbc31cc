"""The results record: one definition, used by the harness to write and by reports/ to read.

A record is one case measured once (or skipped, or failed, with the reason). `Record`
lists every field with its type and meaning; `Record.to_json()` is what the harness writes
(a line of a .jsonl file, or `extra_info` of a pytest-benchmark benchmark); `upgrade()`
turns a record of any earlier schema version into the current one; `rates()` derives
GFLOP/s, GB/s, intensity and the roofline fraction, the one place those are computed.

This module imports neither torch nor anything of the harness, so reports/ can import it
(and `python -m bench.schema` prints the field table that docs/DESIGN.md carries).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import random
import sys
import zlib
from typing import Any

import numpy as np

# 1: the records of the first sweeps (no version field; the baseline was the impl "dense").
# 2: schema_version, role and baseline, the 95% interval of the median, the raw samples.
# 3: a sweep's rounds in worker processes: time_pass_medians by round, the rounds' medians,
#    the ratio to the group's reference with its prediction interval, modes, the solo check.
SCHEMA_VERSION = 3
STATUSES = ("ok", "failed", "skipped")
# A case's direction is one of impls.shapes.DIRECTIONS (forward, backward, train), or
# stage:<name>[+<name>...] for one kernel alone.
# Bytes per element of each dtype a record may name (tf32: float32 storage): the minimum
# bytes of a case (`bytes`) are counted in these.
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "tf32": 4, "float64": 8}


def _field(doc: str, default: Any = None):
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass
class Record:
    """One case's result. Times are seconds, sizes bytes, rates per second."""

    # ---- identity
    run_id: str = _field("`<UTC time>-<host>-<pid>`: one process's run; ratios are taken within a run")
    case: str = _field("`impl/device/table:row/dtype/direction`, unique in a run")
    impl: str = _field("implementation name (`impls.names()`)")
    role: str | None = _field("what the implementation is: baseline, peer, handwritten or simple")
    baseline: bool | None = _field("true for the implementation every speedup is measured against")
    device: str = _field("`cpu` or `cuda`")
    table: str = _field("layer table (`smoke`, `paper`, `sweep`, `ci`, `goals`; `model` for a network)")
    shape: str = _field("row name: `c64-n64-s32-k3` is C, N, H = W, k; `-pP` when padding is not k//2")
    dtype: str = _field("`float32`, `float64`, ...")
    direction: str = _field("`forward`, `backward`, `train`, or `stage:<name>` (one kernel; fused groups joined by `+`)")
    batch: int | None = _field("the layer: batch B")
    in_channels: int | None = _field("the layer: C")
    out_channels: int | None = _field("the layer: N")
    height: int | None = _field("the layer: H")
    width: int | None = _field("the layer: W")
    kernel_size: int | None = _field("the layer: k")
    padding: int | None = _field("the layer: p")
    params: int | None = _field("parameters of this implementation's layer (flattened, or dense for the baseline)")
    flops: int | None = _field("FLOPs of the case (2 per multiply-add, 1 per bias add), from the shape")
    bytes: int | None = _field("minimum bytes the case must move (every input read once, every output written once)")
    schema_version: int = _field("version of this schema the record was written in", SCHEMA_VERSION)
    # ---- outcome
    status: str = _field("`ok`, `failed` or `skipped`", "ok")
    reason: str | None = _field("why a case failed or was skipped (one line)")
    exit_signal: str | None = _field("with --isolate: the signal that ended the case's process (SIGSEGV, SIGKILL...)")
    timer: str | None = _field("`perf_counter` (CPU) or `cuda_event` (GPU)")
    timestamp: str | None = _field("when the record was written (UTC, ISO 8601)")
    commit: str | None = _field("git commit measured")
    # ---- the gate
    max_rel_error: float | None = _field("the correctness gate: worst relative error against the float64 oracle")
    errors: dict | None = _field("the gate per output and gradient field")
    warmup_calls: int | None = _field("calls made to reach steady state before timing")
    runtime: dict | None = _field("the implementation's `runtime_info()`: instruction set, OpenMP runtime, threads...")
    compile_seconds: float | None = _field("seconds the implementation spent compiling for this case (outside timing)")
    # ---- time
    time_median: float | None = _field("median seconds per call")
    time_q1: float | None = _field("first quartile of the per-call times")
    time_q3: float | None = _field("third quartile")
    time_iqr: float | None = _field("q3 - q1")
    time_mean: float | None = _field("mean seconds per call")
    time_min: float | None = _field("fastest call")
    time_stddev: float | None = _field("standard deviation of the per-call times")
    rounds: int | None = _field("timed calls")
    time_ci95_low: float | None = _field("95% confidence interval of the median, lower end (order statistics)")
    time_ci95_high: float | None = _field("95% confidence interval of the median, upper end")
    time_samples: dict | None = _field("the raw per-call times, compressed (`decode_samples`)")
    stop_rule: str | None = _field("why sampling stopped: the interval of the median was narrow enough, or a cap")
    time_repeat_median: float | None = _field("a second measurement of the case in the same run (its agreement)")
    interleave_passes: int | None = _field("passes in which the cases of a layer were timed together, shuffled")
    interleave_group: str | None = _field("one interleaved measurement: records with this id were timed in the same "
                                          "passes, pass i of each in the same round")
    time_pass_medians: list | None = _field("the median of each pass: a list per round of the sweep (schema 3), or "
                                            "one list of the passes of one interleaved measurement (schema 2)")
    time_round_medians: list | None = _field("the median of the case's calls in each round of the sweep")
    process_rounds: int | None = _field("rounds of the sweep the case was timed in, each in fresh worker processes")
    worker_pids: list | None = _field("the worker process of each round")
    group_ratio: dict | None = _field("the case's time over its group's reference (the baseline, else the geometric "
                                      "mean of the others) with its 95% confidence and prediction intervals "
                                      "(value, low, high, pi_low, pi_high, pi_halfwidth, reference, method, rounds)")
    bimodal: dict | None = _field("when the case's rounds fall apart into two modes: the median time of each "
                                  "(low, high) and how many rounds each has")
    solo_ratio: float | None = _field("the solo check: the case's time interleaved over its time alone (every other "
                                      "worker stopped, same process), geometric mean over the rounds (sampled cases)")
    attempt: int | None = _field("schema 2: 1 for a case's first measurement in a run; 2, ... when a flagged case "
                                 "was measured again at the end of its run; readers keep the latest")
    earlier_attempts: list | None = _field("schema 2: the earlier measurements of this case in this run (their time "
                                           "fields)")
    # ---- rates and the roofline
    gflops: float | None = _field("achieved GFLOP/s (flops / time_median)")
    gbps: float | None = _field("achieved GB/s (bytes / time_median)")
    intensity: float | None = _field("flops / bytes")
    roofline_fraction: float | None = _field("achieved FLOP/s / min(sgemm, intensity x the copy bandwidth of the "
                                             "case's working set)")
    roofline_note: str | None = _field("why a fraction above 1 is not an error (e.g. Winograd does fewer multiplications)")
    # ---- how the machine was while the case ran
    probe_gflops: float | None = _field("CPU: GFLOP/s of a 256^3 in-cache matmul before and after the case (or its "
                                        "interleaved group), the lower")
    cpu_utilization: float | None = _field("process CPU seconds per wall second while timed")
    # ---- memory, GPU
    peak_bytes: int | None = _field("extra memory one call needs at its peak")
    peak_method: str | None = _field("how peak_bytes was measured")
    peak_rss_bytes: int | None = _field("CPU: the rise of resident memory (VmHWM) over one call, beside peak_bytes when "
                                        "that is the allocator's own count")
    time_graph_median: float | None = _field("GPU: kernel-only seconds per call by CUDA-graph replay")
    graph_note: str | None = _field("GPU: why a graph could not be captured")
    time_cold_median: float | None = _field("GPU: median seconds per call with the L2 cache flushed before each call")
    tf32: dict | None = _field("GPU: the TF32 flags in force (cuBLAS matmul, cuDNN)")
    gpu_state: dict | None = _field("GPU: NVML readings before and after the case (SM and memory clocks, "
                                    "temperature, power, throttle reasons)")
    sm_clock_mhz_min: float | None = _field("GPU: the lowest SM clock read around the case")
    throttled: bool | None = _field("GPU: SM clock below 90% of its maximum, or a throttle reason other than idle")
    energy_mj: float | None = _field("GPU: millijoules per call (NVML's energy counter over the timed calls)")
    energy_note: str | None = _field("GPU: why energy_mj is null")
    kernels: list | None = _field("what one call ran (profiler names), most expensive first")
    profiler_log: list | None = _field("what the profiler printed while it ran, its start/stop notes left out")
    # ---- the model table
    network: str | None = _field("model table: `baseline` or `flattened` network")
    conv_params: int | None = _field("model table: parameters of the network's convolutions")
    images_per_s: float | None = _field("model table: batch / time_median")
    # ---- the machine
    machine: dict | None = _field("host, CPU, cores, memory, GPU, versions, threads, measured ceilings (MACHINE_FIELDS)")

    def to_json(self) -> dict:
        """The record as written: every field, JSON types only (non-finite floats -> null)."""
        return _jsonable(dataclasses.asdict(self))


# Keys of the `machine` field that the reports show.
MACHINE_FIELDS = {
    "host": "host name", "platform": "OS and kernel", "python": "Python version",
    "cpu_model": "CPU model", "cpu_isa": "widest vector instruction set of the CPU (avx512, avx2, ...)",
    "cpu_family_model": "x86 family/model of the CPU (25/1 is Zen 3): a VM's model name often hides it",
    "cpu_vendor": "CPU vendor (intel, amd, ...) from x86's vendor id",
    "cpu_cores_physical": "physical cores", "cpu_cores_logical": "logical cores", "cpu_freq_mhz": "CPU MHz (max)",
    "memory_bytes": "memory", "gpu_name": "GPU", "gpu_driver": "GPU driver", "gpu_memory_bytes": "GPU memory",
    "gpu_clocks": "GPU clocks (MHz)", "torch_version": "torch", "cuda_version": "CUDA (torch's)",
    "cudnn_version": "cuDNN", "cupy_version": "CuPy", "compiler": "C compiler", "torch_threads": "torch threads",
    "threads": "threads of the case", "glibc_tunables": "GLIBC_TUNABLES in force",
    "malloc": "how glibc's allocator thresholds were fixed (GLIBC_TUNABLES or mallopt)", "env": "recorded environment",
    "copy_gbps": "copy GB/s, the best measured in the run so far, of a copy far larger than the caches (DRAM)",
    "copy_levels": "copy GB/s by working set, the best of the run so far: [{bytes (read + written), gbps}], the "
                   "caches' sizes and the DRAM copy; a case's bandwidth ceiling is the level of its bytes "
                   "(copy_ceiling)",
    "sgemm_gflops": "best large-GEMM GFLOP/s so far (torch's sgemm or the C extension's GEMM)",
    "sgemm_source": "the GEMM whose rate sgemm_gflops is (torch.mm 1536^3, openmp lateral GEMM 512x512x8192, ...)",
    "ceilings": "every ceiling measurement of the run so far: [{at, threads, copy_gbps, copy_levels, sgemm_gflops, "
                "sgemm_source, gemms}]",
    "fma_peak_gflops": "CPU: float32 FMA peak GFLOP/s at the case's threads, estimated from the reported clock "
                       "(not measured)",
    "fma_peak_basis": "how fma_peak_gflops was estimated: cores x GHz (where the clock was read) x FMA units x "
                      "lanes x 2",
    "timer_overhead_s": "seconds the timing loop adds per call", "load_avg_1min": "load average when the case ran",
}

# Column sets for readers.
FIELDS = [f.name for f in dataclasses.fields(Record)]
NESTED_FIELDS = [f.name for f in dataclasses.fields(Record) if f.type.split(" ")[0] in ("dict", "list")]
NUMERIC_FIELDS = [f.name for f in dataclasses.fields(Record) if f.type.split(" ")[0] in ("int", "float")]


def upgrade(record: dict) -> dict:
    """A record of any schema version in the current one's terms (a new dict). Version 1
    had no version field and knew the baseline only by its name, "dense"."""
    rec = dict(record)
    version = rec.get("schema_version") or 1
    if version < 2:
        rec.setdefault("baseline", rec.get("impl") == "dense")
        rec.setdefault("role", "baseline" if rec["baseline"] else None)
        # the instruction set, where the C extension said which ones the CPU has
        supported = (rec.get("runtime") or {}).get("isa_supported") if isinstance(rec.get("runtime"), dict) else None
        machine = rec.get("machine")
        isa = next((i for i in ("avx512", "avx2") if i in (supported or ())), None)
        if isa and isinstance(machine, dict) and "cpu_isa" not in machine:
            rec["machine"] = {**machine, "cpu_isa": isa}
    rec["schema_version"] = version
    return rec


# ---------------------------------------------------------------------------- trust
# A flag must predict that a rerun disagrees. For a case timed in several rounds of a
# sweep (process_rounds >= 2) two things do: a prediction interval of its ratio to its
# group's reference wider than WIDE_PI (a rerun's ratio may land that far away), and
# rounds that fall apart into two modes (a process's state fixed its speed: a mean over
# processes describes neither). A throttled GPU, too. For a case measured in one process
# (pytest-benchmark, sweeps of schema 2) only the within-run signs exist: a second
# measurement 10% away, a compute probe 15% below its run's reference, an interval of the
# median wider than ±5%. Those carried no information about reruns on the shared VMs
# (issue 22: on a Zen 3, 29% of flagged and 27% of unflagged speedups disagreed; 75-77% of
# cases flagged), which is why a sweep no longer uses them. The spread of single calls
# (time_iqr) is recorded and shown but is no flag: cases with an IQR above 10% of the
# median repeated as often as the others (96% vs 93% on an AVX-512 Xeon VM).
REPEAT, SLOW_PROBE, WIDE_CI = 0.10, 0.15, 0.05
WIDE_PI = 0.10
REFERENCE_QUANTILE = 0.9


def reference_probe(values) -> float | None:
    """A run's reference compute probe: the 90th percentile of its readings (the best one
    alone is set by a lucky reading, and would call most of a run slow)."""
    xs = sorted(v for v in (_num(x) for x in values) if v)
    return float(np.quantile(xs, REFERENCE_QUANTILE)) if xs else None


def _dict(value) -> dict | None:
    """A nested field as a dict: as written, or as the JSON text a tidy table holds."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def quality_flags(rec: dict, reference: float | None = None) -> list[tuple[str, float]]:
    """Why a timed record deserves less trust, each reason with its size (a relative
    deviation, to rank cases by); empty: nothing to say. `reference` is the reference
    compute probe of its run at its thread count (reference_probe()), used for records
    measured in one process only. The report lists what this flags."""
    med = _num(rec.get("time_median"))
    if rec.get("status") != "ok" or not med:
        return []
    flags = []
    rounds = _num(rec.get("process_rounds")) or 0
    if rounds >= 2:
        ratio = _dict(rec.get("group_ratio")) or {}
        width = _num(ratio.get("pi_halfwidth"))
        if width is not None and width > WIDE_PI:
            against = "the baseline" if ratio.get("reference") not in (None, "group") else "its group"
            flags.append((f"prediction interval ±{width:.0%} of its ratio to {against}", width))
        modes = _dict(rec.get("bimodal"))
        low, high = (_num(modes.get(k)) for k in ("low", "high")) if modes else (None, None)
        if low and high:
            n = modes.get("rounds") or ["?", "?"]
            flags.append((f"bimodal: rounds at {low * 1e3:.3g} ms ({n[0]}) and {high * 1e3:.3g} ms ({n[1]})",
                          high / low - 1))
    else:
        rep = _num(rec.get("time_repeat_median"))
        if rep is not None and abs(rep / med - 1) > REPEAT:
            flags.append((f"repeat {rep / med:.2f}x", abs(rep / med - 1)))
        probe = _num(rec.get("probe_gflops"))
        if probe is not None and reference and probe < (1 - SLOW_PROBE) * reference:
            flags.append((f"compute probe {1 - probe / reference:.0%} below its run's reference",
                          1 - probe / reference))
        low, high = _num(rec.get("time_ci95_low")), _num(rec.get("time_ci95_high"))
        if low is not None and high is not None:
            reach = max(med - low, high - med) / med
            if reach > WIDE_CI:
                flags.append((f"95% interval ±{reach:.1%} of the median", reach))
    if rec.get("throttled") in (True, np.True_):
        clock = _num(rec.get("sm_clock_mhz_min"))
        flags.append(("GPU throttled" + (f" (SM clock down to {clock:.0f} MHz)" if clock else ""), SLOW_PROBE))
    return flags


# ---------------------------------------------------------------------------- raw samples
# Per-call times are kept for the statistics that need them (the regression gate's
# Mann-Whitney test), compactly: the log of each time over the fastest, in steps of 0.1%
# (finer than a timer resolves a microsecond call), as 16-bit integers, compressed. A case
# with more than MAX_SAMPLES calls keeps a seeded random subset of them, in order.
_CODEC = "log-step-u16-zlib-base64"
_OLD_CODEC = "float32-zlib-base64"  # the first codec; still read
SAMPLE_STEP = 1e-3
MAX_SAMPLES = 2000


def encode_samples(seconds, max_kept: int = MAX_SAMPLES) -> dict:
    xs = [max(float(t), 1e-12) for t in seconds]
    n = len(xs)
    if n > max_kept:
        keep = sorted(random.Random(0).sample(range(n), max_kept))
        xs = [xs[i] for i in keep]
    base = min(xs) if xs else 1.0
    steps = np.rint(np.log(np.asarray(xs, dtype=float) / base) / math.log1p(SAMPLE_STEP))
    data = np.clip(steps, 0, 65535).astype("<u2").tobytes()
    return {"codec": _CODEC, "n": n, "kept": len(xs), "base": base, "step": SAMPLE_STEP,
            "data": base64.b64encode(zlib.compress(data, 9)).decode("ascii")}


def decode_samples(value) -> list[float] | None:
    """The per-call times of `time_samples` (also a plain list), or None."""
    if value is None:
        return None
    if isinstance(value, list):
        return [float(v) for v in value]
    codec = value.get("codec") if isinstance(value, dict) else None
    if codec not in (_CODEC, _OLD_CODEC):
        raise ValueError(f"time_samples: expected a {_CODEC} dict or a list, got {str(value)[:80]}")
    raw = zlib.decompress(base64.b64decode(value["data"]))
    if codec == _OLD_CODEC:
        return np.frombuffer(raw, dtype="<f4").astype(float).tolist()
    steps = np.frombuffer(raw, dtype="<u2").astype(float)
    return (value["base"] * np.power(1.0 + value["step"], steps)).tolist()


# ---------------------------------------------------------------------------- derived metrics
def _levels(levels) -> list[dict]:
    if isinstance(levels, str):
        try:
            levels = json.loads(levels)
        except ValueError:
            return []
    if not isinstance(levels, list):
        return []
    return [lv for lv in levels if isinstance(lv, dict) and isinstance(lv.get("bytes"), (int, float))
            and isinstance(lv.get("gbps"), (int, float)) and lv["gbps"] > 0]


def best_copy_levels(measurements) -> list[dict]:
    """The best GB/s at each working set over several copy_levels lists (or their JSON text)."""
    best: dict[int, float] = {}
    for levels in measurements:
        for lv in _levels(levels):
            best[int(lv["bytes"])] = max(best.get(int(lv["bytes"]), 0.0), float(lv["gbps"]))
    return [{"bytes": b, "gbps": best[b]} for b in sorted(best)]


def copy_level(levels, nbytes) -> dict | None:
    """The copy level a case that moves `nbytes` is held to: the largest measured working
    set not above it (a copy of as many bytes runs at most as fast: its data fits the same
    caches or smaller ones), or the smallest one when it is below all of them; None without
    levels or bytes."""
    levels = sorted(_levels(levels), key=lambda lv: lv["bytes"])
    try:
        size = float(nbytes)
    except (TypeError, ValueError):
        return None
    if not levels or not math.isfinite(size) or size <= 0:
        return None
    within = [lv for lv in levels if lv["bytes"] <= size]
    return within[-1] if within else levels[0]


def copy_ceiling(levels, nbytes) -> float | None:
    """The bandwidth ceiling (GB/s) of a case that moves `nbytes`: its copy_level's rate."""
    level = copy_level(levels, nbytes)
    return None if level is None else float(level["gbps"])



# CPU vendors as bench.machine.cpu_vendor names them, for records older than that field:
# found in the CPU's model name instead ("AMD EPYC" -> amd)
CPU_VENDORS = ("amd", "intel", "hygon", "centaur")


def cpu_kind(isa, vendor, family_model, model=None) -> str | None:
    """The kind of a CPU, as a results file's name carries it: instruction set, vendor and
    family-model, e.g. avx2-amd-25-1 or avx512-intel-6-143 (two machines of one instruction
    set, an AVX-512 Zen 4 and an AVX-512 Xeon, are of different kinds). From a record's
    machine fields; the vendor, when the record predates it, from the CPU's model name.
    None without an instruction set and a family-model: such a CPU matches no other."""
    def text(value):
        return value if isinstance(value, str) and value else None

    isa, vendor, family_model, model = map(text, (isa, vendor, family_model, model))
    if not (isa and family_model):
        return None
    if vendor is None and model:
        vendor = next((v for v in CPU_VENDORS if v in model.lower()), None)
    return "-".join(p for p in (isa, vendor, family_model.replace("/", "-")) if p)


def rates(flops, nbytes, seconds, copy_gbps=None, sgemm_gflops=None) -> dict:
    """GFLOP/s, GB/s, intensity (FLOPs per byte), the roofline's GFLOP/s at that intensity
    (min of sgemm and intensity x copy bandwidth) and the fraction of it reached. Works on
    numbers (None for what cannot be computed) and on numpy arrays or pandas Series
    (NaN)."""
    vector = not all(v is None or np.isscalar(v) for v in (flops, nbytes, seconds, copy_gbps, sgemm_gflops))

    def num(v):
        if vector:
            return np.asarray(v if v is not None else np.nan, dtype=float)
        return float("nan") if v is None else float(v)

    f, b, t, copy, sgemm = map(num, (flops, nbytes, seconds, copy_gbps, sgemm_gflops))
    with np.errstate(divide="ignore", invalid="ignore"):
        gflops = f / t / 1e9
        gbps = b / t / 1e9
        intensity = f / b
        roof = np.minimum(sgemm, intensity * copy)
        fraction = gflops / roof
    out = {"gflops": gflops, "gbps": gbps, "intensity": intensity, "roofline_gflops": roof,
           "roofline_fraction": fraction}
    if not vector:
        out = {k: (float(v) if math.isfinite(v) and v > 0 else None) for k, v in out.items()}
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)  # torch.dtype, torch.device, paths: their printed form


def markdown_table() -> str:
    """The field table of docs/DESIGN.md, generated from `Record`."""
    lines = ["| field | type | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Record):
        kind = f.type.replace(" | None", "")
        lines.append(f"| `{f.name}` | {kind} | {f.metadata['doc']} |")
    return "\n".join(lines)


MARKERS = ("<!-- schema-table -->", "<!-- /schema-table -->")


def with_table(doc: str) -> str:
    """`doc` with the text between MARKERS replaced by the current field table."""
    start, end = doc.index(MARKERS[0]) + len(MARKERS[0]), doc.index(MARKERS[1])
    return doc[:start] + "\n" + markdown_table() + "\n" + doc[end:]


if __name__ == "__main__":
    # python -m bench.schema              prints the table
    # python -m bench.schema FILE        rewrites the table between the markers of a Markdown FILE
    if len(sys.argv) > 1:
        from pathlib import Path

        path = Path(sys.argv[1])
        path.write_text(with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(markdown_table() + "\n")
