"""The HTML report builds from any subset of results and renders in a real browser.

Fixture results live in tests/fixtures/results/ (regenerate with its generate.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("pandas")
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


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Everything: three machines, CPU and GPU, both formats, asv history, models, failures."""
    return _build(tmp_path_factory.mktemp("full") / "out", ".")


def test_full_report(full):
    index, text, page, problems = full
    _check_page(index, text, page)
    assert "models" in page.ids
    assert len(page.images) >= 12
    for name in ("acceleration_cpu_devbox", "acceleration_cuda_gpu-node-1", "time_vs_size_cpu",
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
    for word in ("fastest", "speedup vs dense", "roofline: flattened", "peak MiB: dense", "gpu-node-1", "laptop"):
        assert word in summary
    failures = _section(text, "failures")
    assert "CUDA error: an illegal memory access" in failures and "CuPy is not installed" in failures
    machines = _section(text, "machines")
    assert "NVIDIA H100 80GB HBM3" in machines and "AMD Ryzen 7 5800U" in machines
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
    assert ok["speedup"].notna().sum() > 0.8 * (ok["impl"] != "dense").sum()
    dense = ok[ok["impl"] == "dense"]
    assert ((dense["speedup"] - 1).abs() < 1e-12).all()


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
    assert re.search(r"\d", full[1])


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


def test_quality_flags_spread_repeat_and_slow_periods():
    import pandas as pd

    from reports.tables import quality
    base = {"status": "ok", "machine": "m", "device": "cpu", "impl": "openmp", "layer": "L", "direction": "forward",
            "time_median": 1.0, "time_iqr": 0.02, "time_repeat_median": 1.01, "cpu_utilization": 1.98,
            "machine_threads": 2}
    df = pd.DataFrame([
        base,
        {**base, "impl": "wide", "time_iqr": 0.3},
        {**base, "impl": "drifted", "time_repeat_median": 1.25},
        {**base, "impl": "one_busy_cpu", "cpu_utilization": 1.05},  # not a flag: threads may idle
        {**base, "impl": "failed", "status": "failed", "time_iqr": 0.9},
    ])
    q = quality(df)
    assert list(q["impl"]) == ["wide", "drifted"]  # worst first
    flags = dict(zip(q["impl"], q["flags"]))
    assert flags["wide"] == "IQR 30% of the median"
    assert flags["drifted"] == "repeat 1.25x"
    # a compute probe well below the best of its run (same run and thread count) is flagged
    probed = pd.DataFrame([{**base, "run_id": "r", "probe_gflops": 210.0},
                           {**base, "run_id": "r", "impl": "slow_period", "probe_gflops": 189.0},
                           {**base, "run_id": "other", "impl": "other_run", "probe_gflops": 150.0}])
    q = quality(probed)
    assert list(q["impl"]) == ["slow_period"] and q["flags"][0] == "compute probe 10% below its run's best"


def test_quality_section_in_the_report(tmp_path):
    index, text, page, problems = _build(tmp_path / "out", "cpu-devbox.jsonl")
    section = _section(text, "quality")
    assert "timed cases" in section
