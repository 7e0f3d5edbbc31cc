"""The HTML report builds from any subset of results and renders in a real browser.

Fixture results live in tests/fixtures/results/ (regenerate with its generate.py): the
schema-version-1 files are old results kept as they were, the *-v2.jsonl files carry the
fields of the current bench/schema.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import math

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("seaborn")
pytest.importorskip("matplotlib")

from reports.build import build  # noqa: E402
from reports.load import load  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"
REPO = Path(__file__).resolve().parents[1]
ALWAYS = ["summary", "cpu", "gpu", "parameters", "history", "quality", "machines", "failures", "data"]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.ids, self.links = [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src"))
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if "id" in attrs:
            self.ids.add(attrs["id"])


def _build(out: Path, *names: str):
    problems: list[str] = []
    index = build([FIXTURES / n for n in names], out, problems)
    text = index.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return index, text, page, problems


def _check_page(index: Path, text: str, page: _Page):
    """Sections present, every referenced image exists and is non-empty, no figure crashed."""
    assert index.name == "index.html" and index.exists()
    for section in ALWAYS:
        assert section in page.ids, f"section #{section} missing"
    for src in page.images:
        assert src and not src.startswith(("/", "http")), src  # relative: works from file://
        assert (index.parent / src).is_file() and (index.parent / src).stat().st_size > 1000, src
    for link in page.links:
        if not link.startswith("#"):
            assert (index.parent / link).exists(), link
    assert "could not be drawn" not in text
    assert (index.parent / "results.csv").exists()


def _section(text: str, anchor: str) -> str:
    start = text.index(f'<section id="{anchor}">')
    return text[start:text.index("</section>", start)]


def _records(name: str) -> list[dict]:
    """The records of a fixture .jsonl file as written (an interrupted last line left out)."""
    out = []
    for line in (FIXTURES / name).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _text(fragment: str) -> str:
    """The visible text of an HTML fragment, cells separated by " | "."""
    import html

    return html.unescape(re.sub(r"\s*(<[^>]+>\s*)+", " | ", fragment))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Everything: six machines, CPU and GPU, both formats, schema versions 1 and 2, asv
    history, models, failures."""
    return _build(tmp_path_factory.mktemp("full") / "out", ".")


def test_full_report(full):
    index, text, page, problems = full
    _check_page(index, text, page)
    assert "models" in page.ids
    assert len(page.images) >= 20
    for name in ("acceleration_cpu_devbox", "acceleration_cpu_ci-epyc", "acceleration_cuda_gpu-node-1",
                 "acceleration_cuda_gpu-h200-1", "machines_cpu", "machines_cuda", "peers", "time_vs_size_cpu",
                 "memory_cuda_gpu-node-1", "roofline_cpu", "roofline_cuda", "kernels_cpu", "kernels_cuda",
                 "parameters", "models_cifar", "filters_cifar"):
        assert any(name in src for src in page.images), name
    try:
        import asv  # noqa: F401
    except ImportError:
        pass
    else:
        assert sum("history_" in src for src in page.images) == 2
    summary = _section(text, "summary")
    assert '<table class="summary">' in summary and "rowspan=" in summary
    for word in ("fastest peer", "best hand-written", "hand-written vs peer", "speedup vs dense",
                 "roofline: flattened", "peak MiB: dense", "gpu-node-1", "gpu-h200-1", "laptop", "ci-xeon",
                 "Compile and export cost"):
        assert word in summary, word
    failures = _section(text, "failures")
    assert "CUDA error: an illegal memory access" in failures and "CuPy is not installed" in failures
    machines = _text(_section(text, "machines"))
    assert "NVIDIA H100 80GB HBM3" in machines and "AMD Ryzen 7 5800U" in machines
    isa = re.search(r"widest vector instruction set[^|]*\|([^\n]*)", machines)
    assert isa and "avx2" in isa.group(1) and "avx512" in isa.group(1), machines[:2000]
    assert any("truncated last line" in p for p in problems)


