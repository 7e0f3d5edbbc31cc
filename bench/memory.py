"""Peak memory of one call, and the allocation counter behind the CPU figure.

GPU: torch's peak allocated bytes since a reset (the CuPy implementations route CuPy's
allocations through torch's allocator, so they count).

CPU, two figures. `peak_bytes`, where the process runs with the counter
(bench/malloc_count.c in LD_PRELOAD: `preload_env`, or `python -m bench.memory run -- CMD`),
is the allocator's own count of bytes in use (the size asked for of every live block,
rounded up to 8 bytes, without the slack glibc adds as its heap happens to lie): its peak
over one call minus what was in use just before. `peak_rss_bytes` is the rise of the
process's resident high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs)
over its resident size before the call, after giving glibc's free heap back to the OS,
with transparent huge pages off and buffers mmapped for the call. The resident figure is
what the OS pays, but for oneDNN/ATen it moved in whole 1 MiB steps between processes
(glibc reusing free chunks that were or were not resident: `torch` train on
(128,128,16,3) read 7.13, 8.14 or 9.14 MiB), which asv reported as changes between
identical commits; the allocator's count does not depend on residency, so it repeats.
Without the counter `peak_bytes` is the resident figure. Memory mapped without malloc
(pymalloc's arenas, a library's own mmap) is in the resident figure only. asv's own
peakmem_ cannot reset between calls and cannot see the GPU, which is why this exists.

`python -m bench.memory run -- CMD [ARGS...]` runs CMD with the counter preloaded (asv passes
its environment on to its benchmark processes: `python -m bench.memory run -- asv continuous
main~1 main`); `python -m bench.memory path` prints the built library's path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

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


def peak(bench, calls: int = PEAK_CALLS) -> dict:
    """Extra memory one call needs at its peak (each figure the median over `calls` calls,
    each measured alone): {"peak_bytes", "peak_method", "peak_rss_bytes"}. On the CPU with
    the counter loaded, peak_bytes is malloc's bytes in use and peak_rss_bytes the VmHWM
    rise; without it both are the VmHWM rise. On a GPU, torch's allocator, no resident figure."""
    suffix = f", median of {calls} calls" if calls > 1 else ""
    if bench.case.device == "cuda":
        value, method = _median(_one_peak, bench, calls)
        return {"peak_bytes": value, "peak_method": method + (suffix if value is not None else ""),
                "peak_rss_bytes": None}
    rss, rss_method = _median(_one_peak, bench, calls)
    if rss is not None:
        rss_method += suffix
    counter = _counter()
    if counter is None:
        return {"peak_bytes": rss, "peak_method": rss_method, "peak_rss_bytes": rss}
    # Measured in the timed calls' allocator state (not the VmHWM calls' mmap threshold,
    # which rounds every large block to pages): what the timed call holds at once.
    fix_allocator()
    value, method = _median(_one_counted_peak, bench, calls, counter)
    return {"peak_bytes": value, "peak_method": method + suffix, "peak_rss_bytes": rss}


def peak_bytes(bench, calls: int = PEAK_CALLS) -> tuple[int | None, str]:
    """(peak_bytes, peak_method) of `peak`, for the callers that want only the one figure."""
    out = peak(bench, calls)
    return out["peak_bytes"], out["peak_method"]


def _median(one, bench, calls: int, *args) -> tuple[int | None, str]:
    readings = []
    for _ in range(calls):
        value, method = one(bench, *args)
        if value is None:
            return None, method
        readings.append(value)
    return statistics.median_low(readings), method


def _one_counted_peak(bench, counter) -> tuple[int, str]:
    """malloc's peak bytes in use over one call, less what was in use just before it:
    counting is switched on for the call alone (timed calls run with it off)."""
    counter.fcmem_arm(1)
    try:
        bench.call()
        peak = counter.fcmem_peak()
    finally:
        counter.fcmem_arm(0)
    return max(0, peak), "malloc bytes in use (LD_PRELOAD counter), peak over one call"


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
        import torch  # here, not at import: the launcher below needs no torch

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


# ---------------------------------------------------------------- the allocation counter
SOURCE = Path(__file__).with_name("malloc_count.c")
CFLAGS = ("-O2", "-shared", "-fPIC", "-Wall", "-Wextra")
_COUNTER = None  # the counter's functions in this process, False where it is not loaded


