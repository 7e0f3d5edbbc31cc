"""Inputs -> tidy CSV + figures + index.html. `build()` is what ``python -m reports build`` runs."""

from __future__ import annotations

import html as _html
import shutil
import traceback
from pathlib import Path

import pandas as pd

from bench import intervals, schema

from . import figures, html, reference, tables
from .load import REPO, Inputs, latest, load

DEFAULT_OUT = REPO / "reports" / "html"

# Figures drawn once per device: (function, sentence shown when it has no data).
# To add a figure: write a function in figures.py that takes (data, ctx) and returns a
# Figure or None, then add it here (or to the page sections in `build` if it is not per device).
DEVICE_FIGURES = [
    (figures.acceleration, "No flattened implementation has a dense time from the same run on this "
                           "device, so there is no speedup to show."),
    (figures.machines_side_by_side, "One machine (or no layer measured on two machines) on this device, so "
                                    "there are no machines to set side by side."),
    (figures.time_vs_size, "No successful timings on this device."),
    (figures.memory, "No peak-memory measurements (peak_bytes) on this device."),
    (figures.roofline, "No FLOP rate could be computed on this device (it needs a time and the layer's "
                       "FLOPs and bytes, or its shape)."),
    (figures.kernels, "No per-kernel records (direction \"stage:...\") on this device."),
]
SUMMARY_HELP = (
    "Peers are what a user would pick instead (torch, cuDNN, torch.compile, ONNX Runtime, Triton); "
    "hand-written is this project's own kernels (OpenMP, CuPy). Hand-written vs peer = the fastest "
    "peer's median time ÷ the best hand-written one's (above 1× the hand-written code is faster). "
    "Speedup vs dense = dense median time ÷ the best flattened implementation's, same run (above 1× "
    "the flattened layer is faster). Every ratio carries its 95% interval in brackets: "
    f"{figures.INTERVAL_NOTE}; an interval that contains 1× is no clear difference. A rerun's speedup "
    "is the 95% prediction interval of a sweep timed in rounds (fresh worker processes each round): where "
    "the same sweep run again is expected to put it, the spread between processes and machine states "
    "included. Roofline = "
    "achieved GFLOP/s ÷ the machine's ceiling at that case's arithmetic intensity, min(compute GFLOP/s, "
    "copy GB/s × FLOPs/byte): compute is the best large-GEMM rate measured on the machine at that thread "
    "count over every run shown (or a flattened case's rate where none ran faster), copy the best its run "
    "measured; 100% is the machine's limit. Peak = "
    "extra memory of one call, MiB. Times are medians; per machine and layer the newest run that "
    "measured it."
)


def _chosen_dtype(df: pd.DataFrame) -> str | None:
    dtypes = df["dtype"].dropna()
    if dtypes.empty:
        return None
    return "float32" if (dtypes == "float32").any() else dtypes.value_counts().index[0]


def _machine_descriptions(df: pd.DataFrame) -> dict[str, str]:
    out = {}
    for machine, group in df.groupby("machine"):
        def last(key):
            col = group.get(f"machine_{key}")
            return col.dropna().iloc[-1] if col is not None and col.notna().any() else None

        bits = []
        if last("gpu_name") and (group["device"] == "cuda").any():
            bits.append(str(last("gpu_name")))
        if last("cpu_model"):
            cores = last("cpu_cores_logical")
            threads = last("torch_threads")
            cpu = str(last("cpu_model"))  # the instruction set is in the machine's name
            if cores is not None:
                cpu += f", {int(cores)} logical cores"
            if threads is not None:
                cpu += f", {int(threads)} torch threads"
            bits.append(cpu)
        out[machine] = f"{machine} ({'; '.join(bits)})" if bits else str(machine)
    return out


def _safe(function, *args, problems: list[str]):
    """Run one figure function; a bug in one figure costs that figure, not the page."""
    try:
        return function(*args), None
    except Exception as exc:  # noqa: BLE001
        problems.append(f"figure {function.__name__} failed: {exc!r}\n{traceback.format_exc(limit=3)}")
        return None, f"This figure could not be drawn ({type(exc).__name__}: {exc})."


