"""The sweep in worker processes: one process per implementation, rounds with fresh
workers, crashes recorded, an interruption that loses nothing, the solo check, the
statistics of rounds, `reports compare` and `agree` on rounds, and `bench ab`."""

import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from bench import intervals, records, schema, tables, workers

REPO = Path(__file__).resolve().parents[1]
BROKEN = {"FLATCONV_IMPLS": "broken_impls", "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
QUICK = ["--rounds", "2", "--passes", "3", "--block", "0.004", "--rel-pi", "off", "--solo", "0", "--threads", "1"]


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ---------------------------------------------------------------------------- a whole sweep
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One small sweep with misbehaving implementations beside good ones: its records and
    what it printed."""
    out = tmp_path_factory.mktemp("sweep") / "r.jsonl"
    result = _cli("run", "--preset", "smoke", "--impl", "segfaults,crashes,wrong_answer,torch,dense", "--device",
                  "cpu", "--direction", "forward", *QUICK[:-4], "--solo", "2", "--threads", "1", "--baseline",
                  "dense", "--results", str(out), env=BROKEN)
    return result, {r["case"]: r for r in records.read_records(out)}, out


@pytest.mark.slow  # a sweep in worker processes (bench run, a subprocess)
def test_a_sweep_records_every_case_and_survives_crashes(swept):
    result, recs, _ = swept
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr
    assert len(recs) == 5 * len(tables.TABLES["smoke"])
    for r in recs.values():
        if r["impl"] == "segfaults":  # the worker process died of it; the sweep went on
            assert r["status"] == "failed" and r["exit_signal"] == "SIGSEGV" and "SIGSEGV" in r["reason"]
        elif r["impl"] == "crashes":
            assert r["status"] == "failed" and r["reason"] == "RuntimeError: kernel exploded"
        elif r["impl"] == "wrong_answer":
            assert r["status"] == "failed" and "oracle" in r["reason"]
        else:
            assert r["status"] == "ok", r["reason"]


@pytest.mark.slow  # a sweep in worker processes (bench run, a subprocess)
def test_each_round_runs_in_fresh_worker_processes(swept):
    _, recs, _ = swept
    ok = [r for r in recs.values() if r["status"] == "ok"]
    for r in ok:
        assert r["process_rounds"] == 2 and r["schema_version"] == schema.SCHEMA_VERSION
        assert len(r["time_pass_medians"]) == 2 and all(len(p) == 3 for p in r["time_pass_medians"])
        assert len(r["time_round_medians"]) == 2 and r["interleave_passes"] == 6
        assert len(set(r["worker_pids"])) == 2  # a fresh process each round
        assert min(r["time_round_medians"]) * 0.5 < r["time_median"] < max(r["time_round_medians"]) * 2
    # one implementation, one process per round: its cases of every layer share it
    torch_pids = {tuple(r["worker_pids"]) for r in ok if r["impl"] == "torch"}
    assert len(torch_pids) == 1
    dense_pids = {tuple(r["worker_pids"]) for r in ok if r["impl"] == "dense"}
    assert not set(next(iter(torch_pids))) & set(next(iter(dense_pids)))  # and none with another implementation
    for shape in tables.TABLES["smoke"]:
        pair = [r for r in ok if r["shape"] == shape.name]
        assert len({r["interleave_group"] for r in pair}) == 1
        torch_rec = next(r for r in pair if r["impl"] == "torch")
        assert torch_rec["group_ratio"]["reference"] == "dense"
        assert torch_rec["group_ratio"]["value"] == pytest.approx(
            intervals.paired_estimate(torch_rec, next(r for r in pair if r["impl"] == "dense")).value)


@pytest.mark.slow  # a sweep in worker processes (bench run, a subprocess)
def test_the_solo_check_times_sampled_cases_alone(swept):
    result, recs, out = swept
    solo = [r for r in recs.values() if r.get("solo_ratio")]
    assert len(solo) == 2 and len({r["shape"] for r in solo}) == 1  # two cases of one group
    assert all(0.2 < r["solo_ratio"] < 5 for r in solo)
    assert result.stdout.count("  alone: ") == 2 * 2  # each sampled case, each round
    journal = [json.loads(line) for line in Path(str(out) + ".rounds").read_text().splitlines()]
    assert sum(e["kind"] == "solo" for e in journal) == 4


@pytest.mark.slow  # a sweep in worker processes (bench run, a subprocess)
def test_peak_memory_and_kernels_come_from_the_first_round(swept):
    _, recs, _ = swept
    ok = [r for r in recs.values() if r["status"] == "ok"]
    assert all(r["peak_bytes"] is not None and r["peak_method"] and r["kernels"] for r in ok)
    assert all(r["errors"] and r["max_rel_error"] < 1e-4 and r["warmup_calls"] >= 1 for r in ok)


SWEEP = ["run", "--preset", "smoke", "--impl", "torch,dense,naive", "--device", "cpu", "--direction",
         "forward,train", *QUICK]


@pytest.mark.slow  # a sweep in worker processes (bench run, a subprocess)
def test_a_sweep_killed_with_sigkill_and_resumed_has_every_case_once(tmp_path):
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "bench", *SWEEP, "--results", str(out)], cwd=REPO,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # kill it in the second round
        if line.startswith("[round 2 2/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    journal = Path(str(out) + ".rounds")
    before = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sum(e.get("kind") == "visit" for e in before) >= 5  # the first round and a visit of the second
    run_id = before[0]["run_id"]
    assert {r["run_id"] for r in records.read_records(out)} == {run_id}  # the first round's records
    result = _cli(*SWEEP, "--results", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    recs = records.read_records(out)
    expected = 3 * 2 * len(tables.TABLES["smoke"])
    assert len(recs) == len({r["case"] for r in recs}) == expected  # every case exactly once
    assert all(r["process_rounds"] == 2 and r["run_id"] == run_id for r in recs)
    visits = [json.loads(line) for line in journal.read_text().splitlines() if '"visit"' in line]
    assert len(visits) == 2 * 2 * len(tables.TABLES["smoke"])  # nothing measured twice


@pytest.mark.slow  # a sweep in worker processes (bench run, a subprocess)
def test_an_interrupted_sweep_writes_what_it_measured(tmp_path):
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "bench", *SWEEP, "--results", str(out)], cwd=REPO,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("[round 1 2/"):
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted by SIGINT" in rest
    recs = records.read_records(out)
    assert len(recs) == 12 and all(json.dumps(r) for r in recs)  # whole lines
    ok = [r for r in recs if r["status"] == "ok"]
    assert ok and all(r["process_rounds"] == 1 for r in ok)
    assert {psutil.pid_exists(p) for r in ok for p in r["worker_pids"]} == {False}  # no worker left behind


def test_sweep_option_mistakes_are_one_line_and_exit_2():
    for args, message in ((["--rounds", "0"], "--rounds: expected a whole number >= 1, got 0"),
                          (["--rounds", "3", "--max-rounds", "2"], "--max-rounds: expected at least --rounds (3)"),
                          (["--block", "-1"], "--block: expected seconds > 0"),
                          (["--rel-pi", "2"], "--rel-pi: expected a fraction in (0, 1) or 'off'"),
                          (["--solo", "x"], "--solo: expected a whole number >= 0")):
        result = _cli("run", "--preset", "smoke", *args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------- workers
def test_a_worker_is_quiet_when_its_block_ends():
    w = workers.Worker("torch")
    try:
        w.request("setup", timeout=workers.SETUP_SECONDS, case="torch/cpu/paper:c64-n64-s32-k3/float32/forward",
                  threads=2, gate=False, warmup={"window": 2, "max_seconds": 0.3})
        proc = psutil.Process(w.pid)
        busy, after = 0.0, []
        for _ in range(5):
            answer = w.request("block", case="torch/cpu/paper:c64-n64-s32-k3/float32/forward", seconds=0.05)
            busy += answer["cpu_s"]
            c0 = sum(proc.cpu_times()[:2])
            time.sleep(0.05)
            after.append(sum(proc.cpu_times()[:2]) - c0)
        assert busy > 0.1  # its two threads worked during the blocks (5 x 50 ms)
        assert max(after) < 0.035  # and nothing of it runs once a block is answered: a spinning
        # thread would show 0.05 a thread; the counters tick in 10 ms, and a tick or two of
        # its sleeping main thread's wake-ups round up to 0.02 (0.020000000000000018 in CI)
    finally:
        w.stop()


def test_a_long_wait_on_a_worker_is_said_while_it_lasts(monkeypatch):
    monkeypatch.setattr(workers, "WAIT_NOTICE", 0.2)
    said = []
    w = workers.Worker("torch", say=said.append)
    case = "torch/cpu/smoke:c4-n6-s9-k3/float32/forward"
    try:
        # a warm-up that runs its whole second (a negative tolerance: never steady)
        answer = w.request("setup", timeout=workers.SETUP_SECONDS, case=case, threads=1, gate=False,
                           warmup={"tolerance": -1.0, "max_calls": 10**9, "max_seconds": 1.0})
        assert answer["status"] == "ok" and answer["op_s"] >= 0.9
        waits = [line for line in said if line.startswith(f"  waiting for worker torch: setup of {case}, ")]
        assert len(waits) >= 3, said  # one notice each 0.2 s of the 1 s
    finally:
        w.stop()


def test_a_worker_that_dies_says_how(monkeypatch):
    w = workers.Worker("segfaults", env={**os.environ, **BROKEN})
    try:
        answer = w.request("setup", timeout=workers.SETUP_SECONDS, case="segfaults/cpu/smoke:c4-n6-s9-k3/float32/forward",
                           threads=1, gate=True, warmup=False)
        assert answer["status"] == "ok"
        with pytest.raises(workers.WorkerDied) as died:
            w.request("block", case="segfaults/cpu/smoke:c4-n6-s9-k3/float32/forward", seconds=0.01)
        assert died.value.signal_name == "SIGSEGV" and "segfaults" in str(died.value)
    finally:
        w.kill()
    # an error inside a request is an answer, and the worker goes on
    w = workers.Worker("torch")
    try:
        assert w.request("block", case="torch/cpu/smoke:nope/float32/forward", seconds=0.01)["status"] == "failed"
        assert w.request("setup", case="torch/cpu/smoke:c4-n6-s9-k3/float32/forward", threads=1, gate=True,
                         warmup=False)["status"] == "ok"
    finally:
        w.stop()


# ---------------------------------------------------------------------------- the statistics of rounds
def test_rounds_give_the_geometric_mean_and_student_intervals():
    values = [1.0, 1.1, 0.95, 1.05, 1.02]
    e = intervals.from_rounds(values)
    logs = np.log(values)
    assert e.value == pytest.approx(math.exp(logs.mean()))
    half = 2.7764451 * logs.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert (e.low, e.high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert math.log(e.pi_high / e.value) == pytest.approx(half * math.sqrt(2))
    assert e.pi_halfwidth == pytest.approx(math.exp(half * math.sqrt(2)) - 1)
    assert intervals.from_rounds([1.0]) is None


def test_the_prediction_interval_covers_a_rerun_where_the_confidence_interval_does_not():
    rng = random.Random(1)
    ci_hits = pi_hits = 0
    trials = 2000
    for _ in range(trials):
        a = intervals.from_rounds([math.exp(rng.gauss(0, 0.05)) for _ in range(5)])
        b = intervals.from_rounds([math.exp(rng.gauss(0, 0.05)) for _ in range(5)])
        ci_hits += a.low <= b.value <= a.high
        pi_hits += a.pi_low <= b.value <= a.pi_high
    assert 0.93 < pi_hits / trials < 0.97
    assert 0.78 < ci_hits / trials < 0.88  # a 95% confidence interval covers a rerun ~83% of the time


def test_paired_ratios_by_round():
    # a is twice b in every pass; the machine was 3x slower in b's second round
    a = {"interleave_group": "g", "time_pass_medians": [[2, 2, 2], [6, 6, 6]]}
    b = {"interleave_group": "g", "time_pass_medians": json.dumps([[1, 1, 1], [3, 3, 3]])}
    e = intervals.paired_estimate(a, b)
    assert e.method == "rounds" and e.value == pytest.approx(2) and e.rounds == 2
    assert intervals.ratio(a, b)[:3] == pytest.approx((2, 2, 2))
    # schema 2's flat list is one round: the pass-level interval
    flat = intervals.paired_estimate({**a, "time_pass_medians": [2.0] * 6}, {**b, "time_pass_medians": [1.0] * 6})
    assert flat.method == "paired" and math.isnan(flat.pi_low)
    assert intervals.paired_estimate({**a, "interleave_group": "h"}, b) is None


def test_two_modes_are_found_and_one_is_not():
    assert intervals.split([3.9, 4.0, 5.6, 6.1, 3.8, 5.9]) == ([4, 0, 1], [2, 5, 3])
    assert intervals.split([1.0, 1.02, 0.99, 1.01, 1.03]) is None
    assert intervals.split([1.0, 1.0, 1.0, 1.0, 2.0]) is None  # one outlier is not a mode


# ---------------------------------------------------------------------------- compare and agree on rounds
def _round_records(n_cases=30, rounds=5, seed=0, noise=0.02, scale=None):
    """Records of a fake sweep: groups of a dense baseline and one other implementation."""
    rng = random.Random(seed)
    out = []
    for i in range(n_cases):
        for impl, base_time in (("dense", 1e-3 * (1 + i)), ("torch", 0.5e-3 * (1 + i))):
            f = (scale or {}).get((impl, i), 1.0)
            passes = [[base_time * f * math.exp(rng.gauss(0, noise)) for _ in range(3)] for _ in range(rounds)]
            medians = [statistics.median(p) for p in passes]
            times = [t for p in passes for t in p for _ in range(4)]
            out.append(records.make_record(
                _FakeCase(impl, i), status="ok", threads=2,
                stats={"time_median": statistics.median(times), "time_samples": schema.encode_samples(times),
                       "time_pass_medians": passes, "time_round_medians": medians, "process_rounds": rounds,
                       "interleave_group": f"g{i}", "rounds": len(times)}))
    return out


class _FakeCase:
    def __init__(self, impl, i):
        self.impl, self.i, self.device = impl, i, "cpu"
        self.id = f"{impl}/cpu/paper:c{i}-n{i}-s8-k3/float32/forward"

    def describe(self):
        return {"impl": self.impl, "role": "baseline" if self.impl == "dense" else "peer",
                "baseline": self.impl == "dense", "device": "cpu", "table": "paper", "shape": f"c{self.i}-n{self.i}-s8-k3",
                "dtype": "float32", "direction": "forward", "batch": 8, "in_channels": self.i + 1,
                "out_channels": self.i + 1, "height": 8, "width": 8, "kernel_size": 3, "padding": 1}

    def extra_fields(self, stats):
        return {}


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _reports(*args):
    return subprocess.run([sys.executable, "-m", "reports", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_compare_judges_rounds_against_the_run_to_run_spread(tmp_path):
    old = _write(tmp_path / "old.jsonl", _round_records(seed=1))
    same = _write(tmp_path / "same.jsonl", _round_records(seed=2))
    result = _reports("compare", str(old), str(same))
    assert result.returncode == 0 and "0 slower" in result.stdout, result.stdout
    # the machine 8% slower throughout: every case with it, none called slower
    drift = {(impl, i): 1.08 for i in range(30) for impl in ("dense", "torch")}
    result = _reports("compare", str(old), str(_write(tmp_path / "drift.jsonl", _round_records(seed=2, scale=drift))))
    factor = float(result.stdout.split("machine factor: NEW ran ")[1].split("x")[0])
    assert result.returncode == 0 and 1.06 < factor < 1.10, result.stdout
    # one case 1.25x slower on top of that: named
    slower = {**drift, ("torch", 7): 1.08 * 1.25}
    result = _reports("compare", str(old), str(_write(tmp_path / "one.jsonl", _round_records(seed=2, scale=slower))))
    assert result.returncode == 1, result.stdout
    named = [line for line in result.stdout.splitlines() if line.startswith("slower:")]
    assert len(named) == 1 and "torch/cpu/paper:c7-n7-s8-k3/float32/forward" in named[0] and "1.2" in named[0]


def test_agree_json_counts_agreement_coverage_and_flags(tmp_path):
    a = _write(tmp_path / "a.jsonl", _round_records(seed=3))
    b = _write(tmp_path / "b.jsonl", _round_records(seed=4, scale={("torch", 3): 1.3}))
    result = _reports("agree", str(a), str(b), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"pairs", "agree", "covered", "median_halfwidth", "flagged_a", "timed_a", "flagged_b",
                        "timed_b", "per_pair"}
    assert out["pairs"] == 30 and out["agree"] == 29 and out["timed_a"] == 60
    moved = [p for p in out["per_pair"] if p["shape"] == "c3-n3-s8-k3"]
    assert moved and not moved[0]["agrees"] and not moved[0]["covered"]
    assert set(moved[0]) == {"impl", "shape", "direction", "speedup_a", "speedup_b", "agrees", "covered", "flagged"}
    assert 0 < out["median_halfwidth"] < 0.1 and out["covered"] >= 25


def test_flags_of_rounds_are_a_wide_prediction_interval_and_two_modes():
    rec = {"status": "ok", "time_median": 1e-3, "process_rounds": 5, "probe_gflops": 1.0, "time_repeat_median": 2e-3}
    assert schema.quality_flags(rec, reference=100.0) == []  # within-run signs are not flags for rounds
    wide = {**rec, "group_ratio": json.dumps({"reference": "dense", "pi_halfwidth": 0.2})}
    assert schema.quality_flags(wide)[0][0] == "prediction interval ±20% of its ratio to the baseline"
    modes = {**rec, "bimodal": {"low": 3.9e-3, "high": 5.9e-3, "rounds": [3, 2]}}
    (text, size), = schema.quality_flags(modes)
    assert text.startswith("bimodal: rounds at 3.9 ms (3) and 5.9 ms (2)") and size == pytest.approx(5.9 / 3.9 - 1)
    one_process = {"status": "ok", "time_median": 1e-3, "time_repeat_median": 2e-3}
    assert schema.quality_flags(one_process)[0][0].startswith("repeat")


# ---------------------------------------------------------------------------- bench ab
@pytest.mark.slow
def test_ab_names_the_implementation_a_revision_made_slower(tmp_path):
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True)
    # the working tree as it is, uncommitted work included
    shutil.copytree(REPO, clone, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".git", ".tox", ".asv", "*.so", "__pycache__", "html"))
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "as it is", "--allow-empty"], check=True)
    naive = clone / "impls" / "naive.py"
    text = naive.read_text()
    marker = "class Naive"
    assert marker in text
    naive.write_text(text.replace(marker, "import time as _t\n\n\n" + marker, 1).replace(
        "    def _forward_train(self, x, prepared, padding):\n",
        "    def _forward_train(self, x, prepared, padding):\n        _t.sleep(0.002)\n", 1))
    assert "_t.sleep" in naive.read_text()
    subprocess.run([*git, "commit", "--quiet", "-am", "naive 2 ms slower"], check=True)
    args = ["ab", "HEAD~1", "HEAD", "--preset", "smoke", "--impl", "naive,torch", "--device", "cpu", "--direction",
            "forward", "--rounds", "5", "--passes", "3", "--block", "0.01", "--solo", "0", "--threads", "1",
            "--rel-pi", "off"]
    result = subprocess.run([sys.executable, "-m", "bench", *args], cwd=clone, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    slower = [line for line in result.stdout.splitlines() if line.startswith("slower:")]
    assert slower and all("naive/" in line for line in slower), result.stdout
    assert all(float(line.split("B/A ")[1].split()[0]) > 2 for line in slower)  # a 0.3 ms layer plus 2 ms
    assert "torch" not in "".join(slower)
    same = subprocess.run([sys.executable, "-m", "bench", "ab", "HEAD", "HEAD", *args[3:]], cwd=clone,
                          capture_output=True, text=True, timeout=600)
    assert same.returncode == 0 and " 0 slower" in same.stdout, same.stdout + same.stderr
    worktrees = subprocess.run([*git, "worktree", "list"], capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1  # the checkouts are gone


def test_ab_refuses_an_unknown_revision():
    result = _cli("ab", "HEAD", "no-such-revision-xyz", "--preset", "smoke")
    assert result.returncode == 2 and "unknown revision 'no-such-revision-xyz'" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_ab_calls_a_change_only_past_the_threshold_at_p_below_one_percent():
    from scipy.stats import ttest_1samp

    from bench import ab

    ratios = [0.85, 0.92, 0.83, 0.90, 0.88]  # p about 0.002
    e = intervals.from_rounds(ratios)
    assert e.p_value == pytest.approx(ttest_1samp(np.log(ratios), 0).pvalue)
    assert ab.verdict(e, 0.05) == "faster" and e.p_value < 0.01
    wide = intervals.from_rounds([0.80, 0.96, 0.78, 0.97, 0.85])  # 0.87x, CI below 1, p about 0.036
    assert wide.high < 1 and 0.01 < wide.p_value < 0.05 and ab.verdict(wide, 0.05) == "no change"
    slower = intervals.from_rounds([1.30, 1.25, 1.28, 1.33, 1.27])
    assert ab.verdict(slower, 0.05) == "slower" and ab.verdict(slower, 0.40) == "no change"
    assert ab.verdict(None, 0.05) == "not judged"
