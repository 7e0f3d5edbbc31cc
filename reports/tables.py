"""The page's tables as DataFrames: summary, machines, failures, parameter counts."""

from __future__ import annotations

import json
import math

import pandas as pd

from .figures import DIRECTIONS, TABLE_ORDER, device_label
from .load import shapes_module

DEVICE_ORDER = ["cpu", "cuda"]


def _device_key(device) -> int:
    return DEVICE_ORDER.index(device) if device in DEVICE_ORDER else len(DEVICE_ORDER)


def _table_key(table) -> int:
    return TABLE_ORDER.index(table) if table in TABLE_ORDER else len(TABLE_ORDER)


def summary(latest: pd.DataFrame) -> pd.DataFrame:
    """One row per machine, device, dtype, layer and direction: the fastest implementation,
    the best flattened one against dense (speedup), their fraction of the machine's
    roofline, and their peak memory."""
    columns = ["device", "machine", "dtype", "table", "layer", "direction", "fastest", "fastest_time",
               "best_flat", "flat_time", "dense_time", "speedup", "flat_roofline", "dense_roofline",
               "flat_peak_mib", "dense_peak_mib", "_size"]
    data = latest[latest["direction"].isin(DIRECTIONS) & latest["time_median"].notna()]
    rows = []
    for key, group in data.groupby(["device", "machine", "dtype", "table", "layer", "direction"], dropna=False):
        device, machine, dtype, table, layer, direction = key
        fastest = group.loc[group["time_median"].idxmin()]
        flat = group[group["is_flat"].astype(bool)]
        dense = group[group["impl"] == "dense"]
        best = flat.loc[flat["time_median"].idxmin()] if not flat.empty else None
        d = dense.iloc[0] if not dense.empty else None
        speedup = math.nan
        if best is not None:
            speedup = best["speedup"]
            if pd.isna(speedup) and d is not None:
                speedup = d["time_median"] / best["time_median"]
        rows.append({
            "device": device, "machine": machine, "dtype": dtype, "table": table, "layer": layer,
            "direction": direction, "fastest": fastest["impl"], "fastest_time": fastest["time_median"],
            "best_flat": best["impl"] if best is not None else None,
            "flat_time": best["time_median"] if best is not None else math.nan,
            "dense_time": d["time_median"] if d is not None else math.nan,
            "speedup": speedup,
            "flat_roofline": best["roofline_fraction"] if best is not None else math.nan,
            "dense_roofline": d["roofline_fraction"] if d is not None else math.nan,
            "flat_peak_mib": best["peak_bytes"] / 2**20 if best is not None else math.nan,
            "dense_peak_mib": d["peak_bytes"] / 2**20 if d is not None else math.nan,
            "_size": group["layer_flops"].max(),
        })
    out = pd.DataFrame(rows, columns=columns)
    if out.empty:
        return out.drop(columns="_size")
    out["_d"] = out["device"].map(_device_key)
    out["_t"] = out["table"].map(_table_key)
    out["_r"] = out["direction"].map(DIRECTIONS.index)
    out = out.sort_values(["_d", "machine", "dtype", "_t", "_size", "layer", "_r"], na_position="last")
    return out.drop(columns=["_d", "_t", "_r", "_size"]).reset_index(drop=True)


def headlines(summ: pd.DataFrame) -> list[str]:
    """One sentence per machine and device: the typical speedup and the usual winner."""
    lines = []
    for (device, machine), group in summ.groupby(["device", "machine"], sort=False):
        parts = []
        for direction in DIRECTIONS:
            s = group[(group["direction"] == direction)]["speedup"].dropna()
            if not s.empty:
                parts.append(f"{direction} {s.median():.1f}× (range {s.min():.1f}–{s.max():.1f}×)")
        winners = group["fastest"].value_counts()
        winner = (f"; fastest most often: {winners.index[0]} ({winners.iloc[0]} of {len(group)} cases)"
                  if not winners.empty else "")
        if parts:
            lines.append(f"{device_label(device)} · {machine}: flattened over dense, median speedup "
                         f"{', '.join(parts)}{winner}.")
        else:
            lines.append(f"{device_label(device)} · {machine}: no case has both a flattened and a dense "
                         f"time{winner}.")
    return lines


