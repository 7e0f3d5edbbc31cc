"""Did NEW get slower than OLD? Case by case, with the uncertainty of each ratio.

    python -m reports compare OLD NEW [--threshold 0.10] [--alpha 0.01] [--format terminal|markdown|csv]

OLD and NEW are each a results file (JSON lines, pytest-benchmark JSON), a folder (read
as `build` reads one) or an asv results folder. Per case measured on both sides: the
ratio NEW/OLD of the median times with its 95% interval (bench.intervals) and, where
both sides kept the raw times, a two-sided Mann–Whitney U p-value.

Matching. A case is its case id plus device and dtype (asv: benchmark and parameters).
When each side holds one machine, cases match across them, whatever the machines are
(comparing a branch measured on one box with main measured on another is the caller's
decision; the table names both). When either side holds several machines, the machine
(host) is part of the match too, so the same case id from two machines is never paired
by accident. A case measured in several runs on one side: its newest run counts (by
timestamp; asv: by commit date).

Cases timed in rounds of a sweep on both sides (schema 3: `time_round_medians`, each round
in fresh worker processes) are judged against the run-to-run spread, not the spread of
single calls within one measurement (thousands of calls make any shift "significant"):
NEW/OLD is the ratio of the geometric means of the rounds' medians, its interval and
p-value Welch's t on their logarithms. And the machine's own drift between the two runs
is taken out first: a shared machine can run a whole sweep some percent slower than the
last, every implementation with it, so each such ratio is divided by the median NEW/OLD
over all of them (the `machine factor`, printed; with fewer than MIN_FOR_FACTOR such
cases it is 1). One implementation that changed moves that median little; the machine
moves all of them.

Slower: NEW/OLD above 1 + threshold and, where both sides have rounds or raw times, p < alpha;
where either side lacks them, the lower end of the ratio's interval above 1 + threshold
(the interval then comes from the medians' 95% intervals, asv's 99% interval, or the IQR
notch; see bench.intervals). Faster is the mirror image (below 1 / (1 + threshold)). A
case with neither raw times nor an interval is listed as not judged and never fails.

Exit status: 0 no case slower, 1 some case slower, 2 bad arguments or nothing to compare.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench import intervals
from .html import fmt_time
from .load import load

KEY = ["case", "device", "dtype"]
FORMATS = ("terminal", "markdown", "csv")


class CompareError(Exception):
    """A problem with the arguments or the inputs (exit status 2)."""


def _cases_from_records(records: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Timed cases, the newest run of each; and how many cases had several runs."""
    ok = records[(records["status"] == "ok") & records["time_median"].notna()].copy()
    if ok.empty:
        return pd.DataFrame(), 0
    ok["_ts"] = pd.to_datetime(ok["timestamp"], errors="coerce", utc=True, format="ISO8601")
    ok = ok.sort_values(["_ts", "run_id"], na_position="first", kind="stable")
    group = ["machine"] + KEY
    repeated = int((ok.fillna({"device": "", "dtype": ""}).groupby(group)["run_id"].nunique() > 1).sum())
    ok = ok.drop_duplicates(group, keep="last")
    rows = [{
        "case": r["case"], "device": r["device"], "dtype": r["dtype"], "machine": r["machine"],
        "run": r["run_id"], "median": r["time_median"], "samples": intervals.samples(r["time_samples"]),
        "interval": intervals.median_interval(r), "rounds": _rounds(r),
    } for r in ok.to_dict("records")]
    return pd.DataFrame(rows), repeated


def cases_of(records: pd.DataFrame) -> pd.DataFrame:
    """The timed cases of a tidy records table (`load().records`, or the rows of one run
    of it), one row per case and machine, the newest run of each: what `judge` takes."""
    return _cases_from_records(records)[0]


def _rounds(r) -> list[float] | None:
    """The rounds' medians of a case timed in rounds (at least MIN_ROUNDS), else None."""
    values = intervals.rounds_of(r.get("time_round_medians"))
    values = [v for v in values[0] if v > 0] if values and len(values) == 1 else None
    return values if values and len(values) >= intervals.MIN_ROUNDS else None


def _cases_from_asv(asv: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """asv time benchmarks, the newest commit of each; asv's 99% interval stands in where
    it kept no samples."""
    data = asv[(asv["type"] == "time") & asv["value"].notna()].copy()
    if data.empty:
        return pd.DataFrame(), 0
    data["case"] = [f"{b}({p})" if p else b for b, p in zip(data["benchmark"], data["params"])]
    data = data.sort_values("date", kind="stable")
    repeated = int((data.groupby(["machine", "case"])["commit"].nunique() > 1).sum())
    data = data.drop_duplicates(["machine", "case"], keep="last")
    rows = []
    for r in data.to_dict("records"):
        low, high = r["ci99_low"], r["ci99_high"]
        has = all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (low, high))
        rows.append({"case": r["case"], "device": None, "dtype": None, "machine": r["machine"],
                     "run": str(r["commit"])[:8], "median": r["value"],
                     "samples": intervals.samples(r["samples"]), "rounds": None,
                     "interval": (low, high, "ci99") if has else (math.nan, math.nan, None)})
    return pd.DataFrame(rows), repeated


