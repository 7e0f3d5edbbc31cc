"""A user's own runs are kept apart from the committed reference sweeps (issue 24).

- tox -e bench writes its sweep under reports/runs/, which git ignores, so a first run on a
  machine of a kind that has a committed sweep leaves the tree clean and the reference intact;
- the report sets a user's run beside the committed reference of its CPU kind (section
  `vs-reference`: the regression gate's comparison), and says so when there is none;
- the progress line of a sweep numbers the re-measure rounds as their own phase, so no
  counter runs past its total.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("scipy")
pytest.importorskip("seaborn")
pytest.importorskip("matplotlib")

from test_compare import SLOW, _records, _slower, _write  # noqa: E402
from test_reports import _Page, _section, _text  # noqa: E402

from reports import load as load_module  # noqa: E402
from bench import schema  # noqa: E402
from reports.build import build  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KIND = {"cpu_isa": "avx2", "cpu_vendor": "amd", "cpu_family_model": "25/1"}


# ------------------------------------------------------------------ where runs go
def _bench_results_path() -> str:
    """The --results path of tox.ini's [testenv:bench], its defaults filled in."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPO / "tox.ini", encoding="utf-8")
    commands = config["testenv:bench"]["commands"].replace("\\\n", " ")
    path = re.search(r"--results\s+(\S+)", commands).group(1)
    path = re.sub(r"\{env:[A-Z_]+:(.*?)\}(?=\.jsonl)", r"\1", path).replace("\\{", "{").replace("\\}", "}")
    return path.format(cpu="avx2-amd-25-1")