def _counter():
    """The preloaded counter's functions (ctypes), or None where this process runs without it.
    Looked up in the process's global scope, where LD_PRELOAD put it; once: a library cannot
    be preloaded after the start, and a forked child (asv's forkserver) keeps its parent's."""
    global _COUNTER
    if _COUNTER is None:
        try:
            lib = ctypes.CDLL(None)
            active = lib.fcmem_active
            for name in ("fcmem_current", "fcmem_peak"):
                getattr(lib, name).restype = ctypes.c_longlong
            lib.fcmem_reset_peak.restype = None
            lib.fcmem_arm.restype = None
            _COUNTER = lib if active() == 1 else False
            if _COUNTER:  # off until a peak is measured: timed calls pay one load per malloc
                lib.fcmem_arm(0)
        except (OSError, AttributeError):
            _COUNTER = False
    return _COUNTER or None


def counting() -> bool:
    """Whether this process runs with the allocation counter loaded."""
    return _counter() is not None


def _cache_dir() -> Path:
    env = os.environ.get("FLATCONV_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "flatconv"


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        return False


def counting_library() -> tuple[str | None, str | None]:
    """(path of the counter's shared library, None), built on first use into the cache
    folder (FLATCONV_CACHE_DIR, else ~/.cache/flatconv) under a name hashed from the source
    and the flags; or (None, why not) where there is no glibc, no compiler, or the build
    fails. Never raises."""
    try:
        if not _glibc():
            return None, "the allocation counter needs glibc on Linux"
        key = hashlib.sha256(SOURCE.read_bytes() + "\0".join(CFLAGS).encode()).hexdigest()[:16]
        folder = _cache_dir()
        target = folder / f"malloc_count-{key}.so"
        if target.is_file():
            return str(target), None
        compiler = shutil.which("gcc") or shutil.which("cc")
        if compiler is None:
            return None, "no C compiler (gcc or cc) on PATH to build the allocation counter"
        folder.mkdir(parents=True, exist_ok=True)
        # Compiled to a name of its own, then renamed: a process that finds the target never
        # finds half of it, and two building at once each rename a whole library.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".malloc_count-", suffix=".so.tmp")
        os.close(fd)
        try:
            done = subprocess.run([compiler, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                                  timeout=120)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                said = next((x for x in lines if "error" in x), lines[0] if lines else f"exit status {done.returncode}")
                return None, f"building the allocation counter failed: {said}"
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return str(target), None
    except Exception as e:  # noqa: BLE001 - no home folder, a read-only cache...: runs go on without it
        return None, f"building the allocation counter failed: {type(e).__name__}: {e}"


def _with_library(env: dict, path: str) -> dict:
    out = dict(env)
    present = out.get("LD_PRELOAD", "").replace(" ", ":").split(":")
    if path not in present:
        out["LD_PRELOAD"] = ":".join([p for p in present if p] + [path])
    return out


def preload_env(env: dict) -> dict:
    """A copy of `env` with the counter appended to LD_PRELOAD (unchanged where it cannot be
    built): the environment to start a process whose CPU peaks are malloc's count."""
    path, _ = counting_library()
    return _with_library(env, path) if path else dict(env)


USAGE = "usage: python -m bench.memory run -- CMD [ARGS...] | python -m bench.memory path"


def main(argv: list[str] | None = None) -> int:
    """`run -- CMD [ARGS...]`: exec CMD with the counter preloaded; `path`: print the
    library's path. A mistake is one line on stderr and exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def fail(message: str) -> int:
        print(f"bench.memory: {message}", file=sys.stderr)
        return 2

    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not argv or argv[0] not in ("run", "path"):
        return fail(f"expected `run -- CMD [ARGS...]` or `path`, got {' '.join(argv) or 'nothing'} ({USAGE})")
    command, rest = argv[0], argv[1:]
    if command == "path" and rest:
        return fail(f"path takes no arguments, got {' '.join(rest)}")
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if command == "run" and not rest:
        return fail(f"run: no command to run ({USAGE})")
    path, reason = counting_library()
    if path is None:
        return fail(reason)
    if command == "path":
        print(path)
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(rest[0], rest, _with_library(os.environ, path))
    except OSError as e:
        return fail(f"cannot run {rest[0]}: {e.strerror or e}")
    return 0  # not reached: exec replaced the process


if __name__ == "__main__":
    sys.exit(main())
