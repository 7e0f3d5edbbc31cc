"""The GPU machine's programme: one call of a lent GPU gives every GPU result, and the same
programme rehearses itself on a machine without a GPU (bench/gpu/README.md).

    bash bench/gpu/run.sh OUT [--full] [--rehearse] [--deadline SECONDS]

One deadline for the pass (default 360 s; 540 s with --full). The stages run in order, each
in a process group of its own, each given its share of what is left of the deadline
(at least its floor, at most its cap; a stage whose floor no longer fits is recorded as
skipped). At its limit a stage gets SIGINT (pytest prints its summary, the sweep writes
what it measured and exits 130), SIGKILL GRACE seconds later; GRACE is kept back from every
share, so the pass ends by its deadline. Every stage writes its file under OUT the moment
it ends, and a line of OUT/status.txt: its name, exit status, seconds, `timed out` where it
was cut, and what it did.

  facts               facts.txt: the pass, the commit, versions, the device, NVML fields,
                      each CUDA implementation's availability, and each implementation's
                      declarations, which the sweep steps' lists are built from
                      (bench/gpu/facts.py; SELECTIONS below)
  phases              phases.log: one goals layer taken through each phase of a worker's
                      visit and the driver's, in one process, each phase's seconds said as
                      it ends (bench/gpu/phases.py)
  tests               tests.log: the tests marked `gpu` (CuPy first, Triton, then the
                      shared correctness and contract tests, torch_compile's cold compiles
                      last: pytest_order.py), verbose, pytest-timeout per test where installed
  sanitizer:memcheck  sanitizer.log: compute-sanitizer over sanitize_cupy.py, the caching
  sanitizer:racecheck allocator off, limited to the project's kernels (impls/cupy_kernels/*.cu)
  sweep:STEP          gpu-PASS.jsonl: short sweeps, each into a file of its own, appended
                      (whole lines only) to the pass's file as it ends; output in bench.log

--rehearse runs the same stages, shares, limits and files without a GPU: the sweep on the
CPU device on the smoke table (fewer rounds), each step with the CPU stand-ins of its
selection (stand_in below), the tests collected
exactly as on the GPU (they show as skipped with their reasons), the sanitizer recorded as
absent when its tool is (and its script run alone, unchecked, to prove it starts).

Nothing runs at import: asv imports modules under bench/ (this folder has no __init__.py,
so it does not, but a module here stays safe to import).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench import commit

ROOT = Path(__file__).resolve().parents[2]
GRACE = 10.0  # seconds from SIGINT to SIGKILL, kept back from every share
RESEND = 3.0  # seconds before a SIGINT the command has not acknowledged is sent again
SWEEP_ACK = "interrupted by SIG"  # what `python -m bench run` prints when it has taken one
GLIBC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"
DEADLINE = {"first": 360.0, "full": 540.0}

TEST_FILES = ("tests/test_cupy.py", "tests/test_triton.py", "tests/test_correctness.py", "tests/test_contract.py")
TEST_TIMEOUT = 60  # seconds per test (pytest-timeout), where the plugin is installed

SANITIZE_SCRIPT = "bench/gpu/sanitize_cupy.py"
KERNEL_SOURCES = "impls/cupy_kernels/*.cu"
# The project's kernels when their sources cannot be read (the names in the .cu files).
KERNELS_FALLBACK = ("dw_v_fwd", "dw_h_fwd", "dw_vh_fwd", "dw_h_bwd", "dw_v_bwd", "dw_reduce_partials",
                    "gemm_tiled", "gemm_sum_splits")


# ------------------------------------------------------------------------------ the steps
@dataclasses.dataclass(frozen=True)
class Step:
    """One short sweep: a table and directions, which implementations (a key of
    SELECTIONS: a rule on the registry's declarations, applied to the pass's device), the
    sweep's flags."""

    name: str
    share: float
    cap: float
    preset: str
    direction: str
    select: str
    flags: tuple[str, ...]


