"""Peak memory of one call.

GPU: torch's peak allocated bytes since a reset (the CuPy implementations route CuPy's
allocations through torch's allocator, so they count). CPU: the rise of the process's
resident high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs) over its
resident size before the call, after giving glibc's free heap back to the OS, with
transparent huge pages off for the call. asv's own
peakmem_ cannot reset between calls and cannot see the GPU, which is why this exists.
"""

from __future__ import annotations

import ctypes
import os
import statistics

import torch

_LIBC = None


def _libc():
    """The C library, loaded once; OSError where there is no glibc."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL("libc.so.6")
    return _LIBC


def _malloc_trim() -> None:
    """Give glibc's free heap pages back to the OS, so the high-water mark that follows
    counts every page the call touches (a warm heap would hide them)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


# glibc's allocator fixed as tox.ini's GLIBC_TUNABLES fixes it (docs/DESIGN.md, "Measured
# pitfalls"): without it the mmap threshold moves with what was freed before, each output
# of a small layer costs fresh page faults or not, and CPU times vary 3-6x. asv, a plain
# `python -m bench` or pytest run without the variable get the same state by mallopt.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 256 << 20
ALLOCATOR: str | None = None  # how the allocator was fixed, once fix_allocator() ran


def _tunable(name: str) -> str | None:
    """The value GLIBC_TUNABLES gives glibc.malloc.<name>, or None where it gives none."""
    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        key, _, value = item.partition("=")
        if key == f"glibc.malloc.{name}":
            return value
    return None


def fix_allocator() -> str:
    """Fix glibc's mmap and trim thresholds for this process (once), unless GLIBC_TUNABLES
    already set them; says how they are set."""
    global ALLOCATOR
    if ALLOCATOR is None:
        if _tunable("mmap_threshold") is not None:
            ALLOCATOR = f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}"
        else:
            try:
                ok = (_libc().mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                      and _libc().mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
            except (OSError, AttributeError):
                ok = False
            ALLOCATOR = (f"mallopt mmap_threshold={MMAP_THRESHOLD} trim_threshold={TRIM_THRESHOLD}" if ok
                         else "default (mallopt unavailable)")
    return ALLOCATOR


_PR_SET_THP_DISABLE, _PR_GET_THP_DISABLE = 41, 42


def _thp_disabled(disabled: bool | None = None) -> bool | None:
    """Whether transparent huge pages are off for this process's new page faults, after
    setting it when `disabled` is given; None where prctl refuses (not Linux, or too old
    a kernel). With them, resident memory grows in 2 MiB steps and the same call's peak
    read 14, 16 or 18 MiB from one process to the next; off while the peak call runs, it
    grows by 4 KiB pages."""
    try:
        if disabled is not None and _libc().prctl(_PR_SET_THP_DISABLE, int(disabled), 0, 0, 0) != 0:
            return None
        state = _libc().prctl(_PR_GET_THP_DISABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        return None
    return None if state < 0 else bool(state)


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# Readings per figure: one call's CPU peak moves by up to a fifth from call to call in one
# process (the unfused openmp train step of (64,64,32,3): 10.5 or 12.9 MB, as glibc reuses
# or does not reuse a freed block); the median of five does not.
PEAK_CALLS = 5


def peak_bytes(bench, calls: int = PEAK_CALLS) -> tuple[int | None, str]:
    """Extra memory one call needs at its peak (the median over `calls` calls, each
    measured alone), and how it was measured."""
    readings = []
    for _ in range(calls):
        value, method = _one_peak(bench)
        if value is None:
            return None, method
        readings.append(value)
    return statistics.median_low(readings), method + (f", median of {calls} calls" if calls > 1 else "")


# The mmap threshold while the peak call runs: every buffer of 64 KiB or more gets fresh
# pages of its own (and gives them back when freed), so the high-water mark counts what
# the call has live at once, whatever the heap held before. With the timing threshold
# (32 MiB) a 1 MiB output came from already resident heap pages in one process and from
# new ones in the next: asv reported 0.72x-1.15x "changes" of exactly 1 MiB between two
# commits with identical code.
PEAK_MMAP_THRESHOLD = 64 << 10


def _mmap_threshold(value: int) -> bool:
    try:
        return _libc().mallopt(_M_MMAP_THRESHOLD, value) == 1
    except (OSError, AttributeError):
        return False


def _timing_mmap_threshold() -> int:
    """The mmap threshold the process runs its timed calls with (fix_allocator's)."""
    value = _tunable("mmap_threshold")
    return int(value) if value is not None and value.isdigit() else MMAP_THRESHOLD


def _one_peak(bench) -> tuple[int | None, str]:
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
    was_off = _thp_disabled()
    small_pages = bool(_thp_disabled(True))
    fix_allocator()
    own_pages = _mmap_threshold(PEAK_MMAP_THRESHOLD)
    try:
        before = _proc_status_kb("VmRSS")
        bench.call()
        hwm = _proc_status_kb("VmHWM")
    finally:
        if own_pages:
            _mmap_threshold(_timing_mmap_threshold())
        if small_pages and was_off is False:  # as it was before
            _thp_disabled(False)
    if before is None or hwm is None:
        return None, "unavailable: no VmHWM in /proc/self/status"
    return max(0, hwm - before) * 1024, ("VmHWM rise after clear_refs" + (", 4 KiB pages" if small_pages else "")
                                         + (", buffers mmapped" if own_pages else ""))
