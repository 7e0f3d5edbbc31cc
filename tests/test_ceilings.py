"""The roofline's compute ceiling: every large GEMM the machine offers, the FMA peak beside
it, and the report's per-machine ceiling that no measured case runs above.

The report tests build small fake records (one layer, a few implementations) so they
take seconds; the ceiling tests time real GEMMs only where the time is the subject.
"""

from __future__ import annotations

import collections
import json
import re

import pytest
import torch

import impls
from bench import machine
from impls.shapes import LayerShape

pd = pytest.importorskip("pandas")

LAYER = LayerShape(batch=8, in_channels=256, out_channels=256, height=32, width=32, kernel_size=3, padding=1)
SHAPE = "c256-n256-s32-k3"


# ---------------------------------------------------------------------------- ceilings()
def _fake_seconds(fn, device, repeats):
    """Fixed call times, the fastest 0.1 s, so a rate is its FLOPs / 0.1 s."""
    return [0.3] * (repeats - 1) + [0.1]


def test_ceilings_name_every_gemm_and_keep_the_best(monkeypatch):
    monkeypatch.setattr(machine, "_seconds", _fake_seconds)
    entry = machine.ceilings("cpu")
    sources = [g["sgemm_source"] for g in entry["gemms"]]
    assert sources[0] == "torch.mm 1536^3"
    assert entry["gemms"][0]["sgemm_gflops"] == pytest.approx(2 * 1536**3 / 0.1 / 1e9)
    if impls.get("openmp").unavailable_reason("cpu") is None:
        assert sources[1:] == ["openmp lateral GEMM 512x512x8192"]
        # the FLOPs as the records count the lateral stage: the bias add included
        flops = LayerShape(8, 512, 512, 32, 32, 1, 0).stage_flops("lateral")
        assert flops == (2 * 512 + 1) * 512 * 8 * 32 * 32
        assert entry["gemms"][1]["sgemm_gflops"] == pytest.approx(flops / 0.1 / 1e9)
    best = max(entry["gemms"], key=lambda g: g["sgemm_gflops"])
    assert (entry["sgemm_gflops"], entry["sgemm_source"]) == (best["sgemm_gflops"], best["sgemm_source"])
    json.dumps(entry)  # a record carries it as written


def test_without_the_extension_only_torch_is_measured(monkeypatch):
    monkeypatch.setattr(machine, "_seconds", _fake_seconds)
    monkeypatch.setattr(impls.get("openmp"), "unavailable_reason", lambda *a, **k: "no C compiler")
    entry = machine.ceilings("cpu")
    assert [g["sgemm_source"] for g in entry["gemms"]] == ["torch.mm 1536^3"]
    assert entry["sgemm_source"] == "torch.mm 1536^3"


@pytest.mark.skipif(impls.get("openmp").unavailable_reason("cpu") is not None,
                    reason="the OpenMP extension is unavailable")
def test_the_extension_gemm_is_timed_for_real_at_torch_threads():
    threads = torch.get_num_threads()
    entry = machine.ceilings("cpu")
    rates = {g["sgemm_source"]: g["sgemm_gflops"] for g in entry["gemms"]}
    assert set(rates) == {"torch.mm 1536^3", "openmp lateral GEMM 512x512x8192"}
    assert entry["sgemm_gflops"] == max(rates.values()) > 1  # GFLOP/s, not FLOP/s or seconds
    assert entry["threads"] == threads == torch.get_num_threads()


def test_the_log_keeps_the_source_of_the_best():
    values = iter([{"copy_gbps": 8.0, "sgemm_gflops": 90.0, "sgemm_source": "torch.mm 1536^3"},
                   {"copy_gbps": 9.0, "sgemm_gflops": 130.0, "sgemm_source": "openmp lateral GEMM 512x512x8192"},
                   {"copy_gbps": 7.0, "sgemm_gflops": 110.0, "sgemm_source": "torch.mm 1536^3"}])
    log = machine.CeilingLog(interval_s=0.0, measure=lambda device: {**next(values), "threads": 1})
    torch.set_num_threads(1)
    for _ in range(3):
        log.update("cpu")
    fields = log.fields("cpu", 1)
    assert (fields["sgemm_gflops"], fields["sgemm_source"]) == (130.0, "openmp lateral GEMM 512x512x8192")
    assert fields["copy_gbps"] == 9.0 and len(fields["ceilings"]) == 3


