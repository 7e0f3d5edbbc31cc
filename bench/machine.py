"""Machine metadata and measured ceilings, gathered once per process.

psutil describes the CPU and memory, pynvml (from the nvidia-ml-py distribution) the GPU;
the ceilings are measured here, not taken from datasheets: copy bandwidth (bytes read +
written by a large tensor copy) and the framework's sgemm rate.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import time

import torch

# Environment settings that change CPU timings (DESIGN.md section 4), recorded as found.
RECORDED_ENV = ("GLIBC_TUNABLES", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "MKL_NUM_THREADS",
                "KMP_AFFINITY", "CUDA_VISIBLE_DEVICES")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


@functools.lru_cache(maxsize=None)
def ceilings(device: str) -> dict:
    """Measured copy bandwidth (GB/s, read + write) and sgemm rate (GFLOP/s) of `device`,
    once per process: the roofline every result is compared with."""
    big = 1 << 26 if device == "cuda" else 1 << 24  # 256 MB / 64 MB of float32
    src = torch.randn(big, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device)
    n = 8192 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    gemm_s = _median_seconds(lambda: a @ b, device)
    return {
        "device": device,
        "copy_gbps": 2 * big * 4 / copy_s / 1e9,
        "sgemm_gflops": 2 * n**3 / gemm_s / 1e9,
        "sgemm_size": n,
        "copy_bytes": 2 * big * 4,
    }
