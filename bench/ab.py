"""`python -m bench ab REV_A REV_B [options]`: two revisions of the implementations timed
against each other on this machine, case by case.

Each revision is checked out in a worktree of its own (`work` is the working tree as it
is, uncommitted changes included), and each implementation of each revision runs in a
worker process of its own that imports that revision's `impls` (its C extension built
from that revision's sources); the harness is this checkout's. The two revisions of a
case form a group of the sweep (bench/sweep.py): timed block by block in shuffled
passes, in rounds with fresh workers, so B / A of a case is a paired ratio with an
interval from the spread between rounds. A case is called slower (faster) when B / A is
above 1 + threshold (below 1 / (1 + threshold)) and, from rounds, Student's t on the
rounds' log ratios gives p < 0.01 (from one round's passes: the 95% interval excludes 1).
At 95% alone, one case in twenty of two identical revisions would be called a change
(HEAD against HEAD on the smoke grid, Zen 3 VM: 1 "faster" of 64 at p = 0.03); the
stricter test is reports compare's. Exit status: 0 no case slower, 1 some case slower, 2 a bad argument or revision.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import options, sweep, workers

WORKING_TREE = "work"


class RevisionError(ValueError):
    """A revision git does not know."""


def add_parser(sub) -> None:
    ab = sub.add_parser("ab", help="time two revisions of the implementations against each other")
    ab.add_argument("rev_a", help="the reference revision (a commit, branch, tag, or 'work' for the working tree)")
    ab.add_argument("rev_b", help="the revision under test")
    for opt in options.SHARED:
        if opt.flag in ("--results", "--resume"):
            continue
        if opt.switch:
            ab.add_argument(opt.flag, action="store_true", help=opt.help)
        else:
            ab.add_argument(opt.flag, default=opt.default, help=opt.help)
    options.add_sweep_options(ab)
    ab.add_argument("--threshold", default="0.05", help="slower means B/A above 1 + THRESHOLD (default 0.05)")
    ab.add_argument("--json", default=None, metavar="PATH", help="also write the comparison, one object per case")


def _git(*args: str, cwd: Path = workers.ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RevisionError((out.stderr.strip().splitlines() or [f"git {' '.join(args)} failed"])[-1])
    return out.stdout.strip()


def commit_of(rev: str) -> str:
    if rev == WORKING_TREE:
        return WORKING_TREE
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RevisionError:
        raise RevisionError(f"unknown revision {rev!r}") from None


@contextlib.contextmanager
def checkouts(revs: dict[str, str]):
    """{label: folder}: a detached worktree per commit (the working tree for 'work'),
    removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    made = []
    try:
        roots = {}
        for label, commit in revs.items():
            if commit == WORKING_TREE:
                roots[label] = workers.ROOT
                continue
            path = tmp / label
            _git("worktree", "add", "--detach", "--quiet", str(path), commit)
            made.append(path)
            roots[label] = path
        yield roots
    finally:
        for path in made:
            with contextlib.suppress(RevisionError):
                _git("worktree", "remove", "--force", str(path))
        with contextlib.suppress(RevisionError):
            _git("worktree", "prune")
        shutil.rmtree(tmp, ignore_errors=True)


P_VALUE = 0.01  # the same bar as reports compare's


def verdict(e, threshold: float) -> str:
    if e is None:
        return "not judged"
    clear = e.p_value < P_VALUE if e.method == "rounds" else (e.low > 1 or e.high < 1)
    if clear and e.value > 1 + threshold:
        return "slower"
    if clear and e.value < 1 / (1 + threshold):
        return "faster"
    return "no change"