# ---------------------------------------------------------------------------- FMA peak
def test_fma_peak_arithmetic():
    assert machine.fma_peak_gflops("avx512", 2, 2.0) == 2 * 2.0 * 2 * 16 * 2 == 256.0
    assert machine.fma_peak_gflops("avx2", 2, 2.45) == pytest.approx(2 * 2.45 * 2 * 8 * 2)
    assert machine.fma_peak_gflops("sse", 4, 3.0) == 4 * 3.0 * 2 * 4 * 2
    assert machine.fma_peak_gflops("avx512", 2, 2.0, units=1) == 128.0
    assert machine.fma_peak_gflops("riscv64", 2, 2.0) is None and machine.fma_peak_gflops("avx2", 2, 0) is None
    # Zen 4 runs a 512-bit FMA on its two 256-bit pipes; Zen 3 has two 256-bit FMA units, as Xeons do
    assert machine.fma_units("avx512", "amd", "25/17") == 1
    assert machine.fma_units("avx2", "amd", "25/1") == 2
    assert machine.fma_units("avx512", "intel", "6/143") == 2
    assert machine.fma_units("avx2", "amd", "23/1") == 1 and machine.fma_units("avx2", "amd", "23/49") == 2
    assert machine.fma_units("avx2", None, None) == 2


def test_fma_peak_of_the_record_states_its_basis(monkeypatch):
    meta = {"cpu_isa": "avx2", "cpu_vendor": "amd", "cpu_family_model": "25/1", "cpu_cores_physical": 2,
            "cpu_cores_logical": 2}
    monkeypatch.setattr(machine, "metadata", lambda: meta)
    monkeypatch.setattr(machine, "cpu_clock", lambda: (2.45, "cpu MHz"))
    two = machine.fma_peak(2)
    assert two["fma_peak_gflops"] == pytest.approx(156.8)
    assert two["fma_peak_basis"].startswith("2 cores x 2.45 GHz (cpu MHz) x 2 FMA x 8 lanes x 2")
    assert "estimate" in two["fma_peak_basis"] and "VM" in two["fma_peak_basis"]
    assert machine.fma_peak(1)["fma_peak_gflops"] == pytest.approx(78.4)  # at the case's threads
    assert machine.fma_peak(4) == two  # threads beyond the cores share their FMA units
    monkeypatch.setattr(machine, "cpu_clock", lambda: None)
    assert machine.fma_peak(2) == {}


def test_the_clock_comes_from_psutil_then_cpu_mhz_then_bogomips(monkeypatch):
    import psutil

    freq = collections.namedtuple("freq", "current min max")
    clock = machine.cpu_clock.__wrapped__  # lru_cache: the reading itself
    info: dict = {"cpu MHz": "2445.404", "bogomips": "4890.80"}
    monkeypatch.setattr(machine, "_cpuinfo", lambda *keys: {k: v for k, v in info.items() if k in keys})
    monkeypatch.setattr(psutil, "cpu_freq", lambda: freq(2445.0, 0.0, 3500.0))
    assert clock() == (3.5, "psutil max")
    monkeypatch.setattr(psutil, "cpu_freq", lambda: freq(2445.0, 0.0, 0.0))  # a VM: no cpufreq maximum
    assert clock() == (pytest.approx(2.445404), "cpu MHz")
    del info["cpu MHz"]
    assert clock() == (pytest.approx(2.4454), "BogoMIPS/2")
    info.clear()
    assert clock() is None


def test_cpu_records_carry_the_fma_peak_and_gpu_records_do_not():
    if machine.cpu_clock() is None or machine.cpu_isa() not in machine.FMA_LANES:
        pytest.skip("this machine reports no clock or no known vector width")
    cpu = machine.record("cpu", 1, None, None)
    assert cpu["fma_peak_gflops"] > 0 and cpu["fma_peak_basis"].startswith("1 cores x ")
    assert "fma_peak_gflops" not in machine.record("cuda", 1, None, None)


