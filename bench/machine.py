"""Machine metadata and measured ceilings.

psutil describes the CPU and memory, pynvml (from the nvidia-ml-py distribution) the GPU;
the ceilings are measured here, not taken from datasheets: copy bandwidth (bytes read +
written by a large tensor copy) and the best large-GEMM rate of every GEMM the machine
offers (torch's sgemm, and on the CPU the C extension's own GEMM: on a 2-core Zen 3 VM one
run's sgemm measured 78-121 GFLOP/s while the extension's fused forward, mostly a GEMM,
ran faster). A shared machine has slow stretches, so a run measures its
ceilings several times (`CeilingLog`: at its start and then every couple of minutes, at
the thread count of the case about to run) and every record carries all of them; the
roofline uses the best. Beside them, the instruction set's FMA peak (`fma_peak_gflops`),
an estimate from the reported clock, not a measurement.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import socket
import subprocess
import time

import torch

from . import memory, schema

# Environment settings that change CPU timings (docs/DESIGN.md, "Measured pitfalls"), recorded as found.
RECORDED_ENV = ("GLIBC_TUNABLES", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "MKL_NUM_THREADS",
                "KMP_AFFINITY", "CUDA_VISIBLE_DEVICES")


def _cpuinfo(*keys: str) -> dict:
    """The first value of each of `keys` in /proc/cpuinfo (absent keys left out)."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in keys and key not in fields:
                    fields[key] = line.split(":", 1)[1].strip()
                if len(fields) == len(keys):
                    break
    except OSError:
        pass
    return fields


def _cpu_model() -> str:
    return _cpuinfo("model name").get("model name") or platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest vector instruction set the CPU reports: avx512, avx2, avx, sse or the
    architecture's name. Results of different instruction sets are never compared."""
    info = _cpuinfo("flags", "Features")  # x86's and Arm's names
    flags = (info.get("flags") or info.get("Features") or "").split()
    for flag, name in (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse"), ("asimd", "neon")):
        if flag in flags:
            return name
    return platform.machine()


def cpu_family_model() -> str | None:
    """x86's "family/model" of the CPU (e.g. 25/1, Zen 3), which the model name ("AMD EPYC"
    on a VM) often hides: two machines of one instruction set can differ 3x per core."""
    fields = _cpuinfo("cpu family", "model")
    return f"{fields['cpu family']}/{fields['model']}" if len(fields) == 2 else None


_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "hygon", "CentaurHauls": "centaur"}


def cpu_vendor() -> str | None:
    """The CPU's vendor (intel, amd, ...), from x86's vendor id; None where it has none."""
    vendor = _cpuinfo("vendor_id").get("vendor_id")
    return _VENDORS.get(vendor, vendor.lower()) if vendor else None


def cpu_tag(meta: dict) -> str:
    """A file-name tag for the kind of CPU that `meta` (metadata()) describes
    (schema.cpu_kind: avx512-intel-6-143, avx2-amd-25-1); where the CPU tells no
    family-model (not x86), its instruction set and vendor."""
    return (schema.cpu_kind(meta.get("cpu_isa"), meta.get("cpu_vendor"), meta.get("cpu_family_model"))
            or "-".join(p for p in (meta.get("cpu_isa"), meta.get("cpu_vendor")) if p) or "unknown")