MACHINE_FIELDS = [
    ("cpu_model", "CPU"), ("cpu_cores_physical", "physical cores"), ("cpu_cores_logical", "logical cores"),
    ("cpu_freq_mhz", "CPU MHz"), ("memory_bytes", "memory"), ("gpu_name", "GPU"), ("gpu_driver", "GPU driver"),
    ("gpu_memory_bytes", "GPU memory"), ("gpu_clocks", "GPU clocks"), ("torch_version", "torch"),
    ("cudnn_version", "cuDNN"), ("cupy_version", "CuPy"), ("compiler", "compiler"),
    ("torch_threads", "torch threads"), ("omp_threads", "OpenMP threads"),
    ("glibc_tunables", "GLIBC_TUNABLES"), ("copy_gbps", "copy GB/s (measured)"),
    ("sgemm_gflops", "sgemm GFLOP/s (measured)"), ("platform", "platform"), ("python", "Python"),
]


def _fmt_machine_value(key, value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key.endswith("_bytes"):
        try:
            size = float(value)
        except (TypeError, ValueError):
            return str(value)
        return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
    if key in ("copy_gbps", "sgemm_gflops", "cpu_freq_mhz"):
        try:
            return f"{float(value):,.1f}"
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    if isinstance(value, str) and value.startswith("{"):
        try:
            return ", ".join(f"{k} {v}" for k, v in json.loads(value).items())
        except (ValueError, AttributeError):
            return value
    return str(value)


def machines(df: pd.DataFrame, asv_machines: list[dict]) -> pd.DataFrame:
    """Fields as rows, one column per machine (latest metadata of each), plus what was run there."""
    columns = {}
    for machine, group in df.groupby("machine", sort=True):
        group = group.sort_values("timestamp", na_position="first")
        col = {}
        known = {key for key, _ in MACHINE_FIELDS} | {"host"}
        extras = sorted(c[len("machine_"):] for c in group.columns
                        if c.startswith("machine_") and c[len("machine_"):] not in known)
        for key, label in MACHINE_FIELDS + [(key, key) for key in extras]:
            values = group.get(f"machine_{key}")
            value = values.dropna().iloc[-1] if values is not None and values.notna().any() else None
            col[label] = _fmt_machine_value(key, value)
        col["devices measured"] = ", ".join(device_label(d) for d in sorted(group["device"].dropna().unique(), key=_device_key))
        col["runs"] = ", ".join(sorted(group["run_id"].dropna().astype(str).unique()))
        counts = group["status"].value_counts()
        col["cases"] = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "failed", "skipped"))
        columns[machine] = col
    for info in asv_machines:
        name = f"asv: {info.get('machine', '?')}"
        columns[name] = {"CPU": info.get("cpu", ""), "logical cores": info.get("num_cpu", ""),
                         "memory": info.get("ram", ""), "platform": f"{info.get('os', '')} {info.get('arch', '')}".strip()}
    out = pd.DataFrame(columns)
    if out.empty:
        return out
    out = out.fillna("")
    return out[(out != "").any(axis=1)]