# ---------------------------------------------------------------------------- the report
def _record(run: str, impl: str, direction: str, gflops: float, *, sgemm: float, copy: float = 20.0,
            threads: int = 2, host: str = "vm", fma: float | None = 156.8, baseline: bool = False) -> dict:
    """A version-2 record of LAYER whose time makes it reach `gflops`, in a run whose
    machine measured `sgemm` and `copy` as its ceilings."""
    flops, nbytes = LAYER.work(direction, "dense" if baseline else "flat")
    info = {"host": host, "cpu_isa": "avx2", "cpu_family_model": "25/1", "threads": threads, "torch_threads": threads,
            "copy_gbps": copy, "sgemm_gflops": sgemm,
            "ceilings": [{"threads": threads, "copy_gbps": copy, "sgemm_gflops": sgemm,
                          "sgemm_source": "torch.mm 1536^3"}]}
    if fma is not None:
        info.update(fma_peak_gflops=fma, fma_peak_basis=f"{threads} cores x 2.45 GHz (cpu MHz) x 2 FMA x 8 lanes x 2")
    return {"schema_version": 2, "run_id": run, "case": f"{impl}/cpu/paper:{SHAPE}/float32/{direction}/{threads}",
            "impl": impl, "role": "baseline" if baseline else "handwritten", "baseline": baseline, "device": "cpu",
            "table": "paper", "shape": SHAPE, "dtype": "float32", "direction": direction,
            **{k: v for k, v in LAYER.as_dict().items()}, "status": "ok", "flops": flops, "bytes": nbytes,
            "time_median": flops / gflops / 1e9, "timestamp": f"2026-12-0{run[-1]}T10:00:00+00:00",
            "machine": info}


def _load(tmp_path, records):
    from reports.load import load

    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return load([path]).records


def test_no_case_runs_above_its_compute_ceiling(tmp_path):
    # openmp_fused's forward ran at 140 GFLOP/s in a run whose sgemm measured 100
    records = [_record("run1", "openmp_fused", "forward", 140.0, sgemm=100.0),
               _record("run1", "torch", "forward", 60.0, sgemm=100.0),
               _record("run1", "openmp", "train", 90.0, sgemm=100.0),
               _record("run1", "dense", "forward", 70.0, sgemm=100.0, baseline=True)]
    df = _load(tmp_path, records)
    assert (df["intensity"] * df["ceiling_copy_gbps"] > df["ceiling_sgemm_gflops"]).all()  # compute-bound
    assert df["ceiling_sgemm_gflops"].tolist() == pytest.approx([140.0] * len(df))
    assert (df["roofline_fraction"] <= 1 + 1e-12).all()
    fused = df[df["impl"] == "openmp_fused"].iloc[0]
    assert fused["roofline_fraction"] == pytest.approx(1.0)
    assert set(df["ceiling_note"]) == {f"raised to openmp_fused forward paper:{SHAPE}'s rate: no GEMM measured faster"}
    assert set(df["ceiling_fma_peak_gflops"]) == {156.8}
    assert (df["gflops"] / 100.0).max() == pytest.approx(1.4)  # against the run's sgemm it was above 1


def test_the_baseline_does_not_raise_the_ceiling(tmp_path):
    # the dense layer's FLOPs are the direct count, which a Winograd kernel undercuts
    df = _load(tmp_path, [_record("run1", "openmp_fused", "forward", 80.0, sgemm=100.0),
                          _record("run1", "dense", "forward", 130.0, sgemm=100.0, baseline=True)])
    assert set(df["ceiling_sgemm_gflops"]) == {100.0} and df["ceiling_note"].isna().all()
    assert df.loc[df["impl"] == "dense", "roofline_fraction"].iloc[0] == pytest.approx(1.3)


