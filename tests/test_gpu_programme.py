"""The GPU machine's programme (bench/gpu/programme.py, run by bench/gpu/run.sh), proven
without a GPU: its rehearsal runs every stage under the same shares and limits (the
sweep on the CPU), a deadline far too short still ends by it with whole results lines;
and the parts a first GPU call depends on: a stage cut by SIGINT, SIGINT sent again when
unacknowledged, SIGKILL last; each NVML query guarded on its own; the commit of a tree
copied without .git; the tests stage's order; the sanitizer's kernel filter."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch

import impls
from bench import machine, records
from bench.gpu import programme, pytest_order

REPO = Path(__file__).resolve().parents[1]
STAGES = ["facts", "phases", "tests", "sanitizer:memcheck", "sanitizer:racecheck",
          *(f"sweep:{s.name}" for s in programme.FIRST_STEPS)]
no_gpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is for a machine without a GPU "
                                 "(on a GPU its tests stage runs the GPU tests for real)")


def _rehearse(out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PASS": "ci", "PYTHON": sys.executable}
    t0 = time.monotonic()
    result = subprocess.run(["bash", "bench/gpu/run.sh", str(out), "--rehearse", *extra], cwd=REPO,
                            capture_output=True, text=True, timeout=400, env=env)
    return result, time.monotonic() - t0


# ------------------------------------------------------------------ the rehearsal, whole
@pytest.mark.slow
@no_gpu_only
def test_rehearsal_runs_every_stage_and_the_sweep_measures_on_the_cpu(tmp_path):
    """Every stage runs and says what it did; the tests stage collected the gpu-marked
    tests, skipped with their reasons; the sweep wrote timed CPU records into the pass's
    one file. A deadline of 150 s (the default is 360) keeps this test short: the later
    sweep steps get what is left, which may cut them."""
    out = tmp_path / "out"
    result, seconds = _rehearse(out, "--deadline", "150")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert seconds < 165
    status = programme.read_status(out / "status.txt")
    assert list(status) == [s for s in ["wheels", *STAGES] if s in status] and set(STAGES) <= set(status)
    assert all(v["seconds"] >= 0 for v in status.values())
    assert status["facts"]["word"] == "exit 0" and "registered" in status["facts"]["note"]
    assert status["tests"]["word"] == "exit 0" and re.search(r"\d+ skipped", status["tests"]["note"])
    # each phase of a visit timed on its own, the driver's too
    assert status["phases"]["word"] == "exit 0" and re.search(r"\d+ phases, slowest ", status["phases"]["note"])
    phases = (out / "phases.log").read_text()
    assert "openmp_fused train: set-up (gate, warm-up)" in phases and "ceilings on cpu" in phases
    assert "FAILED" not in phases
    log = (out / "tests.log").read_text()
    assert "-m gpu" in log and "tests/test_cupy.py::" in log and "PASSED" not in log
    assert re.search(r"SKIPPED \[\d+\] tests/test_cupy\.py:\d+: cupy on cuda: no CUDA device", log)
    cupy, compile_ = log.index("tests/test_cupy.py::"), log.index("torch_compile-cuda]")
    assert cupy < log.index("tests/test_triton.py::") < compile_  # CuPy first, torch_compile's compiles last
    for tool in ("memcheck", "racecheck"):
        assert status[f"sanitizer:{tool}"]["word"] in ("absent", "exit 0", "exit 2")
    assert "sanitizer.log" in {p.name for p in out.iterdir()}
    assert status["sweep:goals-forward-train"]["word"] in ("exit 0", "exit 130")  # 130: cut, what it measured kept
    recs = records.read_records(out / "gpu-ci.jsonl")
    ok = [r for r in recs if r["status"] == "ok"]
    assert ok and all(r["device"] == "cpu" and r["time_median"] > 0 for r in ok)
    assert {r["impl"] for r in ok} >= {"torch", "openmp_fused"}
    assert len({r["run_id"] for r in recs}) >= 2  # more than one step appended to the pass's file
    assert sorted(p.name for p in out.iterdir()) == ["bench.log", "facts.txt", "gpu-ci.jsonl", "phases.log",
                                                     "sanitizer.log", "status.txt", "tests.log"]
    assert "== done in" in result.stdout and "sweep:goals-forward-train" in result.stdout


@pytest.mark.slow
@no_gpu_only
def test_a_deadline_far_too_short_still_ends_by_it_with_whole_lines(tmp_path):
    out = tmp_path / "out"
    result, seconds = _rehearse(out, "--deadline", "45")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert seconds < 60
    status = programme.read_status(out / "status.txt")
    assert set(STAGES) <= set(status)  # every stage named: run, cut or skipped
    assert any(v["timed_out"] for v in status.values()) or any(
        v["word"] == "skipped" and "no time left" in v["note"] for v in status.values()), status
    cut = [name for name, v in status.items() if v["timed_out"]]
    assert all("timed out" in status[name]["note"] for name in cut)
    files = {p.name for p in out.iterdir()}
    expect = {"facts": "facts.txt", "phases": "phases.log", "tests": "tests.log", "sanitizer:memcheck": "sanitizer.log"}
    for name, v in status.items():
        if v["word"] != "skipped" and name in expect:
            assert expect[name] in files, name
        if name.startswith("sweep:") and v["word"] != "skipped":
            assert "bench.log" in files
    for path in out.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            json.loads(line)  # no partial line


# ------------------------------------------------------------------ limits and signals
def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "cmd.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def _pass(tmp_path: Path) -> programme.Pass:
    return programme.Pass(tmp_path / "out", full=False, rehearse=True, deadline=60, name="t", python=sys.executable)


def test_a_stage_at_its_limit_gets_sigint_and_its_exit_status_is_kept(tmp_path):
    p = _pass(tmp_path)
    # The child takes SIGINT as KeyboardInterrupt whatever it inherited (in CI's full run,
    # twice, it ignored the SIGINT and was killed 10 s later: -9; alone it passes), and has
    # 5 s to reach its try.
    argv = _script(tmp_path, """
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("started", flush=True)
        try:
            time.sleep(30)
        except KeyboardInterrupt:
            print("summary written", flush=True)
            sys.exit(7)
    """)
    log = tmp_path / "log"
    t0 = time.monotonic()
    code, cut = p.run_limited(argv, log, 5.0)
    assert (code, cut) == (7, True) and time.monotonic() - t0 < 15, log.read_text()
    assert "summary written" in log.read_text() and "cut at its limit" in log.read_text()
    code, cut = p.run_limited([sys.executable, "-c", "raise SystemExit(3)"], log, 10)
    assert (code, cut) == (3, False)


def test_sigint_is_sent_again_until_acknowledged_then_sigkill(tmp_path, monkeypatch):
    """A command whose handler lost the first SIGINT gets another; one that never stops
    is killed GRACE seconds after the first."""
    monkeypatch.setattr(programme, "RESEND", 0.5)
    monkeypatch.setattr(programme, "GRACE", 3.0)
    p = _pass(tmp_path)
    argv = _script(tmp_path, """
        import signal, sys, time
        seen = []
        def handler(signum, frame):
            seen.append(signum)
            if len(seen) == 2:
                print("interrupted by SIGINT", flush=True)
                sys.exit(130)
        signal.signal(signal.SIGINT, handler)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
    """)
    log = tmp_path / "log"
    code, cut = p.run_limited(argv, log, 1.0, ack=programme.SWEEP_ACK)
    assert (code, cut) == (130, True)
    assert "SIGINT again" in log.read_text()
    stubborn = _script(tmp_path, """
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """)
    t0 = time.monotonic()
    code, cut = p.run_limited(stubborn, log, 0.5)
    assert (code, cut) == (-9, True) and time.monotonic() - t0 < 6
    assert "killed (SIGKILL)" in log.read_text()


def test_each_stage_gets_its_share_of_what_is_left_and_none_overruns_the_deadline(tmp_path):
    p = _pass(tmp_path)
    p.deadline = time.monotonic() + 40
    seen = []

    def action(pass_, limit):
        seen.append(limit)
        return programme.Outcome("exit 0")

    assert p._stage(programme.Stage("a", 0.5, 100, 5, action)).word == "exit 0"
    assert 14 < seen[0] <= 15  # half of 40 s less GRACE
    assert p._stage(programme.Stage("b", 0.1, 100, 8, action)).word == "exit 0"
    assert 8 == seen[1]  # its floor
    p.deadline = time.monotonic() + 12
    skipped = p._stage(programme.Stage("c", 1.0, 100, 5, action))
    assert skipped.word == "skipped" and "no time left" in skipped.note and len(seen) == 2
    line = programme.Outcome("exit 130", 12.34, True, "3 records").line("sweep:x")
    assert programme.STATUS_LINE.match(line)["seconds"] == "12.3" and "timed out" in line


def test_whole_lines_drops_a_partial_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": ')
    assert programme.whole_lines(path) == (['{"a": 1}', '{"b": 2}'], 1)
    assert programme.whole_lines(tmp_path / "missing.jsonl") == ([], 0)


# ------------------------------------------------------------------ what the stages ask for
def test_the_steps_lists_come_from_the_registrys_declarations(tmp_path):
    """The facts' implementation lines (here asked for as a sweep does when the facts
    stage printed none) and each step's rule give today's lists; a rehearsal the CPU
    stand-ins of the same rules."""
    p = _pass(tmp_path)
    p.out.mkdir(parents=True)
    try:
        table = p.implementation_lines(120)
    finally:
        shutil.rmtree(p.steps_dir, ignore_errors=True)
    assert table and {i["name"] for i in table} == set(impls.names())
    gpu = {name: programme.select(name, table, "cuda") for name in programme.SELECTIONS}
    assert gpu["plain"] == ["torch", "cudnn", "cupy", "cupy_fused", "dense", "im2col"]
    assert gpu["compilers"] == ["torch", "cupy_fused", "jax", "onnxruntime", "torch_compile", "triton_fused"]
    assert gpu["stages"] == ["torch", "cupy", "cupy_fused", "triton_fused"]
    assert gpu["no-graphs"] == gpu["plain"] + ["triton_fused"]
    cuda = [n for n in impls.names() if "cuda" in impls.get(n).devices]
    assert set(gpu["plain"]) == {n for n in cuda if not impls.get(n).compiles}  # every one that compiles nothing
    assert set(gpu["all"]) == set(cuda)
    steps = {s.name: s.select for s in programme.FIRST_STEPS}
    assert steps["goals-forward-train"] == "plain" and list(steps)[0] == "goals-forward-train"
    rehearsal = {s.name: programme.select(s.select, table, "cpu", rehearse=True)
                 for s in programme.FIRST_STEPS + programme.FULL_STEPS}
    assert rehearsal["goals-forward-train"] == ["torch", "dense", "openmp_fused"]
    assert rehearsal["goals-compilers-forward"] == rehearsal["goals-stages"] == ["torch", "openmp_fused"]
    assert all(names and names[0] == "torch" for names in rehearsal.values())
    assert "impl {" in (p.bench_log).read_text()


def test_a_sweep_without_implementation_lines_is_skipped_and_says_why(tmp_path):
    p = _pass(tmp_path)
    p.out.mkdir(parents=True)
    p.python = "false"  # neither the facts stage nor its --impls call print a line
    try:
        outcome = p.sweep(programme.FIRST_STEPS[0], 10)
    finally:
        shutil.rmtree(p.steps_dir, ignore_errors=True)
    assert outcome.word == "skipped" and "no implementation lines" in outcome.note and not outcome.failed
    assert programme.read_implementations("impl {broken\nregistered a,b") is None


def test_the_tests_stage_runs_cupy_first_then_what_compiles_nothing_then_triton_then_torch_compile():
    ids = ["tests/test_correctness.py::t[torch_compile-cuda]", "tests/test_correctness.py::t[torch-cuda]",
           "tests/test_triton.py::test_gpu_matches_oracle", "tests/test_cupy.py::test_oracle_grid[x]",
           "tests/test_contract.py::c[torch_compile-cuda]", "tests/test_contract.py::c[cupy-cuda]",
           "tests/test_correctness.py::t[triton_fused-cuda]"]
    ordered = sorted(ids, key=pytest_order.rank)
    assert ordered == ["tests/test_cupy.py::test_oracle_grid[x]", "tests/test_correctness.py::t[torch-cuda]",
                       "tests/test_contract.py::c[cupy-cuda]", "tests/test_triton.py::test_gpu_matches_oracle",
                       "tests/test_correctness.py::t[triton_fused-cuda]",
                       "tests/test_correctness.py::t[torch_compile-cuda]", "tests/test_contract.py::c[torch_compile-cuda]"]


def test_the_sanitizer_is_limited_to_the_projects_kernels():
    names = programme.kernel_regex().split("|")
    sources = "".join(p.read_text() for p in REPO.glob(programme.KERNEL_SOURCES))
    assert {"gemm_tiled", "dw_v_fwd", "dw_reduce_partials"} <= set(names)
    assert all(re.search(rf"\b{n}\s*\(", sources) for n in names)
    assert programme.kernel_regex(REPO / "no-such-dir") == "|".join(programme.KERNELS_FALLBACK)


def test_every_gpu_test_file_of_the_stage_exists_and_holds_gpu_marked_tests():
    for name in programme.TEST_FILES:
        text = (REPO / name).read_text()
        assert "mark.gpu" in text or "impl_device_params" in text, name


def test_the_programme_module_is_safe_for_asv_to_import():
    for module in (programme, pytest_order):
        assert not [n for n in vars(module) if n.startswith(("time_", "track_", "mem_", "peakmem_"))]
    assert not (REPO / "bench" / "gpu" / "__init__.py").exists()  # asv does not walk this folder


# ------------------------------------------------------------------ facts that survive
class NVMLError(Exception):
    pass


def _nvml(fail=(), fail_init=False):
    def query(name, value):
        def call(*args):
            if name in fail:
                raise NVMLError(f"{name}: Not Supported")
            return value(*args) if callable(value) else value
        return call

    def init():
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    return types.SimpleNamespace(
        NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, nvmlInit=init, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=query("handle", lambda i: f"gpu{i}"),
        nvmlDeviceGetName=query("name", "NVIDIA H200"),
        nvmlSystemGetDriverVersion=query("driver", "580.65"),
        nvmlDeviceGetMemoryInfo=query("memory", types.SimpleNamespace(total=141 * 2**30)),
        nvmlDeviceGetClockInfo=query("clock", lambda h, which: (1980, 3201)[which]),
        nvmlDeviceGetMaxClockInfo=query("maxclock", lambda h, which: (1980, 3201)[which]),
        nvmlDeviceGetEnforcedPowerLimit=query("power", 700_000),
    )


def test_each_nvml_query_is_guarded_on_its_own():
    whole = machine._gpu_info(_nvml())
    assert whole == {"gpu_name": "NVIDIA H200", "gpu_driver": "580.65", "gpu_memory_bytes": 141 * 2**30,
                     "gpu_clocks": {"sm_mhz": 1980, "mem_mhz": 3201, "sm_max_mhz": 1980, "mem_max_mhz": 3201},
                     "gpu_power_limit_w": 700.0}
    partial = machine._gpu_info(_nvml(fail={"power", "maxclock"}))
    assert partial["gpu_name"] == "NVIDIA H200" and partial["gpu_memory_bytes"] == 141 * 2**30
    assert partial["gpu_clocks"] == {"sm_mhz": 1980, "mem_mhz": 3201} and partial["gpu_power_limit_w"] is None
    assert "gpu_power_limit_w" in partial["gpu_error"] and "gpu_clocks.sm_max_mhz" in partial["gpu_error"]
    assert machine._gpu_info(_nvml(fail_init=True)) == {"gpu_error": "NVML unavailable: Driver Not Loaded"}
    assert "handle" in machine._gpu_info(_nvml(fail={"handle"}))["gpu_error"]


def test_the_commit_of_a_tree_without_git_comes_from_the_environment_or_a_file(tmp_path, monkeypatch):
    records.git_commit.cache_clear()
    monkeypatch.delenv(records.COMMIT_ENV, raising=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    try:
        assert records.git_commit(copy) is None
        (copy / records.COMMIT_FILE).write_text("0123abcd  main\n")
        records.git_commit.cache_clear()
        assert records.git_commit(copy) == "0123abcd"
        monkeypatch.setenv(records.COMMIT_ENV, "feedbeef")
        records.git_commit.cache_clear()
        assert records.git_commit(copy) == "feedbeef"  # the variable before the file
        if (REPO / ".git").exists():
            assert records.git_commit(REPO) == "feedbeef"  # and before git: a copy's .git may be stale
            monkeypatch.delenv(records.COMMIT_ENV)
            records.git_commit.cache_clear()
            assert re.fullmatch(r"[0-9a-f]{40}", records.git_commit(REPO))  # then git, where there is one
    finally:
        records.git_commit.cache_clear()


def test_a_gpu_pass_records_the_commit_written_before_the_copy_not_the_copys_git(tmp_path, monkeypatch):
    monkeypatch.delenv(records.COMMIT_ENV, raising=False)
    (tmp_path / records.COMMIT_FILE).write_text("c0ffee00\n")
    gpu = programme.Pass(tmp_path / "out", full=False, rehearse=False, deadline=60, name="t", python=sys.executable,
                         root=tmp_path)
    assert gpu.env[records.COMMIT_ENV] == "c0ffee00"
    rehearsal = programme.Pass(tmp_path / "out2", full=False, rehearse=True, deadline=60, name="t",
                               python=sys.executable, root=tmp_path)
    assert records.COMMIT_ENV not in rehearsal.env  # here git says it (a .commit left behind may be stale)