def test_records_are_deduplicated_and_filled():
    inputs = load([FIXTURES / "gpu-h100.json", FIXTURES / "gpu-h100.jsonl"])
    df = inputs.records
    assert not df.duplicated(["run_id", "case"]).any()
    cases = {json.loads(line)["case"] for line in (FIXTURES / "gpu-h100.jsonl").read_text().splitlines()}
    cases |= {b["extra_info"]["case"] for b in json.loads((FIXTURES / "gpu-h100.json").read_text())["benchmarks"]}
    assert len(df) == len(cases)
    ok = df[df["status"] == "ok"]
    assert ok["time_median"].notna().all() and ok["time_q1"].notna().all()  # filled from "stats"
    dense = ok[ok["impl"] == "dense"]
    assert not dense.empty and ((dense["speedup"] - 1).abs() < 1e-12).all()
    # Every speedup is the run's dense time for the same layer, dtype and direction over the
    # case's, both from the raw records; a direction dense has no case of (a stage) has none.
    times = _h100_times()
    assert set(ok["case"]) == set(times)
    checked = 0
    for case, speedup in zip(ok["case"], ok["speedup"]):
        impl, device, layer, dtype, direction = case.split("/")
        baseline = f"dense/{device}/{layer}/{dtype}/{direction}"
        if baseline in times:
            assert speedup == pytest.approx(times[baseline] / times[case], rel=1e-12), case
            checked += 1
        else:
            assert direction.startswith("stage:") and math.isnan(speedup), case
    assert checked >= 150
    # a few by value: forward in both files; im2col's time only in "stats"; a .json-only case
    speedup = dict(zip(ok["case"], ok["speedup"]))
    assert speedup["torch/cuda/paper:c3-n64-s32-k5/float32/forward"] == pytest.approx(0.20701587713518846, rel=1e-12)
    assert speedup["cupy/cuda/paper:c3-n64-s32-k5/float32/forward"] == pytest.approx(0.5728992505196483, rel=1e-12)
    assert speedup["im2col/cuda/paper:c3-n64-s32-k5/float32/forward"] == pytest.approx(0.19674735186338596, rel=1e-12)
    assert speedup["cudnn/cuda/sweep:c512-n512-s8-k3/float32/train"] == pytest.approx(3.194037071871252, rel=1e-12)


def _h100_times() -> dict[str, float]:
    """case -> median time of every ok record of the H100 run, read here from its two files:
    the .jsonl's time_median, the .json's extra_info time_median or else its pytest-benchmark
    "stats" median (the two files agree where they overlap)."""
    times = {r["case"]: r["time_median"] for r in _records("gpu-h100.jsonl") if r["status"] == "ok"}
    for bench in json.loads((FIXTURES / "gpu-h100.json").read_text())["benchmarks"]:
        info = bench["extra_info"]
        if info.get("status", "ok") == "ok":
            value = info.get("time_median")
            value = bench["stats"]["median"] if value is None else value
            assert times.setdefault(info["case"], value) == value, info["case"]
    return times


def test_version_1_records_load_with_their_speedups():
    """An old results file (no schema_version, the baseline known only by its name) reads
    as before: upgrade() marks dense as the baseline, and every speedup is dense ÷ impl."""
    raw = _records("cpu-devbox.jsonl")  # the truncated last line is skipped by the reader
    assert all("schema_version" not in r and "baseline" not in r for r in raw)
    df = load([FIXTURES / "cpu-devbox.jsonl"]).records
    assert set(df["schema_version"]) == {1}
    assert df["baseline"].tolist() == (df["impl"] == "dense").tolist() and df["baseline"].any()
    times = {r["case"]: r["time_median"] for r in raw if r["status"] == "ok"}
    case = "openmp_fused/cpu/paper:c64-n64-s32-k3/float32/forward"
    expected = times["dense/cpu/paper:c64-n64-s32-k3/float32/forward"] / times[case]
    row = df[df["case"] == case].iloc[0]
    assert row["speedup"] == pytest.approx(expected, rel=1e-12)
    # no raw times and no interval in version 1: the box-plot notch of each median
    assert row["speedup_method"] == "notch" and row["speedup_low"] < expected < row["speedup_high"]
    ok = df[(df["status"] == "ok") & ~df["baseline"] & df["direction"].isin(["forward", "backward", "train"])]
    assert ok["speedup"].notna().all()