def test_the_compute_ceiling_is_the_machines_best_over_runs(tmp_path):
    df = _load(tmp_path, [
        _record("run1", "openmp_fused", "forward", 100.0, sgemm=80.0, copy=10.0),  # a slow stretch's GEMMs
        _record("run2", "openmp_fused", "forward", 110.0, sgemm=120.0, copy=20.0),
        _record("run1", "openmp_fused", "forward", 50.0, sgemm=60.0, threads=1, fma=78.4),
        _record("run3", "openmp_fused", "forward", 100.0, sgemm=90.0, host="other"),
    ])
    ceiling = {(r["run_id"], r["machine_threads"], r["machine"]): r["ceiling_sgemm_gflops"] for _, r in df.iterrows()}
    assert ceiling[("run1", 2, "vm (avx2, 25/1)")] == ceiling[("run2", 2, "vm (avx2, 25/1)")] == 120.0
    assert ceiling[("run1", 1, "vm (avx2, 25/1)")] == 60.0  # another thread count: its own ceiling
    assert ceiling[("run3", 2, "other (avx2, 25/1)")] == pytest.approx(100.0)  # another machine, raised by its case
    run1 = df[(df["run_id"] == "run1") & (df["machine_threads"] == 2)].iloc[0]
    assert run1["roofline_fraction"] == pytest.approx(100.0 / 120.0) and pd.isna(run1["ceiling_note"])
    assert run1["ceiling_copy_gbps"] == 10.0  # the copy ceiling stays the run's own
    one = df[df["machine_threads"] == 1].iloc[0]
    assert one["ceiling_fma_peak_gflops"] == 78.4


def test_the_roofline_figure_shows_the_fma_peak_and_the_raise(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("seaborn")
    from reports.build import build

    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        _record("run1", "openmp_fused", "forward", 140.0, sgemm=100.0),
        _record("run1", "dense", "forward", 70.0, sgemm=100.0, baseline=True)]))
    problems: list[str] = []
    text = build([path], tmp_path / "out", problems).read_text(encoding="utf-8")
    assert "could not be drawn" not in text and (tmp_path / "out" / "figures" / "roofline_cpu.png").stat().st_size > 1000
    caption = re.sub(r"\s+", " ", text[text.index("Roofline (CPU"):])
    assert "The dashed line is the instruction set&#x27;s float32 FMA peak" in caption or \
        "The dashed line is the instruction set's float32 FMA peak" in caption
    assert "2 cores x 2.45 GHz (cpu MHz) x 2 FMA x 8 lanes x 2" in caption
    assert f"raised to openmp_fused forward paper:{SHAPE}&#x27;s rate" in caption or \
        f"raised to openmp_fused forward paper:{SHAPE}'s rate" in caption


# ---------------------------------------------------------------------------- copies by working set
LEVELS = [{"bytes": 1 << 20, "gbps": 120.0}, {"bytes": 1 << 22, "gbps": 80.0}, {"bytes": 1 << 24, "gbps": 50.0},
          {"bytes": 1 << 27, "gbps": 22.0}]


def test_a_case_is_held_to_the_copy_of_its_own_size():
    from bench import schema

    assert schema.copy_ceiling(LEVELS, 8 << 20) == 80.0  # 8 MiB: the largest copy not above it, 4 MiB
    assert schema.copy_ceiling(LEVELS, 1 << 22) == 80.0
    assert schema.copy_ceiling(LEVELS, 1 << 19) == 120.0  # below every level: the smallest
    assert schema.copy_ceiling(LEVELS, 1 << 30) == 22.0  # beyond the caches: DRAM
    assert schema.copy_ceiling(json.dumps(LEVELS), 1 << 25) == 50.0  # as the report's columns carry it
    assert schema.copy_ceiling(None, 1 << 20) is None and schema.copy_ceiling(LEVELS, None) is None
    assert schema.copy_ceiling([{"bytes": 4, "gbps": None}], 8) is None
    slow = [{**lv, "gbps": lv["gbps"] / 2} for lv in LEVELS]
    assert schema.best_copy_levels([slow, json.dumps(LEVELS), None]) == LEVELS