def _figure_or_sentence(result, error, sentence) -> str:
    if error:
        return html.paragraph(error, "note")
    if not result:
        return html.empty(sentence)
    items = result if isinstance(result, list) else [result]
    return "".join(html.figure(f) for f in items)


def summary_section(summ: pd.DataFrame, ok: pd.DataFrame, ctx: figures.Context, problems: list[str]) -> str:
    if summ.empty:
        return html.empty("No benchmark case has a successful timing in these inputs, so there is nothing "
                          "to summarise yet (failed and skipped cases, if any, are listed below).")
    body = "".join(html.paragraph(line, "headline") for line in tables.headlines(summ))
    body += html.paragraph(SUMMARY_HELP, "meta")
    multi_dtype = summ["dtype"].nunique() > 1
    shown = summ
    if (summ["table"] == "paper").any() and (summ["table"] != "paper").any():
        shown = summ[summ["table"] == "paper"]
        body += html.paragraph("Rows: the layers of the paper table (every table is in the list below "
                               "and in the figures).", "meta")
    body += _summary_table(shown, multi_dtype)
    if len(shown) < len(summ):
        body += (f"<details><summary>Every layer of every table ({len(summ)} rows; above: the paper "
                 f"table only)</summary>{_summary_table(summ, multi_dtype)}</details>")
    if summ["hw_vs_peer"].notna().any():
        result, error = _safe(figures.peers, summ, ctx, problems=problems)
        body += _figure_or_sentence(result, error, "")
    else:
        body += html.empty("No layer has both a peer (role \"peer\") and a hand-written implementation "
                           "(role \"handwritten\") timed in one run; records of schema version 1 carry "
                           "no role, so the peer comparison needs results written by the current harness.")
    cost = tables.compile_cost(ok)
    if not cost.empty:
        body += "<h3>Compile and export cost</h3>"
        body += html.paragraph("Seconds an implementation spent compiling (torch.compile) or exporting and "
                               "building its session (ONNX Runtime) for a case, before and outside the timed "
                               "calls; “median call” is the median time of one timed call of those cases, "
                               "so median s ÷ median call is how many calls the compile costs.", "meta")
        body += html.table(cost, formats={"median s": html.fmt_num, "max s": html.fmt_num,
                                          "total s": html.fmt_num, "median call": html.fmt_time})
    return body


def _ratio_class(low, high) -> str:
    """Green where the interval lies above 1×, red below, plain where it spans 1× or is unknown."""
    return "num " + {"above": "good", "below": "bad"}.get(intervals.verdict(low, high), "")


def _summary_table(summ: pd.DataFrame, multi_dtype: bool) -> str:
    ratio = [html.fmt_ratio_ci(r, lo, hi) for r, lo, hi in zip(summ["hw_vs_peer"], summ["hw_vs_peer_low"],
                                                                 summ["hw_vs_peer_high"])]
    speedup = [html.fmt_ratio_ci(r, lo, hi) for r, lo, hi in zip(summ["speedup"], summ["speedup_low"],
                                                                  summ["speedup_high"])]
    rerun = [f"{lo:.2f}–{hi:.2f}" if lo == lo and hi == hi else "" for lo, hi in
             zip(summ["speedup_pi_low"], summ["speedup_pi_high"])]
    view = pd.DataFrame({
        "device": summ["device"].map(figures.device_label),
        "machine": summ["machine"],
        **({"dtype": summ["dtype"]} if multi_dtype else {}),
        "layer": summ["layer"],
        "direction": summ["direction"],
        "fastest": summ["fastest"],
        "fastest peer": summ["peer"],
        "peer time": summ["peer_time"],
        "best hand-written": summ["handwritten"],
        "hand-written time": summ["handwritten_time"],
        "hand-written vs peer": ratio,
        "best flattened": summ["best_flat"],
        "dense time": summ["base_time"],
        "speedup vs dense": speedup,
        "a rerun's speedup (95%)": rerun,
        "roofline: flattened": summ["flat_roofline"],
        "roofline: dense": summ["base_roofline"],
        "peak MiB: flattened": summ["flat_peak_mib"],
        "peak MiB: dense": summ["base_peak_mib"],
    })
    verdicts = {"hand-written vs peer": [_ratio_class(lo, hi) for lo, hi in zip(summ["hw_vs_peer_low"],
                                                                                   summ["hw_vs_peer_high"])],
                "speedup vs dense": [_ratio_class(lo, hi) for lo, hi in zip(summ["speedup_low"],
                                                                               summ["speedup_high"])]}
    return html.table(
        view,
        formats={"peer time": html.fmt_time, "hand-written time": html.fmt_time, "dense time": html.fmt_time,
                 "roofline: flattened": html.fmt_pct, "roofline: dense": html.fmt_pct,
                 "peak MiB: flattened": html.fmt_num, "peak MiB: dense": html.fmt_num},
        cell_classes=verdicts,
        span=["device", "machine"] + (["dtype"] if multi_dtype else []) + ["layer"], cls="summary", wide=True,
    )