def test_version_2_records_attempts_ceilings_and_rates():
    raw = _records("cpu-epyc-v2.jsonl")
    df = load([FIXTURES / "cpu-epyc-v2.jsonl"]).records
    # a case measured again at the end of its run: the latest attempt is the one kept
    case = "openmp_fused/cpu/paper:c64-n64-s32-k3/float32/forward"
    attempts = [r for r in raw if r["case"] == case]
    assert [r["attempt"] for r in attempts] == [1, 2]
    kept = df[df["case"] == case]
    assert len(kept) == 1 and kept["time_median"].iloc[0] == attempts[1]["time_median"]
    # the run measured its ceilings three times; every case is held to the best of them
    best_copy = max(c["copy_gbps"] for r in raw for c in r["machine"]["ceilings"])
    best_sgemm = max(c["sgemm_gflops"] for r in raw for c in r["machine"]["ceilings"])
    assert raw[0]["machine"]["copy_gbps"] < best_copy  # the first records knew a lower one
    assert set(df["ceiling_copy_gbps"]) == {best_copy} and set(df["ceiling_sgemm_gflops"]) == {best_sgemm}
    first = df[df["case"] == raw[0]["case"]].iloc[0]
    roof = min(best_sgemm, best_copy * first["flops"] / first["bytes"])
    assert first["roofline_fraction"] == pytest.approx(first["flops"] / first["time_median"] / 1e9 / roof)
    assert first["roofline_fraction"] < raw[0]["roofline_fraction"]  # the record's used the lower ceiling
    # raw samples on both sides: the speedup's interval is a bootstrap, and brackets it
    ok = df[(df["status"] == "ok") & ~df["baseline"]]
    assert set(ok["speedup_method"]) == {"bootstrap"}
    assert ((ok["speedup_low"] < ok["speedup"]) & (ok["speedup"] < ok["speedup_high"])).all()


def test_ratio_intervals():
    import numpy as np

    from bench import intervals

    rng = np.random.default_rng(1)
    a, b = rng.lognormal(np.log(2e-3), 0.03, 40), rng.lognormal(np.log(1e-3), 0.03, 40)
    first = intervals.ratio_interval(a, b)
    assert first == intervals.ratio_interval(a, b)  # fixed seed: the same report twice
    assert first[2] == "bootstrap" and first[0] < np.median(a) / np.median(b) < first[1] and 1.9 < first[0]
    # without raw times: conservatively from the two intervals
    lo, hi, how = intervals.ratio_of({"time_ci95_low": 1.9, "time_ci95_high": 2.2},
                                     {"time_ci95_low": 0.95, "time_ci95_high": 1.1})
    assert how == "ci" and lo == pytest.approx(1.9 / 1.1) and hi == pytest.approx(2.2 / 0.95)
    # neither: the notch of each median from its IQR and rounds
    lo, hi, how = intervals.ratio_of({"time_median": 2.0, "time_iqr": 0.2, "rounds": 16},
                                     {"time_median": 1.0, "time_iqr": 0.1, "rounds": 16})
    assert how == "notch" and lo == pytest.approx((2 - 0.079) / (1 + 0.0395)) and hi > 2
    assert intervals.ratio_of({"time_median": 2.0}, {"time_median": 1.0})[2] is None
    assert [intervals.verdict(*v) for v in ((1.1, 1.3), (0.7, 0.9), (0.9, 1.1), (math.nan, 2))] == [
        "above", "below", "spans", "unknown"]


