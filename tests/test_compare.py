"""python -m reports compare OLD NEW: the regression gate between two sets of results.

Built from the fixtures of tests/fixtures/results/: a run against itself, against a copy
with one case made slower, with and without raw samples, and asv folders.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("scipy")

from reports.__main__ import main  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"
REPO = Path(__file__).resolve().parents[1]
SLOW = "openmp/cpu/paper:c64-n64-s32-k3/float32/forward"
TIME_FIELDS = ("time_median", "time_q1", "time_q3", "time_iqr", "time_mean", "time_min", "time_stddev",
               "time_ci95_low", "time_ci95_high", "time_repeat_median")


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def _write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _slower(records: list[dict], case: str, factor: float) -> list[dict]:
    """A copy in which every per-call time and statistic of `case` is `factor` times larger."""
    from bench.schema import decode_samples, encode_samples

    out = []
    for r in records:
        r = dict(r)
        if r["case"] == case:
            for key in TIME_FIELDS:
                if r.get(key) is not None:
                    r[key] *= factor
            if r.get("time_samples") is not None:
                r["time_samples"] = encode_samples([x * factor for x in decode_samples(r["time_samples"])])
        out.append(r)
    return out


def _without_samples(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_samples"} for r in records]


def _run(capsys, *argv):
    try:
        status = main(["compare", *map(str, argv)])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_run_against_itself_passes(capsys):
    path = FIXTURES / "cpu-epyc-v2.jsonl"
    status, out, err = _run(capsys, path, path)
    assert status == 0, out + err
    timed = sum(r["status"] == "ok" for r in _records("cpu-epyc-v2.jsonl"))
    assert f"{timed - 1} cases compared" in out  # the re-measured case counts once (its latest attempt)
    assert "0 slower, 0 faster" in out and not any(line.startswith("slower:") for line in out.splitlines())
    assert "1.000×" in out


def test_one_case_twice_as_slow_fails_and_is_named(tmp_path, capsys):
    old = FIXTURES / "cpu-epyc-v2.jsonl"
    new = _write(tmp_path / "new.jsonl", _slower(_records("cpu-epyc-v2.jsonl"), SLOW, 2.0))
    status, out, err = _run(capsys, old, new)
    assert status == 1, out + err
    slower = [line for line in out.splitlines() if line.startswith("slower:")]
    assert len(slower) == 1 and slower[0].startswith(f"slower: {SLOW} on ci-epyc (avx2): 2.00×")
    assert "p < 1e-4" in slower[0]  # 41 raw times on each side, all of NEW's above OLD's
    assert "1 slower, 0 faster" in out
    # the other way round it got faster, which never fails the gate
    status, out, err = _run(capsys, new, old)
    assert status == 0 and "0 slower, 1 faster" in out


def test_threshold_decides(tmp_path, capsys):
    new = _write(tmp_path / "new.jsonl", _slower(_records("cpu-epyc-v2.jsonl"), SLOW, 1.05))
    old = FIXTURES / "cpu-epyc-v2.jsonl"
    assert _run(capsys, old, new)[0] == 0  # 5% slower, under the default 10%
    status, out, _ = _run(capsys, old, new, "--threshold", "0.02")
    assert status == 1 and f"slower: {SLOW}" in out


def test_formats_parse(tmp_path, capsys):
    old = FIXTURES / "cpu-epyc-v2.jsonl"
    new = _write(tmp_path / "new.jsonl", _slower(_records("cpu-epyc-v2.jsonl"), SLOW, 2.0))
    status, out, err = _run(capsys, old, new, "--format", "csv")
    assert status == 1
    rows = list(csv.DictReader(io.StringIO(out)))  # stdout is nothing but the CSV
    assert len(rows) == sum(r["status"] == "ok" for r in _records("cpu-epyc-v2.jsonl")) - 1
    assert {"case", "machine", "old_median_s", "new_median_s", "ratio", "ratio_low", "ratio_high", "interval",
            "p_value", "verdict"} <= set(rows[0])
    slow = [r for r in rows if r["verdict"] == "slower"]
    assert [r["case"] for r in slow] == [SLOW] and abs(float(slow[0]["ratio"]) - 2) < 1e-4
    assert float(slow[0]["ratio_low"]) > 1.9 and float(slow[0]["p_value"]) < 0.01
    assert f"slower: {SLOW}" in err  # the verdict lines go to stderr
    status, out, err = _run(capsys, old, new, "--format", "markdown")
    assert status == 1
    table = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["case", "machine", "old", "new", "new/old", "95% interval", "p", "verdict"]
    assert set(table[1].strip("|").split("|")) == {"---"}
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert all(len(c) == len(header) for c in cells) and len(cells) == len(rows)
    assert cells[0][0] == SLOW and cells[0][-1] == "slower"
    assert f"slower: {SLOW}" in out


def test_without_samples_the_interval_decides(tmp_path, capsys):
    """Records without raw times: NEW/OLD is slower when the lower end of its interval (from
    the medians' 95% intervals) is above 1 + threshold."""
    records = _without_samples(_records("cpu-epyc-v2.jsonl"))
    old = _write(tmp_path / "old.jsonl", records)
    new = _write(tmp_path / "new.jsonl", _slower(records, SLOW, 2.0))
    status, out, err = _run(capsys, old, new, "--format", "csv")
    assert status == 1
    rows = {r["case"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows[SLOW]["verdict"] == "slower" and rows[SLOW]["interval"] == "ci" and rows[SLOW]["p_value"] == ""
    assert float(rows[SLOW]["ratio_low"]) > 1.1
    assert {r["verdict"] for c, r in rows.items() if c != SLOW} == {"no clear change"}
    # version-1 records have neither samples nor intervals: the box-plot notch of each median
    laptop = _records("cpu-laptop.jsonl")
    case = "openmp/cpu/paper:c64-n64-s32-k3/float32/forward"
    new = _write(tmp_path / "laptop-new.jsonl", _slower(laptop, case, 2.0))
    status, out, err = _run(capsys, FIXTURES / "cpu-laptop.jsonl", new)
    assert status == 1 and f"slower: {case} on laptop: 2.00×" in out and "interval from notch" in out


def test_newest_run_of_a_case_counts(tmp_path, capsys):
    """OLD holds two runs of the same machine: an older one in which a case was 3x slow,
    and a newer one. Only the newer one is compared."""
    records = _records("cpu-epyc-v2.jsonl")
    older = [dict(r, run_id="older-run", timestamp=r["timestamp"].replace("2025-07-01", "2025-06-20"))
             for r in _slower(records, SLOW, 3.0)]
    _write(tmp_path / "old" / "a.jsonl", older)
    _write(tmp_path / "old" / "b.jsonl", records)
    status, out, err = _run(capsys, tmp_path / "old", FIXTURES / "cpu-epyc-v2.jsonl")
    assert status == 0 and "0 slower, 0 faster" in out
    assert "OLD: " in out and "measured in several runs; the newest run of each is compared" in out


def test_machines_are_matched(tmp_path, capsys):
    epyc, xeon = FIXTURES / "cpu-epyc-v2.jsonl", FIXTURES / "cpu-xeon-v2.jsonl"
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(epyc, both)
    shutil.copy(xeon, both)
    # several machines on a side: a case matches only the same case of the same machine
    slower = tmp_path / "slower"
    _write(slower / "epyc.jsonl", _records("cpu-epyc-v2.jsonl"))
    _write(slower / "xeon.jsonl", _slower(_records("cpu-xeon-v2.jsonl"), SLOW, 2.0))
    status, out, err = _run(capsys, both, slower)
    assert status == 1
    assert [line for line in out.splitlines() if line.startswith("slower:")] == [
        line for line in out.splitlines() if line.startswith(f"slower: {SLOW} on ci-xeon (avx512): 2.00×")]
    timed = sum(r["status"] == "ok" for f in ("cpu-epyc-v2.jsonl", "cpu-xeon-v2.jsonl") for r in _records(f))
    assert f"{timed - 1} cases compared" in out
    # several machines on one side, one on the other: only that machine's cases pair up
    status, out, err = _run(capsys, both, epyc)
    assert status == 0 and "only in OLD" in out and "ci-xeon" not in out.split("cases compared")[0]
    # one machine each, two different machines: compared, and said so
    status, out, err = _run(capsys, epyc, xeon, "--threshold", "1000")
    assert status == 0 and "ci-epyc (avx2) → ci-xeon (avx512)" in out and "compare the machines as much as the code" in out


def _asv_commit(root: Path, out: Path, commit: str, samples: bool = True) -> Path:
    """An asv results folder holding only one commit of the fixture's three."""
    out.mkdir(parents=True)
    shutil.copy(root / "benchmarks.json", out)
    (out / "devbox").mkdir()
    shutil.copy(root / "devbox" / "machine.json", out / "devbox")
    (source,) = (root / "devbox").glob(f"{commit[:8]}-*.json")
    data = json.loads(source.read_text())
    if not samples:  # as `asv run` writes them without --record-samples
        for result in data["results"].values():
            if isinstance(result, list) and len(result) > 3:
                column = data["result_columns"].index("samples")
                if column < len(result):
                    result[column] = None
    (out / "devbox" / source.name).write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("samples", [True, False], ids=["samples", "asv-interval"])
def test_asv_folders(tmp_path, capsys, samples):
    pytest.importorskip("asv")
    root = FIXTURES / "asv"
    second = _asv_commit(root, tmp_path / "second", "1b2c3d4e", samples)
    third = _asv_commit(root, tmp_path / "third", "2c3d4e5f", samples)
    # at the third commit openmp_fused got 2.2x faster: second -> third passes ...
    status, out, err = _run(capsys, second, third)
    assert status == 0 and "0 slower, 2 faster" in out, out + err
    # ... and going back from the third to the second is a regression of both its cases
    status, out, err = _run(capsys, third, second)
    assert status == 1, out + err
    slower = sorted(line for line in out.splitlines() if line.startswith("slower:"))
    assert len(slower) == 2 and all("impl=openmp_fused" in line and "on devbox: 2.2" in line for line in slower)
    assert all(("p = " in line or "p < " in line) == samples for line in slower)
    assert samples or all("interval from ci99" in line for line in slower)
    # the whole folder against itself: the newest commit of each benchmark
    status, out, err = _run(capsys, root, root)
    assert status == 0 and "6 cases compared" in out and "newest run of each is compared" in out


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    path = FIXTURES / "cpu-epyc-v2.jsonl"
    (tmp_path / "empty").mkdir()
    cases = [
        ([tmp_path / "missing.jsonl", path], "no such file or folder"),
        ([path, path, "--alpha", "2"], "--alpha"),
        ([path, path, "--threshold", "-1"], "--threshold"),
        ([path, path, "--format", "html"], "invalid choice"),
        ([path], "required"),
        ([tmp_path / "empty", path], "no timed case"),
        ([FIXTURES / "gpu-h200-v2.jsonl", path], "no case of OLD"),
    ]
    for argv, words in cases:
        status, out, err = _run(capsys, *argv)
        assert status == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, (argv, err)
        assert out == ""


def test_cli_in_a_process(tmp_path):
    new = _write(tmp_path / "new.jsonl", _slower(_records("cpu-epyc-v2.jsonl"), SLOW, 2.0))
    result = subprocess.run([sys.executable, "-m", "reports", "compare", str(FIXTURES / "cpu-epyc-v2.jsonl"),
                             str(new)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and f"slower: {SLOW}" in result.stdout, result.stderr


def _agree(capsys, *argv):
    status = main(["agree", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_agree_counts_repeating_speedups_and_names_the_one_that_moved(tmp_path, capsys):
    epyc = FIXTURES / "cpu-epyc-v2.jsonl"
    status, out, _ = _agree(capsys, str(epyc), str(epyc))
    pairs = int(out.split(" of ")[1].split(" ")[0])
    assert status == 0 and out.startswith(f"speedups over the baseline that agree within 10%: {pairs} of {pairs} (100%)")
    moved = _write(tmp_path / "moved.jsonl", _slower(_records("cpu-epyc-v2.jsonl"), SLOW, 2.0))
    status, out, _ = _agree(capsys, str(epyc), str(moved))
    assert status == 0 and f"agree within 10%: {pairs - 1} of {pairs}" in out
    worst = out.split("largest disagreements:\n")[1].splitlines()[0].split()
    assert worst[:3] == ["openmp", "paper:c64-n64-s32-k3", "forward"] and worst[-1] == "(-50%)"
    status, _, err = _agree(capsys, str(epyc), str(tmp_path / "nowhere.jsonl"))
    assert status == 2 and "no such file" in err