def device_section(device: str, all_rows: pd.DataFrame, ok: pd.DataFrame, out: Path,
                   palette: dict, descriptions: dict, problems: list[str]) -> str:
    label = figures.device_label(device)
    attempted = all_rows[all_rows["device"] == device]
    data = ok[ok["device"] == device]
    if attempted.empty:
        if device == "cuda":
            return html.empty(
                "No GPU results in these inputs: no record was measured on a CUDA device, so this report "
                "has no GPU figures. Run the benchmarks on a machine with a GPU and put its results file "
                "(JSON lines or pytest-benchmark JSON) into reports/results/ to fill this section.")
        return html.empty(f"No {label} results in these inputs.")
    if data.empty:
        return html.empty(f"{len(attempted)} {label} cases were attempted but none succeeded; their "
                          f"reasons are listed under “Failed and skipped cases”.")
    dtype = _chosen_dtype(data)
    if dtype is not None:
        data = data[data["dtype"] == dtype]
    others = sorted(set(ok[ok["device"] == device]["dtype"].dropna()) - {dtype})
    body = ""
    if others:
        body += html.paragraph(f"Figures show {dtype}; results for {', '.join(others)} are in the summary "
                               f"table and the CSV.", "meta")
    body += html.paragraph("Machines: " + "; ".join(descriptions.get(m, m) for m in sorted(data["machine"].unique())),
                           "meta")
    if device == "cuda" and data["time_graph_median"].notna().any():
        g = data.dropna(subset=["time_graph_median", "time_median"])
        share = (1 - g["time_graph_median"] / g["time_median"]).median()
        body += html.paragraph(
            f"Kernel-only times (CUDA graph replay) exist for {len(g)} cases; the median share of "
            f"per-call time that is launch overhead outside the kernels is {share:.0%}. They are "
            f"in the CSV column time_graph_median.", "meta")
    if device == "cuda":
        body += _tf32_note(data)
    ctx = figures.Context(out=out, palette=palette, machines=descriptions, device=device, dtype=dtype or "")
    for function, sentence in DEVICE_FIGURES:
        result, error = _safe(function, data, ctx, problems=problems)
        body += _figure_or_sentence(result, error, sentence)
    notes = tables.roofline_notes(data)
    if not notes.empty:
        body += html.paragraph(f"{len(notes)} cases reach above their machine's roofline; the records say "
                               f"why (roofline_note):", "meta")
        body += html.table(notes, formats={"roofline": html.fmt_pct})
    if device == "cuda":
        body += _gpu_times_section(data)
    return body


def _tf32_note(data: pd.DataFrame) -> str:
    """The TF32 flags the GPU cases ran under (they decide what float32 means there)."""
    flags = sorted(set(data["tf32"].dropna().astype(str)))
    if not flags:
        return ""
    said = "; ".join(tables.fmt_value("tf32", f) for f in flags)
    return html.paragraph(f"TF32 flags in force: {said}.", "meta")


