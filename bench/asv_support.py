"""What the asv benchmark files share: the parameter grid, a case set up by the harness
driver, and its outcome in asv's terms (a skipped case raises NotImplementedError, which
asv records as skipped; a failed one raises, which asv records as failed).

The grid is chosen so that `asv continuous main~1 main` fits a CI job on a 2-core machine
(README.md gives the measured time): by default the `ci` table (two layers of the paper
table), the implementations a regression matters most for (CI_IMPLS: a rule on the
registry's declarations), forward, backward and train,
two processes per benchmark with their rounds interleaved between the two commits, few
samples each. BENCH_ASV_PRESET (comma-separated tables, e.g. `paper`) and BENCH_ASV_IMPLS
(`all`, or comma-separated names) open the full grid; a preset other than `ci` brings the
model table and the digits accuracy in too.
"""

from __future__ import annotations

import os

import impls

from . import cases, driver, memory, tables, timing

PRESET = [t for t in os.environ.get("BENCH_ASV_PRESET", "ci").split(",") if t]
CI_ONLY = PRESET == ["ci"]
# The CI grid's implementations, from the registry: the CPU ones of these roles that need
# no optional extra (CI installs none) and compile nothing at set-up (a cold compile in
# each of asv's processes would take the job's minutes): today dense, openmp,
# openmp_fused and torch.
CI_ROLES = ("baseline", "peer", "handwritten")


def ci_impls() -> tuple[str, ...]:
    out = []
    for name in impls.names():
        impl = impls.get(name)
        if "cpu" in impl.devices and impl.role in CI_ROLES and not impl.extras and not impl.compiles:
            out.append(name)
    return tuple(out)


CI_IMPLS = ci_impls()
# asv's own sampling, per benchmark: processes (rounds, interleaved across commits by
# `asv continuous`), then repeats per process up to a time budget; our set-up has already
# warmed the case up to steady state.
SAMPLING = {"processes": 2, "repeat": (1, 5, 1.0), "warmup_time": 0.05, "timeout": 600} if CI_ONLY else \
    {"processes": 2, "repeat": (3, 20, 10.0), "warmup_time": 0.2, "timeout": 600}
# The timing behind a track_ benchmark's rate.
TRACK_RULE = timing.StopRule(min_time=0.2, max_time=0.2)


def grid() -> tuple[list[str], list[str]]:
    """(devices, implementation names) of the grid."""
    devices, names = cases.asv_grid()
    wanted = os.environ.get("BENCH_ASV_IMPLS", "all" if not CI_ONLY else ",".join(CI_IMPLS))
    if wanted != "all":
        names = [n for n in names if n in wanted.split(",")]
    return devices, names


def layers() -> list[str]:
    return [f"{t}:{r.name}" for t in PRESET for r in tables.rows(t)]


def set_up(case):
    # under the launcher (python -m bench.memory run -- asv ...) the allocation counter is
    # preloaded: off for the timed calls, on for track_peak_bytes' calls only
    memory.counting()
    bench, _, rec = driver.Driver().set_up(case)
    if rec is None:
        return bench
    if rec["status"] == "skipped":
        raise NotImplementedError(rec["reason"])
    raise RuntimeError(rec["reason"])
