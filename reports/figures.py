"""One function per figure: data in, a PNG file and its caption out (or None: no data).

Every function takes the tidy table (already narrowed to what it should show, see
`reports.build`) and a `Context`, writes ``figures/<name>.png`` under the output folder,
and returns a `Figure`. A function that has nothing to plot returns None and the page
shows the sentence registered beside it instead of an empty panel.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

DIRECTIONS = ["forward", "backward", "train"]
TABLE_ORDER = ["smoke", "paper", "sweep", "model"]
DPI = 96
sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)


@dataclasses.dataclass
class Figure:
    path: str     # relative to the output folder
    title: str
    caption: str  # plain text; the page escapes it


@dataclasses.dataclass
class Context:
    out: Path                        # output folder
    palette: dict[str, tuple]        # implementation -> colour, the same in every figure
    machines: dict[str, str]         # machine -> one-line description
    device: str = ""                 # "cpu", "cuda", ...
    dtype: str = "float32"

    def save(self, fig, name: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        rel = f"figures/{name}.png"
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        fig.savefig(self.out / rel, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        return rel

    def where(self, df: pd.DataFrame) -> str:
        names = sorted(df["machine"].dropna().unique()) if "machine" in df else []
        return "; ".join(self.machines.get(m, m) for m in names) or "unknown machine"


def palette(impls) -> dict[str, tuple]:
    names = sorted({str(i) for i in impls if isinstance(i, str)} - {"dense"})
    tab10 = sns.color_palette("tab10", 10)
    colours = [c for i, c in enumerate(tab10) if i != 7]  # grey is kept for dense
    colours += [c for i, c in enumerate(sns.color_palette("tab20", 20)) if i % 2 and i not in (15,)]
    out = {name: colours[i % len(colours)] for i, name in enumerate(names)}
    out["dense"] = (0.2, 0.2, 0.2)
    return out


def device_label(device: str) -> str:
    return {"cpu": "CPU", "cuda": "GPU"}.get(device, str(device))


# -----------------------------------------------------------------------------------
# Helpers
def _layer_order(df: pd.DataFrame) -> list[str]:
    """Layers ordered by table, then by the dense layer's forward FLOPs (size)."""
    if df.empty:
        return []
    keys = df.groupby("layer").agg(table=("table", "first"), size=("layer_flops", "max")).reset_index()
    keys["t"] = [TABLE_ORDER.index(t) if t in TABLE_ORDER else len(TABLE_ORDER) for t in keys["table"]]
    return list(keys.sort_values(["t", "size", "layer"], na_position="last")["layer"])


def _impl_order(df: pd.DataFrame) -> list[str]:
    names = sorted(set(df["impl"].dropna().astype(str)) - {"dense"})
    return names + (["dense"] if (df["impl"] == "dense").any() else [])


def _directions(df: pd.DataFrame) -> list[str]:
    present = set(df["direction"].dropna())
    return [d for d in DIRECTIONS if d in present]


def _short(layer: str) -> str:
    return layer.split(":", 1)[-1]


def _width(n_categories: int, per: float = 0.5, lo: float = 5.0, hi: float = 18.0) -> float:
    return float(min(hi, max(lo, per * n_categories)))


def _si(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(value) >= scale:
            return f"{value / scale:g} {prefix}{unit}".strip() if unit else f"{value / scale:g}{prefix}"
    return f"{value:g}"


def log_axis(axis, unit: str | None = None) -> None:
    """Log scale with 1-2-5 ticks labelled in plain numbers (SI prefixes; seconds as s/ms/µs)."""
    is_x = axis is axis.axes.xaxis
    axis.axes.set_xscale("log") if is_x else axis.axes.set_yscale("log")
    lo, hi = sorted(axis.get_view_interval())
    decades = np.log10(hi / lo) if lo > 0 and hi > 0 else 10.0
    dense = decades <= (2.0 if is_x else 4.0)  # call after plotting: the limits decide the ticks
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if dense else (1.0,)))
    axis.set_minor_locator(ticker.NullLocator())
    if unit == "s":
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _si(v, "s")))
    elif unit == "si":
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _si(v)))
    else:
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.4g}"))