def read_side(path: Path, name: str) -> tuple[pd.DataFrame, list[str]]:
    """The timed cases of one side (one row per case and machine) and notes about them."""
    if not path.exists():
        raise CompareError(f"{name}: no such file or folder: {path}")
    data = load([path])
    parts, notes = [], []
    for cases, repeated in (_cases_from_records(data.records), _cases_from_asv(data.asv)):
        if not cases.empty:
            parts.append(cases)
        if repeated:
            notes.append(f"{name}: {repeated} cases were measured in several runs; the newest run of each "
                         f"is compared")
    if not parts:
        raise CompareError(f"{name}: no timed case in {path}" + (f" ({data.problems[0]})" if data.problems else ""))
    return pd.concat(parts, ignore_index=True), notes


def judge(old: pd.DataFrame, new: pd.DataFrame, threshold: float = 0.10, alpha: float = 0.01) -> pd.DataFrame:
    """One row per matched case: medians, NEW/OLD with its interval, p-value, verdict
    (slower, faster, no clear change, not judged). See the module docstring."""
    by_machine = old["machine"].nunique() > 1 or new["machine"].nunique() > 1
    keys = KEY + (["machine"] if by_machine else [])
    old = old.assign(device=old["device"].fillna(""), dtype=old["dtype"].fillna(""))
    new = new.assign(device=new["device"].fillna(""), dtype=new["dtype"].fillna(""))
    pairs = old.merge(new, on=keys, suffixes=("_old", "_new"))
    if "machine" in keys:
        pairs["machine_old"] = pairs["machine_new"] = pairs["machine"]
    rows = []
    slow, fast = 1 + threshold, 1 / (1 + threshold)
    factor = machine_factor(pairs)
    for r in pairs.to_dict("records"):
        ratio = r["median_new"] / r["median_old"]
        low, high, how = intervals.ratio_interval(r["samples_new"], r["samples_old"], r["interval_new"],
                                                  r["interval_old"])
        p = math.nan
        if isinstance(r["rounds_new"], list) and isinstance(r["rounds_old"], list):
            ratio, low, high, p = intervals.welch_ratio(r["rounds_new"], r["rounds_old"], factor)
            how = "rounds"
            verdict = ("slower" if ratio > slow and p < alpha else "faster" if ratio < fast and p < alpha
                       else "no clear change")
        elif how == "bootstrap":
            p = intervals.mann_whitney_p(r["samples_new"], r["samples_old"])
            verdict = ("slower" if ratio > slow and p < alpha else "faster" if ratio < fast and p < alpha
                       else "no clear change")
        elif how is not None:
            verdict = "slower" if low > slow else "faster" if high < fast else "no clear change"
        else:
            verdict = "not judged"
        machine = (r["machine_old"] if r["machine_old"] == r["machine_new"]
                   else f"{r['machine_old']} → {r['machine_new']}")
        rows.append({"case": r["case"], "device": r["device"], "dtype": r["dtype"], "machine": machine,
                     "old_run": r["run_old"], "new_run": r["run_new"], "old_median": r["median_old"],
                     "new_median": r["median_new"], "ratio": ratio, "low": low, "high": high,
                     "interval": how, "p": p, "verdict": verdict})
    columns = ["case", "device", "dtype", "machine", "old_run", "new_run", "old_median", "new_median", "ratio",
               "low", "high", "interval", "p", "verdict"]
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["machine_factor"] = factor
    order = {"slower": 0, "faster": 1, "no clear change": 2, "not judged": 3}
    out["_v"] = out["verdict"].map(order)
    out["_r"] = -out["ratio"]
    return out.sort_values(["_v", "_r", "case"]).drop(columns=["_v", "_r"]).reset_index(drop=True)


MIN_FOR_FACTOR = 20  # cases timed in rounds on both sides, for their median NEW/OLD to mean the machine


def machine_factor(pairs: pd.DataFrame) -> float:
    """The median NEW/OLD of the geometric means of the rounds, over the matched cases
    timed in rounds on both sides (per the module docstring); 1 with too few."""
    both = [(n, o) for n, o in zip(pairs.get("rounds_new", []), pairs.get("rounds_old", []))
            if isinstance(n, list) and isinstance(o, list)]
    if len(both) < MIN_FOR_FACTOR:
        return 1.0
    return float(np.median([math.exp(np.mean(np.log(n)) - np.mean(np.log(o))) for n, o in both]))