def test_ratios_are_said_only_as_far_as_their_interval_allows():
    from reports.tables import headlines, say_ratio

    assert say_ratio(1.82, 1.71, 1.93) == "1.8× (1.7–1.9)"
    assert say_ratio(1.02, 0.97, 1.06) == "no clear difference (0.97–1.06×)"
    assert say_ratio(1.8, math.nan, math.nan) == "1.8× (no interval)"
    row = {"device": "cpu", "machine": "m", "fastest": "openmp", "table": "paper", "direction": "forward",
           "peer": "torch", "handwritten": "openmp"}
    summ = pd.DataFrame([
        {**row, "layer": "a", "speedup": 1.8, "speedup_low": 1.7, "speedup_high": 1.9, "hw_vs_peer": 1.02,
         "hw_vs_peer_low": 0.97, "hw_vs_peer_high": 1.06},
        {**row, "layer": "b", "speedup": 1.03, "speedup_low": 0.98, "speedup_high": 1.08, "hw_vs_peer": 0.8,
         "hw_vs_peer_low": 0.75, "hw_vs_peer_high": 0.85},
    ])
    lines = headlines(summ)
    assert "forward: faster in 1, no clear difference in 1 of 2 layers" in lines[0]
    assert "largest 1.8× (1.7–1.9), a" in lines[0]
    assert "hand-written faster" not in lines[1]
    assert "the peer faster in 1, no clear difference in 1 of 2 layers" in lines[1]
    assert "largest no clear difference (0.97–1.06×), a" in lines[1]


@pytest.mark.parametrize("names, expect", [
    (["cpu-devbox.jsonl"], "partial, single machine, CPU only"),
    (["cpu-laptop.jsonl"], "single machine, CPU only"),
    (["gpu-h100.json"], "GPU only, pytest-benchmark"),
    (["failed-only.jsonl"], "nothing passed"),
    (["asv"], "asv history only"),
    (["cifar.models.json"], "models only"),
])
def test_subsets_build(tmp_path, names, expect):
    if names == ["asv"]:
        pytest.importorskip("asv", reason="asv reads its own results folder")
    index, text, page, problems = _build(tmp_path / "out", *names)
    _check_page(index, text, page)
    gpu = _section(text, "gpu")
    cpu = _section(text, "cpu")
    if expect.startswith("GPU only"):
        assert "No CPU results" in cpu
        assert "<img" in gpu and "No GPU results" not in gpu
    else:
        assert "No GPU results in these inputs" in gpu and "<img" not in gpu
    if "CPU only" in expect:
        assert "<img" in cpu
    if expect == "nothing passed":
        assert "none succeeded" in cpu
        assert "cffi build failed" in _section(text, "failures")
        assert "nothing to summarise" in _section(text, "summary")
    if expect == "asv history only":
        assert "<img" in _section(text, "history")
    else:
        assert "No asv results" in _section(text, "history")
    assert ("models" in page.ids) == (expect == "models only")
    if names == ["cpu-devbox.jsonl"]:
        assert any("truncated" in p for p in problems)


def test_malformed_inputs_do_not_crash(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "junk.jsonl").write_text('not json\n[1, 2]\n{"impl": "torch"}\n{"status": "failed", '
                                         '"reason": "<script>alert(1)</script>", "device": "cpu"}\n{"trunc')
    (tmp_path / "other.json").write_text('{"something": "else"}')
    (tmp_path / "broken.json").write_text('{"benchmarks": [')
    (tmp_path / "bad.models.json").write_text('[1]')
    (tmp_path / "minimal.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"impl": "dense", "device": "cpu", "table": "paper", "shape": "x", "direction": "forward",
         "status": "ok", "time_median": 1e-3},
        {"impl": "torch", "device": "cpu", "table": "paper", "shape": "x", "direction": "forward",
         "status": "ok", "time_median": 5e-4, "in_channels": 8, "out_channels": 8, "kernel_size": 3},
    ]))
    problems: list[str] = []
    index = build([tmp_path], tmp_path / "out", problems)
    text = index.read_text()
    page = _Page()
    page.feed(text)
    _check_page(index, text, page)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "2.00×" in _section(text, "summary")  # speedup from the two minimal records
    assert len(problems) >= 3