QUICK = ("--rounds", "3", "--passes", "3", "--block", "0.01", "--rel-pi", "off")
PAPER = ("--rounds", "2", "--passes", "3", "--block", "0.005", "--rel-pi", "off")
FULL = ("--rounds", "5", "--passes", "5")
# A rehearsal measures the smoke table with these: still two rounds (the results file is
# rewritten after each), small enough that five steps fit a 2-core machine's minutes.
REHEARSE_FLAGS = ("--rounds", "2", "--passes", "2", "--block", "0.005", "--rel-pi", "off")

# The steps' implementations come from the registry, as the facts stage prints it (an
# `impl {json}` line per implementation: bench/gpu/facts.py, impls.registry.describe):
# each step names a rule on the declarations (role, devices, compiles, fused, stages),
# applied to the implementations of the pass's device; a new implementation joins the
# steps its declarations put it in. On the GPU today:
#   plain      torch, cudnn, cupy, cupy_fused, dense, im2col
#   compilers  torch, cupy_fused, onnxruntime, torch_compile, triton_fused
#   stages     torch, cupy, cupy_fused, triton_fused
#   no-graphs  torch, cudnn, cupy, cupy_fused, dense, im2col, triton_fused
BASELINE = "torch"  # the sweep's --baseline: the peer every ratio of a sweep divides


def _fused_handwritten(i: dict) -> bool:
    return i["role"] == "handwritten" and bool(i["fused"])


SELECTIONS: dict[str, tuple[str, Callable[[dict], bool]]] = {
    # The first step, the goals' own comparison (cupy_fused and cupy against torch), lands
    # before any compiler can hold it up.
    "plain": ("every implementation that compiles nothing at set-up", lambda i: not i["compiles"]),
    # The compilers (Triton's kernels per shape, torch_compile's graphs) interleaved with
    # what they are compared with; their cold compiles would hold up the first step's groups.
    "compilers": ("the compilers, with the baseline and the fused handwritten kernels",
                  lambda i: bool(i["compiles"]) or i["name"] == BASELINE or _fused_handwritten(i)),
    "stages": ("every implementation with per-stage timings", lambda i: bool(i["stages"])),
    # A graph compiler's cold compile per shape and direction would take the paper steps' minute.
    "no-graphs": ("every implementation but the graph compilers", lambda i: i["compiles"] != "graphs"),
    "all": ("every implementation", lambda i: True),
}


def stand_in(i: dict) -> bool:
    """A rehearsal's CPU stand-ins, of a step's selection on the CPU: the baseline of the
    sweep's ratios, the dense baseline and the fused handwritten kernels (the ones a
    2-core machine measures on the smoke table in the rehearsal's minutes)."""
    return i["name"] == BASELINE or i["role"] == "baseline" or _fused_handwritten(i)


def select(selection: str, table: list[dict], device: str, rehearse: bool = False) -> list[str]:
    """The names `selection` picks from `table` (the facts' implementation lines) on
    `device`, the stand-ins only in a rehearsal; the baseline first, then by name."""
    keep = SELECTIONS[selection][1]
    names = {i["name"] for i in table if device in i["devices"] and keep(i) and (not rehearse or stand_in(i))}
    return sorted(names, key=lambda n: (n != BASELINE, n))


def read_implementations(text: str) -> list[dict] | None:
    """The `impl {json}` lines of the facts' output, as dicts; None when there are none."""
    rows = []
    for m in re.finditer(r"^impl (\{.*\})$", text, re.M):
        try:
            rows.append(json.loads(m[1]))
        except ValueError:
            continue
    return rows or None


