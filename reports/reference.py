"""A user's own run beside the committed reference sweep of its CPU kind: the page's
"vs-reference" section.

`tox -e bench` writes its sweep to reports/runs/ (git-ignored); the committed reference
sweeps live in reports/results/ (`load.is_user_run` tells them apart by folder). When the
inputs hold a user's run, this section sets the newest run of each CPU kind (instruction
set, vendor, family-model: the `{cpu}` of the results file's name, bench.schema.cpu_kind)
beside the newest reference of that kind, by the regression gate's own comparison
(`python -m reports compare REFERENCE RUN`: `compare.judge`, the reference as OLD and the
run as NEW): the cases that moved with their ratio and its 95% interval, the tally of the
others, and the machine factor the gate divides out. A run without a reference of its
kind gets one line saying so; without any user run the section is absent.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pandas as pd

from bench import schema

from . import compare, html
from .load import REPO, Inputs

ANCHOR, TITLE = "vs-reference", "Your run vs the reference"
THRESHOLD, ALPHA = 0.10, 0.01  # the gate's defaults (python -m reports compare)


def _runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its CPU kind, machine, newest timestamp and commit."""
    rows = []
    for run_id, group in df.groupby("run_id", sort=False):
        def last(column):
            values = group[column].dropna() if column in group else pd.Series(dtype=object)
            return values.iloc[-1] if not values.empty else None

        stamps = pd.to_datetime(group["timestamp"], errors="coerce", utc=True, format="ISO8601").dropna()
        rows.append({"run_id": run_id, "machine": last("machine"), "commit": last("commit"),
                     "when": stamps.max() if not stamps.empty else pd.NaT,
                     "kind": schema.cpu_kind(last("machine_cpu_isa"), last("machine_cpu_vendor"),
                                      last("machine_cpu_family_model"), last("machine_cpu_model"))})
    return pd.DataFrame(rows, columns=["run_id", "machine", "commit", "when", "kind"]).set_index("run_id")


def _newest(runs: pd.DataFrame, ids) -> str | None:
    chosen = runs.loc[[i for i in runs.index if i in ids]]
    if chosen.empty:
        return None
    return chosen.sort_values("when", na_position="first", kind="stable").index[-1]


def _shown(path: str) -> str:
    """A results file as the page names it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _describe(runs: pd.DataFrame, run_id: str, files: list[str]) -> str:
    r = runs.loc[run_id]
    bits = [str(r["machine"])]
    if pd.notna(r["when"]):
        bits.append(r["when"].strftime("%Y-%m-%d %H:%M UTC"))
    if isinstance(r["commit"], str) and r["commit"]:
        bits.append(f"commit {r['commit'][:10]}")
    return f"{', '.join(_shown(f) for f in files)} ({'; '.join(bits)})"


def _table(result: pd.DataFrame) -> str:
    verdict_class = [{"slower": "bad", "faster": "good"}.get(v, "") for v in result["verdict"]]
    view = pd.DataFrame({
        "case": result["case"],
        "reference": result["old_median"],
        "your run": result["new_median"],
        "your run ÷ reference (95% interval)": [html.fmt_ratio_ci(r, lo, hi) for r, lo, hi in
                                               zip(result["ratio"], result["low"], result["high"])],
        "interval from": result["interval"].fillna(""),
        "p": [compare._fmt_p(p) for p in result["p"]],
        "verdict": result["verdict"],
    })
    return html.table(view, formats={"reference": html.fmt_time, "your run": html.fmt_time},
                      cell_classes={"your run ÷ reference (95% interval)": verdict_class, "verdict": verdict_class})


def _pair(df: pd.DataFrame, runs: pd.DataFrame, ref: str, run: str, files: tuple[str, str], threshold: float,
          alpha: float) -> str:
    """The gate's comparison of `run` (NEW) against `ref` (OLD), as HTML."""
    old = compare.cases_of(df[df["run_id"] == ref])
    new = compare.cases_of(df[df["run_id"] == run])
    if old.empty or new.empty:
        side = "the reference" if old.empty else "your run"
        return html.empty(f"No timed case in {side}, so there is nothing to set side by side.")
    result = compare.judge(old, new, threshold, alpha)
    if result.empty:
        return html.empty(f"No case of your run ({len(new)} timed) matches one of the reference ({len(old)} timed) "
                          f"on case id, device and dtype, so there is nothing to set side by side.")
    counts = result["verdict"].value_counts()
    moved = result[result["verdict"].isin(["slower", "faster"])]
    body = html.paragraph(
        f"Per case, your run's median time ÷ the reference's with its 95% interval, as the regression gate "
        f"judges it (python -m reports compare {_shown(files[0])} {_shown(files[1])}): slower means "
        f"above {1 + threshold:.2f}× with p < {alpha:g} (cases timed in rounds: Welch's t on the rounds' "
        f"medians; raw times: Mann–Whitney), or without either the interval's lower end above it; faster "
        f"the mirror image. Above 1× your run is slower.", "meta")
    body += html.paragraph(
        f"{len(result)} cases compared: {counts.get('slower', 0)} slower, {counts.get('faster', 0)} faster, "
        f"{counts.get('no clear change', 0)} no clear change (unchanged), {counts.get('not judged', 0)} not "
        f"judged; {len(old) - len(result)} only in the reference, {len(new) - len(result)} only in your run.",
        "headline")
    factor = result.attrs.get("machine_factor", 1.0)
    in_rounds = int((result["interval"] == "rounds").sum())  # the cases the gate's factor is taken over
    if in_rounds >= compare.MIN_FOR_FACTOR:
        body += html.paragraph(
            f"Machine factor {factor:.3f}: over the {in_rounds} cases timed in rounds on both sides your run "
            f"took {factor:.3f}× the reference's time (the median); their ratios are divided by it, so what "
            f"is left is what moved against the machine as a whole.", "meta")
    else:
        body += html.paragraph(
            f"Machine factor 1: {in_rounds} cases timed in rounds on both sides, fewer than the "
            f"{compare.MIN_FOR_FACTOR} the gate takes the machine's drift from, so none is divided out.", "meta")
    hosts = {runs.loc[ref, "machine"], runs.loc[run, "machine"]}
    if len(hosts) > 1:
        body += html.paragraph("The two were measured on different machines of one CPU kind: the ratios compare "
                               "the machines as much as the code.", "meta")
    if moved.empty:
        body += html.empty("No case moved: none is slower or faster beyond the threshold.")
    else:
        body += f"<h4>Cases that moved ({len(moved)})</h4>" + _table(moved)
    body += (f"<details><summary>Every compared case ({len(result)})</summary>{_table(result)}</details>")
    return body