def test_empty_inputs(tmp_path):
    (tmp_path / "nothing").mkdir()
    index, text, page, _ = _build(tmp_path / "out", str(tmp_path / "nothing"))
    _check_page(index, text, page)
    assert "No results were found" in text


def test_cli_prints_index_path(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "reports", "build", str(FIXTURES / "failed-only.jsonl"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = Path(result.stdout.strip().splitlines()[-1])
    assert printed == (out / "index.html").resolve() and printed.exists()


def test_cli_exit_statuses(tmp_path, capsys):
    from reports.__main__ import main

    def run(*argv):
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse's own errors
            status = exc.code
        err = capsys.readouterr().err
        return status, err

    missing = tmp_path / "no-such-results.jsonl"
    status, err = run("build", str(missing), "--out", str(tmp_path / "a"))
    assert status == 2 and err.count("\n") == 1 and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "a" / "index.html").exists()
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "README.md").write_text("no results here")
    (tmp_path / "nothing" / "other.json").write_text('{"something": "else"}')
    status, err = run("build", str(tmp_path / "nothing"), "--out", str(tmp_path / "b"))
    assert status == 1 and err.count("\n") == 1 and "nothing could be read" in err and "Traceback" not in err
    assert not (tmp_path / "b" / "index.html").exists()
    status, err = run("build", "--no-such-option")
    assert status == 2 and err.count("\n") == 1 and "unrecognized arguments" in err


def test_report_does_not_import_torch(tmp_path):
    """Building a report needs pandas and matplotlib, not torch: bench.schema and
    impls.shapes import without it."""
    code = ("import sys; from reports.build import build; "
            f"build([{str(FIXTURES / 'cpu-epyc-v2.jsonl')!r}], {str(tmp_path / 'out')!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('no torch')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "no torch" in result.stdout, result.stderr[-3000:]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_browser_renders_page(full, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless Chromium (install Debian's `chromium`); the page was not rendered")
    from PIL import Image, ImageStat

    index = full[0]
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           index.resolve().as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert shot.exists(), f"no screenshot: {result.stderr[-2000:]}"
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2000)
    stat = ImageStat.Stat(image)
    assert stat.stddev[0] > 20, f"screenshot looks blank (stddev {stat.stddev[0]:.1f})"
    # Dark pixels (text, table rules) are a real share of the page, not a lone error line.
    dark = sum(image.histogram()[:128]) / (image.size[0] * image.size[1])
    assert dark > 0.01, f"too little ink on the page ({dark:.3%})"
    # the DOM the browser rendered holds the summary's numbers: a speedup worked out here
    # from the records (dense ÷ the fastest flattened implementation, same run)
    cmd = [c for c in cmd if not c.startswith(("--screenshot", "--window-size"))]
    cmd.insert(-1, "--dump-dom")
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout
    summary = _text(dom[dom.index('<section id="summary">'):])
    times = {r["impl"]: r["time_median"] for r in _records("cpu-xeon-v2.jsonl")
             if r["shape"] == "c64-n64-s32-k3" and r["direction"] == "forward" and r["status"] == "ok"}
    best = min((t, i) for i, t in times.items() if i != "dense")
    rows = summary[summary.index("| ci-xeon (avx512) | paper:"):]  # the machine's rows of the table
    row = rows[rows.index("paper:c64-n64-s32-k3 | forward |"):][:400]
    assert f"| {best[1]} |" in row and f"| {times['dense'] / best[0]:.2f}× [" in row, row


def test_asv_results_without_benchmarks_json(tmp_path):
    pytest.importorskip("asv")
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "asv", results)
    (results / "benchmarks.json").unlink()
    inputs = load([results])
    asv = inputs.asv
    assert set(asv["type"]) == {"time", "track"}
    assert asv["commit"].nunique() == 3 and asv["value"].notna().sum() == 32
    assert len(inputs.asv_machines) == 1


def test_models_section_lists_the_papers_datasets(tmp_path):
    index, text, page, problems = _build(tmp_path / "out", "cifar.models.json")
    models = _section(text, "models")
    for dataset in ("CIFAR-10", "CIFAR-100", "MNIST"):
        assert dataset in models
    assert "no CIFAR-100 loader" in models and "nothing downloads" in models
    assert "CIFAR-10 (subset): cifar.models.json" in models  # the fixture measured CIFAR-10


