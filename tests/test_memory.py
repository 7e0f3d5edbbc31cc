"""The allocation counter (bench/malloc_count.c) and bench/memory.py's CPU peak: what the
counter counts (every allocation entry point, threads), that its figure repeats between
processes, the VmHWM fallback without it, and the launcher's answers to mistakes."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from bench import memory

REPO = Path(__file__).resolve().parents[1]
TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"  # tox.ini's


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder of this module's own, the counter built into it (skip where it cannot be)."""
    folder = tmp_path_factory.mktemp("flatconv-cache")
    saved = os.environ.get("FLATCONV_CACHE_DIR")
    os.environ["FLATCONV_CACHE_DIR"] = str(folder)
    try:
        path, why = memory.counting_library()
        if path is None:
            pytest.skip(why)
        yield folder
    finally:
        if saved is None:
            os.environ.pop("FLATCONV_CACHE_DIR", None)
        else:
            os.environ["FLATCONV_CACHE_DIR"] = saved


def _env(preload: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(GLIBC_TUNABLES=TUNABLES, PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return memory.preload_env(env) if preload else env


def _start(code: str, preload: bool = True) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=_env(preload),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _run(code: str, preload: bool = True):
    return _result(_start(code, preload))


# ---------------------------------------------------------------------------- the figure
def test_a_10_MB_buffer_counts_10_MB_and_a_call_that_allocates_nothing_about_0(cache):
    got = _run("""
        import json, types, torch
        from bench import memory

        def big():
            x = torch.empty(10_000_000 // 4)  # live until the call returns
            x.fill_(1.0)
            return float(x[0])

        bench = types.SimpleNamespace(case=types.SimpleNamespace(device="cpu"), call=big)
        filled = memory.peak(bench)
        bench.call = lambda: None
        print(json.dumps({"counting": memory.counting(), "big": filled, "nothing": memory.peak(bench)}))
    """)
    assert got["counting"]
    big, nothing = got["big"], got["nothing"]
    assert big["peak_method"] == "malloc bytes in use (LD_PRELOAD counter), peak over one call, median of 5 calls"
    assert abs(big["peak_bytes"] - 10_000_000) <= 0.01 * 10_000_000, big
    if big["peak_rss_bytes"] is not None:  # the resident figure beside it: the buffer was filled
        assert big["peak_rss_bytes"] >= 0.9 * 10_000_000, big
    assert 0 <= nothing["peak_bytes"] < 4096, nothing


def test_the_counted_peak_of_a_case_repeats_in_fresh_processes(cache):
    code = """
        import json
        from bench import cases, memory

        bench = cases.from_id("dense/cpu/smoke:c4-n6-s9-k3/float32/train").set_up(threads=2)
        print(json.dumps(memory.peak(bench)))
    """
    first, second = [_result(p) for p in [_start(code), _start(code)]]  # the two run at once
    assert first["peak_method"].startswith("malloc bytes in use"), first
    assert first["peak_bytes"] > 0 and first["peak_bytes"] == second["peak_bytes"], (first, second)


def test_without_the_counter_the_peak_is_the_resident_figure_and_says_so(monkeypatch):
    monkeypatch.setattr(memory, "_COUNTER", False)  # as in a process started without it
    assert not memory.counting()
    big = 64 << 20
    bench = types.SimpleNamespace(case=types.SimpleNamespace(device="cpu"),
                                  call=lambda: bytearray(b"\1") * big)  # touches 64 MB
    got = memory.peak(bench)
    if got["peak_bytes"] is None:
        pytest.skip(got["peak_method"])
    assert got["peak_method"].startswith("VmHWM rise") and got["peak_method"].endswith("median of 5 calls"), got
    assert got["peak_bytes"] == got["peak_rss_bytes"] >= 0.9 * big, got
    assert memory.peak_bytes(bench)[1] == got["peak_method"]  # the old interface, the same wording


def test_the_counter_is_off_while_calls_are_timed_and_on_for_the_peak_call(cache):
    """Workers time their calls with the counter preloaded: bench.memory switches it off at
    its first look (counting costs torch about 3% a call) and on around each peak call."""
    code = """
        import json, torch
        from bench import memory
        c = memory._counter()
        base = c.fcmem_current()
        x = torch.empty(1 << 20)  # 4 MiB while the counter is off
        off = c.fcmem_current() - base

        class Bench:
            case = type("Case", (), {"device": "cpu"})()

            @staticmethod
            def call():
                return torch.empty(1 << 20).fill_(1.0)

        print(json.dumps([off, memory.peak(Bench, 1)["peak_bytes"], c.fcmem_current()]))
    """
    off, peak, after = _run(code)
    assert off == 0 and abs(after) < 4096  # nothing counted outside the peak call
    assert abs(peak - (4 << 20)) < 4096  # the peak call's 4 MiB


def test_a_process_started_without_the_counter_knows_it(cache):
    code = "import json; from bench import memory; print(json.dumps(memory.counting()))"
    assert _run(code, preload=False) is False
    assert _run(code, preload=True) is True


# ------------------------------------------------------------------ what the counter counts
ALLOCATOR_CALLS = """
    import ctypes, json, random
    from bench import memory

    c = memory._counter()
    c.fcmem_arm(1)  # counting from here (bench.memory switches it off for timed calls)
    libc = ctypes.CDLL(None)  # the process's own malloc: the counter's, which LD_PRELOAD put first
    P, Z = ctypes.c_void_p, ctypes.c_size_t
    for name, res, args in [("malloc", P, [Z]), ("calloc", P, [Z, Z]), ("realloc", P, [P, Z]),
                            ("reallocarray", P, [P, Z, Z]), ("aligned_alloc", P, [Z, Z]), ("memalign", P, [Z, Z]),
                            ("valloc", P, [Z]), ("pvalloc", P, [Z]), ("free", None, [P]),
                            ("posix_memalign", ctypes.c_int, [ctypes.POINTER(P), Z, Z]),
                            ("malloc_usable_size", Z, [P])]:
        getattr(libc, name).restype, getattr(libc, name).argtypes = res, args
    out = {}
    slot = P()

    def delta(fn):
        before = c.fcmem_current()
        value = fn()
        return c.fcmem_current() - before, value
"""


def test_every_allocation_entry_point_is_counted_and_freed(cache):
    got = _run(ALLOCATOR_CALLS + """
    MB = 1 << 20  # under the mmap threshold (GLIBC_TUNABLES): heap blocks, counted to the 8 bytes
    out["calloc"], p = delta(lambda: libc.calloc(1000, 1000))
    out["realloc_grow"], p = delta(lambda: libc.realloc(p, 3 * MB))
    out["realloc_shrink"], p = delta(lambda: libc.realloc(p, 100_001))
    out["reallocarray"], p = delta(lambda: libc.reallocarray(p, 1000, 2000))
    out["realloc_fails"], q = delta(lambda: libc.realloc(p, 1 << 62))
    out["realloc_fails_null"] = q is None
    out["free"], _ = delta(lambda: libc.free(p))
    out["posix_memalign"], rc = delta(lambda: libc.posix_memalign(ctypes.byref(slot), 64, 2 * MB + 3))
    out["posix_memalign_rc"], out["aligned"] = rc, slot.value % 64 == 0
    out["free_aligned"], _ = delta(lambda: libc.free(slot))
    out["posix_memalign_einval"], rc = delta(lambda: libc.posix_memalign(ctypes.byref(slot), 24, 100))
    out["einval_rc"] = rc
    for name, fn in [("aligned_alloc", lambda: libc.aligned_alloc(4096, 40960)),
                     ("memalign", lambda: libc.memalign(256, 5000)), ("valloc", lambda: libc.valloc(12345)),
                     ("pvalloc", lambda: libc.pvalloc(12345))]:
        out[name], p = delta(fn)
        out[name + "_freed"], _ = delta(lambda: libc.free(p))
    out["realloc_zero"], p = delta(lambda: libc.realloc(libc.malloc(777), 0))
    # odd sizes through every path: the count is the sizes asked for, rounded up to 8, exactly
    rng, blocks, asked = random.Random(0), [0] * 300, 0  # (a growing list would realloc)
    before = c.fcmem_current()
    for i in range(300):
        n = rng.randrange(0, 5000)
        asked += (n + 7) // 8 * 8
        if i % 3 == 0:
            libc.posix_memalign(ctypes.byref(slot), 64, n)
            blocks[i] = slot.value
        else:
            blocks[i] = libc.malloc(n) if i % 3 == 1 else libc.calloc(1, n)
    out["odd_sizes"], out["odd_sizes_asked"] = c.fcmem_current() - before, asked
    for b in blocks:
        libc.free(b)
    out["odd_sizes_freed"] = c.fcmem_current() - before
    print(json.dumps(out))
    """)
    MB = 1 << 20
    exact = {"calloc": 1_000_000, "realloc_grow": 3 * MB - 1_000_000, "realloc_shrink": 100_008 - 3 * MB,
             "reallocarray": 2_000_000 - 100_008, "realloc_fails": 0, "free": -2_000_000,
             "posix_memalign": 2 * MB + 8, "free_aligned": -(2 * MB + 8), "posix_memalign_einval": 0,
             "realloc_zero": 0}
    assert {k: got[k] for k in exact} == exact, got
    assert got["realloc_fails_null"] and got["posix_memalign_rc"] == 0 and got["aligned"] and got["einval_rc"] == 22
    for name, asked in [("aligned_alloc", 40960), ("memalign", 5000), ("valloc", 12352), ("pvalloc", 16384)]:
        assert got[name] == asked and got[name + "_freed"] == -asked, (name, got)
    assert got["odd_sizes"] == got["odd_sizes_asked"] and got["odd_sizes_freed"] == 0, got


def test_the_count_survives_threads_and_its_peak_is_the_largest_moment(cache):
    got = _run(ALLOCATOR_CALLS + """
    import threading

    def churn(seed):  # ctypes lets go of the GIL around each call: the threads really race
        rng = random.Random(seed)
        for _ in range(20_000):
            libc.free(libc.malloc(rng.randrange(1, 3000)))

    before = c.fcmem_current()
    c.fcmem_reset_peak()
    threads = [threading.Thread(target=churn, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["after_threads"] = c.fcmem_current() - before
    c.fcmem_reset_peak()
    base = c.fcmem_current()
    a = libc.malloc(300_000); b = libc.malloc(200_000); libc.free(a); d = libc.malloc(100_000)
    out["peak"], out["held"] = c.fcmem_peak() - base, c.fcmem_current() - base
    libc.free(b); libc.free(d)
    print(json.dumps(out))
    """)
    assert abs(got["after_threads"]) < 4096, got  # what the threads' own Python objects leave, no drift
    assert got["peak"] == 500_000 and got["held"] == 300_000, got


# ------------------------------------------------------------------ the library, the launcher
def test_the_shim_builds_without_a_warning(tmp_path):
    compiler = shutil.which("gcc")
    if compiler is None:
        pytest.skip("no gcc")
    done = subprocess.run([compiler, *memory.CFLAGS, "-Werror", "-o", str(tmp_path / "m.so"), str(memory.SOURCE)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr


def test_the_library_is_built_once_under_a_name_of_its_source(cache):
    path, why = memory.counting_library()
    assert why is None and Path(path).parent == cache and Path(path).name.startswith("malloc_count-")
    assert memory.counting_library() == (path, None)
    assert [p.name for p in cache.iterdir()] == [Path(path).name]  # no temporary left behind
    env = memory.preload_env({"LD_PRELOAD": "/x/other.so"})
    assert env["LD_PRELOAD"] == f"/x/other.so:{path}" and memory.preload_env(env) == env


def _launch(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bench.memory", *args], cwd=REPO, capture_output=True, text=True,
                          env=env or _env(preload=False), timeout=60)


def test_the_launcher_runs_a_command_with_the_counter(cache):
    code = "import os; from bench import memory; print(memory.counting(), os.environ['LD_PRELOAD'])"
    done = _launch("run", "--", sys.executable, "-c", code)
    path, _ = memory.counting_library()
    assert done.returncode == 0 and done.stdout.split() == ["True", path], done.stderr
    done = _launch("path")
    assert done.returncode == 0 and done.stdout.strip() == path


@pytest.mark.parametrize("args", [(), ("run",), ("run", "--"), ("walk",), ("path", "extra"),
                                  ("run", "--", "/no/such/command")])
def test_the_launchers_mistakes_are_one_line_and_exit_2(cache, args):
    done = _launch(*args)
    assert done.returncode == 2 and done.stdout == "", done
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("bench.memory: "), done.stderr


def test_a_counter_that_cannot_be_built_is_one_line_and_exit_2(tmp_path, monkeypatch):
    env = _env(preload=False)
    env.update(FLATCONV_CACHE_DIR=str(tmp_path / "empty"), PATH=str(tmp_path))  # no compiler on PATH
    for args in (("run", "--", "true"), ("path",)):
        done = _launch(*args, env=env)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done
        assert "no C compiler" in done.stderr, done.stderr
    monkeypatch.setenv("FLATCONV_CACHE_DIR", env["FLATCONV_CACHE_DIR"])
    monkeypatch.setenv("PATH", env["PATH"])
    assert memory.counting_library()[0] is None
    assert memory.preload_env({"A": "1"}) == {"A": "1"}  # nothing to preload: unchanged