def test_ceilings_measure_a_copy_per_level_and_the_dram_one(monkeypatch):
    monkeypatch.setattr(machine, "_seconds", _fake_seconds)
    entry = machine.ceilings("cpu")
    sizes = [lv["bytes"] for lv in entry["copy_levels"]]
    assert sizes == [*machine.COPY_LEVELS["cpu"], entry["copy_bytes"]] and sizes == sorted(sizes)
    assert entry["copy_bytes"] >= 8 * sizes[-2]  # far beyond the caches
    assert entry["copy_gbps"] == entry["copy_levels"][-1]["gbps"]
    # each level's rate: its bytes times the copies per sample over the median sample (0.3 s)
    first = entry["copy_levels"][0]
    assert first["gbps"] == pytest.approx(first["bytes"] * ((1 << 25) // first["bytes"]) / 0.3 / 1e9)
    log = machine.CeilingLog()
    log.entries[("cpu", 2)] = [entry, {**entry, "copy_levels": [{**lv, "gbps": lv["gbps"] * 2}
                                                                 for lv in entry["copy_levels"]]}]
    assert [lv["gbps"] for lv in log.fields("cpu", 2)["copy_levels"]] == [2 * lv["gbps"] for lv in entry["copy_levels"]]


def test_a_cache_resident_stage_stays_under_its_roofline(tmp_path):
    # a vertical stage moving 16 MiB at 60 GB/s: 2.7x the DRAM copy, under the 16 MiB copy's 80 GB/s
    flops, nbytes = LAYER.work("stage:vertical", "flat")
    rec = _record("run1", "openmp", "stage:vertical", 60.0 * flops / nbytes, sgemm=150.0, copy=22.0)
    rec["machine"]["copy_levels"] = [{"bytes": 1 << 22, "gbps": 100.0}, {"bytes": 1 << 24, "gbps": 80.0},
                                     {"bytes": 1 << 27, "gbps": 22.0}]
    old = {**rec, "machine": {k: v for k, v in rec["machine"].items() if k != "copy_levels"}, "run_id": "run2"}
    df = _load(tmp_path, [rec, old]).set_index("run_id")
    assert df.loc["run1", "ceiling_copy_gbps"] == 80.0 and df.loc["run1", "ceiling_dram_gbps"] == 22.0
    assert df.loc["run1", "roofline_fraction"] == pytest.approx(0.75)
    assert pd.isna(df.loc["run1", "ceiling_copy_note"])
    # without levels (records before them): one level, the DRAM copy, raised to the case that beat it
    assert df.loc["run2", "ceiling_copy_gbps"] == pytest.approx(60.0)
    assert df.loc["run2", "roofline_fraction"] == pytest.approx(1.0)
    assert df.loc["run2", "ceiling_copy_note"].startswith(f"raised to openmp stage:vertical paper:{SHAPE}'s 60.0 GB/s")


def test_no_case_runs_above_its_copy_level(tmp_path):
    flops, nbytes = LAYER.work("stage:vertical", "flat")
    levels = [{"bytes": 1 << 22, "gbps": 100.0}, {"bytes": 1 << 24, "gbps": 50.0}, {"bytes": 1 << 27, "gbps": 22.0}]
    recs = [_record("run1", impl, "stage:vertical", rate * flops / nbytes, sgemm=150.0) for impl, rate in
            (("openmp", 70.0), ("torch", 40.0))]
    for rec in recs:
        rec["machine"]["copy_levels"] = levels
    df = _load(tmp_path, recs).set_index("impl")
    assert df["ceiling_copy_gbps"].tolist() == pytest.approx([70.0, 70.0])  # the 16 MiB level, raised
    assert df.loc["openmp", "roofline_fraction"] == pytest.approx(1.0)
    assert df.loc["torch", "roofline_fraction"] == pytest.approx(40.0 / 70.0)
    assert set(df["ceiling_copy_note"]) == {f"raised to openmp stage:vertical paper:{SHAPE}'s 70.0 GB/s: no copy at "
                                            "its level (16 MiB) measured faster"}