def test_quality_flags_interval_repeat_and_slow_periods():
    import pandas as pd

    from reports.tables import quality
    base = {"status": "ok", "machine": "m", "device": "cpu", "impl": "openmp", "layer": "L", "direction": "forward",
            "time_median": 1.0, "time_iqr": 0.02, "time_repeat_median": 1.01, "cpu_utilization": 1.98,
            "machine_threads": 2, "time_ci95_low": 0.99, "time_ci95_high": 1.01}
    df = pd.DataFrame([
        base,
        {**base, "impl": "wide_interval", "time_ci95_low": 0.7},
        {**base, "impl": "drifted", "time_repeat_median": 1.25},
        {**base, "impl": "spread_calls", "time_iqr": 0.3},  # not a flag: the median's interval is tight
        {**base, "impl": "one_busy_cpu", "cpu_utilization": 1.05},  # not a flag: threads may idle
        {**base, "impl": "failed", "status": "failed", "time_ci95_low": 0.1},
    ])
    q = quality(df)
    assert list(q["impl"]) == ["wide_interval", "drifted"]  # worst first
    flags = dict(zip(q["impl"], q["flags"]))
    assert flags["wide_interval"] == "95% interval ±30.0% of the median"
    assert flags["drifted"] == "repeat 1.25x"
    # a compute probe well below the reference of its run (same run and thread count: the
    # 90th percentile of its readings, 208.5 here) is flagged; 10% below is not
    probed = pd.DataFrame([{**base, "run_id": "r", "probe_gflops": 210.0},
                           {**base, "run_id": "r", "impl": "normal", "probe_gflops": 189.0},
                           {**base, "run_id": "r", "impl": "normal2", "probe_gflops": 205.0},
                           {**base, "run_id": "r", "impl": "slow_period", "probe_gflops": 150.0},
                           {**base, "run_id": "other", "impl": "other_run", "probe_gflops": 150.0}])
    q = quality(probed)
    assert list(q["impl"]) == ["slow_period"] and q["flags"][0] == "compute probe 28% below its run's reference"


def test_a_spread_of_calls_alone_is_no_flag(tmp_path):
    index, text, page, problems = _build(tmp_path / "out", "cpu-devbox.jsonl")
    section = _text(_section(text, "quality"))
    # the version-1 file's calls spread (the generator draws IQRs of 2-12% of the median)
    # but nothing else is wrong with them
    assert "None of the 197 timed cases is flagged" in section


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    """The schema-version-2 files only: two CPU machines (avx2, avx512) and a GPU."""
    return _build(tmp_path_factory.mktemp("current") / "out", "cpu-epyc-v2.jsonl", "cpu-xeon-v2.jsonl",
                  "gpu-h200-v2.jsonl")


def test_quality_section_in_the_report(current):
    index, text, page, problems = current
    section = _text(_section(text, "quality"))
    assert "3 of 310 timed cases are flagged" in section
    for line in ("ci-epyc (avx2) | cpu | torch_compile | paper:c128-n128-s16-k3 | train | 817 µs | 95% interval ±5.5%",
                 "ci-xeon (avx512) | cpu | openmp | paper:c32-n32-s64-k5 | backward | 2.13 ms | compute probe 20% below",
                 "| cuda | cupy_fused | paper:c3-n64-s32-k5 | train | 35 µs | GPU throttled",):
        assert line in section, section


def test_current_schema_report(current):
    index, text, page, problems = current
    _check_page(index, text, page)
    assert not problems
    for name in ("machines_cpu", "peers", "acceleration_cpu_ci-epyc", "acceleration_cuda_gpu-h200-1"):
        assert any(name in src for src in page.images), name
    cpu = _text(_section(text, "cpu"))
    assert "Machines side by side (CPU)" in cpu
    assert "ci-epyc (avx2) (AMD EPYC 7763 64-Core Processor, 16 logical cores" in cpu
    assert "No GPU results" not in _section(text, "gpu")