def _gpu_times_section(data: pd.DataFrame) -> str:
    times = tables.gpu_times(data)
    if times.empty or times[["cold", "kernel-only"]].notna().to_numpy().sum() == 0:
        return html.empty("No cold-cache (time_cold_median) or kernel-only (time_graph_median) GPU times in "
                          "these records.")
    text = ("Small layers, warm and cold: the smaller half of the layers by size, where the GPU's L2 cache "
            "can hold the working set between calls. Warm = the median per-call time as measured; cold = "
            "the median with the L2 cache flushed before each call (what a layer meets inside a network, "
            "whose other layers evict it); kernel-only = CUDA-graph replay, without the launch overhead. "
            "Throttled: the SM clock fell below 90% of its maximum or a throttle reason other than idle was "
            "set while the case ran (also flagged under Measurement quality). Energy per call from NVML's "
            "energy counter, or why it is missing.")
    said = []
    for machine, group in times.groupby("machine", sort=True):
        parts = []
        cold = group["cold ÷ warm"].dropna()
        if not cold.empty:
            parts.append(f"cold ÷ warm median {cold.median():.2f}× (range {cold.min():.2f}–{cold.max():.2f}×)")
        kernel = (group["kernel-only"] / group["warm"]).dropna()
        if not kernel.empty:
            parts.append(f"kernel-only {kernel.median():.0%} of warm")
        throttled = int(group["throttled"].str.startswith("yes").sum())
        parts.append(f"{throttled} throttled" if throttled else "none throttled")
        energy = int((group["energy mJ/call"] != "").sum())
        parts.append(f"energy recorded or explained for {energy} of {len(group)}")
        said.append(f"{machine}: {len(group)} small-layer cases, {', '.join(parts)}.")
    table = html.table(times, formats={"warm": html.fmt_time, "cold": html.fmt_time, "kernel-only": html.fmt_time,
                                       "cold ÷ warm": html.fmt_ratio}, span=["machine", "layer"])
    return ("<h3>Small layers: warm, cold and kernel-only times</h3>" + html.paragraph(text, "meta")
            + "".join(html.paragraph(line) for line in said)
            + f"<details><summary>Every small-layer case ({len(times)} rows)</summary>{table}</details>")


# The paper's accuracy table has these rows; the report says which ones the inputs measured.
PAPER_DATASETS = [
    ("CIFAR-10", "cifar10", "not measured: no local copy of the data here, and nothing in this suite downloads; "
                            "run `python -m bench.models cifar10 --data DIR --json reports/results/NAME.models.json` "
                            "(GPU recommended) to add it"),
    ("CIFAR-100", "cifar100", "not measured: the suite has no CIFAR-100 loader yet (CIFAR-10's pickle format "
                              "with 100 fine labels) and no local copy of the data"),
    ("MNIST", "mnist", "not measured: no local copy and nothing downloads; scikit-learn's bundled 8x8 digits "
                       "stand in for it (the `mnist` config builds the 28x28 network)"),
]


def dataset_coverage(models: list[dict]) -> pd.DataFrame:
    """One row per dataset of the paper's table (plus any other measured one): measured
    here or not, and why not."""
    measured = {}
    for model in models:
        name = str(model.get("dataset", ""))
        key = "".join(ch for ch in name.lower() if ch.isalnum())  # "CIFAR-10 (subset)" -> "cifar10subset"
        key = next((k for _, k, _ in PAPER_DATASETS if key.startswith(k) and not key.startswith(k + "0")), name)
        measured.setdefault(key, f"{name}: {Path(model.get('_path', '')).name}")
    rows = [{"paper's dataset": label, "measured": "yes" if key in measured else "no",
             "source or reason": measured.get(key, reason)} for label, key, reason in PAPER_DATASETS]
    known = {key for _, key, _ in PAPER_DATASETS}
    rows += [{"paper's dataset": f"{key} (stand-in)", "measured": "yes", "source or reason": source}
             for key, source in measured.items() if key and key not in known]
    return pd.DataFrame(rows)