def _batch_note(df: pd.DataFrame) -> str:
    batches = sorted({int(b) for b in df["batch"].dropna()})
    return f"batch {', '.join(map(str, batches))}" if batches else "batch unknown"


# -----------------------------------------------------------------------------------
# (1) The paper's "Acceleration" panel
def _layer_bars(data: pd.DataFrame, y: str, ylabel: str, ctx: Context, log: bool = False,
                line_at_one: bool = False) -> plt.Figure:
    """Bars per layer (x, grouped by table) and implementation (colour), one row per direction."""
    layers = _layer_order(data)
    impls = _impl_order(data)
    directions = _directions(data)
    width = _width(len(layers) * len(impls), 0.2, 6, 17)
    fig, axes = plt.subplots(len(directions), 1, squeeze=False, sharex=True,
                             figsize=(width, 2.5 * len(directions) + 0.8))
    tables = [data.loc[data["layer"] == layer, "table"].iloc[0] for layer in layers]
    for ax, direction in zip(axes[:, 0], directions):
        sns.barplot(data=data[data["direction"] == direction], x="layer", y=y, hue="impl", order=layers,
                    hue_order=impls, palette=ctx.palette, errorbar=None, ax=ax, legend=ax is axes[0, 0])
        if log:
            log_axis(ax.yaxis)
        if line_at_one:
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        for i in range(1, len(layers)):  # separate the tables
            if tables[i] != tables[i - 1]:
                ax.axvline(i - 0.5, color="#999", linewidth=1)
        ax.set_title(direction, fontsize=10, loc="right")
        ax.set_ylabel(ylabel)
        ax.set_xlabel("")
    top = axes[0, 0]
    for i, table in enumerate(tables):
        if isinstance(table, str) and (i == 0 or table != tables[i - 1]):
            top.annotate(f"{table} table", xy=(i - 0.45, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(0, 3), textcoords="offset points", fontsize=8, color="#555")
    ax = axes[-1, 0]
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([_short(x) for x in layers], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("layer: c<in>-n<out>-s<height=width>-k<kernel>")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if axes[0, 0].get_legend():
        axes[0, 0].get_legend().remove()
    fig.legend(handles, labels, title="implementation", loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    fig.tight_layout()
    return fig


def acceleration(df: pd.DataFrame, ctx: Context) -> list[Figure] | None:
    data = df[df["is_flat"].astype(bool) & df["speedup"].notna() & df["direction"].isin(DIRECTIONS)]
    out = []
    for machine, sub in data.groupby("machine", sort=True):
        fig = _layer_bars(sub, "speedup", "speedup over dense (×)", ctx, line_at_one=True)
        rel = ctx.save(fig, f"acceleration_{ctx.device}_{machine}")
        out.append(Figure(
            rel, f"Acceleration over dense: {device_label(ctx.device)}, {machine}",
            f"Speedup of each flattened implementation over the dense k×k convolution it replaces: "
            f"dense median time ÷ implementation median time, both from the same run, layer, "
            f"{ctx.dtype} and direction. Measured on {ctx.where(sub)}; {_batch_note(sub)}. "
            f"Bars above the dashed line at 1× are faster than dense, below it slower. One panel per "
            f"direction (forward = inference, backward = gradients from saved state, train = both); "
            f"layers grouped by table, smallest first within a table."))
    return out or None


# -----------------------------------------------------------------------------------
# (2) Time against layer size
def time_vs_size(df: pd.DataFrame, ctx: Context) -> Figure | None:
    data = df[df["direction"].isin(DIRECTIONS) & df["time_median"].notna() & df["layer_flops"].notna()]
    if data.empty:
        return None
    impls = _impl_order(data)
    directions = _directions(data)
    machines = sorted(data["machine"].unique())
    fig, axes = plt.subplots(len(machines), len(directions), squeeze=False,
                             figsize=(4.6 * len(directions), 3.6 * len(machines)), sharex=True)
    for r, machine in enumerate(machines):
        for c, direction in enumerate(directions):
            ax = axes[r][c]
            sub = data[(data["machine"] == machine) & (data["direction"] == direction)]
            for impl in impls:
                s = sub[sub["impl"] == impl].sort_values("layer_flops")
                if s.empty:
                    continue
                lo = (s["time_median"] - s["time_q1"]).clip(lower=0).fillna(0)
                hi = (s["time_q3"] - s["time_median"]).clip(lower=0).fillna(0)
                ax.errorbar(s["layer_flops"], s["time_median"], yerr=[lo, hi], label=impl,
                            color=ctx.palette.get(impl), marker="o", markersize=4, linestyle="none",
                            capsize=2, elinewidth=1)
                trend = s.groupby("layer_flops")["time_median"].median()
                ax.plot(trend.index, trend.values, color=ctx.palette.get(impl), linewidth=1.2,
                        linestyle="--" if impl == "dense" else "-", alpha=0.8)
            log_axis(ax.xaxis, "si")
            log_axis(ax.yaxis, "s")
            ax.set_title(f"{direction} · {machine}", fontsize=10)
            if r == len(machines) - 1:
                ax.set_xlabel("layer size: dense forward FLOPs")
            if c == 0:
                ax.set_ylabel("median time")
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles.keys()), title="implementation",
               loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    rel = ctx.save(fig, f"time_vs_size_{ctx.device}")
    return Figure(rel, f"Time against layer size ({device_label(ctx.device)})",
                  f"Median time of one call against the size of the layer (forward FLOPs of the dense "
                  f"k×k convolution, the same x for every implementation of a layer), both axes logarithmic. "
                  f"Error bars span the interquartile range (q1 to q3) of the timed rounds. Measured on "
                  f"{ctx.where(data)}; {_batch_note(data)}; {ctx.dtype}. Lower is faster; a line "
                  f"parallel to dense keeps a constant speedup, a flat stretch means fixed overhead "
                  f"(launch, threading) dominates those small layers. Layers of equal size (e.g. c64 at 32×32 "
                  f"and c128 at 16×16) share an x; the line joins their medians.")


# -----------------------------------------------------------------------------------
# (3) Peak memory against dense
def memory(df: pd.DataFrame, ctx: Context) -> list[Figure] | None:
    data = df[df["direction"].isin(DIRECTIONS) & df["peak_bytes"].notna() & (df["peak_bytes"] > 0)].copy()
    data["peak_mib"] = data["peak_bytes"] / 2**20
    kind = ("torch.cuda peak allocated bytes since a reset, CuPy included" if ctx.device == "cuda"
            else "rise of the process high-water mark, VmHWM")
    out = []
    for machine, sub in data.groupby("machine", sort=True):
        fig = _layer_bars(sub, "peak_mib", "peak extra MiB (log)", ctx, log=True)
        rel = ctx.save(fig, f"memory_{ctx.device}_{machine}")
        out.append(Figure(
            rel, f"Peak memory against dense: {device_label(ctx.device)}, {machine}",
            f"Extra memory one call needs beyond its inputs and weights ({kind}), per layer, log "
            f"scale; dense is the dark bar. Measured on {ctx.where(sub)}; {_batch_note(sub)}; "
            f"{ctx.dtype}. A stage-by-stage flattened layer keeps two intermediate tensors, a fused one "
            f"fewer; a bar lower than dense's costs less memory than the dense layer. A missing bar: no "
            f"measurable rise (0 bytes) or not measured."))
    return out or None


# -----------------------------------------------------------------------------------
# (4) Roofline
def roofline(df: pd.DataFrame, ctx: Context) -> Figure | None:
    data = df[df["direction"].isin(DIRECTIONS) & df["gflops"].notna() & df["intensity"].notna()
              & (df["gflops"] > 0) & (df["intensity"] > 0)]
    if data.empty:
        return None
    machines = sorted(data["machine"].unique())
    ncols = min(2, len(machines))
    nrows = -(-len(machines) // ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(6.2 * ncols, 4.4 * nrows))
    markers = {"forward": "o", "backward": "s", "train": "^"}
    missing = []
    for i, machine in enumerate(machines):
        ax = axes[i // ncols][i % ncols]
        sub = data[data["machine"] == machine]
        for (impl, direction), s in sub.groupby(["impl", "direction"]):
            ax.scatter(s["intensity"], s["gflops"], color=ctx.palette.get(impl), marker=markers.get(direction, "o"),
                       s=28, alpha=0.85, edgecolors="white", linewidths=0.4)
        xmin, xmax = sub["intensity"].min() / 2, sub["intensity"].max() * 2
        bw = sub["machine_copy_gbps"].dropna().median() if "machine_copy_gbps" in sub else np.nan
        peak = sub["machine_sgemm_gflops"].dropna().median() if "machine_sgemm_gflops" in sub else np.nan
        if np.isfinite(bw) and np.isfinite(peak):
            ridge = peak / bw
            xs = np.geomspace(min(xmin, ridge / 4), max(xmax, ridge * 4), 200)
            ax.plot(xs, np.minimum(peak, bw * xs), color="black", linewidth=1.5)
            xm = float(np.sqrt(xs[0] * ridge))
            ax.annotate(f"copy {bw:,.0f} GB/s", xy=(xm, bw * xm), xytext=(-6, 6),
                        textcoords="offset points", ha="right", fontsize=8)
            ax.annotate(f"sgemm {peak:,.0f} GFLOP/s", xy=(xs[-1], peak), xytext=(-4, 4),
                        textcoords="offset points", ha="right", fontsize=8)
        else:
            missing.append(machine)
        log_axis(ax.xaxis)
        log_axis(ax.yaxis)
        ax.set_xlabel("arithmetic intensity (FLOPs per minimum byte)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(ctx.machines.get(machine, machine), fontsize=9)
    for j in range(len(machines), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    impl_handles = [plt.Line2D([], [], color=ctx.palette.get(i), marker="o", linestyle="", label=i)
                    for i in _impl_order(data)]
    dir_handles = [plt.Line2D([], [], color="grey", marker=markers[d], linestyle="", label=d)
                   for d in _directions(data)]
    fig.legend(handles=impl_handles + dir_handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    rel = ctx.save(fig, f"roofline_{ctx.device}")
    note = (f" No measured ceilings in the metadata of: {', '.join(missing)}." if missing else "")
    return Figure(rel, f"Roofline ({device_label(ctx.device)})",
                  f"Achieved GFLOP/s (the layer's FLOPs ÷ median time) against arithmetic intensity (FLOPs "
                  f"÷ the minimum bytes the layer must move), log-log, one point per layer, colour = "
                  f"implementation, marker = direction. The black line is each machine's measured "
                  f"ceiling: min(sgemm GFLOP/s, copy GB/s × intensity) from its metadata. The vertical gap "
                  f"between a point and the line is how far that case is from the machine's limit "
                  f"(a point at one tenth of the line runs at 10% of it). Measured on {ctx.where(data)}; "
                  f"{ctx.dtype}.{note}")


# -----------------------------------------------------------------------------------
# (6) Per-kernel (stage) view
STAGE_ORDER = ["lateral", "vertical", "horizontal"]


def _stage_key(stage: str):
    parts = stage.split("+")
    return (len(parts), [STAGE_ORDER.index(p) if p in STAGE_ORDER else 9 for p in parts], stage)


def kernels(df: pd.DataFrame, ctx: Context) -> Figure | None:
    data = df[df["direction"].astype(str).str.startswith("stage:") & df["time_median"].notna()].copy()
    if data.empty:
        return None
    data["stage"] = data["direction"].str.slice(6)
    data["time_us"] = data["time_median"] * 1e6
    layers = _layer_order(data)
    stages = sorted(data["stage"].unique(), key=_stage_key)
    colours = dict(zip(stages, sns.color_palette("Set2", len(stages))))
    impls = _impl_order(data)
    machines = sorted(data["machine"].unique())
    panel_w = _width(len(layers) * 3, 0.3, 4, 8)
    fig, axes = plt.subplots(len(machines), len(impls), squeeze=False,
                             figsize=(panel_w * len(impls), 2.9 * len(machines) + 0.6))
    for r, machine in enumerate(machines):
        for c, impl in enumerate(impls):
            ax = axes[r][c]
            sub = data[(data["machine"] == machine) & (data["impl"] == impl)]
            if sub.empty:
                ax.set_visible(False)
                continue
            present = [st for st in stages if st in set(sub["stage"])]
            sns.barplot(data=sub, x="layer", y="time_us", hue="stage", order=layers, hue_order=present,
                        palette=colours, errorbar=None, ax=ax, legend=False)
            ax.set_title(f"{impl} · {machine}", fontsize=10)
            ax.set_xticks(range(len(layers)))
            ax.set_xticklabels([_short(x) for x in layers], rotation=30, ha="right", fontsize=8)
            ax.set_xlabel("")
            ax.set_ylabel("median time (µs)" if c == 0 else "")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[st]) for st in stages]
    fig.legend(handles, stages, title="stage", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    rel = ctx.save(fig, f"kernels_{ctx.device}")
    frac = data.groupby("stage")["roofline_fraction"].median().dropna()
    extra = ("" if frac.empty else " Median fraction of the roofline per stage: "
             + ", ".join(f"{st} {frac[st]:.0%}" for st in sorted(frac.index, key=_stage_key)) + ".")
    return Figure(rel, f"Per-kernel view ({device_label(ctx.device)})",
                  f"Median time of each stage run alone (lateral 1×1, vertical k×1, horizontal 1×k, or "
                  f"a fused pair such as vertical+horizontal), per implementation and layer, "
                  f"{ctx.dtype}. Measured on {ctx.where(data)}. The stages of one layer add up to roughly "
                  f"the composed forward time; the tallest bar is where a faster kernel pays most.{extra}")


# -----------------------------------------------------------------------------------
# (5) Parameters, flattened against dense (from the shapes, not from timings)
def parameters(layers: pd.DataFrame, ctx: Context) -> Figure | None:
    """`layers` has in_channels, out_channels, kernel_size, flat_params, dense_params."""
    if layers.empty:
        return None
    layers = layers.sort_values(["dense_params", "label"])
    long = layers.melt(id_vars=["label"], value_vars=["flat_params", "dense_params"],
                       var_name="layer kind", value_name="parameters")
    long["layer kind"] = long["layer kind"].map({"flat_params": "flattened", "dense_params": "dense"})
    fig, ax = plt.subplots(figsize=(_width(len(layers), 0.9, 6, 16), 3.8))
    sns.barplot(data=long, x="label", y="parameters", hue="layer kind", ax=ax, order=list(layers["label"]),
                palette={"flattened": sns.color_palette("tab10")[0], "dense": (0.2, 0.2, 0.2)})
    log_axis(ax.yaxis, "si")
    ax.set_xlabel("layer: in channels → out channels, k×k")
    ax.set_ylabel("parameters (log)")
    for i, (_, row) in enumerate(layers.iterrows()):
        ax.annotate(f"−{1 - row['flat_params'] / row['dense_params']:.0%}", xy=(i, row["dense_params"]),
                    xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    ax.set_ylim(top=layers["dense_params"].max() * 4)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(title=None, loc="upper left")
    rel = ctx.save(fig, "parameters")
    mean = (1 - layers["flat_params"] / layers["dense_params"]).median()
    return Figure(rel, "Parameters: flattened against dense",
                  f"Parameter count of one flattened layer (N·C + 2·N·k + 3·N: lateral, vertical and "
                  f"horizontal weights and biases) against the dense k×k layer it replaces (N·C·k·k + N), "
                  f"computed from the shapes of every layer in these results (no measurement), log scale. "
                  f"The label above each pair is the reduction; median {mean:.0%} here (the paper "
                  f"reports about 90% for its networks).")


# -----------------------------------------------------------------------------------
# (7) History across commits (asv)
def history(asv: pd.DataFrame, ctx: Context, max_lines: int = 12) -> list[Figure]:
    figures = []
    data = asv[asv["value"].notna()]
    for benchmark, bench in data.groupby("benchmark", sort=True):
        bench = bench.sort_values("date")
        commits = list(dict.fromkeys(bench["commit"]))
        labels = {c: str(c)[:8] for c in commits}
        series = sorted(bench["params"].unique())
        dropped = max(0, len(series) - max_lines)
        series = series[:max_lines]
        machines = sorted(bench["machine"].unique())
        fig, axes = plt.subplots(1, len(machines), squeeze=False, figsize=(max(5.5, 0.8 * len(commits) + 4) * len(machines), 3.6))
        colours = sns.color_palette("tab20", len(series))
        for ax, machine in zip(axes[0], machines):
            sub = bench[bench["machine"] == machine]
            for colour, params in zip(colours, series):
                s = sub[sub["params"] == params]
                if s.empty:
                    continue
                x = [commits.index(c) for c in s["commit"]]
                lo = (s["value"] - s["q25"]).clip(lower=0).fillna(0)
                hi = (s["q75"] - s["value"]).clip(lower=0).fillna(0)
                ax.errorbar(x, s["value"], yerr=[lo, hi], marker="o", markersize=4, capsize=3,
                            color=colour, label=params or "(no parameters)")
            ax.set_xticks(range(len(commits)))
            ax.set_xticklabels([labels[c] for c in commits], rotation=35, ha="right", fontsize=8)
            unit = bench["unit"].dropna().iloc[0] if bench["unit"].notna().any() else ""
            log_axis(ax.yaxis, "s" if unit == "seconds" else "si")
            ax.set_ylabel(unit or "value")
            ax.set_xlabel("commit (oldest → newest)")
            ax.set_title(f"{benchmark.rsplit('.', 2)[-2:][0]}.{benchmark.rsplit('.', 1)[-1]} · {machine}", fontsize=9)
        handles = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles.keys()), loc="center left",
                   bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
        fig.tight_layout()
        rel = ctx.save(fig, f"history_{benchmark}")
        kind = bench["type"].dropna().iloc[0] if bench["type"].notna().any() else "value"
        note = f" {dropped} more parameter combinations are in the CSV only." if dropped else ""
        figures.append(Figure(rel, f"History: {benchmark}",
                              f"asv {kind} benchmark {benchmark} at each benchmarked commit (x, ordered by "
                              f"commit date), one line per parameter combination, log scale; error bars are "
                              f"asv's interquartile range where it recorded samples. Machines: "
                              f"{', '.join(machines)}. A step up after a commit is a regression; a missing "
                              f"point means that commit lacked the benchmark or it failed.{note}"))
    return figures


# -----------------------------------------------------------------------------------
# Model-level results (bench/models.py's *.models.json)
def model_curves(model: dict, ctx: Context, name: str) -> Figure | None:
    rows = []
    for variant in ("baseline", "flattened"):
        for point in (model.get(variant) or {}).get("history") or []:
            if isinstance(point, dict):
                rows.append({"variant": variant, **point})
    data = pd.DataFrame(rows)
    if data.empty or "epoch" not in data:
        return None
    metrics = [m for m in ("loss", "test_accuracy") if m in data and data[m].notna().any()]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), squeeze=False, figsize=(5.2 * len(metrics), 3.4))
    for ax, metric in zip(axes[0], metrics):
        sns.lineplot(data=data, x="epoch", y=metric, hue="variant", marker="o", ax=ax,
                     palette={"baseline": (0.2, 0.2, 0.2), "flattened": sns.color_palette("tab10")[0]})
        ax.set_ylabel(metric.replace("_", " "))
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    rel = ctx.save(fig, f"models_{name}")
    return Figure(rel, f"Convergence: {name}",
                  f"Training loss and test accuracy per epoch of the baseline network (dense k×k "
                  f"convolutions) and the same network with flattened layers, from {model.get('_path', name)}. "
                  f"Curves that end close together mean flattening kept the accuracy; a slower rise means "
                  f"it trains more slowly.")