def test_quality_flags_wide_intervals_throttling_and_slow_periods(current):
    index, text, page, problems = current
    section = _text(_section(text, "quality"))
    assert "3 of 310 timed cases are flagged" in section
    assert re.search(r"ci-epyc \(avx2\) \| cpu \| torch_compile \| paper:c128-n128-s16-k3 \| train \| [^|]+ \| "
                     r"95% interval ±\d+\.\d% of the median", section), section
    hot = next(r for r in _records("gpu-h200-v2.jsonl") if r["throttled"])
    assert hot["case"] == "cupy_fused/cuda/paper:c3-n64-s32-k5/float32/train"
    assert (f"gpu-h200-1 (avx512) | cuda | cupy_fused | paper:c3-n64-s32-k5 | train | {hot['time_median'] * 1e6:.3g} µs | "
            f"GPU throttled (SM clock down to 1410 MHz)") in section
    assert "ci-xeon (avx512) | cpu | openmp | paper:c32-n32-s64-k5 | backward" in section
    # the first attempt of the re-measured case (slow, its repeat 30% away) is no longer there
    assert "paper:c64-n64-s32-k3 | forward" not in section


def test_peers_and_skipped_by_design(current):
    index, text, page, problems = current
    raw = [r for r in _records("cpu-epyc-v2.jsonl") if r["status"] == "ok"]
    row = {r["impl"]: r for r in raw if r["shape"] == "c32-n32-s64-k5" and r["direction"] == "forward"}
    peer = min((r["time_median"], i) for i, r in row.items() if r["role"] == "peer")
    hand = min((r["time_median"], i) for i, r in row.items() if r["role"] == "handwritten")
    summary = _text(_section(text, "summary"))
    line = summary[summary.index("paper:c32-n32-s64-k5 | forward"):][:400]
    assert f"| {peer[1]} |" in line and f"| {hand[1]} |" in line
    assert f"{peer[0] / hand[0]:.2f}× [" in line
    assert "the best hand-written implementation against the fastest peer" in summary
    assert "hand-written faster in 5 of 5 layers" in summary  # every interval lies above 1 there
    assert "torch_compile | forward | 5 |" in summary and "onnxruntime | forward | 5 |" in summary  # compile cost
    failures = _section(text, "failures")
    skipped = failures[failures.index("<h3>Skipped"):]
    assert "Failed (" not in failures  # inference-only by design is not a failure
    assert "onnxruntime serves inference only (no backward)" in skipped
    assert "onnxruntime serves inference only (no train)" in skipped
    assert "peers.png" in _section(text, "summary")


def test_gpu_section_cold_graph_energy_and_roofline_notes(current):
    index, text, page, problems = current
    gpu = _text(_section(text, "gpu"))
    assert "TF32 flags in force: cudnn False, matmul False." in gpu
    assert "Small layers: warm, cold and kernel-only times" in gpu
    raw = {r["case"]: r for r in _records("gpu-h200-v2.jsonl")}
    r = raw["cupy_fused/cuda/paper:c3-n64-s32-k5/float32/train"]
    assert r["throttled"] and r["energy_mj"] is None
    assert (f"train | cupy_fused | {r['time_median'] * 1e6:.3g} µs | {r['time_cold_median'] * 1e6:.3g} µs | 1.45× | "
            f"{r['time_graph_median'] * 1e6:.3g} µs | yes (SM 1410 MHz) | {r['energy_note']}") in gpu
    e = raw["cudnn/cuda/paper:c3-n64-s32-k5/float32/forward"]
    assert f"| cudnn | {e['time_median'] * 1e6:.3g} µs |" in gpu and f"| {e['energy_mj']:.3g} |" in gpu
    assert "1 throttled" in gpu
    assert "2 cases reach above their machine's roofline" in gpu
    assert "dense | paper:c256-n256-s8-k3 | forward | 130% | cuDNN ran a Winograd kernel" in gpu
