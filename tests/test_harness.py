"""The benchmark harness: gate, records, failure recording, streaming results, CLI."""

import json

import pytest
import torch

import impls
from bench import __main__ as cli
from bench import harness
from bench.shapes import TABLES, rows
from impls import registry
from impls.composed import TorchComposed


class _WrongAnswer(TorchComposed):
    name = "wrong_answer"

    def _forward_train(self, x, prepared, p):
        y, saved = super()._forward_train(x, prepared, p)
        return y * (1 + 1e-3), saved


class _Crashes(TorchComposed):
    name = "crashes"

    def _forward_train(self, x, prepared, p):
        raise RuntimeError("kernel exploded")


@pytest.fixture
def broken_impls(monkeypatch):
    reg = dict(registry._REGISTRY)
    monkeypatch.setattr(registry, "_REGISTRY", reg)
    impls.register(_WrongAnswer())
    impls.register(_Crashes())
    yield


def _case(impl="torch", direction="forward", table="smoke"):
    return harness.Case(impl, "cpu", table, rows(table)[0], "float32", direction)


REQUIRED_FIELDS = {"run_id", "case", "impl", "device", "shape", "dtype", "direction", "status", "reason",
                   "time_median", "time_iqr", "peak_bytes", "flops", "bytes", "gflops", "gbps",
                   "roofline_fraction", "max_rel_error", "machine", "params", "batch", "in_channels",
                   "out_channels", "height", "width", "kernel_size", "padding", "kernels"}


@pytest.mark.parametrize("direction", ["forward", "backward", "train", "stage:vertical"])
def test_measure_produces_a_full_record(direction):
    rec = harness.measure(_case(direction=direction), min_time=0.01, threads=1)
    assert rec["status"] == "ok", rec["reason"]
    assert REQUIRED_FIELDS <= set(rec)
    assert rec["time_median"] > 0 and rec["time_q1"] <= rec["time_median"] <= rec["time_q3"]
    assert rec["max_rel_error"] < 1e-4
    assert rec["flops"] > 0 and rec["bytes"] > 0 and 0 < rec["roofline_fraction"] < 10
    assert rec["machine"]["copy_gbps"] > 0 and rec["machine"]["sgemm_gflops"] > 0
    assert rec["machine"]["threads"] == 1
    assert 0 < rec["cpu_utilization"] < 4 and rec["machine"]["load_avg_1min"] >= 0
    assert rec["probe_gflops"] > 1
    json.dumps(rec)  # JSON-able as written


def test_cpu_use_and_the_slow_period_warning():
    use = harness.CpuUse()
    with use:
        sum(i * i for i in range(200_000))  # one busy thread
    assert 0.5 < use.utilization <= 1.1
    rec = {"device": "cpu", "probe_gflops": 190.0, "machine": {"threads": 2}}
    assert "slow period: compute probe 10% below the run's best" in cli._slow_period(rec, best_probe=211.0)
    assert cli._slow_period(rec, best_probe=195.0) == ""
    assert cli._slow_period(rec) == "" and cli._slow_period({**rec, "device": "cuda"}, best_probe=211.0) == ""
    assert harness.compute_probe("cpu") > 1 and harness.compute_probe("cuda") is None


def test_gate_failure_is_recorded_and_never_timed(broken_impls):
    rec = harness.measure(_case("wrong_answer"), min_time=0.01)
    assert rec["status"] == "failed"
    assert "oracle" in rec["reason"] and "output" in rec["reason"]
    assert "time_median" not in rec


