"""How well two sweeps of one machine and commit agree: the repeatability a noisy machine
allows, and whether the intervals and flags of the first predicted the second.

    python -m reports agree A B [--within 0.10] [--json]

For every (implementation, layer, direction) timed in both, each run's speedup over its
own baseline (the dense layer's time in the same run ÷ the implementation's) is compared:
the two agree when they differ by at most `within`; B's speedup is covered when it lies
inside A's 95% prediction interval (a sweep in rounds, bench/intervals.py). A pair is
flagged when A flagged the case or its baseline (bench.schema.quality_flags: a wide
prediction interval, two modes). A flag means something when flagged pairs disagree more
often than the others. A speedup is a ratio within one run, so it is what a sweep
promises to repeat; a time alone moves with the machine between processes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from . import tables
from .load import load

KEY = ["device", "table", "shape", "dtype", "direction", "impl"]
LAYER = ["device", "table", "shape", "dtype", "direction"]


class AgreeError(Exception):
    """Nothing to compare (exit status 2)."""


def _one(path: Path, name: str) -> tuple[pd.DataFrame, int, int]:
    """The cases of `path`'s run with a speedup (and whether they, or their layer's
    baseline, are flagged); flagged and timed counts."""
    if not path.exists():
        raise AgreeError(f"{name}: no such file or folder: {path}")
    df = load([path]).records
    ok = df[df["status"] == "ok"]
    if ok.empty:
        raise AgreeError(f"{name}: no timed case in {path}")
    flagged = tables.quality(df)
    marked = set(zip(flagged["impl"], flagged["layer"], flagged["direction"], flagged["device"]))
    ok = ok.assign(flagged=[(i, lay, d, dev) in marked for i, lay, d, dev in
                            zip(ok["impl"], ok["layer"], ok["direction"], ok["device"])])
    base_flag = ok[ok["baseline"].astype(bool)].groupby(LAYER)["flagged"].any().rename("baseline_flagged")
    ok = ok.merge(base_flag.reset_index(), on=LAYER, how="left")
    ok["flagged"] = ok["flagged"] | ok["baseline_flagged"].fillna(False).astype(bool)
    with_speedup = ok[ok["speedup"].notna() & ~ok["baseline"].astype(bool)]
    return (with_speedup[KEY + ["speedup", "speedup_pi_low", "speedup_pi_high", "time_median", "flagged"]],
            len(flagged), len(ok))


def agree(a: Path, b: Path, within: float = 0.10) -> tuple[dict, pd.DataFrame]:
    """The summary figures and the per-case table (worst disagreement first)."""
    left, flagged_a, timed_a = _one(a, "A")
    right, flagged_b, timed_b = _one(b, "B")
    pairs = left.merge(right, on=KEY, suffixes=("_a", "_b"))
    if pairs.empty:
        raise AgreeError("no implementation, layer and direction has a speedup in both")
    pairs["change"] = pairs["speedup_b"] / pairs["speedup_a"] - 1
    pairs["agrees"] = pairs["change"].abs() <= within
    has_pi = pairs["speedup_pi_low_a"].notna() & pairs["speedup_pi_high_a"].notna()
    pairs["covered"] = [bool(h) and lo <= s <= hi for h, lo, s, hi in
                        zip(has_pi, pairs["speedup_pi_low_a"], pairs["speedup_b"], pairs["speedup_pi_high_a"])]
    # relative, on the logarithmic scale the interval is symmetric on (bench.intervals.Estimate)
    pairs["halfwidth"] = (pairs["speedup_pi_high_a"] / pairs["speedup_pi_low_a"]) ** 0.5 - 1
    pairs = pairs.rename(columns={"flagged_a": "flagged"})
    pairs = pairs.reindex(pairs["change"].abs().sort_values(ascending=False).index).reset_index(drop=True)
    with_pi = pairs[pairs["halfwidth"].notna()]
    flagged, unflagged = pairs[pairs["flagged"]], pairs[~pairs["flagged"]]
    summary = {
        "pairs": len(pairs), "agree": int(pairs["agrees"].sum()), "within": within,
        "covered": int(with_pi["covered"].sum()), "with_interval": len(with_pi),
        "median_halfwidth": float(with_pi["halfwidth"].median()) if len(with_pi) else None,
        "flagged_a": flagged_a, "timed_a": timed_a, "flagged_b": flagged_b, "timed_b": timed_b,
        "disagree_flagged": _share(~flagged["agrees"]), "disagree_unflagged": _share(~unflagged["agrees"]),
        "flagged_pairs": len(flagged),
    }
    return summary, pairs


def _share(mask: pd.Series) -> float | None:
    return float(mask.mean()) if len(mask) else None


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0%}"


def render(summary: dict, pairs: pd.DataFrame, worst: int = 15) -> str:
    s = summary
    lines = [f"speedups over the baseline that agree within {s['within']:.0%}: {s['agree']} of "
             f"{s['pairs']} ({s['agree'] / s['pairs']:.0%})"]
    if s["with_interval"]:
        lines.append(f"B's speedup inside A's 95% prediction interval: {s['covered']} of {s['with_interval']} "
                     f"({s['covered'] / s['with_interval']:.0%}); median half-width ±{s['median_halfwidth']:.1%}")
    else:
        lines.append("A has no prediction intervals (a sweep of one round, or schema 2): coverage not judged")
    lines += [f"flagged cases: A {s['flagged_a']} of {s['timed_a']} ({s['flagged_a'] / s['timed_a']:.0%}), "
              f"B {s['flagged_b']} of {s['timed_b']} ({s['flagged_b'] / s['timed_b']:.0%})",
              f"pairs that disagree: flagged in A {_pct(s['disagree_flagged'])} (of {s['flagged_pairs']}), "
              f"unflagged {_pct(s['disagree_unflagged'])} (of {s['pairs'] - s['flagged_pairs']})",
              "", "largest disagreements:"]
    for r in pairs.head(worst).to_dict("records"):
        pi = (f"  A's interval [{r['speedup_pi_low_a']:.2f}, {r['speedup_pi_high_a']:.2f}]"
              if r["halfwidth"] == r["halfwidth"] else "")
        lines.append(f"  {r['impl']:14} {r['table']}:{r['shape']:<22} {r['direction']:<26} "
                     f"{r['speedup_a']:7.2f}x -> {r['speedup_b']:7.2f}x ({r['change']:+.0%}){pi}"
                     f"{'  flagged' if r['flagged'] else ''}")
    return "\n".join(lines) + "\n"


def to_json(summary: dict, pairs: pd.DataFrame) -> str:
    """One object: the summary's counts and `per_pair`, one object per pair."""
    keys = ["pairs", "agree", "covered", "median_halfwidth", "flagged_a", "timed_a", "flagged_b", "timed_b",
            "within", "with_interval", "flagged_pairs", "disagree_flagged", "disagree_unflagged"]
    out = {k: summary[k] for k in keys}
    out["per_pair"] = [{"impl": r["impl"], "shape": r["shape"], "direction": r["direction"],
                        "speedup_a": float(r["speedup_a"]), "speedup_b": float(r["speedup_b"]),
                        "agrees": bool(r["agrees"]), "covered": bool(r["covered"]), "flagged": bool(r["flagged"])}
                       for r in pairs.to_dict("records")]
    return json.dumps(out, indent=1, sort_keys=True) + "\n"