FIRST_STEPS = (
    Step("goals-forward-train", 0.4, 75, "goals", "forward,train", "plain", QUICK),
    Step("goals-compilers-forward", 0.4, 60, "goals", "forward", "compilers", QUICK),
    Step("goals-stages", 0.4, 40, "goals", "stages", "stages", QUICK),
    Step("paper-forward-train", 0.6, 60, "paper", "forward,train", "no-graphs", PAPER),
    Step("paper-backward-stages", 1.0, 60, "paper", "backward,stages", "no-graphs", PAPER),
)
FULL_STEPS = (
    Step("goals-forward-train", 0.3, 540, "goals", "forward,train", "all", FULL),
    Step("goals-backward-stages", 0.3, 540, "goals", "backward,stages", "all", FULL),
    Step("paper-forward-train", 0.4, 540, "paper", "forward,train", "all", FULL),
    Step("paper-backward-stages", 0.5, 540, "paper", "backward,stages", "all", FULL),
    Step("sweep-all", 1.0, 540, "sweep", "forward,backward,train,stages", "all", FULL),
)


# ------------------------------------------------------------------------------ outcomes
@dataclasses.dataclass
class Outcome:
    """How a stage ended: `word` is `exit N`, `skipped` or `absent`; `failed` marks an
    outcome that is neither a result nor a cut (the programme's exit status)."""

    word: str
    seconds: float = 0.0
    timed_out: bool = False
    note: str = ""
    failed: bool = False

    def line(self, name: str) -> str:
        cut = "timed out; " if self.timed_out else ""
        return f"{name:28} {self.word:>9} {self.seconds:7.1f} s  {cut}{self.note}".rstrip()


STATUS_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<word>exit -?\d+|skipped|absent)\s+(?P<seconds>\d+\.\d) s(?:\s+(?P<note>.*))?$")