def models_section(models: list[dict], out: Path, ctx: figures.Context, problems: list[str]) -> str:
    body = html.paragraph("Which rows of the paper's accuracy table (CIFAR-10, CIFAR-100, MNIST) these results "
                          "measure, and why the others are absent:")
    body += html.table(dataset_coverage(models))
    for i, model in enumerate(models):
        name = Path(model.get("_path", f"models{i}")).name.removesuffix(".models.json")
        body += f"<h3>{html.esc(name)}</h3>"
        described = [f"{label} {model[key]}" for key, label in (
            ("dataset", "dataset"), ("epochs", "epochs"), ("device", "device"), ("impl", "flattened layers via"),
            ("optimizer", "optimizer"), ("torch", "torch"), ("commit", "commit"), ("date", "date"))
            if isinstance(model.get(key), (str, int, float))]
        if described:
            body += html.paragraph("; ".join(described) + f". From {model.get('_path', name)}.", "meta")
        rows = []
        for variant in ("baseline", "flattened"):
            v = model.get(variant) or {}
            rows.append({"network": variant, "parameters": v.get("params"), "conv parameters": v.get("conv_params"),
                         "test accuracy": v.get("test_accuracy"), "epochs": len(v.get("history") or []),
                         "train seconds": v.get("train_seconds")})
        t = pd.DataFrame(rows)
        base, flat = t.iloc[0], t.iloc[1]
        try:
            body += html.paragraph(
                f"Flattening keeps {float(flat['conv parameters']) / float(base['conv parameters']):.0%} of the "
                f"convolution parameters; test accuracy {float(base['test accuracy']):.2%} → "
                f"{float(flat['test accuracy']):.2%}.", "headline")
        except (TypeError, ValueError, ZeroDivisionError):
            pass
        body += html.table(t, formats={"parameters": html.fmt_num, "conv parameters": html.fmt_num,
                                       "test accuracy": lambda v: "" if pd.isna(v) else f"{float(v):.2%}",
                                       "train seconds": html.fmt_num})
        result, error = _safe(figures.model_curves, model, ctx, name, problems=problems)
        body += _figure_or_sentence(result, error, "No per-epoch history in this file.")
        if model.get("filters"):
            target = out / "figures" / f"filters_{name}{Path(model['filters']).suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model["filters"], target)
            body += html.figure(figures.Figure(
                f"figures/{target.name}", f"Learned filters: {name}",
                "Filters of the trained networks as written by the model benchmark (bench/models/)."))
    return body