def test_crash_is_recorded_and_the_sweep_goes_on(broken_impls, tmp_path):
    out = tmp_path / "r.jsonl"
    code = cli.main(["run", "--preset", "smoke", "--impl", "crashes,wrong_answer,torch", "--device", "cpu",
                     "--direction", "forward", "--min-time", "0.01", "--results", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    by_impl = {}
    for r in recs:
        by_impl.setdefault(r["impl"], []).append(r)
    assert {r["status"] for r in by_impl["crashes"]} == {"failed"}
    assert "kernel exploded" in by_impl["crashes"][0]["reason"]
    assert {r["status"] for r in by_impl["wrong_answer"]} == {"failed"}
    assert {r["status"] for r in by_impl["torch"]} == {"ok"}
    assert len(recs) == 3 * len(TABLES["smoke"])
    assert code == 1  # failures are reported in the exit status



class _Slowed(TorchComposed):
    """torch, with the cyclic garbage collector's state and a pass counter on the side."""

    name = "slowed"
    gc_enabled_in_timed_calls: list = []

    def _forward_train(self, x, prepared, p):
        import gc
        _Slowed.gc_enabled_in_timed_calls.append(gc.isenabled())
        return super()._forward_train(x, prepared, p)


def test_interleaved_measurement_pools_shuffled_passes(broken_impls, tmp_path):
    impls.register(_Slowed())
    out = tmp_path / "r.jsonl"
    code = cli.main(["run", "--preset", "smoke", "--impl", "crashes,slowed,torch", "--device", "cpu",
                     "--direction", "forward", "--min-time", "0.03", "--interleave", "3", "--results", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 3 * len(TABLES["smoke"]) and code == 1  # `crashes` fails, the rest goes on
    ok = [r for r in recs if r["impl"] in ("slowed", "torch")]
    assert ok and all(r["status"] == "ok" for r in ok)
    for r in ok:
        assert r["interleave_passes"] == 3 and len(r["time_pass_medians"]) == 3
        assert r["rounds"] >= 3 * 3 and r["time_repeat_median"] > 0
        assert min(r["time_pass_medians"]) <= r["time_median"] <= max(r["time_pass_medians"])
    # records of one layer keep the order of the cases, as without --interleave
    assert [r["impl"] for r in recs[:3]] == ["crashes", "slowed", "torch"]


def test_garbage_collector_is_paused_only_while_timing():
    import gc
    _Slowed.gc_enabled_in_timed_calls.clear()
    impl = _Slowed()
    bench = harness.Bench(_case(), lambda: impl.forward_train(x, prepared, 1), None, {}, impl)
    x, prepared = torch.randn(1, 3, 8, 8), impl.prepare(impls.FlatParams.random(3, 4, 3))
    assert gc.isenabled()
    times = harness.call_times(bench, min_time=0.0, min_rounds=4)
    assert len(times) >= 4 and not any(_Slowed.gc_enabled_in_timed_calls)
    assert gc.isenabled()

def test_unavailable_case_is_skipped_with_reason():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rec = harness.measure(harness.Case("torch", "cuda", "smoke", rows("smoke")[0]))
    assert rec["status"] == "skipped" and "CUDA" in rec["reason"]
    rec = harness.measure(harness.Case("no_such_impl", "cpu", "smoke", rows("smoke")[0]))
    assert rec["status"] == "skipped" and "does not exist" in rec["reason"]


def test_writer_streams_each_record(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    writer = harness.ResultsWriter(path)
    writer.write({"a": 1})
    assert path.read_text() == '{"a": 1}\n'  # on disk before the next case runs
    writer.write({"a": 2})
    assert len(path.read_text().splitlines()) == 2


def test_case_selection_filters_and_names():
    cases = harness.select_cases(["smoke"], impl_names=["torch"], devices=["cpu"], directions=["forward", "stages"])
    ids = [c.id for c in cases]
    assert "torch/cpu/smoke:c4-n6-s9-k3/float32/forward" in ids
    assert "torch/cpu/smoke:c4-n6-s9-k3/float32/stage:lateral" in ids
    assert all(c.impl == "torch" and c.device == "cpu" for c in cases)
    with pytest.raises(ValueError, match="unknown"):
        harness.select_cases(["smoke"], impl_names=["nope"])
    with pytest.raises(ValueError, match="table"):
        harness.select_cases(["nope"])
    with pytest.raises(ValueError, match="direction"):
        harness.select_cases(["smoke"], impl_names=["torch"], devices=["cpu"], directions=["sideways"])


def test_tables_are_well_formed():
    for table, table_rows in TABLES.items():
        names = [r.name for r in table_rows]
        assert len(names) == len(set(names)), table
        for r in table_rows:
            assert 0 <= r.padding <= r.kernel_size - 1 and r.size + 2 * r.padding >= r.kernel_size
    assert len(rows("sweep")) < len(rows("sweep", all_rows=True)) == 60
    assert rows("sweep") == rows("sweep")  # the default subset is seeded


def test_warm_up_reaches_steady_state():
    calls = []
    n = harness.warm_up(lambda: calls.append(1), window=3, max_calls=100)
    assert 6 <= n <= 100 and len(calls) == n


def test_cpu_peak_memory_sees_a_large_allocation():
    bench = harness.setup_case(_case(), warmup=False)
    big = 64 << 20
    bench.call = lambda: torch.ones(big // 4)  # touches 64 MB
    peak, method = harness.peak_bytes(bench)
    if peak is None:
        pytest.skip(method)
    assert peak >= 0.9 * big, (peak, method)