def failures(df: pd.DataFrame, max_listed: int = 6) -> pd.DataFrame:
    """Every case without a time, grouped by status, machine, device, implementation, dtype
    and reason; `cases` names the layers and directions (the CSV lists each one)."""
    columns = ["status", "machine", "device", "impl", "dtype", "reason", "count", "cases"]
    bad = df[df["status"].fillna("failed") != "ok"]
    if bad.empty:
        return pd.DataFrame(columns=columns)
    bad = bad.assign(reason=bad["reason"].fillna("(no reason recorded)"), status=bad["status"].fillna("failed"))
    keys = ["status", "machine", "device", "impl", "dtype", "reason"]
    rows = []
    for key, group in bad.fillna({"impl": "?", "dtype": "?", "device": "?"}).groupby(keys, sort=True):
        by_layer = group.groupby("layer", sort=True)["direction"].apply(lambda d: "/".join(sorted(map(str, d))))
        items = [f"{layer} ({dirs})" for layer, dirs in by_layer.items()]
        listed = "; ".join(items[:max_listed]) + (f"; and {len(items) - max_listed} more layers"
                                                    if len(items) > max_listed else "")
        rows.append(dict(zip(keys, key), count=len(group), cases=listed))
    return pd.DataFrame(rows, columns=columns)


def quality(df: pd.DataFrame, *, spread: float = 0.10, repeat: float = 0.10, slow: float = 0.08) -> pd.DataFrame:
    """Timed cases whose number deserves less trust, with why: a wide spread (IQR above
    `spread` of the median), a second measurement in the same run that disagrees by more
    than `repeat`, or a compute probe taken around the case more than `slow` below the best
    of its run and thread count (the cores were slow then). Worst first."""
    columns = ["machine", "device", "impl", "layer", "direction", "median", "flags"]
    ok = df[df["status"] == "ok"]
    best_probe = {}
    if "probe_gflops" in ok and "run_id" in ok:
        probes = ok.dropna(subset=["probe_gflops"])
        best_probe = probes.groupby(["run_id", probes["machine_threads"].fillna(0)])["probe_gflops"].max().to_dict()
    rows = []
    for _, r in ok.iterrows():
        flags, worst = [], 0.0
        med = r.get("time_median")
        if not med or pd.isna(med):
            continue
        iqr = r.get("time_iqr")
        if pd.notna(iqr) and iqr / med > spread:
            flags.append(f"IQR {iqr / med:.0%} of the median")
            worst = max(worst, iqr / med)
        rep = r.get("time_repeat_median")
        if pd.notna(rep) and abs(rep / med - 1) > repeat:
            flags.append(f"repeat {rep / med:.2f}x")
            worst = max(worst, abs(rep / med - 1))
        threads, probe = r.get("machine_threads"), r.get("probe_gflops")
        best = best_probe.get((r.get("run_id"), 0 if pd.isna(threads) else threads)) if pd.notna(probe) else None
        if best and probe < (1 - slow) * best:
            flags.append(f"compute probe {1 - probe / best:.0%} below its run's best")
            worst = max(worst, 1 - probe / best)
        if flags:
            rows.append({"machine": r["machine"], "device": r["device"], "impl": r["impl"], "layer": r["layer"],
                         "direction": r["direction"], "median": med, "flags": "; ".join(flags), "_worst": worst})
    out = pd.DataFrame(rows, columns=columns + ["_worst"])
    return out.sort_values("_worst", ascending=False).drop(columns="_worst").reset_index(drop=True)


def parameter_layers(df: pd.DataFrame) -> pd.DataFrame:
    """Distinct (in, out, k) layers of the results with both parameter counts."""
    columns = ["label", "in_channels", "out_channels", "kernel_size", "flat_params", "dense_params"]
    data = df[["in_channels", "out_channels", "kernel_size"]].dropna().drop_duplicates()
    shapes = shapes_module()
    rows = []
    for c, n, k in data.astype(int).itertuples(index=False):
        if shapes is not None:
            flat, dense = shapes.flat_param_count(c, n, k), shapes.dense_param_count(c, n, k)
        else:  # DESIGN.md section 1
            flat, dense = n * c + 2 * n * k + 3 * n, n * c * k * k + n
        rows.append({"label": f"{c}→{n}, {k}×{k}", "in_channels": c, "out_channels": n, "kernel_size": k,
                     "flat_params": flat, "dense_params": dense})
    return pd.DataFrame(rows, columns=columns)
