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

from bench import schema  # noqa: E402
from impls.shapes import DIRECTIONS as _DIRECTIONS  # noqa: E402

DIRECTIONS = list(_DIRECTIONS)  # the figures' order of the directions
INTERVAL_NOTE = ("bootstrap of the ratio of medians from both cases' raw times, or conservatively from "
                 "their medians' 95% intervals, or for records with neither (schema version 1) from each "
                 "median's box-plot notch, ±1.58 IQR/√rounds")
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


def baselines(df: pd.DataFrame) -> list[str]:
    """The implementations the records mark as the baseline (column `baseline`)."""
    if df.empty or "baseline" not in df:
        return []
    return sorted(set(df.loc[df["baseline"].astype(bool), "impl"].dropna().astype(str)))


def palette(df: pd.DataFrame) -> dict[str, tuple]:
    """implementation -> colour, the same in every figure; the baseline(s) in greys."""
    base = baselines(df)
    names = sorted({str(i) for i in df["impl"].dropna()} - set(base)) if not df.empty else []
    tab10 = sns.color_palette("tab10", 10)
    colours = [c for i, c in enumerate(tab10) if i != 7]  # tab10's grey is kept for the baseline
    colours += [c for i, c in enumerate(sns.color_palette("tab20", 20)) if i % 2 and i not in (15,)]
    out = {name: colours[i % len(colours)] for i, name in enumerate(names)}
    greys = [(0.2, 0.2, 0.2), (0.45, 0.45, 0.45), (0.65, 0.65, 0.65)]
    out.update({name: greys[i % len(greys)] for i, name in enumerate(base)})
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
    """Implementations by name, the baseline(s) last."""
    base = baselines(df)
    return sorted(set(df["impl"].dropna().astype(str)) - set(base)) + base


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
def _bars(ax, data: pd.DataFrame, y: str, layers: list[str], impls: list[str], palette: dict,
          interval: tuple[str, str] | None = None, base: float = 0.0) -> None:
    """Grouped bars: x = layer, one bar per implementation (colour), drawn from `base` (1 for
    a ratio on a log axis: up is faster, down slower); black whiskers span the 95% interval
    (`interval` names its low and high columns) where the data has one."""
    width = 0.8 / max(1, len(impls))
    data = data[["impl", "layer", y] + list(interval or [])]  # a narrow copy: the tidy table is wide
    groups = dict(tuple(data.groupby("impl")))
    for j, impl in enumerate(impls):
        if impl not in groups:
            continue
        sub = groups[impl].drop_duplicates("layer").set_index("layer")
        xs = [i + (j - (len(impls) - 1) / 2) * width for i, layer in enumerate(layers) if layer in sub.index]
        present = [layer for layer in layers if layer in sub.index]
        if not present:
            continue
        values = sub.loc[present, y].to_numpy(dtype=float)
        ax.bar(xs, values - base, bottom=base, width=width, color=palette.get(impl), label=impl, linewidth=0)
        if interval is not None:
            lo = sub.loc[present, interval[0]].to_numpy(dtype=float)
            hi = sub.loc[present, interval[1]].to_numpy(dtype=float)
            has = np.isfinite(lo) & np.isfinite(hi)
            if has.any():
                err = [np.clip(values - lo, 0, None)[has], np.clip(hi - values, 0, None)[has]]
                ax.errorbar(np.asarray(xs)[has], values[has], yerr=err, fmt="none", ecolor="black",
                            elinewidth=0.8, capsize=1.5)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.grid(axis="x", visible=False)  # the bars, not grid lines, mark the layers


def _ratio_limits(axes, values) -> None:
    """Log limits of shared ratio axes that show every bar and whisker, and 1×."""
    values = np.asarray([v for v in values if np.isfinite(v) and v > 0] + [1.0])
    lo, hi = values.min() / 1.25, values.max() * 1.25
    for ax in np.ravel(axes):
        ax.set_ylim(lo, hi)
        log_axis(ax.yaxis)


