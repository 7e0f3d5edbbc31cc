"""Worker processes: each implementation measured in a process of its own.

Runtimes that share a process disturb each other: thread pools that spin after a call
slow the next implementation timed, two OpenMP runtimes fight over the cores, and one
runtime's allocator state or a crash reaches the others (docs/DESIGN.md, "Measured
pitfalls"). So the sweep (bench/sweep.py) gives every implementation its own long-lived
worker, with its own imports, thread pools and allocator, as pyperf gives a benchmark
its worker processes and asv gives each benchmark a process, and asks the workers in
turn to run a block of calls while the others wait idle.

The driver side is `Worker`; the worker side is `serve()`, run as
`python -m bench.workers FD [IMPLS_ROOT]`: it answers requests over a socket until told
to stop. The requests:

- `setup`: build the case (seeded inputs, the correctness gate when asked, warm-up);
- `block`: time calls for a given number of seconds (one call at least), then wait until
  the process's own threads have gone quiet (a pool that spins after a call would
  otherwise run into the next worker's block), and send back the per-call times;
- `end`: check that nothing compiled while timed, optionally measure peak memory and the
  kernels that ran (and on a GPU the graph and cold-cache times), drop the case;
- `stop`.

`IMPLS_ROOT` (bench ab): the folder whose `impls` package the worker imports, so that two
revisions' implementations are measured by one driver; the harness itself (this package)
is always the driver's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# How long the driver waits for an answer before it calls a worker hung and kills it:
# a set-up may compile (torch.compile's first shape, the C extension of a fresh worktree).
SETUP_SECONDS = 600
ANSWER_SECONDS = 120
START_SECONDS = 120

# Going quiet after a block: the process's CPU time over a short window must fall below
# this share of one core (only its sleeping main thread is left), within QUIET_MAX.
QUIET_WINDOW, QUIET_SHARE, QUIET_MAX = 0.002, 0.1, 0.1


class WorkerDied(Exception):
    """The worker process ended (a crash, the out-of-memory killer) or stopped answering."""

    def __init__(self, message: str, signal_name: str | None = None):
        super().__init__(message)
        self.signal_name = signal_name


# ------------------------------------------------------------------------ driver side
class Worker:
    """One worker process, for the implementations of one `impls` tree (a label such as
    "torch" or "A:torch" names it in messages). Requests block until answered."""

    def __init__(self, label: str, impls_root: Path | None = None, env: dict | None = None,
                 log_dir: Path | None = None):
        self.label = label
        parent, child = socket.socketpair()
        self._log = tempfile.NamedTemporaryFile(mode="w+b", prefix=f"worker-{label.replace(':', '-')}-",
                                                suffix=".log", dir=log_dir, delete=False)
        argv = [sys.executable, "-m", "bench.workers", str(child.fileno())]
        if impls_root is not None:
            argv.append(str(impls_root))
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env if env is not None else dict(os.environ),
                                     pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        child.close()
        self._sock = parent  # kept open: Connection works on its descriptor
        self._conn = Connection(os.dup(parent.fileno()))
        self.hello: dict | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self, timeout: float = START_SECONDS) -> dict:
        """The worker's greeting (pid, where its impls come from), once its imports are done."""
        if self.hello is None:
            self.hello = self._answer(timeout)
        return self.hello

    def request(self, op: str, timeout: float = ANSWER_SECONDS, **args) -> dict:
        """Send one request and wait for its answer; WorkerDied when the process ended or
        did not answer within `timeout` seconds (then it is killed)."""
        self.send(op, **args)
        return self.answer(timeout)

    def send(self, op: str, **args) -> None:
        """Send a request without waiting (`answer` collects it): several workers then set
        cases up at once, while nothing is timed."""
        self.ready()
        try:
            self._conn.send({"op": op, **args})
        except (OSError, ValueError):
            raise self._died() from None

    def answer(self, timeout: float = ANSWER_SECONDS) -> dict:
        return self._answer(timeout)

    def _answer(self, timeout: float) -> dict:
        try:
            if not self._conn.poll(timeout):
                self.kill()
                raise WorkerDied(f"worker {self.label} gave no answer within {timeout:.0f} s")
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None

    def _died(self) -> WorkerDied:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        name = signal.Signals(-code).name if code < 0 else None
        how = f"signal {name}" if name else f"exit status {code}"
        last = self.log_tail()
        return WorkerDied(f"the worker process of {self.label} ended by {how}" + (f" ({last})" if last else ""), name)

    def log_tail(self) -> str:
        """The last line the worker printed (its last words when it died)."""
        try:
            lines = Path(self._log.name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def stop(self) -> None:
        """Ask the worker to end; kill it if it does not within a few seconds."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send({"op": "stop"})
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        for closing in (self._conn.close, self._sock.close, self._log.close):
            with contextlib.suppress(OSError):
                closing()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


def stop_all(pool) -> None:
    """Stop workers together: each takes most of a second to exit (torch's teardown)."""
    pool = list(pool)
    for w in pool:
        if w.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                w._conn.send({"op": "stop"})
    for w in pool:
        w.stop()


def start(labels: dict[str, Path | None], env: dict | None = None) -> dict[str, Worker]:
    """Workers for `labels` ({label: impls root or None}), started together (nothing is
    timed while they import) and ready."""
    workers = {label: Worker(label, root, env) for label, root in labels.items()}
    for w in workers.values():
        try:
            w.ready()
        except WorkerDied:
            pass  # the first request to it says how it died
    return workers


def quiet() -> float:
    """Wait until this process's threads are idle (its CPU time over QUIET_WINDOW below
    QUIET_SHARE of it), at most QUIET_MAX seconds; the seconds waited."""
    start = time.perf_counter()
    while True:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(QUIET_WINDOW)
        busy = (time.process_time() - c0) / (time.perf_counter() - w0)
        if busy < QUIET_SHARE or time.perf_counter() - start > QUIET_MAX:
            return time.perf_counter() - start


# ------------------------------------------------------------------------ worker side
class _Server:
    """The worker's state: the cases it has set up, by id."""

    def __init__(self):
        self.benches: dict[str, tuple] = {}

    def setup(self, case: str, threads: int | None, gate: bool, warmup: dict | None) -> dict:
        from . import driver
        from .cases import from_id

        c = from_id(case)
        before = driver.compile_stats_of(c.impl)
        try:
            bench = c.set_up(threads, warmup=warmup, gate=gate)
        except driver.gate.Unavailable as e:
            return {"status": "skipped", "reason": str(e)}
        except driver.gate.GateFailed as e:
            return {"status": "failed", "reason": str(e)}
        after = driver.compile_stats_of(c.impl)
        self.benches[case] = (bench, after)
        return {"status": "ok", "errors": bench.errors, "warmup_calls": bench.warmup_calls,
                "runtime": bench.impl.runtime_info(), "threads": bench.threads,
                "compile_seconds": (after["compile_seconds"] - before["compile_seconds"]) if after else None}

    def block(self, case: str, seconds: float) -> dict:
        from . import timing

        bench, _ = self.benches[case]
        rule = timing.StopRule(min_time=seconds, max_time=seconds, rel_ci=None, min_rounds=1)
        c0, w0 = time.process_time(), time.perf_counter()
        times, _ = timing.call_times(bench, rule)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        return {"times": times, "cpu_s": cpu, "wall_s": wall, "quiet_s": quiet()}

    def end(self, case: str, extras: tuple = (), graph: bool = True) -> dict:
        """Drop the case after its blocks; `extras` names what to measure of it first:
        "gpu" (graph and cold-cache times), "footprint" (peak memory, kernels)."""
        from . import driver

        bench, after_setup = self.benches.pop(case)
        out: dict = {"status": "ok"}
        now = driver.compile_stats_of(bench.case.impl)
        if now is not None and after_setup is not None and now["compilations"] > after_setup["compilations"]:
            return {"status": "failed", "reason": f"{bench.case.impl} compiled "
                    f"{now['compilations'] - after_setup['compilations']} time(s) while timed: the time would "
                    "include the compiler"}
        out["extras"] = {}
        if "gpu" in extras:
            out["extras"].update(driver.gpu_views(bench, graph))
        if "footprint" in extras:
            out["extras"].update(driver.footprint(bench))
        return out

    def drop(self, case: str) -> dict:
        self.benches.pop(case, None)
        return {"status": "ok"}


def serve(fd: int, impls_root: str | None = None) -> int:
    if impls_root:
        sys.path.insert(0, impls_root)
    conn = Connection(fd)
    # The driver interrupts the sweep, not its workers: a Ctrl-C reaches the whole
    # foreground process group, and a worker that died of it would be recorded as a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import impls

    from . import cases, driver, memory  # noqa: F401 - imported now, while the workers start together

    memory.counting()  # the preloaded allocation counter (if any) off: it counts peak calls only

    where = str(Path(impls.__file__).resolve().parent.parent)
    if impls_root and Path(where) != Path(impls_root).resolve():
        conn.send({"error": f"impls imported from {where}, not {impls_root}"})
        return 2
    server = _Server()
    conn.send({"pid": os.getpid(), "impls_root": where, "python": sys.version.split()[0]})
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return 0
        op = msg.pop("op")
        if op == "stop":
            return 0
        began = time.perf_counter()
        try:
            answer = getattr(server, op)(**msg)
            answer["op_s"] = time.perf_counter() - began  # where a sweep's time goes
        except Exception as e:  # noqa: BLE001 - one case's error must not end the worker
            from .driver import reset_after_error

            case = msg.get("case")
            if case:
                server.benches.pop(case, None)
                with contextlib.suppress(Exception):
                    reset_after_error(case.split("/")[1])
            answer = {"status": "failed", "reason": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
        conn.send(answer)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
