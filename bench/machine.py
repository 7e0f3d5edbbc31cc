"""Machine metadata and measured ceilings.

psutil describes the CPU and memory, pynvml (from the nvidia-ml-py distribution) the GPU;
the ceilings are measured here, not taken from datasheets: copy bandwidth (bytes read +
written by a large tensor copy) and the framework's sgemm rate. A shared machine has slow
stretches, so a run measures its ceilings several times (`CeilingLog`: at its start and
then every couple of minutes, at the thread count of the case about to run) and every
record carries all of them; the roofline uses the run's best.
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

from . import memory

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
    """A file-name tag for the kind of CPU that `meta` (metadata()) describes: instruction
    set, vendor and family-model, e.g. avx512-intel-6-143 or avx2-amd-25-1. Two machines of
    one instruction set (an AVX-512 Zen 4 and an AVX-512 Xeon) get different tags, so their
    sweeps never overwrite each other."""
    family_model = meta.get("cpu_family_model")
    parts = [meta.get("cpu_isa"), meta.get("cpu_vendor"), family_model.replace("/", "-") if family_model else None]
    return "-".join(p for p in parts if p)


def _compiler() -> str | None:
    try:
        out = subprocess.run(["cc", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.SubprocessError):
        return None


def _gpu_info() -> dict:
    """GPU name, driver, memory and clocks through NVML; empty where there is no GPU."""
    try:
        import pynvml
    except ImportError:
        return {"gpu_error": "pynvml (nvidia-ml-py) is not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return {"gpu_error": f"NVML unavailable: {e}"}
    try:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        clock = pynvml.nvmlDeviceGetClockInfo
        maxclock = pynvml.nvmlDeviceGetMaxClockInfo
        return {
            "gpu_name": pynvml.nvmlDeviceGetName(h),
            "gpu_driver": pynvml.nvmlSystemGetDriverVersion(),
            "gpu_memory_bytes": int(mem.total),
            "gpu_clocks": {
                "sm_mhz": clock(h, pynvml.NVML_CLOCK_SM),
                "mem_mhz": clock(h, pynvml.NVML_CLOCK_MEM),
                "sm_max_mhz": maxclock(h, pynvml.NVML_CLOCK_SM),
                "mem_max_mhz": maxclock(h, pynvml.NVML_CLOCK_MEM),
            },
            "gpu_power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
        }
    except pynvml.NVMLError as e:
        return {"gpu_error": f"NVML query failed: {e}"}
    finally:
        pynvml.nvmlShutdown()


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
    return sorted(times)[len(times) // 2]


def ceilings(device: str) -> dict:
    """Measured copy bandwidth (GB/s, read + written) and sgemm rate (GFLOP/s) of `device`
    at the threads in force: about 1.5 s on the 2-core CPU machine."""
    big = 1 << 26 if device == "cuda" else 1 << 24  # 256 MB / 64 MB of float32
    src = torch.randn(big, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device)
    # 1536^3 on the CPU reaches the rate of 2048^3 within a few percent, in half the time
    n = 8192 if device == "cuda" else 1536
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    gemm_s = _median_seconds(lambda: a @ b, device, repeats=5)
    return {
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "copy_gbps": 2 * big * 4 / copy_s / 1e9,
        "sgemm_gflops": 2 * n**3 / gemm_s / 1e9,
        "sgemm_size": n,
        "copy_bytes": 2 * big * 4,
    }


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
        """The machine record's ceiling fields: the best so far and every measurement."""
        key = (device, torch.get_num_threads() if threads is None else threads)
        entries = self.entries.get(key, [])
        if not entries:
            return {}
        return {"copy_gbps": max(e["copy_gbps"] for e in entries),
                "sgemm_gflops": max(e["sgemm_gflops"] for e in entries), "ceilings": list(entries)}


def record(device: str, threads: int | None, ceiling_log: CeilingLog | None, timer_overhead_s: float | None) -> dict:
    """The `machine` field of a record: the metadata, the run's ceilings for the case's
    device and threads, and how busy the machine was when the case ran."""
    info = dict(metadata())
    if ceiling_log is not None:
        info.update(ceiling_log.fields(device, threads))
    info["torch_threads"] = torch.get_num_threads()
    info["threads"] = threads
    info["timer_overhead_s"] = timer_overhead_s
    info["load_avg_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return info