def read_status(path: Path) -> dict[str, dict]:
    """status.txt as {stage: {word, seconds, timed_out, note}} (lines starting # skipped)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        m = STATUS_LINE.match(line)
        if m:
            note = m["note"] or ""
            out[m["name"]] = {"word": m["word"], "seconds": float(m["seconds"]), "timed_out": note.startswith("timed out"),
                              "note": note}
    return out


def kernel_regex(root: Path = ROOT) -> str:
    """A regex of the project's CUDA kernel names, from the __global__ definitions in
    impls/cupy_kernels/*.cu (compute-sanitizer matches it in the mangled names)."""
    names = set()
    for src in sorted(root.glob(KERNEL_SOURCES)):
        text = src.read_text()
        names.update(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(", text))
    return "|".join(sorted(names) or KERNELS_FALLBACK)


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if base and os.access(Path(base) / "bin" / "compute-sanitizer", os.X_OK):
            return str(Path(base) / "bin" / "compute-sanitizer")
    return None


def whole_lines(src: Path) -> tuple[list[str], int]:
    """The lines of `src` that parse as JSON, and how many did not."""
    good, bad = [], 0
    try:
        text = src.read_text()
    except OSError:
        return [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            bad += 1
        else:
            good.append(line)
    return good, bad


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")


# ------------------------------------------------------------------------------ the pass
@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    share: float  # of what is left of the deadline (less GRACE)
    cap: float  # seconds at most
    floor: float  # not started with less than this left
    action: Callable[["Pass", float], Outcome]


class Pass:
    def __init__(self, out: Path, *, full: bool, rehearse: bool, deadline: float, name: str, python: str,
                 root: Path = ROOT):
        self.out, self.full, self.rehearse, self.name, self.python = out, full, rehearse, name, python
        self.start = time.monotonic()
        self.deadline = self.start + deadline
        self.deadline_seconds = deadline
        self.status = out / "status.txt"
        self.results = out / f"gpu-{name}.jsonl"
        self.bench_log = out / "bench.log"
        self.steps_dir = Path(tempfile.mkdtemp(prefix="gpu-steps-"))
        self.device = "cpu" if rehearse else "cuda"
        self.implementations: list[dict] | None = None  # the facts' `impl` lines
        self.asked_implementations = False
        self.stopping: str | None = None
        self.failed = False
        extra = [str(ROOT)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "GLIBC_TUNABLES": GLIBC, "PASS": name,
                    "PYTHONPATH": os.pathsep.join(extra + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        if not rehearse:
            # The commit written before the copy (fetch_wheels.sh): the copy's own .git
            # stood at an older commit in the first H200 pass.
            written = commit.commit_file(root)
            if written and not self.env.get(commit.COMMIT_ENV):
                self.env[commit.COMMIT_ENV] = written
            # Carried cffi would have test collection and the facts build the OpenMP
            # extension with gcc; no GPU stage needs it.
            self.env["FLATCONV_OPENMP_NO_BUILD"] = "1"

    # ---- running a command under a limit
    def run_limited(self, argv: list[str], log: Path, limit: float, env: dict | None = None,
                    ack: str | None = None) -> tuple[int, bool]:
        """Run argv (cwd: the repository) in a process group of its own, its output
        appended to `log`; SIGINT to the group at `limit` seconds (or when the pass is
        stopped), SIGKILL GRACE seconds later. With `ack`, the text the command prints
        when it has taken the SIGINT: the SIGINT is sent again every RESEND seconds until
        it appears (a handler can lose one: see README, "Known gaps"). Returns (exit
        status, cut)."""
        with open(log, "ab") as f:
            f.write(f"\n$ {' '.join(argv)}   # {_now()} UTC, at most {limit:.0f} s\n".encode())
            f.flush()
            proc = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **(env or {})}, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            end = time.monotonic() + max(limit, 0.0)
            cut = False
            while True:
                try:
                    code = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() < end and not self.stopping:
                        continue
                cut = True
                code = self._interrupt(proc, f, log, ack)
                break
            self._signal(proc.pid, signal.SIGKILL)  # what is left of its group
            if cut:
                f.write(f"\n# cut at its limit ({limit:.0f} s): SIGINT, exit status {code}\n".encode())
        return code, cut

    def _interrupt(self, proc: subprocess.Popen, f, log: Path, ack: str | None) -> int:
        """SIGINT to proc's group, again while `ack` has not appeared in the log, SIGKILL
        GRACE seconds after the first; proc's exit status."""
        f.flush()
        offset = log.stat().st_size
        first = last = time.monotonic()
        self._signal(proc.pid, signal.SIGINT)
        while True:
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - first >= GRACE:
                self._signal(proc.pid, signal.SIGKILL)
                f.write(f"\n# killed (SIGKILL) {GRACE:.0f} s after SIGINT\n".encode())
                return proc.wait()
            if ack is not None and now - last >= RESEND:
                with open(log, "rb") as r:
                    r.seek(offset)
                    taken = ack.encode() in r.read()
                if not taken:
                    f.write(f"\n# no {ack!r} {now - first:.0f} s after SIGINT: SIGINT again\n".encode())
                    f.flush()
                    self._signal(proc.pid, signal.SIGINT)
                last = now

    @staticmethod
    def _signal(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # ---- the stages
    def run(self, stages: list[Stage]) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        mode = ("rehearsal (no GPU: CPU sweep) " if self.rehearse else "") + ("full pass" if self.full else "first pass")
        self.status.write_text(f"# pass {self.name}: {mode}, deadline {self.deadline_seconds:.0f} s\n")
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def stop(signum, frame):
            self.stopping = signal.Signals(signum).name

        for s in previous:
            signal.signal(s, stop)
        try:
            for stage in stages:
                outcome = self._stage(stage)
                self.failed |= outcome.failed
                with open(self.status, "a") as f:
                    f.write(outcome.line(stage.name) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                print(f"-- {stage.name}: {outcome.line('').strip()}", flush=True)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            shutil.rmtree(self.steps_dir, ignore_errors=True)
        took = time.monotonic() - self.start
        with open(self.status, "a") as f:
            f.write(f"# done in {took:.1f} s of {self.deadline_seconds:.0f}" + (f"; stopped by {self.stopping}" if self.stopping else "")
                    + "\n")
        print(f"\n== done in {took:.1f} s; {self.status}:")
        print(self.status.read_text(), end="")
        for p in sorted(self.out.iterdir()):
            print(f"   {p.stat().st_size:>10}  {p.name}")
        if self.stopping:
            return 130
        return 1 if self.failed else 0

    def _stage(self, stage: Stage) -> Outcome:
        if self.stopping:
            return Outcome("skipped", note=f"the pass was stopped ({self.stopping})")
        avail = self.deadline - time.monotonic() - GRACE
        if avail < stage.floor:
            return Outcome("skipped", note=f"no time left ({max(avail, 0):.0f} s before the deadline's reserve; "
                                           f"needs {stage.floor:.0f})")
        limit = min(stage.cap, max(stage.floor, stage.share * avail), avail)
        print(f"\n== {_now()} {stage.name}: at most {limit:.0f} s ({avail:.0f} s left)", flush=True)
        t0 = time.monotonic()
        outcome = stage.action(self, limit)
        outcome.seconds = time.monotonic() - t0
        return outcome

    # wheels carried in .whl/ (bench/gpu/fetch_wheels.sh), installed apart from the image's
    def wheels(self, limit: float) -> Outcome:
        wheels = sorted(str(p) for p in (ROOT / ".whl").glob("*.whl"))
        target = Path(tempfile.gettempdir()) / "flatconv-site"
        code, cut = self.run_limited([self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                      "--no-cache-dir", "--upgrade", "--target", str(target), *wheels],
                                     self.bench_log, limit)
        if code == 0:
            self.env["PYTHONPATH"] += os.pathsep + str(target)
        return Outcome(f"exit {code}", timed_out=cut, note=f"{len(wheels)} wheels into {target}", failed=code != 0 and not cut)

    def facts(self, limit: float) -> Outcome:
        path = self.out / "facts.txt"
        path.write_text("")
        code, cut = self.run_limited([self.python, "-m", "bench.gpu.facts", self.name], path, limit)
        text = path.read_text()
        self.implementations = read_implementations(text)
        torch_line = re.search(r"^torch .*$", text, re.M)
        recorded = re.search(r"^commit (.*)$", text, re.M)
        note = "; ".join(x for x in (torch_line and torch_line[0], recorded and f"commit {recorded[1][:12]}",
                                     f"{len(self.implementations)} implementations registered" if self.implementations
                                     else "implementations not listed: the sweep asks for its lists as they are") if x)
        return Outcome(f"exit {code}", timed_out=cut, note=note, failed=code != 0 and not cut)

    def phases(self, limit: float) -> Outcome:
        log = self.out / "phases.log"
        log.write_text("")
        code, cut = self.run_limited([self.python, "-m", "bench.gpu.phases", "--device", self.device], log, limit)
        text = log.read_text()
        done = re.findall(r"^   (.+?)\s+(\d+\.\d+) s(?:  (.*))?$", text, re.M)
        started = re.findall(r"^-> (.*)$", text, re.M)
        failed = [name for name, _, note in done if note.startswith("FAILED")]
        note = f"{len(done)} phases"
        if done:
            slowest = max(done, key=lambda d: float(d[1]))
            note += f", slowest {slowest[0]} {float(slowest[1]):.1f} s"
        if failed:
            note += f", failed: {', '.join(failed)}"
        if cut and started and len(started) > len(done):
            note += f"; cut in: {started[-1]}"
        return Outcome(f"exit {code}", timed_out=cut, note=note, failed=code != 0 and not cut)

    def tests(self, limit: float) -> Outcome:
        log = self.out / "tests.log"
        log.write_text("")
        has_timeout = subprocess.run([self.python, "-c", "import pytest_timeout"], env=self.env, cwd=ROOT,
                                     capture_output=True).returncode == 0
        per_test = [f"--timeout={TEST_TIMEOUT}"] if has_timeout else []
        files = [f for f in TEST_FILES if (ROOT / f).exists()]
        with open(log, "a") as f:
            f.write(f"# the tests marked gpu, in this order: {', '.join(files)}, torch_compile's last; "
                    + (f"pytest-timeout {TEST_TIMEOUT} s a test\n" if has_timeout else "pytest-timeout is not installed: "
                       "no per-test limit\n"))
        argv = [self.python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "bench.gpu.pytest_order",
                "-m", "gpu", "-v", "-rfEs", "--durations=10", *per_test, *files]
        code, cut = self.run_limited(argv, log, limit, env={"FLATCONV_OPENMP_NO_BUILD": "1"})
        lines = [line.strip("= ") for line in log.read_text().splitlines() if re.match(r"^=+ .*\d+(\.\d+)?s", line)]
        summary = lines[-1] if lines else "no pytest summary"
        # 0 all passed, 1 some failed (a result), 5 none collected (the programme is wrong)
        return Outcome(f"exit {code}", timed_out=cut, note=summary, failed=code not in (0, 1) and not cut)

    def sanitizer(self, tool: str, limit: float) -> Outcome:
        log = self.out / "sanitizer.log"
        until = time.monotonic() + limit
        exe = find_sanitizer()
        script = [self.python, SANITIZE_SCRIPT]
        env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "FLATCONV_OPENMP_NO_BUILD": "1"}
        if exe is None:
            why = "compute-sanitizer is not on the PATH (nor in $CUDA_HOME/bin, /usr/local/cuda/bin)"
            with open(log, "a") as f:
                f.write(f"\n# {tool}: not run: {why}\n")
            if not self.rehearse:
                return Outcome("absent", note=why)
            # The rehearsal proves the script and its environment start: alone, unchecked.
            code, cut = self.run_limited(script, log, limit, env)
            said = [ln for ln in log.read_text().splitlines() if ln.startswith(("ok  ", "FAIL", "SKIP"))]
            return Outcome("absent", timed_out=cut, note=f"{why}; rehearsal: the script alone exited {code}"
                           + (f" ({said[-1]})" if said else ""), failed=code not in (0, 2) and not cut)
        regex = kernel_regex()
        argv = [exe, "--tool", tool, "--error-exitcode", "3", "--kernel-regex", f"kns={regex}", *script]
        before = log.stat().st_size if log.exists() else 0
        code, cut = self.run_limited(argv, log, limit, env)
        section = log.read_text(errors="replace")[before:]
        ran = re.search(r"^(ok  |FAIL|SKIP)", section, re.M)
        note = f"kernels {regex}"
        if code not in (0, 3) and not cut and not ran and until - time.monotonic() > 5:
            # compute-sanitizer refused the option (an older release): the whole script instead
            note = "the kernel filter was refused: every kernel checked"
            before = log.stat().st_size
            code, cut = self.run_limited([exe, "--tool", tool, "--error-exitcode", "3", *script], log,
                                         until - time.monotonic(), env)
            section = log.read_text(errors="replace")[before:]
        refused = re.search(r"^.*not supported.*$", section, re.M | re.I)
        summary = re.findall(r"^========= (?:ERROR|RACECHECK) SUMMARY:.*$", section, re.M)
        skip = re.search(r"^SKIP .*$", section, re.M)
        if refused:
            note += f"; compute-sanitizer refused the device: {refused[0].strip()}"
        if summary:
            note += "; " + summary[-1].strip("= ")
        if skip:
            note += "; " + skip[0]
        # 0 clean, 3 the tool found errors, 1 a mismatch (results); 2 the script had no CuPy
        return Outcome(f"exit {code}", timed_out=cut, note=note, failed=code not in (0, 1, 2, 3) and not cut)

    def implementation_lines(self, limit: float) -> list[dict] | None:
        """The facts' implementation lines; when the facts stage printed none (cut, or
        failed), `python -m bench.gpu.facts --impls` once, within `limit`."""
        if self.implementations is None and not self.asked_implementations:
            self.asked_implementations = True
            log = self.steps_dir / "implementations.txt"
            self.run_limited([self.python, "-m", "bench.gpu.facts", "--impls"], log, limit)
            self.implementations = read_implementations(log.read_text())
            with open(self.bench_log, "a") as f:
                f.write(log.read_text())
        return self.implementations

    def sweep(self, step: Step, limit: float) -> Outcome:
        until = time.monotonic() + limit
        impl_args: list[str] = []
        if self.rehearse or step.select != "all":  # "all" on the GPU: the sweep's own default, every one
            table = self.implementation_lines(min(30.0, limit / 2))
            if table is None:
                return Outcome("skipped", note="no implementation lines (neither the facts stage nor "
                                               "`python -m bench.gpu.facts --impls` printed them)")
            names = select(step.select, table, self.device, self.rehearse)
            if not names:
                return Outcome("skipped", note=f"no implementation on {self.device} is {SELECTIONS[step.select][0]}")
            impl_args = ["--impl", ",".join(names)]
        limit = until - time.monotonic()
        preset = "smoke" if self.rehearse else step.preset
        flags = REHEARSE_FLAGS if self.rehearse else step.flags
        part = self.steps_dir / f"{step.name}.jsonl"
        argv = [self.python, "-m", "bench", "run", "--device", self.device, "--baseline", BASELINE, "--solo", "0",
                "--results", str(part), "--preset", preset, "--direction", step.direction, *impl_args, *flags]
        code, cut = self.run_limited(argv, self.bench_log, limit, ack=SWEEP_ACK)
        lines, bad = whole_lines(part)
        if lines:
            with open(self.results, "a") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
        counts: dict[str, int] = {}
        for line in lines:
            s = json.loads(line).get("status")
            counts[s] = counts.get(s, 0) + 1
        note = (f"{len(lines)} records ({', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'none'})"
                + (f", {bad} partial lines dropped" if bad else "")
                + f": --preset {preset} --direction {step.direction} {' '.join(impl_args)}")
        # 0 all measured, 1 a case failed (recorded: else the sweep itself broke), 130
        # interrupted (cut: what it measured is kept)
        broke = code not in (0, 1) or (code == 1 and not counts.get("failed"))
        return Outcome(f"exit {code}", timed_out=cut, note=note, failed=broke and not cut)

    def stages(self) -> list[Stage]:
        out = []
        if (ROOT / ".whl").is_dir() and any((ROOT / ".whl").glob("*.whl")):
            out.append(Stage("wheels", 0.1, 40, 5, Pass.wheels))
        out.append(Stage("facts", 0.15, 45, 10, Pass.facts))
        if not self.full:
            out.append(Stage("phases", 0.12, 40, 20, Pass.phases))
            out.append(Stage("tests", 0.35, 120, 15, Pass.tests))
            out.append(Stage("sanitizer:memcheck", 0.25, 45, 10, lambda p, limit: p.sanitizer("memcheck", limit)))
            out.append(Stage("sanitizer:racecheck", 0.25, 40, 10, lambda p, limit: p.sanitizer("racecheck", limit)))
        for step in FULL_STEPS if self.full else FIRST_STEPS:
            out.append(Stage(f"sweep:{step.name}", step.share, step.cap, 10, lambda p, limit, s=step: p.sweep(s, limit)))
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash bench/gpu/run.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for the pass's files")
    parser.add_argument("--full", action="store_true", help="the longer second pass: facts, then every table and "
                        "direction (the tests and the sanitizer ran in the first pass)")
    parser.add_argument("--rehearse", action="store_true", help="the same programme on a machine without a GPU")
    parser.add_argument("--deadline", type=float, default=None, help="seconds for the whole pass (default 360; "
                        "540 with --full)")
    parser.add_argument("--pass", dest="name", default=os.environ.get("PASS") or None,
                        help="the pass's name (default $PASS, else the UTC time it started)")
    args = parser.parse_args(argv)
    name = args.name or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    deadline = args.deadline if args.deadline is not None else DEADLINE["full" if args.full else "first"]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    p = Pass(out, full=args.full, rehearse=args.rehearse, deadline=deadline, name=name,
             python=os.environ.get("PYTHON") or sys.executable)
    return p.run(p.stages())


if __name__ == "__main__":
    sys.exit(main())
