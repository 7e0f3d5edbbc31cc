"""The sweep of `python -m bench run` (and `bench ab`): worker processes, rounds across the
whole sweep, and one record per case at the end.

On a shared machine two things move a ratio between runs (docs/DESIGN.md, "How a number
is measured"): states of the machine that last seconds to minutes and slow
implementations unevenly, and states of a process that last its whole life (the dense
layer at (256,256,8,3): 3.8-4.1 ms in some fresh processes, 5.5-6.8 ms in others). So:

- every implementation runs in a worker process of its own (bench/workers.py), and the
  cases compared with each other (a group: every implementation of one layer, dtype and
  direction) are timed together, block by block, the workers asked in turn in a fresh
  random order each pass, the others idle meanwhile (Google Benchmark's random
  interleaving, pyperf's workers);
- the sweep visits every group in several rounds spread over its duration, each round
  with fresh workers (asv's rounds; Abedi and Brecht, ICPE 2017), so every case sees the
  same mix of machine states as the cases it is compared with, and its interval sees the
  spread between processes (bench/intervals.py);
- a group whose prediction interval is still wide after the planned rounds gets more
  rounds, worst first, within a share of the time spent so far;
- a sample of cases is timed alone too, once the other workers have stopped (`solo_ratio`).

Each finished visit is appended to a journal beside the results file (flushed, fsynced);
after every round, on an interruption (SIGINT, SIGTERM) and at the end, the results file
is written anew from it, one record per case. `--resume` continues the journal where it
stopped, so an interrupted sweep loses nothing but the visit in flight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from . import gate, gpu_state, intervals, machine, memory, probes, records, schema, workers
from .cases import known_impl

# How a case warms up in each worker process: the first time in a sweep to steady state
# (timing.warm_up's own rule, at most 0.3 s); later rounds to a shorter steady state, for
# the first round has shown what settles (the allocator, a compiled graph) and a round's
# fresh process only has to get there again.
WARMUP_FIRST = {"max_seconds": 0.3}
WARMUP_LATER = {"window": 1, "max_seconds": 0.1}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a sweep measures; `python -m bench run`'s options map onto this."""

    rounds: int = 5  # rounds across the sweep, each in fresh worker processes
    passes: int = 2  # shuffled passes per group and round
    # Seconds of one case in one pass (one call at least). Not shorter: switching between
    # worker processes costs the next block more than its first call on the 2-core VM (dense
    # (64,64,32,3) forward read 11 ms a call in 15 ms blocks alternated with two others,
    # 6.0 ms in 30 ms blocks, 6.2 ms alone; openmp_fused's 90th percentile block 8x its
    # median at 15 ms, 1.12x at 30 ms).
    block: float = 0.03
    max_rounds: int = 6  # rounds at most, for groups whose prediction interval stays wide
    rel_pi: float | None = 0.08  # ... wider than this (relative half-width); None: no more rounds
    extra_budget: float = 0.1  # more rounds take at most this share of the planned rounds' time
    solo: int = 2  # cases of one group also timed alone, the other workers stopped, each round
    threads: int | None = None
    seed: int = 0
    graph: bool = True  # GPU: kernel-only time by CUDA-graph replay

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Member:
    """One measured unit of a sweep: a case, in the worker `worker` (an implementation's
    name, or "A:name" for a revision of `bench ab`), whose impls come from `root`."""

    key: str
    case: object
    worker: str
    root: Path | None = None
    group: str = ""

    @property
    def baseline(self) -> bool:
        return bool(getattr(known_impl(self.case.impl), "baseline", False)) and self.root is None


def members_of(cases) -> list[Member]:
    return [Member(c.id, c, c.impl, None, c.group) for c in cases]


def groups_of(members: list[Member]) -> dict[str, list[Member]]:
    out: dict[str, list[Member]] = {}
    for m in members:
        out.setdefault(m.group, []).append(m)
    return out


class Interrupted(BaseException):
    """SIGINT or SIGTERM: the sweep stops, writes what it has, and says so. A BaseException,
    like KeyboardInterrupt: an `except Exception` around a measurement (the ceilings' GEMM)
    must not swallow it."""