def _fmt_interval(low, high) -> str:
    return "" if not (math.isfinite(low) and math.isfinite(high)) else f"[{low:.2f}, {high:.2f}]"


def _fmt_p(p) -> str:
    return "" if not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def _text_rows(result: pd.DataFrame) -> list[list[str]]:
    return [[r["case"], r["machine"], fmt_time(r["old_median"]), fmt_time(r["new_median"]), f"{r['ratio']:.3f}×",
             _fmt_interval(r["low"], r["high"]), _fmt_p(r["p"]), r["verdict"]] for r in result.to_dict("records")]


HEADER = ["case", "machine", "old", "new", "new/old", "95% interval", "p", "verdict"]


def render(result: pd.DataFrame, fmt: str) -> str:
    """The table as aligned text, a markdown table, or CSV (numbers unformatted)."""
    if fmt == "csv":
        buffer = io.StringIO()
        columns = ["case", "device", "dtype", "machine", "old_run", "new_run", "old_median", "new_median",
                   "ratio", "low", "high", "interval", "p", "verdict"]
        result[columns].rename(columns={"old_median": "old_median_s", "new_median": "new_median_s",
                                        "low": "ratio_low", "high": "ratio_high", "p": "p_value"}
                               ).to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.6g")
        return buffer.getvalue()
    rows = _text_rows(result)
    if fmt == "markdown":
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(HEADER)]
    right = {2, 3, 4, 6}  # numbers

    def line(cells):
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()
    return "\n".join([line(HEADER), line(["-" * w for w in widths])] + [line(row) for row in rows]) + "\n"


def verdict_lines(result: pd.DataFrame, threshold: float, alpha: float, only_old: int, only_new: int) -> list[str]:
    """A line per slower case, then the tally."""
    lines = []
    for r in result[result["verdict"] == "slower"].to_dict("records"):
        p = _fmt_p(r["p"])
        evidence = (p.replace("<", "p < ") if p.startswith("<") else f"p = {p}") if p else f"interval from {r['interval']}"
        lines.append(f"slower: {r['case']} on {r['machine']}: {r['ratio']:.2f}× "
                     f"{_fmt_interval(r['low'], r['high'])}, {evidence}")
    counts = result["verdict"].value_counts()
    tally = ", ".join(f"{counts.get(v, 0)} {v}" for v in ("slower", "faster", "no clear change", "not judged"))
    lines.append(f"{len(result)} cases compared (slower means above {1 + threshold:.2f}× with p < {alpha:g}, or the "
                 f"interval's lower end above it without raw times): {tally}; {only_old} only in OLD, "
                 f"{only_new} only in NEW.")
    return lines


def compare(old_path: Path, new_path: Path, threshold: float = 0.10, alpha: float = 0.01,
            fmt: str = "terminal") -> tuple[int, str, list[str]]:
    """(exit status, the table, the lines about it); raises CompareError for exit status 2."""
    if not (threshold >= 0 and math.isfinite(threshold)):
        raise CompareError(f"--threshold: expected a fraction of 0 or more (0.10 = 10% slower), got {threshold}")
    if not 0 < alpha < 1:
        raise CompareError(f"--alpha: expected a probability between 0 and 1, got {alpha}")
    if fmt not in FORMATS:
        raise CompareError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt}")
    old, notes_old = read_side(Path(old_path), "OLD")
    new, notes_new = read_side(Path(new_path), "NEW")
    result = judge(old, new, threshold, alpha)
    if result.empty:
        raise CompareError(f"no case of OLD ({len(old)} cases, machines {', '.join(sorted(old['machine'].unique()))}) "
                           f"matches one of NEW ({len(new)} cases, machines "
                           f"{', '.join(sorted(new['machine'].unique()))}) on case id, device and dtype"
                           + (" and machine" if old["machine"].nunique() > 1 or new["machine"].nunique() > 1 else ""))
    only_old = len(old) - len(result)
    only_new = len(new) - len(result)
    notes = notes_old + notes_new
    machines = (set(old["machine"]), set(new["machine"]))
    if len(machines[0]) == len(machines[1]) == 1 and machines[0] != machines[1]:
        notes.append(f"OLD was measured on {machines[0].pop()}, NEW on {machines[1].pop()}: the ratios compare "
                     f"the machines as much as the code")
    factor = result.attrs.get("machine_factor", 1.0)
    if factor != 1.0:
        notes.append(f"machine factor: NEW ran {factor:.3f}x OLD's time over all cases timed in rounds on both sides "
                     f"(the median); their ratios are divided by it")
    lines = notes + verdict_lines(result, threshold, alpha, only_old, only_new)
    status = 1 if (result["verdict"] == "slower").any() else 0
    return status, render(result, fmt), lines

