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
import json
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
# A wait this long is said (and again each time as long again): a set-up that compiles or
# a request that hangs shows in the sweep's log while it happens, not only at its end (the
# first GPU pass measured nothing for 75 s and its log could not say where the time went).
WAIT_NOTICE = 15.0


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
                 template: "Template | None" = None, say=None):
        self.label = label
        self.say = say  # where a long wait is said (a sweep's progress lines), or None
        self._pending = "its start"
        parent, child = socket.socketpair()
        self._log = tempfile.NamedTemporaryFile(mode="w+b", prefix=f"worker-{label.replace(':', '-')}-",
                                                suffix=".log", delete=False)
        if template is not None and template.alive():
            self.proc = template.fork(child, self._log.name)
        else:
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
        self._pending = f"{op} of {args['case']}" if "case" in args else op
        try:
            self._conn.send({"op": op, **args})
        except (OSError, ValueError):
            raise self._died() from None

    def answer(self, timeout: float = ANSWER_SECONDS) -> dict:
        return self._answer(timeout)

    def _answer(self, timeout: float) -> dict:
        try:
            began = time.monotonic()
            while True:
                waited = time.monotonic() - began
                if waited >= timeout:
                    self.kill()
                    raise WorkerDied(f"worker {self.label} gave no answer within {timeout:.0f} s ({self._pending})")
                if self._conn.poll(min(WAIT_NOTICE, timeout - waited)):
                    break
                if self.say is not None and time.monotonic() - began < timeout:
                    self.say(f"  waiting for worker {self.label}: {self._pending}, "
                             f"{time.monotonic() - began:.0f} s so far")
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


def stop_all(pool, templates: dict | None = None) -> None:
    """Stop workers together (each takes most of a second to exit: torch's teardown),
    then the templates they were forked from."""
    pool = list(pool)
    for w in pool:
        if w.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                w._conn.send({"op": "stop"})
    for w in pool:
        w.stop()
    for template in (templates or {}).values():
        template.stop()
    if templates is not None:
        templates.clear()


def start(labels: dict[str, Path | None], env: dict | None = None,
          templates: dict | None = None, say=None) -> dict[str, Worker]:
    """Workers for `labels` ({label: impls root or None}), ready. With `templates` (a dict
    the caller keeps, and stops with stop_all), each is forked from a template process of
    its impls root, started here, that imported torch and the harness once: a worker then
    starts in a tenth of a second where importing torch took two (eight of them: 10 s of
    every round of a sweep on the 2-core VM)."""
    if templates is not None:
        for root in set(labels.values()):
            if root not in templates:
                templates[root] = Template(root, env)
    workers = {label: Worker(label, root, env, (templates or {}).get(root), say) for label, root in labels.items()}
    for w in workers.values():
        try:
            w.ready()
        except WorkerDied:
            pass  # the first request to it says how it died
    return workers


class _Forked:
    """A worker forked by a Template: what Worker needs of a subprocess.Popen (its exit
    status comes from the template, whose child it is)."""

    def __init__(self, template: "Template", pid: int):
        self.template, self.pid, self.returncode = template, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.template.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > end:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode


class Template:
    """A process that has imported torch, impls and the harness, and forks workers on
    request: `python -m bench.workers --template FD [IMPLS_ROOT]`. It runs no torch op
    and starts no thread pool before it forks (as asv's forkserver does); a sweep starts
    a fresh one each round, so every round's workers have an address layout of their own."""

    def __init__(self, impls_root: Path | None = None, env: dict | None = None):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "bench.workers", "--template", str(child.fileno())]
        if impls_root is not None:
            argv.append(str(impls_root))
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env if env is not None else dict(os.environ),
                                     pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        child.close()
        self._sock = parent
        self._sock.settimeout(START_SECONDS)
        try:
            self.hello = json.loads(self._sock.recv(4096) or b"null")
        except (OSError, ValueError):
            self.hello = None

    def alive(self) -> bool:
        return self.hello is not None and self.proc.poll() is None

    def _ask(self, request: dict, fds=()) -> dict:
        socket.send_fds(self._sock, [json.dumps(request).encode()], list(fds))
        return json.loads(self._sock.recv(4096))

    def fork(self, child: socket.socket, log: str) -> _Forked:
        return _Forked(self, self._ask({"op": "fork", "log": log}, [child.fileno()])["pid"])

    def status(self, pid: int) -> int | None:
        """The exit code of a worker it forked (negative: the signal), None while it runs."""
        try:
            return self._ask({"op": "status", "pid": pid})["code"]
        except (OSError, ValueError):  # the template is gone: so are the statuses
            return None if _running(pid) else -signal.SIGKILL

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            socket.send_fds(self._sock, [json.dumps({"op": "stop"}).encode()], [])
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._sock.close()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        """One call that is not kept, then calls for `seconds`, one at least. The first call
        pays for the switch from the worker timed before: its threads woken, its cores
        given back by the hypervisor, the caches and TLB the other process left (1.3-1.6x
        a call on the 2-core VM, and up to 40x a 0.4 ms call now and then)."""
        from . import timing
        from .probes import quiet

        bench, _ = self.benches[case]
        c0, w0 = time.process_time(), time.perf_counter()
        timing.call_times(bench, timing.StopRule(min_time=0, max_time=0, rel_ci=None, min_rounds=1))
        rule = timing.StopRule(min_time=seconds, max_time=seconds, rel_ci=None, min_rounds=1)
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
            if op != "block":  # (a block waits itself, and says how long): every answer
                from .probes import quiet

                quiet()  # comes once this process's pools have stopped spinning
        except Exception as e:  # noqa: BLE001 - one case's error must not end the worker
            from .driver import reset_after_error

            case = msg.get("case")
            if case:
                server.benches.pop(case, None)
                with contextlib.suppress(Exception):
                    reset_after_error(case.split("/")[1])
            answer = {"status": "failed", "reason": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
        conn.send(answer)


def template(fd: int, impls_root: str | None = None) -> int:
    """The template's loop: fork a worker for each request (its socket comes with the
    request), say the exit status of those that ended, stop when told."""
    if impls_root:
        sys.path.insert(0, impls_root)
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import impls  # noqa: F401 - what every worker needs, imported once

    from . import cases, driver, memory  # noqa: F401

    ended: dict[int, int] = {}

    def reap(*_):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            ended[pid] = os.waitstatus_to_exitcode(status)

    signal.signal(signal.SIGCHLD, reap)
    sock.send(json.dumps({"pid": os.getpid()}).encode())
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 4096, 1)
        if not msg:
            return 0
        request = json.loads(msg)
        if request["op"] == "stop":
            return 0
        if request["op"] == "status":
            reap()
            sock.send(json.dumps({"code": ended.get(request["pid"])}).encode())
            continue
        pid = os.fork()
        if pid == 0:  # the worker: a session of its own, its output in its log, then serve
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                os.setsid()
                log = os.open(request["log"], os.O_WRONLY | os.O_APPEND)
                os.dup2(log, 1)
                os.dup2(log, 2)
                code = serve(fds[0], impls_root)
            except BaseException:  # noqa: BLE001 - said in its log, which the driver reads
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(fds[0])
        sock.send(json.dumps({"pid": pid}).encode())


if __name__ == "__main__":
    if sys.argv[1] == "--template":
        sys.exit(template(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
    sys.exit(serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