# ------------------------------------------------------------------------ the journal
class Journal:
    """The visits of a sweep, one JSON object per line, each flushed and fsynced as its
    visit ends; the first line says what the sweep is (its run id, plan and members)."""

    def __init__(self, path: Path):
        self.path = path
        self.header: dict | None = None
        self.entries: list[dict] = []

    @staticmethod
    def beside(results: Path | None) -> Path | None:
        return results.with_name(results.name + ".rounds") if results is not None else None

    def load(self) -> None:
        for rec in records.read_records(self.path) if self.path.exists() else []:
            if rec.get("kind") == "sweep":
                self.header = rec
            elif rec.get("kind") in ("visit", "solo", "ceiling"):
                self.entries.append(rec)

    def start(self, header: dict) -> None:
        self.header = header
        self.entries = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._append(header)

    def add(self, entry: dict) -> None:
        self.entries.append(entry)
        self._append(entry)

    def _append(self, obj: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(obj, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def visits(self) -> list[dict]:
        return [e for e in self.entries if e["kind"] == "visit"]

    def done(self) -> set[tuple[int, str]]:
        return {(e["round"], e["group"]) for e in self.visits()}


# ------------------------------------------------------------------------ the sweep
def progress(line: str) -> None:
    """A progress line, flushed: a sweep piped into a log or a test reads it as it happens."""
    print(line, flush=True)


def position(r: int, planned: int, i: int, n: int) -> str:
    """Where a visit stands, for its progress line: visit `i` of the `n` of round `r`
    (0-based). A planned round reads `round 3 2/40`; a round after the `planned` ones
    (the groups whose prediction interval stayed wide, measured again) is a phase of its
    own, `re-measure 2/12 (round 6)`, so that no counter runs past its total."""
    return f"round {r + 1} {i}/{n}" if r < planned else f"re-measure {i}/{n} (round {r + 1})"


class Sweep:
    """Measure `members` under `plan`; `results` (or None) gets one record per member,
    `journal` the visits. `say` prints progress. `env` is the workers' environment."""

    def __init__(self, members: list[Member], plan: Plan, journal: Journal, results: Path | None = None,
                 say: Callable[[str], None] = progress, env: dict | None = None, resume: bool = False,
                 ceiling_log: machine.CeilingLog | None = None):
        self.members, self.plan, self.journal, self.results, self.say = members, plan, journal, results, say
        self.groups = groups_of(members)
        self.by_key = {m.key: m for m in members}
        self.ceilings = ceiling_log or machine.CeilingLog()
        # The workers have the allocation counter that makes peak memory repeat
        # (bench/memory.py) preloaded, switched off while they time: counting costs torch
        # about 3% a call (1886 allocations a forward call), switched off one load each.
        # Only where a case runs on the CPU: GPU peaks are torch's allocator's, and the
        # CUDA driver's threads need no shim under them.
        on_cpu = any(m.case.device == "cpu" for m in members)
        self.env = env if env is not None else (memory.preload_env(dict(os.environ)) if on_cpu else dict(os.environ))
        self._nvml = None
        self._resume = resume
        self.interrupted = False
        self.started = time.perf_counter()

    # ---------------------------------------------------------------- what the journal says
    def _final(self) -> dict[str, dict]:
        """Members that will not be timed again: skipped or failed, with their entry."""
        out = {}
        for v in self.journal.visits():
            for key, e in v["members"].items():
                if e["status"] != "ok":
                    out.setdefault(key, e)
        return out

    def _visited(self) -> set[str]:
        return {key for v in self.journal.visits() for key, e in v["members"].items() if e["status"] == "ok"}

    # ---------------------------------------------------------------- running
    def run(self) -> list[dict]:
        """Measure, write the results, and return the records (one per member)."""
        header = {"kind": "sweep", "run_id": records.run_id(), "plan": self.plan.to_json(),
                  "members": sorted(self.by_key), "solo": self._solo_sample(), "commit": records.git_commit()}
        if self._resume and self.journal.path.exists():
            self.journal.load()
            if self.journal.header is None or self.journal.header.get("members") != header["members"]:
                raise ValueError(f"--resume: {self.journal.path} is the journal of another sweep (other cases)")
            os.environ["BENCH_RUN_ID"] = self.journal.header["run_id"]
            records.run_id.cache_clear()
            for e in self.journal.entries:
                if e["kind"] == "ceiling":
                    self.ceilings.entries.setdefault((e["device"], e["threads"]), []).append(e["entry"])
        else:
            self.journal.start(header)
        self.solo = list(self.journal.header.get("solo") or [])
        previous = {signal.SIGINT: signal.getsignal(signal.SIGINT), signal.SIGTERM: signal.getsignal(signal.SIGTERM)}

        def stop(signum, frame):
            raise Interrupted(signal.Signals(signum).name)

        for s in previous:
            signal.signal(s, stop)
        oracle = tempfile.mkdtemp(prefix="bench-oracle-")  # the workers share the oracle's results
        self.env = {**self.env, gate.ORACLE_DIR_ENV: oracle}
        # jax's compiled executables, shared by the sweep's workers as inductor's on-disk
        # cache is by torch_compile's: a case compiles cold at its first visit (its recorded
        # compile_seconds), and each later round's fresh worker loads it (jax compiled the
        # same three graphs per layer again in every round: 12 s a round of the paper sweep).
        jax_cache = None
        if "JAX_COMPILATION_CACHE_DIR" not in self.env:
            jax_cache = tempfile.mkdtemp(prefix="bench-jax-cache-")
            self.env.update(JAX_COMPILATION_CACHE_DIR=jax_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        try:
            self._rounds()
        except Interrupted as e:
            self.interrupted = True
            self.say(f"interrupted by {e}: the results hold every visit that ended; --resume continues")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            shutil.rmtree(oracle, ignore_errors=True)
            if jax_cache is not None:
                shutil.rmtree(jax_cache, ignore_errors=True)
        return self.write()

    def _rounds(self) -> None:
        plan = self.plan
        threads_set = False
        for r in range(plan.rounds):
            if not threads_set:
                from . import threads

                threads.set_threads(plan.threads)
                threads_set = True
            self._round(r, list(self.groups))
        planned = time.perf_counter() - self.started
        deadline = time.perf_counter() + plan.extra_budget * planned
        for r in range(plan.rounds, plan.max_rounds):
            wide = self._wide_groups(r)
            if not wide or time.perf_counter() > deadline:
                break
            cost = self._visit_seconds()
            chosen, budget = [], deadline - time.perf_counter()
            for g in wide:  # worst first, as many as the budget lets in
                if chosen and budget < cost.get(g, 0.0):
                    break
                chosen.append(g)
                budget -= cost.get(g, 0.0)
            self.say(f"round {r + 1}: {len(chosen)} group(s) with a prediction interval wider than "
                     f"±{plan.rel_pi:.0%} measured again")
            self._round(r, chosen)

    def _round(self, r: int, group_keys: list[str]) -> None:
        done = self.journal.done()
        todo = [g for g in group_keys if (r, g) not in done]
        rng = random.Random(f"{self.plan.seed}:{r}")
        rng.shuffle(todo)
        solo_group = self.by_key[self.solo[0]].group if self.solo else None
        if solo_group in todo:  # last, so that its cases are timed alone right after it
            todo.remove(solo_group)
            todo.append(solo_group)
        final = self._final()
        needed = {m.worker: m.root for g in todo for m in self.groups[g] if m.key not in final}
        if not needed:
            return
        began = time.perf_counter()
        self._templates: dict = {}  # this round's: its workers forked from a fresh one
        pool = workers.start(needed, self.env, self._templates, self.say)
        self.say(f"round {r + 1}: {len(needed)} worker process(es) started in {time.perf_counter() - began:.1f} s")
        try:
            for i, g in enumerate(todo):
                self._visit(r, g, pool, position(r, self.plan.rounds, i + 1, len(todo)))
            if solo_group in todo:
                self._solo(r, pool)
        finally:
            workers.stop_all(pool.values(), self._templates)
        self.write()

    def _worker(self, pool: dict, member: Member) -> workers.Worker:
        w = pool.get(member.worker)
        if w is None or w.proc.poll() is not None:  # died earlier in this round: a fresh one
            if w is not None:
                w.kill()
            w = pool[member.worker] = workers.Worker(member.worker, member.root, self.env,
                                                     self._templates.get(member.root), self.say)
        return w

    def _gpu(self):
        if self._nvml is None:
            import torch

            self._nvml = gpu_state.Nvml(torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return self._nvml

    def _together(self, pool: dict, asks: list[tuple[Member, str, dict]]) -> dict[str, dict]:
        """Requests to several workers at once ((member, op, args)), while nothing is
        timed: the set-ups of a group run side by side on the cores the case's threads
        leave free. {member key: answer}; a worker that died answers a failed entry."""
        out: dict[str, dict] = {}
        # as many at once as the cores hold at the case's thread count: more would
        # oversubscribe them, and OpenMP's teams then crawl (a 1 ms call took 20-100 ms),
        # which a set-up's warm-up (and ONNX Runtime's choice of spinning) must not see
        width = max(1, (os.cpu_count() or 1) // (self.plan.threads or os.cpu_count() or 1))
        for start in range(0, len(asks), width):
            sent = []
            for m, op, args in asks[start:start + width]:
                try:
                    w = self._worker(pool, m)
                    w.send(op, **args)
                    sent.append((m, w))
                except workers.WorkerDied as e:
                    out[m.key] = _died(e)
            for m, w in sent:
                try:
                    out[m.key] = w.answer(workers.SETUP_SECONDS)
                except workers.WorkerDied as e:
                    out[m.key] = _died(e)
        return out

    def _visit(self, r: int, group: str, pool: dict, where: str) -> None:
        """One group in one round: set up each member in its worker, `passes` shuffled
        passes of blocks, the extras at a member's first visit; then the journal entry."""
        plan = self.plan
        final, visited = self._final(), self._visited()
        members = [m for m in self.groups[group] if m.key not in final]
        if not members:
            return
        device = members[0].case.device
        clock = [time.perf_counter()]
        setups = self._together(pool, [
            (m, "setup", {"case": m.case.id, "threads": plan.threads, "gate": m.key not in visited,
                          "warmup": WARMUP_FIRST if m.key not in visited else WARMUP_LATER})
            for m in members])
        entry: dict = {}
        active: list[Member] = []
        for m in members:
            answer = setups[m.key]
            if answer["status"] != "ok":
                entry[m.key] = answer
                continue
            entry[m.key] = {"status": "ok", "setup": answer if m.key not in visited else None,
                            "setup_s": answer.get("op_s"), "passes": [],
                            "times": [], "cpu_s": 0.0, "wall_s": 0.0, "quiet_s": 0.0, "pid": pool[m.worker].pid}
            active.append(m)
        probe = None
        if active:  # what this device can do, measured where a case runs on it
            self._ceilings(device)
            probe = self._time(r, group, pool, entry, active, visited, device, clock)
        else:
            clock += [time.perf_counter()] * 3
        for e in entry.values():
            e.pop("times", None)
        self.journal.add({"kind": "visit", "round": r, "group": group, "members": entry,
                          "probe_gflops": probe,
                          "seconds": round(time.perf_counter() - self.started, 3),
                          # where the visit's time went: set-up, passes, end and extras
                          "phases": [round(b - a, 3) for a, b in zip(clock, clock[1:])]})
        shown = ", ".join(f"{self.by_key[k].worker} {_fmt(e.get('median')) if e['status'] == 'ok' else e['status']}"
                          for k, e in entry.items())
        self.say(f"[{where} {time.perf_counter() - self.started:6.1f}s] {group}: {shown}")

    def _time(self, r: int, group: str, pool: dict, entry: dict, active: list, visited: set, device: str,
              clock: list) -> float | None:
        """The passes of a visit, then each member's end (and extras at its first visit);
        the compute probe around them (the lower of the two readings)."""
        plan = self.plan
        clock.append(time.perf_counter())
        probe = [probes.compute_probe(device)]
        probes.quiet()  # this process's pool, after the probe's matmul
        state0 = self._gpu().read() if device == "cuda" else None
        rng = random.Random(f"{plan.seed}:{r}:{group}")
        for _ in range(plan.passes):
            order = list(active)
            rng.shuffle(order)
            for m in order:
                e = entry[m.key]
                try:
                    answer = pool[m.worker].request("block", case=m.case.id, seconds=plan.block)
                except workers.WorkerDied as died:
                    answer = _died(died)
                if answer.get("status") == "failed":
                    entry[m.key] = answer
                    active.remove(m)
                    continue
                e["passes"].append(statistics.median(answer["times"]))
                e["times"].extend(answer["times"])
                for k in ("cpu_s", "wall_s", "quiet_s"):
                    e[k] += answer[k]
        state1 = self._gpu().read() if device == "cuda" else None
        probe.append(probes.compute_probe(device))
        clock.append(time.perf_counter())
        # once, at a case's first visit: GPU graph and cold times, peak memory, kernels. (All
        # of a group's at once on the CPU made the paper sweep's first round of ends 19%
        # slower on 2 cores, 54.5 s against 45.7: they contend as much as they overlap.)
        ends = self._together(pool, [(m, "end", {"case": m.case.id, "graph": plan.graph,
                                                 "extras": ("gpu", "footprint") if m.key not in visited else ()})
                                     for m in active])
        clock.append(time.perf_counter())
        for m in active:
            answer = ends[m.key]
            if answer["status"] != "ok":
                entry[m.key] = answer
                continue
            e = entry[m.key]
            e["extras"] = answer.get("extras")
            e["end_s"] = answer.get("op_s")
            times = e.pop("times")
            e["median"] = statistics.median(times)
            e["samples"] = schema.encode_samples(times)
            if device == "cuda":
                e["gpu"] = gpu_state.case_fields(self._gpu(), state0, state1, len(times))
        return probes.conditions(probes.CpuUse(), probe)["probe_gflops"]

    def _ceilings(self, device: str) -> None:
        """The machine's ceilings, measured again when they are two minutes old; each new
        measurement goes into the journal too (a resumed sweep's records keep them)."""
        seen = {k: len(v) for k, v in self.ceilings.entries.items()}
        began = time.perf_counter()
        self.ceilings.update(device)
        probes.quiet()
        for (dev, threads), entries in self.ceilings.entries.items():
            for entry in entries[seen.get((dev, threads), 0):]:
                self.journal.add({"kind": "ceiling", "device": dev, "threads": threads, "entry": entry})
                self.say(f"  ceilings on {dev}: copy {entry['copy_gbps']:.0f} GB/s, {entry['sgemm_source']} "
                         f"{entry['sgemm_gflops']:.0f} GFLOP/s, measured in {time.perf_counter() - began:.1f} s")

    def _visit_seconds(self) -> dict[str, float]:
        """Seconds one visit of each group took (its latest), from the journal's clock."""
        out, last = {}, 0.0
        for v in self.journal.visits():
            out[v["group"]] = max(0.0, v["seconds"] - last)
            last = v["seconds"]
        return out

    # ---------------------------------------------------------------- the solo check
    def _solo_sample(self) -> list[str]:
        """Members of one group (a forward one when there is one, with two members or more)
        chosen by the seed, to be timed alone (the other workers stopped) each round."""
        if self.plan.solo <= 0:
            return []
        rng = random.Random(f"{self.plan.seed}:solo")
        keys = sorted(g for g, ms in self.groups.items() if len(ms) > 1)
        forward = [g for g in keys if self.groups[g][0].case.direction == "forward"]
        pool = forward or keys
        if not pool:
            return []
        group = rng.choice(pool)
        return sorted(rng.sample([m.key for m in self.groups[group]], min(self.plan.solo, len(self.groups[group]))))

    def _solo(self, r: int, pool: dict) -> None:
        """The sampled members alone: right after their group's visit (the round's last),
        every other worker is stopped and each sampled member's own worker times it again,
        `passes` blocks in a row; its median beside its median in the visit. The same
        process both times, seconds apart: what differs is only the other runtimes' being
        there and their blocks between its own (a process's own mode, which moves a time
        by up to a third from one fresh process to the next here, cancels)."""
        visit = next((v for v in reversed(self.journal.visits()) if v["round"] == r), None)
        keep = {self.by_key[k].worker for k in self.solo}
        workers.stop_all([w for label, w in pool.items() if label not in keep])
        for key in self.solo:
            m = self.by_key[key]
            mine = (visit or {}).get("members", {}).get(key)
            if not mine or mine["status"] != "ok" or visit["group"] != m.group:
                continue
            try:
                w = pool[m.worker]
                w.request("setup", timeout=workers.SETUP_SECONDS, case=m.case.id, threads=self.plan.threads,
                          gate=False, warmup=WARMUP_LATER)
                times = []
                for _ in range(self.plan.passes):
                    times += w.request("block", case=m.case.id, seconds=self.plan.block)["times"]
                w.request("end", case=m.case.id)
            except (workers.WorkerDied, KeyError) as e:
                self.say(f"solo check of {key} failed: {e}")
                continue
            alone = statistics.median(times)
            self.journal.add({"kind": "solo", "round": r, "member": key, "alone": alone,
                              "interleaved": mine["median"]})
            self.say(f"  alone: {key} {_fmt(alone)} (interleaved {_fmt(mine['median'])}, "
                     f"ratio {mine['median'] / alone:.3f})")

    # ---------------------------------------------------------------- results
    def _wide_groups(self, r: int) -> list[str]:
        """Groups whose widest prediction interval (a member over its reference) is wider
        than plan.rel_pi, worst first."""
        if self.plan.rel_pi is None:
            return []
        widest = {}
        for group, recs in self._group_records().items():
            widths = [(rec.get("group_ratio") or {}).get("pi_halfwidth") for rec in recs]
            widths = [w for w in widths if isinstance(w, float) and math.isfinite(w)]
            if widths and max(widths) > self.plan.rel_pi:
                widest[group] = max(widths)
        return sorted(widest, key=lambda g: -widest[g])

    def _group_records(self) -> dict[str, list[dict]]:
        visits = self.journal.visits()
        solos = [e for e in self.journal.entries if e["kind"] == "solo"]
        out = {}
        for group, members in self.groups.items():
            out[group] = finalize_group(members, visits, solos, self.ceilings, self.plan)
        return out

    def write(self) -> list[dict]:
        """One record per member from the journal, written anew to the results file
        (atomically: a reader never sees half a file)."""
        recs = [rec for recs in self._group_records().values() for rec in recs]
        if self.results is not None:
            tmp = self.results.with_name(self.results.name + ".tmp")
            with open(tmp, "w") as f:
                for rec in recs:
                    f.write(json.dumps(rec, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.results)
        return recs


def _died(e: workers.WorkerDied) -> dict:
    return {"status": "failed", "reason": str(e), "exit_signal": e.signal_name}


def _fmt(seconds) -> str:
    if not seconds:
        return "-"
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.1f} us"


# ------------------------------------------------------------------------ records
def group_id(run_id: str, group: str) -> str:
    """The `interleave_group` of a group in a run: records with it were timed in the same
    passes of the same rounds."""
    return hashlib.sha1(f"{run_id}|{group}".encode()).hexdigest()[:12]


def _visits_of(key: str, visits: list[dict]) -> list[dict]:
    return [v["members"][key] | {"round": v["round"], "probe_gflops": v.get("probe_gflops"),
                                 "machine": v.get("machine")}
            for v in visits if key in v["members"]]


def finalize_group(members: list[Member], visits: list[dict], solos: list[dict], ceiling_log, plan: Plan) -> list[dict]:
    """The records of one group's members from the journal's visits: every round's calls
    pooled for the time statistics, the pass medians by round for the ratios, and for each
    member its ratio to its group's reference (the baseline, else the others' geometric
    mean) with that ratio's prediction interval, and a split of its rounds into two modes."""
    recs = {}
    for m in members:
        recs[m.key] = _member_record(m, _visits_of(m.key, visits), solos, ceiling_log, plan)
    ok = [m for m in members if recs[m.key]["status"] == "ok"]
    base = next((m for m in ok if m.baseline), None)
    for m in ok:
        rec = recs[m.key]
        others = [recs[o.key] for o in ok if o is not m]
        if base is not None and m is not base:
            ref, name = recs[base.key], base.case.impl
        elif others:
            ref, name = _geomean_record(others), "group"
        else:
            ref, name = None, None
        if ref is not None:
            e = intervals.paired_estimate(rec, ref)
            if e is not None:
                rec["group_ratio"] = {"reference": name, "value": e.value, "low": e.low, "high": e.high,
                                      "pi_low": e.pi_low, "pi_high": e.pi_high, "pi_halfwidth": e.pi_halfwidth,
                                      "method": e.method, "rounds": e.rounds}
        # modes: the member's rounds over the others' (what the machine did to all of them cancels)
        by_round = intervals.round_ratios(rec, _geomean_record(others)) if others else None
        values = ([statistics.median(r) if r else math.nan for r in by_round] if by_round
                  else list(rec.get("time_round_medians") or []))
        halves = intervals.split(values)
        if halves is not None:
            medians = rec["time_round_medians"]
            low, high = ([medians[i] for i in side] for side in halves)
            rec["bimodal"] = {"low": statistics.median(low), "high": statistics.median(high),
                              "rounds": [len(low), len(high)]}
    return [recs[m.key] for m in members]


def _geomean_record(recs: list[dict]) -> dict:
    """A stand-in record whose pass medians are the geometric mean of `recs`' pass by pass
    (over the passes all of them have), for a ratio to 'the rest of the group'."""
    rounds = [intervals.rounds_of(r.get("time_pass_medians")) or [] for r in recs]
    n_rounds = min(len(r) for r in rounds) if rounds else 0
    out = []
    for i in range(n_rounds):
        n = min(len(r[i]) for r in rounds)
        out.append([math.exp(statistics.fmean(math.log(r[i][p]) for r in rounds)) for p in range(n)])
    return {"interleave_group": recs[0].get("interleave_group"), "time_pass_medians": out}


def _member_record(m: Member, visits: list[dict], solos: list[dict], ceiling_log, plan: Plan) -> dict:
    case = m.case
    bad = next((v for v in visits if v["status"] != "ok"), None)
    first = next((v for v in visits if v["status"] == "ok" and v.get("setup")), None)
    measured = {}
    if first is not None:
        s = first["setup"]
        measured = {"errors": s["errors"], "max_rel_error": max(s["errors"].values()) if s["errors"] else None,
                    "warmup_calls": s["warmup_calls"], "runtime": s["runtime"], "compile_seconds": s["compile_seconds"]}
    threads = first["setup"]["threads"] if first is not None else plan.threads
    if bad is not None or not visits:
        status = bad["status"] if bad is not None else "skipped"
        reason = bad["reason"] if bad is not None else "not measured: the sweep ended before its first visit"
        extra = {"exit_signal": bad.get("exit_signal")} if bad is not None and bad.get("exit_signal") else {}
        return records.make_record(case, status=status, reason=reason, ceiling_log=ceiling_log, threads=threads,
                                   **measured, **extra)
    times = [t for v in visits for t in schema.decode_samples(v["samples"])]
    from . import timing

    stats = timing.summarize(times)
    by_round = [v["passes"] for v in visits]
    round_medians = [v["median"] for v in visits]
    later = [t for v in visits[len(visits) // 2:] for t in schema.decode_samples(v["samples"])]
    probes_seen = [v["probe_gflops"] for v in visits if v.get("probe_gflops")]
    cpu, wall = sum(v["cpu_s"] for v in visits), sum(v["wall_s"] for v in visits)
    planned = sum(1 for v in visits if v["round"] < plan.rounds)
    stats.update(
        time_pass_medians=by_round, time_round_medians=round_medians, process_rounds=len(visits),
        interleave_passes=sum(len(p) for p in by_round), interleave_group=group_id(records.run_id(), m.group),
        time_repeat_median=statistics.median(later) if later else None,
        worker_pids=[v.get("pid") for v in visits],
        stop_rule=f"{planned} rounds of {plan.passes} passes of {plan.block:g} s" + (
            f", {len(visits) - planned} more for a prediction interval wider than ±{plan.rel_pi:.0%}"
            if len(visits) > planned else ""),
        probe_gflops=statistics.median(probes_seen) if probes_seen else None,
        cpu_utilization=cpu / wall if wall > 0 else None)
    mine = [s for s in solos if s["member"] == m.key and s.get("alone")]
    if mine:
        stats["solo_ratio"] = math.exp(statistics.fmean(math.log(s["interleaved"] / s["alone"]) for s in mine))
    extras = first.get("extras") or {} if first else {}
    gpu = next((v["gpu"] for v in visits if v.get("gpu")), {})
    return records.make_record(case, status="ok", stats=stats, ceiling_log=ceiling_log, threads=threads,
                               **measured, **extras, **gpu)