def compare(recs: list[dict], members: list[sweep.Member], threshold: float) -> list[dict]:
    """One row per case: B / A with its intervals and the verdict."""
    by_key = {m.key: rec for m, rec in zip(members, recs)}
    rows = []
    for m in members:
        if not m.key.startswith("B:"):
            continue
        a, b = by_key["A:" + m.case.id], by_key[m.key]
        if a["status"] != "ok" or b["status"] != "ok":
            why = next(r["reason"] for r in (a, b) if r["status"] != "ok")
            rows.append({"case": m.case.id, "verdict": "not judged", "reason": why})
            continue
        from . import intervals

        e = intervals.paired_estimate(b, a)
        rows.append({"case": m.case.id, "a_median": a["time_median"], "b_median": b["time_median"],
                     "ratio": e.value if e else math.nan, "low": e.low if e else math.nan,
                     "high": e.high if e else math.nan, "pi_low": e.pi_low if e else math.nan,
                     "pi_high": e.pi_high if e else math.nan, "rounds": e.rounds if e else 0,
                     "p": e.p_value if e else math.nan,
                     "verdict": verdict(e, threshold)})
    return rows


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else "< 1e-4" if p < 1e-4 else f"{p:.4f}"


def render(rows: list[dict], rev_a: str, rev_b: str) -> str:
    def t(s):
        return f"{s * 1e3:.3f} ms" if s >= 1e-4 else f"{s * 1e6:.1f} us"

    width = max([len(r["case"]) for r in rows] + [4])
    lines = [f"{'case':<{width}}  {'A':>11}  {'B':>11}  {'B/A':>6}  {'95% interval':>14}  {'rerun within':>14}  {'p':>7}  verdict"]
    for r in rows:
        if "ratio" not in r:
            lines.append(f"{r['case']:<{width}}  {'':>11}  {'':>11}  {'':>6}  {'':>14}  {'':>14}  {'':>7}  {r['verdict']}: "
                         f"{r['reason']}")
            continue
        lines.append(f"{r['case']:<{width}}  {t(r['a_median']):>11}  {t(r['b_median']):>11}  {r['ratio']:6.3f}  "
                     f"{'[%.3f, %.3f]' % (r['low'], r['high']):>14}  {'[%.3f, %.3f]' % (r['pi_low'], r['pi_high']):>14}"
                     f"  {_p(r['p']):>7}  {r['verdict']}")
    slower = [r for r in rows if r["verdict"] == "slower"]
    faster = [r for r in rows if r["verdict"] == "faster"]
    lines.append("")
    for r in slower:
        lines.append(f"slower: {r['case']}: B/A {r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}], p {_p(r['p'])}")
    lines.append(f"A = {rev_a}, B = {rev_b}: {len(rows)} cases, {len(slower)} slower, {len(faster)} faster, "
                 f"{sum(r['verdict'] == 'no change' for r in rows)} no change, "
                 f"{sum(r['verdict'] == 'not judged' for r in rows)} not judged")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    try:
        cases = options.selected_cases(lambda name: getattr(args, name))
        plan = options.plans(args)[0]
        threshold = float(args.threshold)
        if not (threshold >= 0 and math.isfinite(threshold)):
            raise ValueError(f"--threshold: expected a fraction of 0 or more, got {args.threshold!r}")
        revs = {"A": commit_of(args.rev_a), "B": commit_of(args.rev_b)}
    except ValueError as e:
        return options.usage_error(str(e))
    with checkouts(revs) as roots:
        members = [sweep.Member(f"{label}:{c.id}", c, f"{label}:{c.impl}", roots[label], c.id)
                   for c in cases for label in ("A", "B")]
        journal = sweep.Journal(Path(tempfile.mkstemp(prefix="bench-ab-", suffix=".rounds")[1]))
        run = sweep.Sweep(members, plan, journal)
        recs = run.run()
        journal.path.unlink(missing_ok=True)
    rows = compare(recs, members, threshold)
    sys.stdout.write(render(rows, f"{args.rev_a} ({revs['A'][:10]})", f"{args.rev_b} ({revs['B'][:10]})"))
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    if run.interrupted:
        return 130
    return 1 if any(r["verdict"] == "slower" for r in rows) else 0