def _compiler() -> str | None:
    try:
        out = subprocess.run(["cc", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.SubprocessError):
        return None


def _gpu_info(nvml=None) -> dict:
    """GPU name, driver, memory, clocks and power limit through NVML; empty where there is
    no GPU. Each query is guarded on its own: one that raises (a field this GPU or driver
    does not report) drops its own field, named in `gpu_error`, and keeps the others.
    `nvml`: the pynvml module, or a stand-in for tests."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return {"gpu_error": "pynvml (nvidia-ml-py) is not installed"}
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError, or a library that does not load
        return {"gpu_error": f"NVML unavailable: {e}"}
    failed: list[str] = []

    def ask(field: str, query, *args):
        try:
            return query(*args)
        except Exception as e:  # NVMLError_NotSupported and kin: this field only
            failed.append(f"{field}: {e}")
            return None

    try:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        h = ask("handle", nvml.nvmlDeviceGetHandleByIndex, index)
        if h is None:
            return {"gpu_error": f"NVML query failed: {'; '.join(failed)}"}
        mem = ask("gpu_memory_bytes", nvml.nvmlDeviceGetMemoryInfo, h)
        power = ask("gpu_power_limit_w", nvml.nvmlDeviceGetEnforcedPowerLimit, h)
        clocks = {}
        for key, query, which in (("sm_mhz", "nvmlDeviceGetClockInfo", "NVML_CLOCK_SM"),
                                  ("mem_mhz", "nvmlDeviceGetClockInfo", "NVML_CLOCK_MEM"),
                                  ("sm_max_mhz", "nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_SM"),
                                  ("mem_max_mhz", "nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_MEM")):
            value = ask(f"gpu_clocks.{key}", lambda q=query, w=which: getattr(nvml, q)(h, getattr(nvml, w)))
            if value is not None:
                clocks[key] = value
        info = {
            "gpu_name": ask("gpu_name", nvml.nvmlDeviceGetName, h),
            "gpu_driver": ask("gpu_driver", nvml.nvmlSystemGetDriverVersion),
            "gpu_memory_bytes": int(mem.total) if mem is not None else None,
            "gpu_clocks": clocks or None,
            "gpu_power_limit_w": power / 1000 if power is not None else None,
        }
        if failed:
            info["gpu_error"] = f"NVML query failed: {'; '.join(failed)}"
        return info
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _cupy_version() -> str | None:
    try:
        import cupy

        return cupy.__version__
    except Exception:  # noqa: BLE001 - an absent or broken CuPy is only recorded
        return None


@functools.lru_cache(maxsize=None)
def metadata() -> dict:
    """Static description of this machine and software (no measurements)."""
    import psutil

    freq = psutil.cpu_freq()
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_family_model": cpu_family_model(),
        "cpu_vendor": cpu_vendor(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_freq_mhz": round(freq.max or freq.current) if freq else None,
        "memory_bytes": psutil.virtual_memory().total,
        "torch_version": torch.__version__,
        "torch_parallel": torch.__config__.parallel_info().splitlines()[-1].strip(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cupy_version": _cupy_version(),
        "compiler": _compiler(),
        "env": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ},
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "malloc": memory.fix_allocator(),
    }
    if torch.cuda.is_available():
        info.update(_gpu_info())
        info["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return info


def _median_seconds(fn, device: str, repeats: int = 7) -> float:
    return sorted(_seconds(fn, device, repeats))[repeats // 2]


def _seconds(fn, device: str, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` (CUDA events on a GPU)."""
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


# Calls per GEMM; the ceiling is the fastest. On the shared 2-core Zen 3 VM, in 12 rounds of
# 8 calls of each GEMM, 8 rounds (torch) and 7 (openmp) had a call 10% or more below the
# round's fastest, and a round's median call ran up to a third below it.
GEMM_REPEATS = 8


def _torch_gemm(device: str) -> dict:
    # 1536^3 on the CPU reaches the rate of 2048^3 within a few percent, in half the time
    n = 8192 if device == "cuda" else 1536
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = min(_seconds(lambda: a @ b, device, GEMM_REPEATS))
    return {"sgemm_source": f"torch.mm {n}^3", "sgemm_gflops": 2 * n**3 / best / 1e9}


# The C extension's GEMM: the lateral stage of a 1x1 layer is an N x C by C x (B*H*W) GEMM.
OPENMP_GEMM = {"channels": 512, "batch": 8, "size": 32}


def _openmp_gemm() -> dict | None:
    """The rate of the C extension's lateral GEMM (512 x 512 x 8192, at torch's thread
    count), or None when the extension is unavailable. Its FLOPs are counted as the
    records count that stage's (impls.shapes: the bias add included, 0.1% of them)."""
    import impls
    from impls.shapes import LayerShape

    impl = impls.get("openmp")
    if impl.unavailable_reason("cpu") is not None:
        return None
    c, b, s = OPENMP_GEMM["channels"], OPENMP_GEMM["batch"], OPENMP_GEMM["size"]
    source = f"openmp lateral GEMM {c}x{c}x{b * s * s}"
    threads_before = impl.runtime_info().get("threads")
    impl.set_num_threads(torch.get_num_threads())  # the extension keeps its own OpenMP count
    try:
        # stages() runs each kernel once on its buffers: that is the warm-up
        lateral = impl.stages(torch.randn(b, c, s, s), impl.prepare(impls.FlatParams.random(c, c, 1)), 0)["lateral"]
        best = min(_seconds(lateral, "cpu", GEMM_REPEATS))
    except Exception as e:  # noqa: BLE001 - a ceiling that fails must not end the sweep; torch's still counts
        return {"sgemm_source": source, "sgemm_gflops": None, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    finally:
        if threads_before:
            impl.set_num_threads(threads_before)
    flops = LayerShape(b, c, c, s, s, 1, 0).stage_flops("lateral")
    return {"sgemm_source": source, "sgemm_gflops": flops / best / 1e9}


# Bytes moved (read + written) by the copies that give the bandwidth ceilings: working
# sets that fit the caches and one that does not. A flattened stage moving 2-8 MiB ran at
# up to 2.65x the DRAM copy rate on the Zen 3 VM (its data stays in L3 between calls), so
# one DRAM figure is no ceiling for it (the cache-aware roofline, Ilic et al. 2014).
COPY_LEVELS = {"cpu": (1 << 20, 1 << 22, 1 << 24), "cuda": (1 << 23, 1 << 25)}


def _copy_gbps(moved: int, device: str) -> float:
    """GB/s (read + written) of copying moved / 2 bytes of float32, the median of 7 timed
    samples, each enough copies to take about a millisecond."""
    src = torch.randn(moved // 8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    per_sample = max(1, (1 << 25) // moved)

    def copies():
        for _ in range(per_sample):
            dst.copy_(src)

    return moved * per_sample / _median_seconds(copies, device) / 1e9


def ceilings(device: str) -> dict:
    """Measured copy bandwidth (GB/s, read + written) and large-GEMM rate (GFLOP/s) of
    `device` at the threads in force. `copy_gbps` is a copy far larger than the caches
    (DRAM); `copy_levels` the copies of COPY_LEVELS' sizes and that one, [{bytes, gbps}].
    `sgemm_gflops` is the best of every GEMM measured (`gemms`, each the fastest of
    GEMM_REPEATS calls): torch's sgemm, and on the CPU the C extension's GEMM when it is
    available; `sgemm_source` names the one that won. On the 2-core Zen 3 VM: about 2 s
    while other processes share it, 1 s when it is quiet (torch's sgemm alone, the median
    of 5 calls, took 1.1 s and 0.6 s)."""
    big = 2 * 4 * (1 << 26 if device == "cuda" else 1 << 24)  # bytes moved: 512 MB / 128 MB
    levels = [{"bytes": moved, "gbps": _copy_gbps(moved, device)} for moved in (*COPY_LEVELS.get(device, ()), big)]
    gemms = [_torch_gemm(device)]
    if device == "cpu":
        gemms.append(_openmp_gemm())
    gemms = [g for g in gemms if g is not None]
    best = max((g for g in gemms if g["sgemm_gflops"] is not None), key=lambda g: g["sgemm_gflops"])
    return {
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "copy_gbps": levels[-1]["gbps"],
        "copy_levels": levels,
        "sgemm_gflops": best["sgemm_gflops"],
        "sgemm_source": best["sgemm_source"],
        "gemms": gemms,
        "copy_bytes": big,
    }


# float32 lanes of the widest vector instruction set (cpu_isa's names)
FMA_LANES = {"avx512": 16, "avx2": 8, "avx": 8, "sse": 4, "neon": 4}


def fma_units(isa: str | None, vendor: str | None = None, family_model: str | None = None) -> int:
    """FMA pipes per core at the width of `isa`: two on Zen 2, Zen 3 and Intel's cores since
    Haswell (AVX-512 Xeons with one 512-bit unit reach half of the estimate), one where the
    core splits the widest vector in two halves: Zen 4 (a 512-bit FMA on its two 256-bit
    pipes) and Zen/Zen+ (256-bit on two 128-bit pipes). AVX without FMA (Sandy Bridge)
    has one multiply and one add port: one unit's two FLOPs per lane."""
    try:
        family, model = (int(v) for v in family_model.split("/"))
    except (AttributeError, ValueError):
        family, model = None, None
    if vendor in ("amd", "hygon") and ((family == 25 and isa == "avx512") or (family == 23 and model < 0x30)):
        return 1
    return 1 if isa == "avx" else 2


def fma_peak_gflops(isa: str | None, cores: int, ghz: float, units: int | None = None) -> float | None:
    """The instruction set's float32 FMA peak: cores x GHz x FMA units x lanes x 2 (an FMA
    is two FLOPs); None for an instruction set without a known width. An estimate from a
    clock, not a measurement: heavy vector code may run below the clock given, and a VM
    that reports its nominal clock runs above it (the 2-core Zen 3 VM reports 2.45 GHz, a
    157 GFLOP/s peak, and its GEMMs reached 170 GFLOP/s)."""
    lanes = FMA_LANES.get(isa or "")
    if lanes is None or not cores or not ghz:
        return None
    return cores * ghz * (fma_units(isa) if units is None else units) * lanes * 2


@functools.lru_cache(maxsize=None)
def cpu_clock() -> tuple[float, str] | None:
    """(GHz, where it was read) of the CPU: psutil's maximum frequency (cpufreq), else
    /proc/cpuinfo's "cpu MHz", else x86's BogoMIPS / 2 (twice the timestamp clock); None
    when none is reported. A VM often has no cpufreq and reports the nominal clock."""
    try:
        import psutil

        freq = psutil.cpu_freq()
    except (ImportError, OSError, RuntimeError, NotImplementedError):
        freq = None
    if freq and freq.max:
        return freq.max / 1e3, "psutil max"
    info = _cpuinfo("cpu MHz", "bogomips")  # Arm's "BogoMIPS" is its timer's, not the clock
    for key, scale, name in (("cpu MHz", 1e3, "cpu MHz"), ("bogomips", 2e3, "BogoMIPS/2")):
        try:
            if float(info[key]) > 0:
                return float(info[key]) / scale, name
        except (KeyError, ValueError):
            continue
    return None


def fma_peak(threads: int | None) -> dict:
    """The machine record's FMA peak at `threads` (every physical core when None; threads
    beyond the physical cores share their FMA units): `fma_peak_gflops` and the basis of
    the estimate, empty where the clock or the instruction set's width is unknown."""
    meta = metadata()
    clock = cpu_clock()
    cores = meta.get("cpu_cores_physical") or meta.get("cpu_cores_logical")
    if clock is None or not cores:
        return {}
    cores = min(cores, threads) if threads else cores
    isa = meta.get("cpu_isa")
    units = fma_units(isa, meta.get("cpu_vendor"), meta.get("cpu_family_model"))
    peak = fma_peak_gflops(isa, cores, clock[0], units)
    if peak is None:
        return {}
    basis = (f"{cores} cores x {clock[0]:.2f} GHz ({clock[1]}) x {units} FMA x {FMA_LANES[isa]} lanes x 2; "
             "an estimate from the reported clock, which on a VM may be the nominal one")
    return {"fma_peak_gflops": peak, "fma_peak_basis": basis}


class CeilingLog:
    """Every ceiling measurement of this run, per device and thread count. `update` measures
    when there is none yet for the pair, or the last one is `interval_s` old."""

    def __init__(self, interval_s: float = 120.0, measure=ceilings):
        self.interval_s, self._measure = interval_s, measure
        self.entries: dict[tuple[str, int], list[dict]] = {}
        self._last: dict[tuple[str, int], float] = {}

    def update(self, device: str, force: bool = False) -> None:
        key = (device, torch.get_num_threads())
        now = time.monotonic()
        if force or key not in self._last or now - self._last[key] >= self.interval_s:
            self.entries.setdefault(key, []).append(self._measure(device))
            self._last[key] = time.monotonic()

    def fields(self, device: str, threads: int | None = None) -> dict:
        """The machine record's ceiling fields: the best so far (with the GEMM it came from)
        and every measurement."""
        key = (device, torch.get_num_threads() if threads is None else threads)
        entries = self.entries.get(key, [])
        if not entries:
            return {}
        best = max(entries, key=lambda e: e["sgemm_gflops"])
        fields = {"copy_gbps": max(e["copy_gbps"] for e in entries), "sgemm_gflops": best["sgemm_gflops"]}
        levels = schema.best_copy_levels(e.get("copy_levels") for e in entries)
        if levels:
            fields["copy_levels"] = levels
        if best.get("sgemm_source"):
            fields["sgemm_source"] = best["sgemm_source"]
        return {**fields, "ceilings": list(entries)}


def record(device: str, threads: int | None, ceiling_log: CeilingLog | None, timer_overhead_s: float | None) -> dict:
    """The `machine` field of a record: the metadata, the run's ceilings for the case's
    device and threads (on the CPU with the FMA peak at those threads), and how busy the
    machine was when the case ran."""
    info = dict(metadata())
    if ceiling_log is not None:
        info.update(ceiling_log.fields(device, threads))
    if device == "cpu":
        info.update(fma_peak(threads if threads is not None else torch.get_num_threads()))
    info["torch_threads"] = torch.get_num_threads()
    info["threads"] = threads
    info["timer_overhead_s"] = timer_overhead_s
    info["load_avg_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return info
