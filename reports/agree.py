"""How well two sweeps of one machine and commit agree: the repeatability a noisy machine
allows.

    python -m reports agree A B [--within 0.10]

For every (implementation, layer, direction) timed in both, each run's speedup over its
own baseline (the dense layer's time in the same run ÷ the implementation's) is compared:
the two agree when they differ by at most `within`. Also each run's share of flagged
cases (bench.schema.quality_flags, as the report's quality section counts them). A
speedup is a ratio within one run, so it is what a sweep promises to repeat; a time alone
moves with the machine between processes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import tables
from .load import load

KEY = ["device", "table", "shape", "dtype", "direction", "impl"]


class AgreeError(Exception):
    """Nothing to compare (exit status 2)."""


def _one(path: Path, name: str) -> tuple[pd.DataFrame, int, int]:
    """The newest attempt of each case of `path`'s one run with a speedup; flagged and
    timed counts."""
    if not path.exists():
        raise AgreeError(f"{name}: no such file or folder: {path}")
    df = load([path]).records
    ok = df[df["status"] == "ok"]
    if ok.empty:
        raise AgreeError(f"{name}: no timed case in {path}")
    flagged = len(tables.quality(df))
    with_speedup = ok[ok["speedup"].notna() & ~ok["baseline"].astype(bool)]
    return with_speedup[KEY + ["speedup", "time_median"]], flagged, len(ok)


def agree(a: Path, b: Path, within: float = 0.10) -> tuple[dict, pd.DataFrame]:
    """The summary figures and the per-case table (worst disagreement first)."""
    left, flagged_a, timed_a = _one(a, "A")
    right, flagged_b, timed_b = _one(b, "B")
    pairs = left.merge(right, on=KEY, suffixes=("_a", "_b"))
    if pairs.empty:
        raise AgreeError("no implementation, layer and direction has a speedup in both")
    pairs["change"] = pairs["speedup_b"] / pairs["speedup_a"] - 1
    pairs["agrees"] = pairs["change"].abs() <= within
    pairs = pairs.reindex(pairs["change"].abs().sort_values(ascending=False).index).reset_index(drop=True)
    summary = {"pairs": len(pairs), "agree": int(pairs["agrees"].sum()), "within": within,
               "flagged_a": flagged_a, "timed_a": timed_a, "flagged_b": flagged_b, "timed_b": timed_b}
    return summary, pairs


def render(summary: dict, pairs: pd.DataFrame, worst: int = 15) -> str:
    lines = [f"speedups over the baseline that agree within {summary['within']:.0%}: {summary['agree']} of "
             f"{summary['pairs']} ({summary['agree'] / summary['pairs']:.0%})",
             f"flagged cases: A {summary['flagged_a']} of {summary['timed_a']} "
             f"({summary['flagged_a'] / summary['timed_a']:.0%}), B {summary['flagged_b']} of {summary['timed_b']} "
             f"({summary['flagged_b'] / summary['timed_b']:.0%})", "", "largest disagreements:"]
    for r in pairs.head(worst).to_dict("records"):
        lines.append(f"  {r['impl']:14} {r['table']}:{r['shape']:<22} {r['direction']:<26} "
                     f"{r['speedup_a']:7.2f}x -> {r['speedup_b']:7.2f}x ({r['change']:+.0%})")
    return "\n".join(lines) + "\n"