def test_the_bench_env_writes_its_results_where_git_ignores_them():
    path = _bench_results_path()
    assert path == "reports/runs/cpu-paper-avx2-amd-25-1.jsonl"
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("no git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
    assert ignored.returncode == 0, f"{path} is not ignored by git: a run would dirty the tree"
    for journal in (path + ".rounds", path + ".tmp"):  # the sweep's journal and its atomic rewrite
        assert subprocess.run(["git", "check-ignore", "-q", journal], cwd=REPO).returncode == 0, journal
    tracked = subprocess.run(["git", "ls-files", "reports/runs"], cwd=REPO, capture_output=True, text=True)
    assert tracked.stdout == ""
    # the committed references stay tracked, and a run never lands among them
    assert not Path(path).is_relative_to("reports/results")
    assert subprocess.run(["git", "check-ignore", "-q", "reports/results/cpu-paper-x.jsonl"],
                          cwd=REPO).returncode == 1


def test_the_report_reads_the_runs_folder_by_default(tmp_path, monkeypatch):
    runs = tmp_path / "reports" / "runs"
    monkeypatch.setattr(load_module, "RUNS_DIR", runs)
    assert runs not in load_module.default_inputs()  # absent: not read, no note about it
    runs.mkdir(parents=True)
    assert load_module.default_inputs()[:2] == [load_module.RESULTS_DIR, runs]
    assert load_module.is_user_run(runs / "cpu-paper-avx2-amd-25-1.jsonl")
    assert not load_module.is_user_run(REPO / "reports" / "results" / "cpu-paper-avx2-amd-25-1.jsonl")
    assert not load_module.is_user_run(tmp_path / "runs" / "x" / "results" / "a.jsonl")  # the nearest decides
    assert load_module.is_user_run(tmp_path / "results" / "runs" / "a.jsonl")


def test_cpu_kind_is_the_results_file_tag():
    machine = pytest.importorskip("bench.machine")
    for meta in ({"cpu_isa": "avx2", "cpu_vendor": "amd", "cpu_family_model": "25/1"},
                 {"cpu_isa": "avx512", "cpu_vendor": "intel", "cpu_family_model": "6/167"}):
        assert schema.cpu_kind(meta["cpu_isa"], meta["cpu_vendor"], meta["cpu_family_model"]) == machine.cpu_tag(meta)
    assert machine.cpu_tag({"cpu_isa": "avx2", "cpu_vendor": "amd", "cpu_family_model": "25/1"}) == "avx2-amd-25-1"
    assert machine.cpu_tag({"cpu_isa": "neon", "cpu_vendor": None, "cpu_family_model": None}) == "neon"
    # a record older than cpu_vendor: the vendor from the model name (the committed avx512-amd-25-17 sweep)
    assert schema.cpu_kind("avx512", None, "25/17", "AMD EPYC") == "avx512-amd-25-17"
    assert schema.cpu_kind("avx2", None, None, "AMD EPYC") is None  # too little to match on


# ------------------------------------------------------------------ the section
def _as(records: list[dict], run_id: str, host: str, kind: dict, timestamp: str) -> list[dict]:
    out = []
    for r in records:
        r = dict(r, run_id=run_id, timestamp=timestamp)
        if isinstance(r.get("machine"), dict):
            r["machine"] = {**r["machine"], "host": host, **kind}
        out.append(r)
    return out


def _page(tmp_path: Path, *inputs: Path):
    problems: list[str] = []
    index = build(list(inputs), tmp_path / "out", problems)
    text = index.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page, problems


LAYERS = ("paper:c64-n64-s32-k3/", "paper:c3-n64-s32-k5/")  # two layers of the fixture: a quick build


@pytest.fixture(scope="module")
def reference_and_run(tmp_path_factory):
    """A committed reference of kind avx2-amd-25-1 (results/), one of another kind, and a
    user's run of the first kind on another host (runs/) in which one case is twice as
    slow; and the page built from the three."""
    root = tmp_path_factory.mktemp("vs")
    base = [r for r in _records("cpu-epyc-v2.jsonl") if any(layer in r["case"] for layer in LAYERS)]
    ref = _write(root / "results" / "cpu-paper-avx2-amd-25-1.jsonl",
                 _as(base, "ref-run", "ref-box", KIND, "2026-12-01T10:00:00+00:00"))
    mine = _write(root / "runs" / "cpu-paper-avx2-amd-25-1.jsonl",
                  _as(_slower(base, SLOW, 2.0), "my-run", "my-box", KIND, "2026-12-05T10:00:00+00:00"))
    _write(root / "results" / "cpu-paper-avx512-intel-6-167.jsonl",
           _as(base, "xeon-run", "xeon", {"cpu_isa": "avx512", "cpu_vendor": "intel", "cpu_family_model": "6/167"},
               "2026-12-02T10:00:00+00:00"))
    page = _page(root / "page", root / "results", root / "runs")
    return ref, mine, base, page


def test_a_run_is_shown_beside_the_reference_of_its_kind(reference_and_run):
    ref, mine, base, (text, page, problems) = reference_and_run
    assert "vs-reference" in page.ids and "#vs-reference" in page.links  # a section, linked from the nav
    section = _section(text, "vs-reference")
    shown = _text(section)
    assert "avx2-amd-25-1" in shown and "avx512-intel-6-167" not in shown  # only the reference of its kind
    assert "my-box" in shown and "ref-box" in shown and "runs/cpu-paper-avx2-amd-25-1.jsonl" in shown
    moved = section[section.index("Cases that moved"):section.index("<details>")]
    rows = [row for row in re.findall(r"<tr>(.*?)</tr>", moved) if "<td" in row]
    assert len(rows) == 1 and SLOW in rows[0]
    cells = [_text(c).strip(" |") for c in re.findall(r"<td[^>]*>.*?</td>", rows[0])]
    ratio = next(c for c in cells if c.startswith("2.00×"))
    low, high = map(float, re.fullmatch(r"2\.00× \[(\S+), (\S+)\]", ratio).groups())
    assert 1.9 < low < 2.0 < high < 2.1  # the ratio with its interval
    assert "slower" in cells and 'class="bad"' in rows[0]
    timed = len({r["case"] for r in base if r["status"] == "ok"})  # a re-measured case counts once
    assert f"{timed} cases compared: 1 slower, 0 faster, {timed - 1} no clear change" in shown
    assert "Machine factor 1" in shown  # no case timed in rounds: nothing divided out
    assert "different machines" in shown
    assert not [p for p in problems if "vs-reference" in p]


def test_the_section_is_the_gates_comparison(reference_and_run, capsys):
    """Same cases, same verdicts as python -m reports compare REFERENCE RUN."""
    from reports.__main__ import main

    ref, mine, base, (text, page, problems) = reference_and_run
    status = main(["compare", str(ref), str(mine)])
    out = capsys.readouterr().out
    assert status == 1 and f"slower: {SLOW}" in out
    compared = re.search(r"(\d+) cases compared \(", out).group(1)
    assert f"{compared} cases compared: 1 slower" in _text(_section(text, "vs-reference"))


def _rounds_records(run_id: str, host: str, kind: dict, scale: float = 1.0, slow: dict | None = None) -> list[dict]:
    """25 cases timed in 5 rounds of a sweep (schema 3), every time `scale` times a base,
    the cases in `slow` that much more."""
    out = []
    for i in range(25):
        case = f"torch/cpu/paper:c{8 + i}-n8-s8-k3/float32/forward"
        factor = scale * (slow or {}).get(case, 1.0)
        rounds = [(1e-3 + 1e-5 * i) * factor * (1 + 0.002 * j) for j in (-2, 1, 0, 2, -1)]
        out.append({"schema_version": 3, "case": case, "impl": "torch", "device": "cpu", "table": "paper",
                    "dtype": "float32", "direction": "forward", "status": "ok", "run_id": run_id,
                    "timestamp": "2026-12-0%dT10:00:00+00:00" % (5 if run_id == "my-run" else 1),
                    "time_median": sorted(rounds)[2], "time_round_medians": rounds, "process_rounds": 5,
                    "machine": {"host": host, **kind}})
    return out


def test_the_machine_factor_is_divided_out(tmp_path):
    slow = "torch/cpu/paper:c10-n8-s8-k3/float32/forward"
    _write(tmp_path / "results" / "ref.jsonl", _rounds_records("ref-run", "vm", KIND))
    _write(tmp_path / "runs" / "mine.jsonl", _rounds_records("my-run", "vm", KIND, 1.07, {slow: 1.5}))
    text, page, problems = _page(tmp_path, tmp_path / "results", tmp_path / "runs")
    section = _text(_section(text, "vs-reference"))
    assert "Machine factor 1.070" in section  # the whole machine 7% slower: not a regression
    assert "25 cases compared: 1 slower, 0 faster, 24 no clear change" in section
    assert "different machines" not in section
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", _section(text, "vs-reference")) if slow in r)
    assert "1.50× [" in _text(row) and "rounds" in _text(row)


def test_a_run_without_a_reference_of_its_kind_says_so(tmp_path):
    _write(tmp_path / "results" / "xeon.jsonl", _rounds_records(
        "xeon-run", "xeon", {"cpu_isa": "avx512", "cpu_vendor": "intel", "cpu_family_model": "6/167"}))
    _write(tmp_path / "runs" / "mine.jsonl", _rounds_records("my-run", "vm", KIND))
    text, page, _ = _page(tmp_path, tmp_path / "results", tmp_path / "runs")
    section = _text(_section(text, "vs-reference"))
    assert "No committed reference sweep of CPU kind avx2-amd-25-1" in section
    assert "cases compared" not in section and "Cases that moved" not in section
    assert "avx512-intel-6-167" not in section and "xeon" not in section


def test_without_a_user_run_there_is_no_section(tmp_path):
    _write(tmp_path / "results" / "ref.jsonl", _rounds_records("ref-run", "vm", KIND))
    _write(tmp_path / "elsewhere" / "mine.jsonl", _rounds_records("my-run", "vm", KIND))  # not a runs folder
    text, page, _ = _page(tmp_path, tmp_path / "results", tmp_path / "elsewhere")
    assert "vs-reference" not in page.ids and "#vs-reference" not in page.links


# ------------------------------------------------------------------ the progress line
def _counters(line: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+)", line.split("]")[0])]