def build(inputs: list | None = None, out: Path | str | None = None, problems: list | None = None,
          data: Inputs | None = None) -> Path:
    """Write results.csv, figures/ and index.html into `out`; return index.html's path.
    `data` is what `load(inputs)` returned, when the caller has read the inputs already.
    Reading and drawing problems are appended to `problems` when given (and listed on the page)."""
    out = Path(out) if out is not None else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "figures", ignore_errors=True)
    (out / "figures").mkdir()
    data = load(inputs) if data is None else data
    df = data.records
    problems = data.problems if problems is None else problems
    if problems is not data.problems:
        problems.extend(data.problems)

    df.to_csv(out / "results.csv", index=False)
    ok = latest(df)
    palette = figures.palette(df)
    descriptions = _machine_descriptions(df)
    ctx = figures.Context(out=out, palette=palette, machines=descriptions)

    sections = []
    summ = tables.summary(ok)
    sections.append(("summary", "Summary", summary_section(summ, ok, ctx, problems)))
    beside = reference.section(data, problems)  # a user's run (reports/runs/) beside the reference of its CPU kind
    if beside is not None:
        sections.append((reference.ANCHOR, reference.TITLE, beside))
    devices = ["cpu", "cuda"] + sorted(set(df["device"].dropna()) - {"cpu", "cuda"})
    for device in devices:
        sections.append((device if device != "cuda" else "gpu", figures.device_label(device),
                         device_section(device, df, ok, out, palette, descriptions, problems)))

    layers = tables.parameter_layers(df)
    result, error = _safe(figures.parameters, layers, ctx, problems=problems)
    body = _figure_or_sentence(result, error, "No layer shapes in these results, so no parameter counts.")
    if not layers.empty:
        view = layers.assign(reduction=1 - layers["flat_params"] / layers["dense_params"])
        body += html.table(view.drop(columns=["label"]).rename(columns={
            "in_channels": "in", "out_channels": "out", "kernel_size": "k", "flat_params": "flattened",
            "dense_params": "dense"}), formats={"reduction": html.fmt_pct})
    sections.append(("parameters", "Parameters", body))

    result, error = _safe(figures.history, data.asv, ctx, problems=problems)
    sections.append(("history", "History across commits (asv)", _figure_or_sentence(
        result, error, "No asv results in these inputs (asv writes them to .asv/results/ with `asv run`), "
                       "so there is no history across commits.")))

    if data.models:  # pluggable: only when a *.models.json is among the inputs
        sections.append(("models", "Model-level accuracy", models_section(data.models, out, ctx, problems)))

    flagged, timed = tables.quality(df), int((df["status"] == "ok").sum()) if not df.empty else 0
    listed = flagged.head(40)
    sections.append(("quality", "Measurement quality", (
        html.paragraph(f"{len(flagged)} of {timed} timed cases are flagged. A case timed in rounds of a sweep "
                       f"(each round in fresh worker processes) is flagged when the 95% prediction interval of "
                       f"its ratio to its group's reference (the baseline, else the others) is wider than "
                       f"±{schema.WIDE_PI:.0%} (a rerun's ratio may land that far away), or when its rounds "
                       f"fall apart into two modes (a process's state fixed its speed). A case measured in "
                       f"one process (pytest-benchmark, older sweeps) is flagged by the within-run signs: a "
                       f"second measurement more than {schema.REPEAT:.0%} away, a compute probe more than "
                       f"{schema.SLOW_PROBE:.0%} below its run's reference, a 95% interval of the median "
                       f"wider than ±{schema.WIDE_CI:.0%}. A GPU that throttled flags its case either way. "
                       f"Read a flagged ratio with its prediction interval, or measure it with more rounds"
                       + (f"; the {len(listed)} worst are listed, results.csv has every case." if len(flagged) > len(listed)
                          else "."), "meta")
        + html.table(listed, formats={"median": html.fmt_time})) if not flagged.empty
        else html.empty(f"None of the {timed} timed cases is flagged (prediction interval, modes, "
                        f"throttling; for one-process records repeat, slow period, interval width).")))

    machines = tables.machines(df, data.asv_machines)
    sections.append(("machines", "Machines", html.table(machines, index=True) if not machines.empty
                     else html.empty("No machine metadata in these inputs.")))

    fails = tables.failures(df)
    body = ""
    for status, heading, text in (
            ("failed", "Failed", "did not pass the correctness gate, or raised"),
            ("skipped", "Skipped", "could not or need not run there: by design (an inference-only runtime has "
                                   "no backward), or for want of a library or a device")):
        part = fails[fails["status"] == status].drop(columns="status")
        if not part.empty:
            body += (f"<h3>{heading} ({int(part['count'].sum())})</h3>"
                     + html.paragraph(f"These cases {text}; grouped by reason, results.csv lists each case.",
                                      "meta") + html.table(part))
    sections.append(("failures", "Failed and skipped cases", body or html.empty("No failed or skipped cases.")))

    data_body = (f'<p><a href="results.csv">results.csv</a>: the tidy long table, one row per case '
                 f"({len(df)} rows, every status), with the derived columns (speedup, roofline_fraction, "
                 f"layer_flops...) used by the figures.</p>")
    data_body += "<p>Inputs:</p><ul>" + "".join(f"<li><code>{html.esc(s)}</code></li>" for s in data.sources) + "</ul>"
    if not data.sources:
        data_body += html.empty("No results were found in the inputs.")
    if problems:
        data_body += ("<details><summary>Notes while reading and drawing "
                      f"({len(problems)})</summary><pre>{_html.escape(chr(10).join(problems))}</pre></details>")
    sections.append(("data", "Data", data_body))

    n_machines = df["machine"].nunique() if not df.empty else 0
    meta = html.esc(f"{len(df)} cases from {n_machines} machine(s), {len(data.sources)} input(s). "
                    "Flattened convolution layer (Jin et al. 2015): lateral 1×1, vertical k×1 and horizontal "
                    "1×k convolutions replacing one dense k×k convolution.")
    index = out / "index.html"
    index.write_text(html.page("Flattened convolution benchmarks", sections, meta), encoding="utf-8")
    return index
