"""The page's tables as DataFrames: summary, machines, failures, parameter counts."""

from __future__ import annotations

import json
import math

import pandas as pd

from bench import intervals, schema
from impls.shapes import dense_param_count, flat_param_count

from .figures import DIRECTIONS, TABLE_ORDER, device_label

DEVICE_ORDER = ["cpu", "cuda"]


def _device_key(device) -> int:
    return DEVICE_ORDER.index(device) if device in DEVICE_ORDER else len(DEVICE_ORDER)


def _table_key(table) -> int:
    return TABLE_ORDER.index(table) if table in TABLE_ORDER else len(TABLE_ORDER)


def _fastest(group: pd.DataFrame):
    return group.loc[group["time_median"].idxmin()] if not group.empty else None


def summary(latest: pd.DataFrame) -> pd.DataFrame:
    """One row per machine, device, dtype, layer and direction: the fastest implementation;
    the fastest peer (role "peer": what a user would pick instead) and the best hand-written
    one (role "handwritten") with the hand-written code's ratio to that peer (peer time /
    hand-written time, above 1 the hand-written code is faster); the best non-baseline
    implementation against the baseline (speedup, with where a rerun's is expected: its 95%
    prediction interval, from rounds); each ratio with its 95% interval; their
    fraction of the machine's roofline and their peak memory."""
    columns = ["device", "machine", "dtype", "table", "layer", "direction", "fastest", "fastest_time",
               "peer", "peer_time", "handwritten", "handwritten_time", "hw_vs_peer", "hw_vs_peer_low",
               "hw_vs_peer_high", "best_flat", "flat_time", "baseline_impl", "base_time", "speedup",
               "speedup_low", "speedup_high", "speedup_pi_low", "speedup_pi_high", "flat_roofline", "base_roofline", "flat_peak_mib",
               "base_peak_mib", "_size"]
    data = latest[latest["direction"].isin(DIRECTIONS) & latest["time_median"].notna()]
    rows = []
    for key, group in data.groupby(["device", "machine", "dtype", "table", "layer", "direction"], dropna=False):
        device, machine, dtype, table, layer, direction = key
        fastest = _fastest(group)
        peer = _fastest(group[group["role"] == "peer"])
        hand = _fastest(group[group["role"] == "handwritten"])
        best = _fastest(group[~group["baseline"].astype(bool)])
        base = None
        if best is not None and isinstance(best["baseline_impl"], str):
            base = _fastest(group[group["impl"] == best["baseline_impl"]])  # the one its speedup is against
        if base is None:
            base = _fastest(group[group["baseline"].astype(bool)])
        ratio = lo = hi = math.nan
        if peer is not None and hand is not None:
            ratio, lo, hi, _ = intervals.ratio(peer, hand)
        # within best's run (never across runs): NaN when that run has no baseline
        speedup, s_lo, s_hi, p_lo, p_hi = (
            (best["speedup"], best["speedup_low"], best["speedup_high"], best.get("speedup_pi_low", math.nan),
             best.get("speedup_pi_high", math.nan)) if best is not None else (math.nan,) * 5)

        def get(row, column, scale=1.0):
            return row[column] / scale if row is not None else math.nan

        rows.append({
            "device": device, "machine": machine, "dtype": dtype, "table": table, "layer": layer,
            "direction": direction, "fastest": fastest["impl"], "fastest_time": fastest["time_median"],
            "peer": peer["impl"] if peer is not None else None, "peer_time": get(peer, "time_median"),
            "handwritten": hand["impl"] if hand is not None else None,
            "handwritten_time": get(hand, "time_median"),
            "hw_vs_peer": ratio, "hw_vs_peer_low": lo, "hw_vs_peer_high": hi,
            "best_flat": best["impl"] if best is not None else None, "flat_time": get(best, "time_median"),
            "baseline_impl": base["impl"] if base is not None else None, "base_time": get(base, "time_median"),
            "speedup": speedup, "speedup_low": s_lo, "speedup_high": s_hi, "speedup_pi_low": p_lo,
            "speedup_pi_high": p_hi,
            "flat_roofline": get(best, "roofline_fraction"), "base_roofline": get(base, "roofline_fraction"),
            "flat_peak_mib": get(best, "peak_bytes", 2**20), "base_peak_mib": get(base, "peak_bytes", 2**20),
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


def say_ratio(ratio, low, high) -> str:
    """A ratio in a sentence, as far as its interval allows: "1.8× (1.7–1.9)"; an interval
    containing 1 reads "no clear difference (0.97–1.04×)"."""
    if pd.isna(ratio):
        return "no ratio"
    if pd.isna(low) or pd.isna(high):
        return f"{ratio:.2g}× (no interval)"
    if intervals.verdict(low, high) == "spans":
        return f"no clear difference ({low:.2f}–{high:.2f}×)"
    digits = 2 if high - low < 0.1 else 1
    return f"{ratio:.{digits}f}× ({low:.{digits}f}–{high:.{digits}f})"


def _tally(group: pd.DataFrame, column: str, faster: str, slower: str) -> str | None:
    """"faster in 4, no clear difference in 1 of 5 layers (median 1.6×; largest 3.1× (2.9–3.3),
    paper:c64-...)" for the ratio `column` and its interval, or None without ratios."""
    data = group.dropna(subset=[column])
    if data.empty:
        return None
    verdicts = [intervals.verdict(lo, hi) for lo, hi in zip(data[f"{column}_low"], data[f"{column}_high"])]
    counts = {v: verdicts.count(v) for v in ("above", "below", "spans", "unknown")}
    words = [(counts["above"], faster), (counts["below"], slower), (counts["spans"], "no clear difference"),
             (counts["unknown"], "without an interval")]
    said = ", ".join(f"{word} in {n}" for n, word in words if n)
    top = data.loc[data[column].idxmax()]
    return (f"{said} of {len(data)} layers (median {data[column].median():.2g}×; largest "
            f"{say_ratio(top[column], top[f'{column}_low'], top[f'{column}_high'])}, {top['layer']})")


def headlines(summ: pd.DataFrame) -> list[str]:
    """Per machine and device: how often the flattened layer beats the baseline, and the
    hand-written code the fastest peer, counted only where the 95% interval says so; and
    the usual winner."""
    lines = []
    for (device, machine), group in summ.groupby(["device", "machine"], sort=False):
        where = f"{device_label(device)} · {machine}"
        over_base, over_peer = [], []
        for direction in DIRECTIONS:
            sub = group[group["direction"] == direction]
            said = _tally(sub, "speedup", "faster", "slower")
            if said:
                over_base.append(f"{direction}: {said}")
            said = _tally(sub, "hw_vs_peer", "hand-written faster", "the peer faster")
            if said:
                over_peer.append(f"{direction}: {said}")
        winners = group["fastest"].value_counts()
        winner = (f" Fastest most often: {winners.index[0]} ({winners.iloc[0]} of {len(group)} cases)."
                  if not winners.empty else "")
        if over_base:
            lines.append(f"{where}: the best flattened implementation against dense, "
                         f"{'; '.join(over_base)}.{winner}")
        else:
            lines.append(f"{where}: no case has both a flattened and a dense time.{winner}")
        if over_peer:
            lines.append(f"{where}: the best hand-written implementation against the fastest peer "
                         f"(peer time ÷ hand-written time), {'; '.join(over_peer)}.")
        elif group["peer"].isna().all() and group["handwritten"].isna().all():
            lines.append(f"{where}: these records carry no role (schema version 1), so peers and hand-written "
                         f"code are not told apart here.")
    return lines


def compile_cost(latest: pd.DataFrame) -> pd.DataFrame:
    """Seconds an implementation spent compiling or exporting per case (outside timing:
    torch_compile, onnxruntime), per machine, device, implementation and direction."""
    columns = ["machine", "device", "impl", "direction", "cases", "median s", "max s", "total s",
               "median call"]
    data = latest.dropna(subset=["compile_seconds"])
    rows = []
    for (machine, device, impl, direction), g in data.groupby(["machine", "device", "impl", "direction"]):
        rows.append({"machine": machine, "device": device_label(device), "impl": impl, "direction": direction,
                     "cases": len(g), "median s": g["compile_seconds"].median(),
                     "max s": g["compile_seconds"].max(), "total s": g["compile_seconds"].sum(),
                     "median call": g["time_median"].median()})
    return pd.DataFrame(rows, columns=columns)


def roofline_notes(latest: pd.DataFrame) -> pd.DataFrame:
    """Cases above their machine's roofline (fraction > 1) with the record's reason."""
    columns = ["machine", "impl", "layer", "direction", "roofline", "note"]
    high = latest[latest["roofline_fraction"] > 1]
    notes = high["roofline_note"].where(high["roofline_note"].notna(), "(no roofline_note recorded)")
    return pd.DataFrame({"machine": high["machine"], "impl": high["impl"], "layer": high["layer"],
                         "direction": high["direction"], "roofline": high["roofline_fraction"],
                         "note": notes}, columns=columns).reset_index(drop=True)


def gpu_times(data: pd.DataFrame) -> pd.DataFrame:
    """GPU cases with a cold or a kernel-only time, of each machine's smaller half of the
    layers (by size: where a warm L2 cache can hold the working set): warm median, cold
    median (L2 flushed before each call), kernel-only (CUDA-graph replay), throttling,
    energy per call (or why not)."""
    columns = ["machine", "layer", "direction", "impl", "warm", "cold", "cold ÷ warm", "kernel-only",
               "throttled", "energy mJ/call"]
    timed = data[data["direction"].isin(DIRECTIONS) & data["time_median"].notna()
                 & (data["time_cold_median"].notna() | data["time_graph_median"].notna())]
    rows = []
    for machine, group in timed.groupby("machine", sort=True):
        sizes = group.groupby("layer")["layer_flops"].max().sort_values(kind="stable")
        small = set(sizes.index[: max(1, (len(sizes) + 1) // 2)])
        for r in group[group["layer"].isin(small)].to_dict("records"):
            throttled, clock, energy, note = r["throttled"], r["sm_clock_mhz_min"], r["energy_mj"], r["energy_note"]
            rows.append({
                "machine": machine, "layer": r["layer"], "direction": r["direction"], "impl": r["impl"],
                "warm": r["time_median"], "cold": r["time_cold_median"],
                "cold ÷ warm": r["time_cold_median"] / r["time_median"], "kernel-only": r["time_graph_median"],
                "throttled": ("yes" + (f" (SM {clock:.0f} MHz)" if pd.notna(clock) else "")) if throttled is True
                             else ("no" if throttled is False else ""),
                "energy mJ/call": f"{energy:.3g}" if pd.notna(energy) else (note if isinstance(note, str) else ""),
                "_size": sizes[r["layer"]], "_r": DIRECTIONS.index(r["direction"]),
            })
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(rows).sort_values(["machine", "_size", "layer", "_r", "impl"])
    return out[columns].reset_index(drop=True)


def fmt_value(key, value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key == "ceilings":
        return _fmt_ceilings(value)
    if key == "copy_levels":
        levels = schema.best_copy_levels([value])
        return ", ".join(f"{lv['bytes'] / 2**20:g} MiB {lv['gbps']:,.1f} GB/s" for lv in levels) or str(value)
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


def _fmt_ceilings(value) -> str:
    """machine.ceilings (every measurement of the run): how many and their range."""
    try:
        items = json.loads(value) if isinstance(value, str) else value
        copy = [float(c["copy_gbps"]) for c in items if c.get("copy_gbps") is not None]
        sgemm = [float(c["sgemm_gflops"]) for c in items if c.get("sgemm_gflops") is not None]
    except (ValueError, TypeError, AttributeError, KeyError):
        return str(value)
    parts = [f"{len(items)} measurements"]
    if copy:
        parts.append(f"copy {min(copy):,.1f}–{max(copy):,.1f} GB/s")
    if sgemm:
        parts.append(f"sgemm {min(sgemm):,.0f}–{max(sgemm):,.0f} GFLOP/s")
    return ", ".join(parts)


def machines(df: pd.DataFrame, asv_machines: list[dict]) -> pd.DataFrame:
    """Fields as rows (bench/schema.py's MACHINE_FIELDS, then any other key the records
    carry), one column per machine (latest metadata of each), plus what was run there."""
    fields = [(k, label) for k, label in schema.MACHINE_FIELDS.items() if k != "host"]
    columns = {}
    for machine, group in df.groupby("machine", sort=True):
        group = group.sort_values("timestamp", na_position="first")
        col = {}
        extras = sorted(c[len("machine_"):] for c in group.columns
                        if c.startswith("machine_") and c[len("machine_"):] not in schema.MACHINE_FIELDS)
        for key, label in fields + [(key, key) for key in extras]:
            values = group.get(f"machine_{key}")
            value = values.dropna().iloc[-1] if values is not None and values.notna().any() else None
            col[label] = fmt_value(key, value)
        col["devices measured"] = ", ".join(device_label(d) for d in sorted(group["device"].dropna().unique(), key=_device_key))
        col["runs"] = ", ".join(sorted(group["run_id"].dropna().astype(str).unique()))
        counts = group["status"].value_counts()
        col["cases"] = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "failed", "skipped"))
        columns[machine] = col
    for info in asv_machines:
        name = f"asv: {info.get('machine', '?')}"
        columns[name] = {schema.MACHINE_FIELDS["cpu_model"]: info.get("cpu", ""),
                         schema.MACHINE_FIELDS["cpu_cores_logical"]: info.get("num_cpu", ""),
                         schema.MACHINE_FIELDS["memory_bytes"]: info.get("ram", ""),
                         schema.MACHINE_FIELDS["platform"]: f"{info.get('os', '')} {info.get('arch', '')}".strip()}
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


def quality(df: pd.DataFrame) -> pd.DataFrame:
    """Timed cases whose number deserves less trust, with why (bench.schema.quality_flags:
    a second measurement that disagrees, a compute probe well below the reference of its
    run and thread count, a wide interval of the median, a throttled GPU).
    Worst first."""
    columns = ["machine", "device", "impl", "layer", "direction", "median", "flags"]
    ok = df[df["status"] == "ok"]
    reference = {}
    if "probe_gflops" in ok and "run_id" in ok:
        probes = ok.dropna(subset=["probe_gflops"])
        reference = (probes.groupby(["run_id", probes["machine_threads"].fillna(0)])["probe_gflops"]
                      .agg(schema.reference_probe).to_dict())
    rows = []
    for _, r in ok.iterrows():
        threads = r.get("machine_threads")
        flags = schema.quality_flags(r.to_dict(), reference.get((r.get("run_id"), 0 if pd.isna(threads) else threads)))
        if flags:
            rows.append({"machine": r["machine"], "device": r["device"], "impl": r["impl"], "layer": r["layer"],
                         "direction": r["direction"], "median": r["time_median"],
                         "flags": "; ".join(text for text, _ in flags), "_worst": max(size for _, size in flags)})
    out = pd.DataFrame(rows, columns=columns + ["_worst"])
    return out.sort_values("_worst", ascending=False, kind="stable").drop(columns="_worst").reset_index(drop=True)


def parameter_layers(df: pd.DataFrame) -> pd.DataFrame:
    """Distinct (in, out, k) layers of the results with both parameter counts."""
    columns = ["label", "in_channels", "out_channels", "kernel_size", "flat_params", "dense_params"]
    data = df[["in_channels", "out_channels", "kernel_size"]].dropna().drop_duplicates()
    rows = [{"label": f"{c}→{n}, {k}×{k}", "in_channels": c, "out_channels": n, "kernel_size": k,
             "flat_params": flat_param_count(c, n, k), "dense_params": dense_param_count(c, n, k)}
            for c, n, k in data.astype(int).itertuples(index=False)]
    return pd.DataFrame(rows, columns=columns)