def test_re_measure_rounds_are_numbered_as_their_own_phase():
    from bench import sweep

    planned, extra = 5, [12, 3]
    lines = [sweep.position(r, planned, i, 320) for r in range(planned) for i in range(1, 321)]
    lines += [sweep.position(planned + k, planned, i, n) for k, n in enumerate(extra) for i in range(1, n + 1)]
    assert lines[0] == "round 1 1/320" and lines[planned * 320 - 1] == "round 5 320/320"
    assert lines[planned * 320] == "re-measure 1/12 (round 6)" and lines[-1] == "re-measure 3/3 (round 7)"
    assert all(i <= n for line in lines for i, n in _counters(line))


def test_a_sweep_numbers_its_re_measure_round_apart(tmp_path):
    out = tmp_path / "r.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--preset", "smoke", "--impl", "torch,naive", "--device", "cpu",
         "--direction", "forward", "--rounds", "2", "--max-rounds", "3", "--passes", "2", "--block", "0.005",
         "--rel-pi", "0.0001", "--solo", "0", "--results", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    visits = [line for line in result.stdout.splitlines() if line.startswith("[")]
    planned = [line for line in visits if line.startswith("[round ")]
    again = [line for line in visits if line.startswith("[re-measure ")]
    assert len(planned) == 2 * 2 and again, result.stdout  # a prediction interval within ±0.01% forces one
    assert all(re.match(r"\[re-measure \d+/\d+ \(round 3\) ", line) for line in again)
    assert all(i <= n for line in visits for i, n in _counters(line))
    assert "round 3: " in result.stdout and out.exists()
