"""Records and the results file.

`make_record` fills a `schema.Record` for a case from what the driver measured;
`ResultsWriter` appends each record to a JSON-lines file the moment its case ends
(flushed and fsynced), so an interrupted sweep keeps every case it finished, and
`--resume` can read back which cases are done.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from pathlib import Path

from . import machine, schema, timing
from .commit import COMMIT_ENV, COMMIT_FILE, git_commit  # noqa: F401 - the records' commit


@functools.lru_cache(maxsize=None)
def run_id() -> str:
    """One process's run; a child process of --isolate inherits its parent's (BENCH_RUN_ID)."""
    inherited = os.environ.get("BENCH_RUN_ID")
    if inherited:
        return inherited
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{machine.metadata()['host']}-{os.getpid()}"


TIMER = {"cpu": "perf_counter", "cuda": "cuda_event"}


def make_record(case, *, status: str, reason: str | None = None, stats: dict | None = None, bench=None,
                ceiling_log=None, threads: int | None = None, **measured) -> dict:
    """One result in the schema of bench/schema.py. `case` is any object with `id`,
    `device`, `describe()` and `extra_fields(stats)` (a layer case or a model case);
    `measured` holds further Record fields (peak_bytes, kernels, ...): a name that is not
    a field is an error, so a typo cannot write a column nobody reads. Without `bench`
    (a case measured in worker processes) `threads` is the case's thread count and the
    gate's fields come in `measured`."""
    if status not in schema.STATUSES:
        raise ValueError(f"status: expected one of {schema.STATUSES}, got {status!r}")
    fields = {**case.describe(), **(stats or {}), **measured, **case.extra_fields(stats)}
    if bench is not None:
        fields.update(max_rel_error=max(bench.errors.values()) if bench.errors else None, errors=bench.errors,
                      warmup_calls=bench.warmup_calls, runtime=bench.impl.runtime_info())
    threads = bench.threads if bench is not None else threads
    info = machine.record(case.device, threads, ceiling_log, timing.timer_overhead(case.device))
    copy = schema.copy_ceiling(info.get("copy_levels"), fields.get("bytes")) or info.get("copy_gbps")
    derived = schema.rates(fields.get("flops"), fields.get("bytes"), fields.get("time_median"), copy,
                           info.get("sgemm_gflops"))
    note = roofline_note(derived, fields, {**info, "copy_gbps": copy})
    derived.pop("roofline_gflops")
    rec = schema.Record(roofline_note=note, run_id=run_id(), case=case.id, status=status, reason=reason, timer=TIMER.get(case.device),
                        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        commit=git_commit(), machine=info, **derived, **fields)
    return rec.to_json()


def roofline_note(derived: dict, fields: dict, info: dict) -> str | None:
    """Why a fraction of the roofline above 1 is not a measuring error, by the regime the
    case is in. The ceilings are measured, not the hardware's peaks: a copy of the case's
    size (`info["copy_gbps"]`, schema.copy_ceiling) and the best large GEMM."""
    fraction = derived.get("roofline_fraction")
    if fraction is None or fraction <= 1:
        return None
    compute_bound = derived["intensity"] * info["copy_gbps"] >= info["sgemm_gflops"]
    if not compute_bound:
        return (f"memory-bound at this intensity, and the case moves {fields['bytes'] / 2**20:.1f} MiB: faster than "
                "the copy of a working set of its size the ceiling uses (a copy streams; a case may keep part of "
                "its data in the caches)")
    if fields.get("baseline"):
        return ("the dense convolution may run by Winograd or FFT, with fewer multiplications than the direct "
                "count charged here")
    return ("compute-bound, and this implementation's own kernels run faster than the framework's measured "
            "sgemm, the compute ceiling here (not the hardware peak)")


class ResultsWriter:
    """Appends one JSON record per line and flushes it at once. Without `resume` the file
    is started anew (one file, one run); with it, the cases already recorded `ok` there
    are `done` and kept."""

    def __init__(self, path: str | os.PathLike | None, resume: bool = False):
        self.path = Path(path) if path else None
        self.done: set[str] = set()
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            self.done = {r["case"] for r in read_records(self.path) if r.get("status") == "ok" and "case" in r}
            _end_with_newline(self.path)
        else:
            self.path.write_text("")

    def write(self, rec: dict) -> None:
        if not self.path:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_records(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a torn last line (a process killed mid-write) is dropped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _end_with_newline(path: Path) -> None:
    """Cut a torn last line, so the next record starts on a line of its own."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def writable(path: str | os.PathLike) -> str | None:
    """None when a results file can be written at `path` (its folder is made), else why
    not, in one line. Tried for real: permission bits say little to root."""
    p = Path(path)
    if p.is_dir():
        return f"{path} is a folder"
    existed = p.exists()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a"):
            pass
    except OSError as e:
        return f"{path} cannot be written ({e.strerror or e})"
    if not existed:
        p.unlink()
    return None