def section(data: Inputs, problems: list[str], threshold: float = THRESHOLD, alpha: float = ALPHA) -> str | None:
    """The section's HTML, or None when the inputs hold no user run (the section is absent)."""
    if not data.user_runs or data.records.empty:
        return None
    df = data.records
    files: dict[str, list[str]] = {}
    for path, ids in data.run_ids.items():
        for i in ids:
            files.setdefault(i, []).append(path)
    user = {i for path in data.user_runs for i in data.run_ids.get(path, [])}
    references = {i for path, ids in data.run_ids.items() if path not in data.user_runs for i in ids}
    runs = _runs(df)
    user = [i for i in runs.index if i in user]
    if not user:
        return None
    body = html.paragraph(
        "Your own sweeps (reports/runs/, where tox -e bench writes; git-ignored) beside the committed reference "
        "sweep of the same CPU kind (reports/results/): instruction set, vendor and family-model, the name "
        "of the results file. To make a run the reference of its kind, copy it into reports/results/ and "
        "commit it.", "meta")
    kinds = list(dict.fromkeys(runs.loc[user, "kind"].fillna("")))
    for kind in kinds:
        mine = [i for i in user if (runs.loc[i, "kind"] or "") == kind]
        run = _newest(runs, mine)
        user_files = [f for f in files[run] if f in data.user_runs]
        if not kind:
            body += html.empty(f"Your run {_describe(runs, run, user_files)} carries no CPU kind (cpu_isa and "
                               f"cpu_family_model in its machine record), so no reference can be matched to it.")
            continue
        body += f"<h3>{html.esc(kind)}</h3>"
        older = len(mine) - 1
        ref = _newest(runs, [i for i in runs.index if i in references and i != run and runs.loc[i, "kind"] == kind])
        if ref is None:
            itself = run in references
            body += html.empty(
                f"Your run {_describe(runs, run, user_files)} is itself the committed reference of CPU kind {kind}."
                if itself else
                f"No committed reference sweep of CPU kind {kind} in these inputs, so your run "
                f"{_describe(runs, run, user_files)} stands alone; to make it the reference, copy it into "
                f"reports/results/ and commit it.")
            continue
        ref_files = [f for f in files[ref] if f not in data.user_runs]
        body += html.paragraph(f"Your run: {_describe(runs, run, user_files)}. Reference: "
                               f"{_describe(runs, ref, ref_files)}."
                               + (f" {older} older run(s) of this kind in the runs folder are not compared."
                                  if older else ""))
        try:
            body += _pair(df, runs, ref, run, (ref_files[0], user_files[0]), threshold, alpha)
        except Exception as exc:  # noqa: BLE001 - a failing comparison costs its part, not the page
            problems.append(f"vs-reference {kind} failed: {exc!r}\n{traceback.format_exc(limit=3)}")
            body += html.paragraph(f"This comparison could not be made ({type(exc).__name__}: {exc}).", "note")
    return body