def _layer_bars(data: pd.DataFrame, y: str, ylabel: str, ctx: Context, log: bool = False,
                line_at_one: bool = False, interval: tuple[str, str] | None = None) -> plt.Figure:
    """Bars per layer (x, grouped by table) and implementation (colour), one row per direction."""
    layers = _layer_order(data)
    impls = _impl_order(data)
    directions = _directions(data)
    width = _width(len(layers) * len(impls), 0.2, 6, 17)
    fig, axes = plt.subplots(len(directions), 1, squeeze=False, sharex=True,
                             figsize=(width, 2.5 * len(directions) + 0.8))
    tables = [data.loc[data["layer"] == layer, "table"].iloc[0] for layer in layers]
    for ax, direction in zip(axes[:, 0], directions):
        _bars(ax, data[data["direction"] == direction], y, layers, impls, ctx.palette, interval)
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
    handles = [plt.Rectangle((0, 0), 1, 1, color=ctx.palette.get(i)) for i in impls]
    fig.legend(handles, impls, title="implementation", loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    fig.tight_layout()
    return fig


def acceleration(df: pd.DataFrame, ctx: Context) -> list[Figure] | None:
    data = df[df["is_flat"].astype(bool) & df["speedup"].notna() & df["direction"].isin(DIRECTIONS)]
    out = []
    for machine, sub in data.groupby("machine", sort=True):
        fig = _layer_bars(sub, "speedup", "speedup over dense (×)", ctx, line_at_one=True,
                          interval=("speedup_low", "speedup_high"))
        rel = ctx.save(fig, f"acceleration_{ctx.device}_{machine}")
        out.append(Figure(
            rel, f"Acceleration over dense: {device_label(ctx.device)}, {machine}",
            f"Speedup of each flattened implementation over the dense k×k convolution it replaces: "
            f"dense median time ÷ implementation median time, both from the same run, layer, "
            f"{ctx.dtype} and direction. Measured on {ctx.where(sub)}; {_batch_note(sub)}. "
            f"Bars above the dashed line at 1× are faster than dense, below it slower; whiskers span "
            f"the 95% interval of the ratio ({INTERVAL_NOTE}), absent where the records carry neither. "
            f"One panel per "
            f"direction (forward = inference, backward = gradients from saved state, train = both); "
            f"layers grouped by table, smallest first within a table."))
    return out or None


# -----------------------------------------------------------------------------------
# (1b) Machines side by side
def _hardware(sub: pd.DataFrame, device: str) -> str:
    """A machine's hardware in a few words: the GPU, or the CPU model and its instruction set."""
    def last(key):
        col = sub.get(f"machine_{key}")
        return str(col.dropna().iloc[-1]) if col is not None and col.notna().any() else None

    if device == "cuda" and last("gpu_name"):
        return last("gpu_name")
    return " · ".join(x for x in (last("cpu_model"), last("cpu_isa")) if x) or "hardware not recorded"


def machines_side_by_side(df: pd.DataFrame, ctx: Context) -> Figure | None:
    """Speedup over the baseline per layer, one column per machine (each ratio within its
    own run), on the layers that at least two machines measured."""
    data = df[df["is_flat"].astype(bool) & df["speedup"].notna() & df["direction"].isin(DIRECTIONS)]
    machines = sorted(data["machine"].unique())
    if len(machines) < 2:
        return None
    shared = data.groupby("layer")["machine"].nunique()
    data = data[data["layer"].isin(shared[shared >= 2].index)]
    if data.empty:
        return None
    machines = sorted(data["machine"].unique())
    layers, impls, directions = _layer_order(data), _impl_order(data), _directions(data)
    panel = _width(len(layers) * len(impls), 0.13, 3.4, 6.0)
    fig, axes = plt.subplots(len(directions), len(machines), squeeze=False, sharey="row", sharex=True,
                             figsize=(panel * len(machines) + 1.0, 2.6 * len(directions) + 1.0))
    for c, machine in enumerate(machines):
        sub = data[data["machine"] == machine]
        for r, direction in enumerate(directions):
            ax = axes[r][c]
            _bars(ax, sub[sub["direction"] == direction], "speedup", layers, impls, ctx.palette,
                  ("speedup_low", "speedup_high"), base=1.0)
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
            if c == 0:
                ax.set_ylabel(f"{direction}\nspeedup (×, log)")
        axes[0][c].set_title(f"{machine}\n{_hardware(sub, ctx.device)}", fontsize=9)
        axes[-1][c].set_xticks(range(len(layers)))
        axes[-1][c].set_xticklabels([_short(x) for x in layers], rotation=35, ha="right", fontsize=8)
    for r, direction in enumerate(directions):  # rows share their axis: one set of limits per row
        sub = data[data["direction"] == direction]
        _ratio_limits(axes[r], list(sub["speedup"]) + list(sub["speedup_low"]) + list(sub["speedup_high"]))
    handles = [plt.Rectangle((0, 0), 1, 1, color=ctx.palette.get(i)) for i in impls]
    fig.legend(handles, impls, title="implementation", loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    fig.tight_layout()
    rel = ctx.save(fig, f"machines_{ctx.device}")
    return Figure(rel, f"Machines side by side ({device_label(ctx.device)})",
                  f"Speedup of each flattened implementation over dense on each machine (columns, titled "
                  f"with the machine's CPU model and widest vector instruction set, or its GPU), one row per "
                  f"direction, on the layers at least two machines measured; {ctx.dtype}. Every ratio is "
                  f"taken within its own machine's run, never across machines; whiskers span its 95% "
                  f"interval ({INTERVAL_NOTE}). Log scale: equal heights above and below the dashed 1× "
                  f"line are equal factors faster and slower. A machine without a bar did not run that "
                  f"implementation.")


def peers(summ: pd.DataFrame, ctx: Context) -> Figure | None:
    """The best hand-written implementation against the fastest peer, per layer and
    direction (reports.tables.summary's hw_vs_peer), one column per device and machine."""
    data = summ[summ["hw_vs_peer"].notna()]
    if data.empty:
        return None
    columns = list(dict.fromkeys(zip(data["device"], data["machine"])))
    directions = _directions(data)
    width = max(3.6, 0.45 * data.groupby(["device", "machine"])["layer"].nunique().max() + 1.2)
    fig, axes = plt.subplots(len(directions), len(columns), squeeze=False, sharey=True,
                             figsize=(width * len(columns) + 1.4, 2.5 * len(directions) + 1.2))
    hand = sorted(data["handwritten"].dropna().unique())
    for c, (device, machine) in enumerate(columns):
        sub = data[(data["device"] == device) & (data["machine"] == machine)]
        layers = list(dict.fromkeys(sub["layer"]))  # the summary's order: by table, then size
        for r, direction in enumerate(directions):
            ax = axes[r][c]
            s = sub[sub["direction"] == direction].set_index("layer")
            xs = [i for i, layer in enumerate(layers) if layer in s.index]
            present = [layer for layer in layers if layer in s.index]
            if present:
                row = s.loc[present]
                ax.bar(xs, row["hw_vs_peer"] - 1, bottom=1, width=0.7,
                       color=[ctx.palette.get(h) for h in row["handwritten"]])
                lo, hi = row["hw_vs_peer_low"].to_numpy(float), row["hw_vs_peer_high"].to_numpy(float)
                has = np.isfinite(lo) & np.isfinite(hi)
                v = row["hw_vs_peer"].to_numpy(float)
                ax.errorbar(np.asarray(xs)[has], v[has], yerr=[(v - lo)[has].clip(0), (hi - v)[has].clip(0)],
                            fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
                for x, value, low, high, peer in zip(xs, v, lo, hi, row["peer"]):
                    above = value >= 1  # the name sits beyond the bar's end (and whisker), away from 1×
                    end = np.fmax(value, high) if above else np.fmin(value, low)
                    ax.annotate(str(peer), xy=(x, end), xytext=(0, 2 if above else -2), textcoords="offset points",
                                ha="center", va="bottom" if above else "top", fontsize=6.5, rotation=90,
                                color="#333")
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
            ax.set_xlim(-0.5, len(layers) - 0.5)
            ax.set_xticks(range(len(layers)))
            ax.set_xticklabels([_short(x) for x in layers] if r == len(directions) - 1 else [],
                               rotation=35, ha="right", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{direction}\npeer ÷ hand-written")
        axes[0][c].set_title(f"{device_label(device)} · {machine}", fontsize=9)
    values = list(data["hw_vs_peer"]) + list(data["hw_vs_peer_low"]) + list(data["hw_vs_peer_high"])
    _ratio_limits(axes, values)
    lo, hi = axes[0][0].get_ylim()
    for ax in axes.flat:  # room for the peers' names beyond the bars
        ax.set_ylim(lo / 3, hi * 3)
        log_axis(ax.yaxis)
        ax.grid(axis="x", visible=False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=ctx.palette.get(h)) for h in hand]
    fig.legend(handles, hand, title="best hand-written", loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    fig.tight_layout()
    rel = ctx.save(fig, "peers")
    return Figure(rel, "Hand-written code against the peers a user would pick instead",
                  f"Per layer and direction: the fastest peer's median time ÷ the best hand-written "
                  f"implementation's (bar colour; the peer is named above the bar), same run. Above the "
                  f"dashed 1× line the hand-written code is faster than every peer measured there; below "
                  f"it a peer is faster. Whiskers span the 95% interval ({INTERVAL_NOTE}). Log scale.")


# -----------------------------------------------------------------------------------
# (2) Time against layer size
def time_vs_size(df: pd.DataFrame, ctx: Context) -> Figure | None:
    data = df[df["direction"].isin(DIRECTIONS) & df["time_median"].notna() & df["layer_flops"].notna()]
    if data.empty:
        return None
    impls = _impl_order(data)
    base = baselines(data)
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
                        linestyle="--" if impl in base else "-", alpha=0.8)
            log_axis(ax.xaxis, "si")
            log_axis(ax.yaxis, "s")
            ax.set_title(f"{direction} · {machine}", fontsize=10)
            if r == len(machines) - 1:
                ax.set_xlabel("layer size: dense forward FLOPs")
            if c == 0:
                ax.set_ylabel("median time")
    handles = {}
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
    missing, raised, bases = [], [], []
    has_levels, raised_copy = False, []
    for i, machine in enumerate(machines):
        ax = axes[i // ncols][i % ncols]
        sub = data[data["machine"] == machine]
        for (impl, direction), s in sub.groupby(["impl", "direction"]):
            ax.scatter(s["intensity"], s["gflops"], color=ctx.palette.get(impl), marker=markers.get(direction, "o"),
                       s=28, alpha=0.85, edgecolors="white", linewidths=0.4)
        xmin, xmax = sub["intensity"].min() / 2, sub["intensity"].max() * 2
        xs = np.geomspace(xmin, xmax, 200)
        # the ceilings of reports.load: copy, the best its run measured (DRAM, and the copies
        # that fit the caches); compute, the best GEMM seen on the machine, or a case's rate
        # where no GEMM ran faster
        bw = sub["ceiling_dram_gbps"].max()
        peak = sub["ceiling_sgemm_gflops"].max()
        if np.isfinite(bw) and np.isfinite(peak):
            ridge = peak / bw
            xs = np.geomspace(min(xmin, ridge / 4), max(xmax, ridge * 4), 200)
            ax.plot(xs, np.minimum(peak, bw * xs), color="black", linewidth=1.5)
            xm = float(np.sqrt(xs[0] * ridge))
            ax.annotate(f"DRAM copy {bw:,.0f} GB/s", xy=(xm, bw * xm), xytext=(-6, 6),
                        textcoords="offset points", ha="right", fontsize=8)
            for level in _cache_levels(sub, bw):
                ax.plot(xs, np.minimum(peak, level["gbps"] * xs), color="steelblue", linestyle=":", linewidth=1.0)
                x0 = float(xs[0]) * 1.05
                ax.annotate(f"copy of {level['bytes'] / 2**20:g} MiB {level['gbps']:,.0f} GB/s",
                            xy=(x0, level["gbps"] * x0), xytext=(2, 3), textcoords="offset points", ha="left",
                            fontsize=7, color="steelblue")
                has_levels = True
            note = sub.loc[sub["ceiling_sgemm_gflops"] == peak, "ceiling_note"].dropna()
            if not note.empty:
                raised.append(f"{machine}: {note.iloc[0]}")
            copy_notes = sub["ceiling_copy_note"].dropna().unique() if "ceiling_copy_note" in sub else []
            raised_copy.extend(f"{machine}: {n}" for n in copy_notes)
            label = f"best GEMM {peak:,.0f} GFLOP/s" if note.empty else f"compute {peak:,.0f} GFLOP/s (a case's rate)"
            ax.annotate(label, xy=(xs[-1], peak), xytext=(-4, 4), textcoords="offset points", ha="right", fontsize=8)
        else:
            missing.append(machine)
        # the instruction set's FMA peak: an estimate from the reported clock, drawn beside the measured ceiling
        fma = sub["ceiling_fma_peak_gflops"].max() if "ceiling_fma_peak_gflops" in sub else np.nan
        if np.isfinite(fma):
            ax.plot(xs, np.full_like(xs, fma), color="dimgrey", linestyle="--", linewidth=1.1)
            ax.annotate(f"FMA peak {fma:,.0f} GFLOP/s (estimate)", xy=(xs[0], fma), xytext=(4, 4),
                        textcoords="offset points", ha="left", fontsize=8, color="dimgrey")
            basis = sub.loc[sub["ceiling_fma_peak_gflops"] == fma].get("machine_fma_peak_basis")
            if basis is not None and basis.notna().any():
                bases.append(f"{machine}: {basis.dropna().iloc[-1]}")
        log_axis(ax.xaxis)
        log_axis(ax.yaxis)
        lines = [v for v in (peak, fma) if np.isfinite(v)]
        if lines:  # room above the highest line for its label
            ax.set_ylim(top=max(ax.get_ylim()[1], max(lines) * 1.25))
        ax.set_xlabel("arithmetic intensity (FLOPs per minimum byte)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(ctx.machines.get(machine, machine), fontsize=9)
    for j in range(len(machines), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    impl_handles = [plt.Line2D([], [], color=ctx.palette.get(i), marker="o", linestyle="", label=i)
                    for i in _impl_order(data)]
    dir_handles = [plt.Line2D([], [], color="grey", marker=markers[d], linestyle="", label=d)
                   for d in _directions(data)]
    line_handles = [plt.Line2D([], [], color="black", linewidth=1.5, label="measured ceiling (DRAM)")]
    if has_levels:
        line_handles.append(plt.Line2D([], [], color="steelblue", linestyle=":", linewidth=1.0,
                                       label="copies that fit the caches"))
    if bases:
        line_handles.append(plt.Line2D([], [], color="dimgrey", linestyle="--", linewidth=1.1,
                                       label="FMA peak (estimate)"))
    fig.legend(handles=impl_handles + dir_handles + line_handles, loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    fig.tight_layout()
    rel = ctx.save(fig, f"roofline_{ctx.device}")
    note = (f" No measured ceilings in the metadata of: {', '.join(missing)}." if missing else "")
    if raised:
        note += (" A case ran faster than every GEMM measured on its machine, so the compute ceiling is that "
                 f"case's rate: {'; '.join(raised)}.")
    if raised_copy:
        note += (" A case moved its bytes faster than the copy of its working set's level, so that level's "
                 f"bandwidth ceiling is the case's: {'; '.join(raised_copy)}.")
    if bases:
        note += (" The dashed line is the instruction set's float32 FMA peak, cores × clock × FMA units × lanes "
                 "× 2, estimated from the clock the machine reports, not measured (a VM may report its nominal "
                 "clock, below the one its cores run at, and then a GEMM can reach above it): "
                 f"{'; '.join(bases)}.")
    return Figure(rel, f"Roofline ({device_label(ctx.device)})",
                  f"Achieved GFLOP/s (the layer's FLOPs ÷ median time) against arithmetic intensity (FLOPs "
                  f"÷ the minimum bytes the layer must move), log-log, one point per layer, colour = "
                  f"implementation, marker = direction. The black line is each machine's measured "
                  f"ceiling: min(compute GFLOP/s, copy GB/s × intensity). Compute is the best large-GEMM "
                  f"rate seen on the machine at that thread count over every run shown (torch's sgemm, and "
                  f"on a CPU the C extension's own GEMM; each run measures them several times), copy the "
                  f"best bandwidth of a copy far larger than the caches the case's run measured (DRAM). "
                  f"The dotted lines are copies whose working set fits the caches: a case is held to the "
                  f"one of its own size (the cache-aware roofline), so a small layer above the black line "
                  f"is not above its ceiling. The vertical gap "
                  f"between a point and the line is how far that case is from the machine's limit "
                  f"(a point at one tenth of the line runs at 10% of it). Measured on {ctx.where(data)}; "
                  f"{ctx.dtype}.{note}")


def _cache_levels(sub: pd.DataFrame, dram: float) -> list[dict]:
    """The copy levels of a machine's runs that fit the caches (the DRAM copy drawn apart)."""
    if "ceiling_copy_levels" not in sub:
        return []
    levels = schema.best_copy_levels(v for v in sub["ceiling_copy_levels"].dropna().unique())
    return [lv for lv in levels[:-1] if lv["gbps"] > dram * 1.05]


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
# Model-level results (the *.models.json of bench/models/, `python -m bench.models`)
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
